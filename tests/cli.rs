//! The `gpuring` command, as a user runs it.

mod common;

use std::process::{Command, Output};

use common::{make_file, test_dir, under_ci};

fn gpuring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuring")).args(args).output().expect("running gpuring")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn ingest_json_is_one_object_with_the_documented_fields() {
    let dir = test_dir();
    let path = make_file(dir.path(), "f", 300_000, 1);
    for direct in [false, true] {
        let mut args = vec!["ingest", "--json", "--slots", "4", "--slot-size", "64K", path.to_str().unwrap()];
        if direct {
            args.insert(1, "--direct");
        }
        let out = gpuring(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout.lines().count(), 1, "exactly one line of JSON: {stdout}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for field in ["backend", "files", "bytes", "seconds", "gib_per_s", "telemetry", "zero_bounce", "dma_only", "checksum"] {
            assert!(v.get(field).is_some(), "missing {field}: {stdout}");
        }
        for field in ["submitted_bytes", "completed_bytes", "dma_bytes", "kernel_copy_bytes", "bounce_bytes", "failed_completions"] {
            assert!(v["telemetry"][field].is_u64(), "missing telemetry.{field}");
        }
        assert_eq!(v["backend"], "host");
        assert_eq!(v["bytes"], 300_000);
        assert_eq!(v["checksum"]["match"], true);
        assert_eq!(v["zero_bounce"], true);
        assert_eq!(v["dma_only"], direct);
        assert_eq!(v["telemetry"][if direct { "dma_bytes" } else { "kernel_copy_bytes" }], 300_000);
        assert!(stderr.is_empty(), "no progress bar when not on a terminal: {stderr}");
    }
}

#[test]
fn human_output_and_directories() {
    let dir = test_dir();
    make_file(dir.path(), "a/x", 5000, 1);
    make_file(dir.path(), "b", 70_000, 2);
    let out = gpuring(&["ingest", dir.path().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ingested 2 files"), "{stdout}");
    assert!(stdout.contains("checksum: match (2 of 2 files match"), "{stdout}");
    assert!(stdout.contains("zero-bounce: yes; DMA-only: no"), "{stdout}");
}

#[test]
fn errors_exit_non_zero_with_a_fix() {
    let dir = test_dir();
    let empty = make_file(dir.path(), "empty", 0, 0);
    let file = make_file(dir.path(), "f", 10, 0);
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["ingest", empty.to_str().unwrap()], "nothing to ingest: every input file is empty"),
        (vec!["ingest", "--slots", "0", file.to_str().unwrap()], "0 slots"),
        (vec!["ingest", "--slot-size", "5000", file.to_str().unwrap()], "round it to 4096 or 8192"),
        (vec!["ingest", "--backend", "metal", file.to_str().unwrap()], "`metal` is not a backend (one of: host, vulkan, cuda, rocm)"),
        (vec!["ingest", "--device", "0", file.to_str().unwrap()], "backend `host` has no devices to choose from"),
        (vec!["ingest", "/nonexistent/file"], "no such file or directory"),
    ];
    for (args, want) in cases {
        let out = gpuring(&args);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want) && stderr.contains("Fix:"), "{args:?}: {stderr}");
    }
    let out = gpuring(&["ingest", "--slot-size", "lots", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("`lots` is not a size"));
}

