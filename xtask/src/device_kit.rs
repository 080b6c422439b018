//! `cargo xtask device-kit [--out DIR]`: one folder that proves the GPU paths
//! on a machine with a GPU but no Rust toolchain and no network.
//!
//! The GPU machine this project is lent now and then (an NVIDIA H200) has
//! minutes, not hours: everything it runs is built here, carried in one
//! folder of at most [`MAX_BYTES`], and started with one command,
//! `OUT=DIR bash run.sh`. The folder (default `target/device-kit/`):
//!
//! - `bin/gpuring`: built with every GPU backend (vulkan, cuda, rocm),
//!   stripped; `bin/xtask`: this program, for `hwtest --gpuring`;
//!   `bin/cuda_histogram`: the example of a CUDA kernel of a user's, which
//!   `histogram_check.py` runs and checks against an independent read;
//! - `lib/`: the Vulkan loader and the GL dispatch libraries from Debian
//!   (`libvulkan1`, `libglvnd0`, ...), which `run.sh` puts on
//!   `LD_LIBRARY_PATH` only where the machine lacks them;
//! - `wheels/`: KvikIO (`kvikio-cu13`, `libkvikio-cu13`) and the one
//!   dependency that machine lacks (`rapids-logger`), for CPython 3.12,
//!   fetched once with pip;
//! - `run.sh`, `baselines.py` (KvikIO and read()+copy into CuPy arrays),
//!   `summarize.py` (the summary table), from `xtask/device-kit/`;
//! - `MANIFEST.txt`: the commit, and every file with its size.
//!
//! Downloads are cached under `target/device-kit-cache/`. `--run-here` then
//! runs the kit on this machine and checks it with [`check_run`], which is
//! what CI asks of a run of the kit on a machine without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{ensure_hip, run, step};

/// The most the kit may weigh: the device tool carries 64 MiB in all,
/// working tree included.
pub const MAX_BYTES: u64 = 48 << 20;

/// The Debian packages whose libraries the kit carries: the Vulkan loader
/// and the GL dispatch libraries an NVIDIA ICD may need (what the device
/// tool's notes say made Vulkan work there).
const LIB_PACKAGES: [&str; 7] = ["libvulkan1", "libglvnd0", "libglx0", "libegl1", "libopengl0", "libgl1", "libgles2"];

/// KvikIO and its dependencies that the GPU machine does not have (it has
/// CuPy, NumPy, cuda-pathfinder and libcufile), pinned to one release.
const WHEELS: [&str; 3] = ["kvikio-cu13==26.10.*", "libkvikio-cu13==26.10.*", "rapids-logger==0.3.*"];

/// The GPU machine's Python (3.12) and the platforms its wheels may be built for.
const PIP_TARGET: [&str; 14] = [
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_27_x86_64",
    "--platform",
    "manylinux_2_24_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
];

/// The scripts, copied from `xtask/device-kit/`.
const SCRIPTS: [&str; 4] = ["run.sh", "baselines.py", "summarize.py", "histogram_check.py"];

/// Build the kit; returns its folder.
pub fn build(args: &[String], cargo: fn() -> Command) -> Result<PathBuf> {
    let mut out = PathBuf::from("target/device-kit");
    let mut run_here = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = it.next().context("--out needs a directory")?.into(),
            "--run-here" => run_here = true,
            other => bail!("unknown device-kit argument {other:?} (use --out DIR, --run-here)"),
        }
    }
    step("device kit: building gpuring with every GPU backend, and the hardware suite");
    // hip-sys's build script needs HIP's headers for the rocm feature.
    ensure_hip()?;
    run(cargo().args(["build", "--release", "-p", "gpuring", "--bin", "gpuring", "--features", "vulkan,cuda,rocm"]))?;
    run(cargo().args(["build", "--release", "-p", "xtask"]))?;
    // The CUDA example: a kernel of a user's, on the GPU (its source is
    // compiled in; NVRTC compiles the kernel there).
    run(cargo().args(["build", "--release", "-p", "gpuring", "--example", "cuda_histogram", "--example", "load_device", "--features", "vulkan,cuda,rocm"]))?;
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    for dir in ["bin", "lib", "wheels"] {
        std::fs::create_dir_all(out.join(dir)).with_context(|| format!("creating {}", out.join(dir).display()))?;
    }
    for (bin, from) in [
        ("gpuring", "target/release/gpuring"),
        ("xtask", "target/release/xtask"),
        ("cuda_histogram", "target/release/examples/cuda_histogram"),
        ("load_device", "target/release/examples/load_device"),
    ] {
        let dest = out.join("bin").join(bin);
        run(Command::new("strip").arg("-o").arg(&dest).arg(from)).context("stripping the binaries needs `strip` (Debian: apt-get install binutils)")?;
    }
    let cache = PathBuf::from("target/device-kit-cache");
    step("device kit: the Vulkan loader and GL dispatch libraries (Debian packages)");
    copy_libraries(&cache.join("debs"), &out.join("lib"))?;
    step("device kit: KvikIO wheels for the GPU machine's Python 3.12");
    fetch_wheels(&cache.join("wheels"), &out.join("wheels"))?;
    for script in SCRIPTS {
        let from = Path::new("xtask/device-kit").join(script);
        std::fs::copy(&from, out.join(script)).with_context(|| format!("copying {}", from.display()))?;
    }
    let total = write_manifest(&out)?;
    check_contents(&out)?;
    println!(
        "device kit: {} ({:.1} MiB of at most {} MiB); on the GPU machine: OUT=DIR bash {}/run.sh",
        out.display(),
        total as f64 / (1 << 20) as f64,
        MAX_BYTES >> 20,
        out.display()
    );
    if run_here {
        check_run(&out)?;
    }
    Ok(out)
}

/// Download the library packages once (`apt-get download`, verified by
/// apt against the archive's keys) and copy their shared libraries, each
/// under its soname, into `lib`.
fn copy_libraries(debs: &Path, lib: &Path) -> Result<()> {
    std::fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    let have = |package: &str| -> bool {
        std::fs::read_dir(debs).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{package}_")))
    };
    let missing: Vec<&str> = LIB_PACKAGES.iter().copied().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        let download = || Command::new("apt-get").arg("download").args(&missing).current_dir(debs).status().is_ok_and(|s| s.success());
        if !download() {
            // A fresh machine may have no package lists yet.
            println!("apt-get download failed; updating the package lists once and trying again");
            let _ = Command::new("apt-get").args(["update", "-qq"]).status();
            if !download() {
                bail!("could not download {} with apt-get (the kit carries their libraries); run on Debian with network", missing.join(" "));
            }
        }
    }
    let unpacked = debs.join("unpacked");
    for entry in std::fs::read_dir(debs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&unpacked))?;
        }
    }
    let libdir = unpacked.join("usr/lib/x86_64-linux-gnu");
    let mut copied = 0;
    for entry in std::fs::read_dir(&libdir).with_context(|| format!("reading {}", libdir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The soname links (libvulkan.so.1 -> libvulkan.so.1.3.239): copied
        // through the link, so the kit holds plain files under the names
        // programs ask the loader for.
        let is_soname = path.is_symlink() && name.contains(".so.") && name.rsplit(".so.").next().is_some_and(|v| !v.contains('.'));
        if is_soname {
            std::fs::copy(&path, lib.join(&name)).with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    ensure!(copied > 0 && lib.join("libvulkan.so.1").exists(), "no libvulkan.so.1 in the downloaded libvulkan1 package");
    Ok(())
}

/// Download the KvikIO wheels once with pip and copy them into `wheels`.
fn fetch_wheels(cache: &Path, wheels: &Path) -> Result<()> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let stem = |spec: &str| spec.split("==").next().unwrap_or(spec).replace('-', "_");
    let list = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "whl")).collect()
    };
    let cached = |spec: &str| list(cache).into_iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}-", stem(spec)))));
    if WHEELS.iter().any(|w| cached(w).is_none()) {
        let fetched = Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
            .args(PIP_TARGET)
            .arg("-d")
            .arg(cache)
            .args(WHEELS)
            .status()
            .is_ok_and(|s| s.success());
        if !fetched {
            bail!("pip could not download {} (python3 -m pip download); the kit's KvikIO comparison needs them", WHEELS.join(" "));
        }
    }
    for spec in WHEELS {
        let wheel = cached(spec).with_context(|| format!("pip downloaded no wheel for {spec}"))?;
        std::fs::copy(&wheel, wheels.join(wheel.file_name().context("a wheel's name")?)).with_context(|| format!("copying {}", wheel.display()))?;
    }
    Ok(())
}