#[test]
fn probe_reports_with_reasons() {
    let out = gpuring(&["probe", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    let find = |name: &str| checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check"));
    for name in ["io_uring_enabled", "ring_setup", "op_read_fixed", "sqe128_cqe32", "memlock", "direct_io", "namespaces", "host", "cuda", "peer_dma"] {
        assert!(!find(name)["detail"].as_str().unwrap().is_empty(), "{name} has a reason");
    }
    assert_eq!(find("op_read_fixed")["ok"], true, "this project's machines support READ_FIXED");
    assert_eq!(find("host")["ok"], true);
}

/// Run gpuring as `nobody` with no capabilities, as an unprivileged user would.
/// One at a time: io_uring charges every ring of a user against one
/// RLIMIT_MEMLOCK allowance, so two at once could crowd each other out.
fn as_nobody(args: &[&str]) -> Option<Output> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !rustix::process::geteuid().is_root() {
        return Some(gpuring(args));
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        assert!(!under_ci(), "CI=true: setpriv (util-linux) is needed for the unprivileged tests");
        eprintln!("skipping: setpriv is not installed, so the test cannot drop root");
        return None;
    };
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_gpuring"))
        .args(args)
        .output()
        .expect("running setpriv");
    Some(out)
}

#[test]
fn unprivileged_memlock_limit_is_reported_with_sizes_and_a_fix_that_works() {
    let Some(limit) = small_memlock_limit() else { return };
    let dir = test_dir();
    let file = make_file(dir.path(), "f", 4096, 0);
    let file = file.to_str().unwrap();
    let Some(out) = as_nobody(&["ingest", "--slots", "64", "--slot-size", "4M", file]) else { return };
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("256 MiB") && stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("Fix: raise the limit"), "{stderr}");
    assert!(stderr.contains(&gpuring::core::Bytes(limit).to_string()), "names the limit: {stderr}");
    // The limit it names suffices: the total, KiB, above 256 MiB.
    let kib: u64 = stderr.split("`ulimit -l ").nth(1).and_then(|r| r.split('`').next()).and_then(|n| n.parse().ok()).expect("a ulimit -l value");
    assert!(kib * 1024 > 256 << 20, "{stderr}");
    // The ring it suggests works.
    let ring = stderr.split("a ring that fits: ").nth(1).expect("a ring that fits").split(" (").next().unwrap();
    let mut args = vec!["ingest"];
    args.extend(ring.split(' '));
    args.push(file);
    let Some(out) = as_nobody(&args) else { return };
    assert!(out.status.success(), "the suggested {ring}: {}", text(&out).1);
}

/// Under a memlock limit smaller than the destination, `read_into`'s
/// O_DIRECT reads cannot register it: they go by address, and `load` still
/// reads and verifies every byte.
#[test]
fn unprivileged_direct_load_reads_by_address_when_the_destination_cannot_be_registered() {
    let Some(limit) = small_memlock_limit() else { return };
    let dir = test_dir();
    let len = (2 * limit as usize).max(1 << 20);
    let file = make_file(dir.path(), "f.bin", len, 9);
    // A one-tensor safetensors file: the header, then the bytes.
    let header = format!(r#"{{"t":{{"dtype":"U8","shape":[{len}],"data_offsets":[0,{len}]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&std::fs::read(&file).unwrap());
    let checkpoint = dir.path().join("one.safetensors");
    std::fs::write(&checkpoint, bytes).unwrap();
    let Some(out) = as_nobody(&["load", "--direct", "--json", checkpoint.to_str().unwrap()]) else { return };
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((v["checksum"]["match"].as_bool(), v["bytes"].as_u64()), (Some(true), Some(len as u64)), "{stdout}");
}

/// The memlock tests' precondition: a limit that io_uring charges against
/// and that the 256 MiB ring below exceeds.
fn small_memlock_limit() -> Option<u64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let limit = limit.filter(|&l| l < 256 << 20);
    if limit.is_none() {
        assert!(!under_ci(), "CI=true: RLIMIT_MEMLOCK is unlimited or huge, so the memlock test cannot run");
        eprintln!("skipping: RLIMIT_MEMLOCK is not below 256 MiB here");
    }
    limit
}

#[test]
fn unprivileged_default_ring_and_the_readme_ring_fit_the_memlock_limit() {
    if small_memlock_limit().is_none() {
        return;
    }
    let dir = test_dir();
    let file = make_file(dir.path(), "f", 20 << 20, 3);
    let file = file.to_str().unwrap();
    for args in [
        vec!["ingest", "--json", file],
        vec!["ingest", "--json", "--slots", "4", "--slot-size", "1M", file],
        vec!["ingest", "--json", "--slot-size", "1M", file],
    ] {
        let Some(out) = as_nobody(&args) else { return };
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((v["checksum"]["match"].as_bool(), v["bytes"].as_u64()), (Some(true), Some(20 << 20)), "{args:?}: {stdout}");
    }
}