/// Every file under `dir`, relative to it, with its size, sorted.
fn files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((path.strip_prefix(dir)?.to_path_buf(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Write `MANIFEST.txt` (its first line names the commit); returns the kit's size.
fn write_manifest(out: &Path) -> Result<u64> {
    let git = |args: &[&str]| Command::new("git").args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() { "" } else { " with uncommitted changes" };
    let date = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%MZ"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let listed = files(out)?;
    let mut text = format!("gpuring {commit}{dirty}, kit built {date}\n\n");
    for (path, len) in &listed {
        text += &format!("{len:>10}  {}\n", path.display());
    }
    let total = listed.iter().map(|(_, len)| len).sum::<u64>() + text.len() as u64 + 40;
    text += &format!("\ntotal about {total} bytes\n");
    std::fs::write(out.join("MANIFEST.txt"), text).context("writing MANIFEST.txt")?;
    Ok(files(out)?.iter().map(|(_, len)| len).sum())
}

/// What a kit must hold, and its size limit.
pub fn check_contents(out: &Path) -> Result<()> {
    let listed = files(out)?;
    let has = |p: &str| listed.iter().any(|(path, _)| path == Path::new(p));
    for required in
        ["bin/gpuring", "bin/xtask", "bin/cuda_histogram", "lib/libvulkan.so.1", "run.sh", "baselines.py", "summarize.py", "histogram_check.py", "MANIFEST.txt"]
    {
        ensure!(has(required), "the device kit lacks {required}");
    }
    for spec in WHEELS {
        let stem = spec.split("==").next().unwrap_or(spec).replace('-', "_");
        ensure!(
            listed.iter().any(|(p, _)| p.starts_with("wheels") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}-")))),
            "the device kit lacks the {spec} wheel"
        );
    }
    let total: u64 = listed.iter().map(|(_, len)| len).sum();
    ensure!(total <= MAX_BYTES, "the device kit is {total} bytes, over its limit of {MAX_BYTES}: the device tool carries 64 MiB in all");
    // The binary must carry every GPU backend.
    let probe = Command::new(out.join("bin/gpuring")).args(["probe", "--json"]).output().context("running the kit's gpuring")?;
    let value: serde_json::Value = serde_json::from_slice(&probe.stdout).context("the kit's gpuring probe --json")?;
    for backend in ["host", "vulkan", "cuda", "rocm"] {
        ensure!(value["backends"].as_array().is_some_and(|b| b.iter().any(|x| x == backend)), "the kit's gpuring lacks the {backend} backend");
    }
    Ok(())
}

/// Run the kit's `run.sh` here (small data, one run) and check what CI
/// expects of a machine like this one: it completes; the host and Vulkan
/// (lavapipe) rows pass; where there is no NVIDIA driver, every CUDA row is
/// skipped with the driver's reason and the KvikIO step says why it cannot
/// run; the summary and the log archive are written.
pub fn check_run(kit: &Path) -> Result<()> {
    step("device kit: run.sh on this machine (no GPU)");
    let out = PathBuf::from("target/device-kit-run");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    let mut cmd = Command::new("bash");
    cmd.arg(kit.join("run.sh")).env("OUT", &out).env("KIT_SIZE", "64M").env("KIT_RUNS", "1").env("KIT_REQUIRE", "host vulkan");
    println!("$ {cmd:?}");
    let status = cmd.status().context("running the kit's run.sh")?;
    ensure!(status.success(), "the kit's run.sh failed with {status}");
    for file in ["summary.md", "summary.json", "machine.txt", "logs.tar.gz"] {
        ensure!(out.join(file).exists(), "the kit's run.sh wrote no {file}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?).context("reading summary.json")?;
    let rows = summary["rows"].as_array().context("summary.json has no rows")?;
    let of = |prefix: &str| -> Vec<&serde_json::Value> { rows.iter().filter(|r| r["case"].as_str().is_some_and(|c| c.starts_with(prefix))).collect() };
    for backend in ["host", "vulkan"] {
        let mine = of(&format!("hwtest {backend} "));
        ensure!(!mine.is_empty(), "the kit's run has no hwtest rows for {backend}");
        for r in mine {
            ensure!(r["verdict"] == "pass", "the kit's run: {} is {}: {}", r["case"], r["verdict"], r["detail"]);
        }
    }
    let no_driver = !Path::new("/dev/nvidia0").exists();
    if no_driver {
        // The suite's first CUDA row gives the driver's reason, the others
        // point to it; the bench and the modes give it themselves.
        let suite = of("hwtest cuda ");
        let own: Vec<_> = of("bench").into_iter().chain(of("cuda ")).collect();
        ensure!(!suite.is_empty() && !own.is_empty(), "the kit's run has no CUDA rows");
        let reason = |r: &&serde_json::Value| r["detail"].as_str().is_some_and(|d| d.contains("CUDA driver"));
        ensure!(suite.iter().any(reason), "without a GPU, the suite's CUDA rows should give the driver's reason");
        for r in suite.iter().chain(&own) {
            ensure!(
                r["verdict"] == "skipped" && (suite.contains(r) || reason(r)),
                "without a GPU, {} should be skipped with the driver's reason, but is {}: {}",
                r["case"],
                r["verdict"],
                r["detail"]
            );
        }
        let kvikio = of("kvikio");
        ensure!(
            kvikio.iter().any(|r| r["verdict"] == "skipped" && r["detail"].as_str().is_some_and(|d| !d.is_empty())),
            "without a GPU, the KvikIO step should say why it cannot run"
        );
    }
    ensure!(!rows.iter().any(|r| r["verdict"] == "fail"), "the kit's run has failed rows: see {}", out.join("summary.md").display());
    println!("device kit: run.sh completed here; see {}", out.join("summary.md").display());
    Ok(())
}