#[test]
fn files_the_kernel_generates_are_refused_for_what_they_are_not_as_empty() {
    for path in ["/proc/cpuinfo", "/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"] {
        let out = gpuring(&["ingest", path]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("empty"), "{path}: {stderr}");
        assert!(stderr.contains(path) && stderr.contains("which the kernel generates as it is read") && stderr.contains("Fix: copy it"), "{stderr}");
    }
}

#[test]
fn unreadable_file_is_reported() {
    let dir = test_dir();
    let file = make_file(dir.path(), "secret", 4096, 0);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let Some(out) = as_nobody(&["ingest", "--slots", "1", "--slot-size", "4K", file.to_str().unwrap()]) else { return };
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("secret: permission denied") && stderr.contains("Fix:"), "{stderr}");
}

#[test]
fn bench_json_has_every_case_with_ratios() {
    let fio = Command::new("fio").arg("--version").output().is_ok_and(|o| o.status.success());
    if !fio {
        assert!(!under_ci(), "fio is missing under CI; `cargo xtask ci` installs it (apt-get install fio)");
        eprintln!("skipping the fio half of this test: fio is not installed (apt-get install fio)");
    }
    let dir = test_dir();
    let data = dir.path().join("bench");
    // Small data: a 4 MiB file, 8 files of 8 KiB, a 4 MiB checkpoint; two
    // shards, so fio also runs with two jobs; a size section of 1 and 2 MiB,
    // 10 and 30 files.
    let small = [
        "--dir",
        data.to_str().unwrap(),
        "--size",
        "4M",
        "--small-files",
        "8",
        "--small-size",
        "8K",
        "--checkpoint-size",
        "4M",
        "--shards",
        "2",
        "--size-max",
        "2M",
        "--files-max",
        "30",
    ];
    let out = gpuring(&[&["bench", "--json"][..], &small, &["--runs", "2"]].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cases = v["cases"].as_array().unwrap();
    let mut names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let mut want = vec![
        "memcpy",
        "gpuring-buffered",
        "bounce-buffered",
        "gpuring-direct",
        "bounce-direct",
        "gpuring-small-files",
        "bounce-small-files",
        "gpuring-read-into",
        "pread-into",
        "gpuring-load",
        "mmap-load",
    ];
    if fio {
        want.extend(["fio-buffered", "fio-direct", "fio-small-files", "fio-buffered-2jobs", "fio-direct-2jobs", "fio-small-files-2jobs"]);
    }
    // The load cases that need candle, Python's safetensors, a real model.
    let numpy = !v["python"].as_str().unwrap().contains("left out");
    assert!(numpy || !under_ci(), "CI=true: the test command's Python has safetensors: {}", v["python"]);
    let model = std::env::var_os("GPURING_MINILM").is_some();
    assert_eq!(v["model"].as_str().unwrap().contains("104 tensors"), model, "{}", v["model"]);
    for suffix in if model { &["", "-model"][..] } else { &[""][..] } {
        if *suffix == "-model" {
            want.extend(["gpuring-load-model", "mmap-load-model"]);
        }
        if cfg!(feature = "candle") {
            want.extend(if suffix.is_empty() { ["candle-load", "gpuring-candle"] } else { ["candle-load-model", "gpuring-candle-model"] });
        }
        if numpy {
            want.push(if suffix.is_empty() { "safetensors-numpy" } else { "safetensors-numpy-model" });
        }
    }
    names.sort();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(v["fio"]["ran"], fio);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        assert!(c["gib_per_s"].as_f64().unwrap() > 0.0, "{name}: {c}");
        assert!(c["cpu_s_per_gib"].as_f64().unwrap() >= 0.0, "{name}");
        assert_eq!(c["runs"].as_array().unwrap().len(), 2, "{name}");
        let (min, max, median) = (c["spread"]["min"].as_f64().unwrap(), c["spread"]["max"].as_f64().unwrap(), c["gib_per_s"].as_f64().unwrap());
        assert!(min <= median && median <= max, "{name}: median outside the spread");
        if name.starts_with("gpuring-load") {
            let r = &c["ratios"];
            assert!(r["vs_mmap"].as_f64().unwrap() > 0.0 && r["vs_read_into"].as_f64().unwrap() > 0.0, "{name}: {r}");
            assert_eq!(r["vs_candle"].is_f64(), cfg!(feature = "candle"), "{name}: {r}");
            assert_eq!(r["vs_numpy"].is_f64(), numpy, "{name}: {r}");
        } else if name == "gpuring-read-into" {
            let r = &c["ratios"];
            assert!(r["vs_pread"].as_f64().unwrap() > 0.0 && r["vs_memcpy"].as_f64().unwrap() > 0.0, "{name}: {r}");
        } else if name.starts_with("gpuring-candle") {
            assert!(c["ratios"].is_null(), "{name}");
        } else if name.starts_with("gpuring-") {
            let r = &c["ratios"];
            assert!(r["vs_bounce"].as_f64().unwrap() > 0.0 && r["vs_memcpy"].as_f64().unwrap() > 0.0, "{name}: {r}");
            assert_eq!(r["vs_fio"].is_f64(), fio, "{name}: {r}");
            assert_eq!(r["vs_fio_1job"].is_f64(), fio, "{name}: {r}");
            if fio {
                // vs_fio is over the two-job case: the same-jobs comparison.
                let mode = name.trim_start_matches("gpuring-");
                let two = cases.iter().find(|c| c["name"] == format!("fio-{mode}-2jobs")).unwrap()["gib_per_s"].as_f64().unwrap();
                let ratio = r["vs_fio"].as_f64().unwrap();
                assert!((ratio - c["gib_per_s"].as_f64().unwrap() / two).abs() < 1e-9, "{name}: {r}");
            }
        } else {
            assert!(c["vs_gpuring"].as_f64().unwrap() > 0.0, "{name}");
        }
        if name.ends_with("small-files") {
            assert!(c["files_per_s"].as_f64().unwrap() > 0.0 && c["iops"].as_f64().unwrap() > 0.0, "{name}");
        }
    }
    assert_eq!(v["shards"], 2);
    let cpus = v["cpus"].as_u64().unwrap();
    let scaling: Vec<u64> = v["scaling"].as_array().unwrap().iter().map(|p| p["shards"].as_u64().unwrap()).collect();
    assert_eq!(scaling.first(), Some(&1));
    assert_eq!(scaling.last(), Some(&cpus.min(v["slots"].as_u64().unwrap())), "scaling goes up to the CPUs (or the slots)");
    for p in v["scaling"].as_array().unwrap() {
        assert!(p["gib_per_s"].as_f64().unwrap() > 0.0, "{p}");
    }
    let sizes: Vec<(u64, u64)> = v["size_section"].as_array().unwrap().iter().map(|p| (p["bytes"].as_u64().unwrap(), p["files"].as_u64().unwrap())).collect();
    assert_eq!(sizes, [(1 << 20, 1), (2 << 20, 1), (10 * 4096, 10), (30 * 4096, 30)]);
    for p in v["size_section"].as_array().unwrap() {
        let (before, peak) = (p["rss_before_bytes"].as_u64().unwrap(), p["peak_rss_bytes"].as_u64().unwrap());
        assert!(before > 0 && peak >= before && p["gib_per_s"].as_f64().unwrap() > 0.0, "{p}");
    }
    // The data is kept for the next run; the human table names every case.
    assert_eq!(std::fs::metadata(data.join("large.bin")).unwrap().len(), 4 << 20);
    let out = gpuring(&[&["bench"][..], &small, &["--runs", "1", "--no-fio"]].concat());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("| gpuring-buffered |") && stdout.contains("gpuring-buffered: n/a fio (2 job(s)), n/a fio (1 job)"), "{stdout}");
    assert!(stdout.contains("scaling (buffered, large file):") && stdout.contains("size (buffered, warm):"), "{stdout}");
    assert!(stdout.contains("x pread() into host memory") && stdout.contains("x safetensors over mmap + copy"), "{stdout}");
    assert!(stdout.contains("fio: not run: --no-fio was given"), "{stdout}");
    assert!(!stderr.contains("writing"), "the data was reused: {stderr}");
}

#[cfg(feature = "vulkan")]
#[test]
fn vulkan_ingest_and_device_selection_from_the_command_line() {
    if common::backends().iter().all(|b| *b != "vulkan") {
        return;
    }
    let dir = test_dir();
    let file = make_file(dir.path(), "v", 3 * 65536 + 5, 3);
    let path = file.to_str().unwrap();
    for direct in [&[][..], &["--direct"][..]] {
        let out = gpuring(&[&["ingest", "--backend", "vulkan", "--device", "0", "--slot-size", "64K", "--json", path][..], direct].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["backend"], "vulkan");
        assert!(v["device"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        assert_eq!(v["memory_kind"], "gpu_mapped_host");
        assert_eq!((v["checksum"]["match"].as_bool(), v["zero_bounce"].as_bool()), (Some(true), Some(true)), "{v}");
        assert_eq!(v["dma_only"].as_bool(), Some(!direct.is_empty()));
    }
    let out = gpuring(&["ingest", "--backend", "vulkan", "--device", "no such gpu", path]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no Vulkan device matches `no such gpu` (devices: 0: ") && stderr.contains("Fix: pass --device"), "{stderr}");
    // A loader with no driver to load (the loader reads VK_DRIVER_FILES, and
    // older loaders VK_ICD_FILENAMES): a clear error, not a panic.
    let no_driver = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuring"));
        cmd.args(args).env("VK_DRIVER_FILES", "/nonexistent/icd.json").env("VK_ICD_FILENAMES", "/nonexistent/icd.json");
        cmd.output().unwrap()
    };
    let out = no_driver(&["ingest", "--backend", "vulkan", path]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the Vulkan loader found no device. Fix: install a Vulkan driver"), "{stderr}");
    let (stdout, _) = text(&no_driver(&["probe"]));
    assert!(stdout.lines().any(|l| l.starts_with("backend") && l.contains("vulkan") && l.contains(" no ") && l.contains("found no device")), "{stdout}");

    let out = gpuring(&["probe", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&out).0).unwrap();
    let row = |name: &str| v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("no {name} row: {v}"));
    assert_eq!(row("vulkan")["ok"], true);
    assert_eq!(row("vulkan_device_0")["ok"], true);
    for name in ["vulkan_bar_window_0", "vulkan_dma_buf_0", "peer_dma"] {
        assert!(!row(name)["detail"].as_str().unwrap().is_empty(), "{name} says why");
    }
}

/// `--peer-memory` (slots in a PCI device's P2PDMA memory; proven in the
/// guest of `cargo xtask nvme-vm`): here, a device that publishes none and
/// a backend that cannot take it are errors with a fix, before any read.
#[test]
fn peer_memory_is_refused_where_there_is_none() {
    let dir = test_dir();
    let file = make_file(dir.path(), "p", 65536, 9);
    let path = file.to_str().unwrap();
    let out = gpuring(&["ingest", "--peer-memory", "0000:ff:1f.7", "--direct", path]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out).1;
    assert!(err.contains("peer memory of PCI device 0000:ff:1f.7: there is no such PCI device. Fix: "), "{err}");
    let out = gpuring(&["ingest", "--peer-memory", "0000:ff:1f.7", "--bounce", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--peer-memory applies to --backend host (without --bounce), not to backend `host with --bounce`"), "{}", text(&out).1);
}

/// CUDA from the command line. Without a driver (CI): the clear error in
/// ingest and bench and the probe's reason, exit status 2, no panic. With
/// one (`cargo xtask hwtest` on a GPU machine): every consumer mode
/// ingests and verifies, buffered and O_DIRECT.
#[cfg(feature = "cuda")]
#[test]
fn cuda_from_the_command_line() {
    let dir = test_dir();
    let file = make_file(dir.path(), "c", 5 * 65536 + 77, 4);
    let path = file.to_str().unwrap();
    let out = gpuring(&["ingest", "--cuda-mode", "persistent", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--cuda-mode applies to --backend cuda, not to backend `host`. Fix:"), "{}", text(&out).1);
    if !common::backends().contains(&"cuda") {
        for args in [&["ingest", "--backend", "cuda", path][..], &["ingest", "--backend", "cuda", "--cuda-mode", "device-copy", "--direct", path][..]] {
            let out = gpuring(args);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(stderr.contains("CUDA") && stderr.contains("Fix:"), "{args:?}: {stderr}");
        }
        let out = gpuring(&[
            "bench",
            "--backend",
            "cuda",
            "--size",
            "1M",
            "--checkpoint-size",
            "1M",
            "--runs",
            "1",
            "--no-fio",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
        assert!(text(&out).1.contains("CUDA") && !text(&out).1.contains("panicked"), "{}", text(&out).1);
        let (stdout, _) = text(&gpuring(&["probe"]));
        assert!(stdout.lines().any(|l| l.starts_with("backend") && l.contains("cuda") && l.contains(" no ") && l.contains("Fix:")), "{stdout}");
        return;
    }
    for mode in ["batched", "persistent", "device-copy"] {
        for direct in [&[][..], &["--direct"][..]] {
            let out = gpuring(&[&["ingest", "--backend", "cuda", "--cuda-mode", mode, "--slot-size", "64K", "--json", path][..], direct].concat());
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{mode}: {stderr}");
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!((v["backend"].as_str(), v["consumer_mode"].as_str(), v["memory_kind"].as_str()), (Some("cuda"), Some(mode), Some("gpu_mapped_host")));
            assert_eq!((v["checksum"]["match"].as_bool(), v["zero_bounce"].as_bool()), (Some(true), Some(true)), "{mode}: {v}");
            let copied = if mode == "device-copy" { 5 * 65536 + 77 } else { 0 };
            assert_eq!(v["device_copy_bytes"].as_u64(), Some(copied), "{mode}: {v}");
        }
    }
}

/// `--backend rocm` from the command line. Without an AMD GPU (CI): the
/// ingest exits with status 2 and the HIP error with its fix, no panic, and
/// the probe's rocm row says why. With one: buffered and O_DIRECT ingests
/// into mapped slots verify.
#[test]
fn rocm_from_the_command_line() {
    if !gpuring::ingest::Backend::Rocm.compiled() {
        assert!(!common::under_ci(), "CI=true but the rocm feature is not compiled in; the test command builds it");
        eprintln!("skipping: the rocm backend is not compiled into this build (--features rocm)");
        return;
    }
    let dir = test_dir();
    let file = make_file(dir.path(), "r", 3 * 65536 + 5, 6);
    let path = file.to_str().unwrap();
    let out = gpuring(&["ingest", "--backend", "rocm", "--cuda-mode", "batched", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--cuda-mode applies to --backend cuda, not to backend `rocm`"), "{}", text(&out).1);
    if !common::backends().contains(&"rocm") {
        for args in [&["ingest", "--backend", "rocm", path][..], &["ingest", "--backend", "rocm", "--direct", "--device", "0", path][..]] {
            let out = gpuring(args);
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(stderr.contains("HIP") && stderr.contains("Fix:"), "{args:?}: {stderr}");
        }
        let (stdout, _) = text(&gpuring(&["probe"]));
        assert!(stdout.lines().any(|l| l.starts_with("backend") && l.contains("rocm") && l.contains(" no ") && l.contains("Fix:")), "{stdout}");
        return;
    }
    for direct in [&[][..], &["--direct"][..]] {
        let out = gpuring(&[&["ingest", "--backend", "rocm", "--slot-size", "64K", "--json", path][..], direct].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{direct:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!((v["backend"].as_str(), v["memory_kind"].as_str()), (Some("rocm"), Some("gpu_mapped_host")), "{v}");
        assert_eq!((v["checksum"]["match"].as_bool(), v["zero_bounce"].as_bool()), (Some(true), Some(true)), "{direct:?}: {v}");
    }
}

#[test]
fn header_prints_the_contract_that_ships_with_core() {
    for (lang, shipped) in [("c", include_str!("../core/contract/gpuring_io_queue.h")), ("wgsl", include_str!("../core/contract/gpuring_io_queue.wgsl"))] {
        let out = gpuring(&["header", "--lang", lang]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, shipped, "gpuring header --lang {lang}");
    }
    assert!(!gpuring(&["header", "--lang", "rust"]).status.success());
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly_not_with_a_panic() {
    let dir = test_dir();
    let file = make_file(dir.path(), "f", 1 << 20, 2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpuring"))
        .args(["ingest", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the report is written, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
