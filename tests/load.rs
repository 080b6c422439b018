//! `gpuring load` on checkpoints written by Python's `safetensors` and
//! `numpy` (tests/data/checkpoints.py): every tensor of every file, with the
//! names, dtypes and shapes safetensors itself reads back, and every byte
//! compared with the file, on the host and on Vulkan; the damaged files
//! each get their error, naming the file, and nothing reported as loaded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{test_dir, under_ci};

fn gpuring(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuring")).args(args).output().expect("running gpuring")
}

/// Write the checkpoints into a new directory with Python (`GPURING_PYTHON`,
/// which the test command sets to its virtual environment, else `python3`);
/// `None`, said, where Python lacks safetensors (a failure under CI=true).
fn checkpoints() -> Option<tempfile::TempDir> {
    let python = std::env::var_os("GPURING_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let dir = test_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoints.py");
    let out = Command::new(&python).arg(script).arg(dir.path()).output();
    match out {
        Ok(o) if o.status.success() => Some(dir),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(!under_ci(), "CI=true but {} cannot write the checkpoints (cargo xtask ci installs safetensors and numpy): {why}", python.display());
            eprintln!("skipped: {} cannot write safetensors checkpoints: {why}", python.display());
            None
        }
    }
}

/// Load `paths` with `args` and check every tensor against `manifest` (what
/// Python's safetensors reads back): same names, dtypes and shapes, all
/// matched, and the totals.
fn load_and_check(args: &[&str], paths: &[PathBuf], manifest: &serde_json::Value) {
    let mut all: Vec<&str> = [&["load", "--json"][..], args].concat();
    all.extend(paths.iter().map(|p| p.to_str().unwrap()));
    let out = gpuring(&all);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all:?}: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    for field in ["tensors", "files", "bytes", "seconds", "gib_per_s", "telemetry"] {
        assert!(v.get(field).is_some(), "missing {field}: {stdout}");
    }
    assert_eq!(v["checksum"]["match"], true, "{stdout}");
    let files: Vec<String> = paths
        .iter()
        .flat_map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap().to_owned();
            if name.ends_with(".json") {
                vec!["model-00001-of-00002.safetensors".to_owned(), "model-00002-of-00002.safetensors".to_owned()]
            } else {
                vec![name]
            }
        })
        .collect();
    let mut want = std::collections::BTreeMap::new();
    for f in &files {
        for (name, t) in manifest[f].as_object().unwrap() {
            want.insert(name.clone(), t.clone());
        }
    }
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), want.len(), "{all:?}: every tensor once");
    let mut bytes = 0;
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let w = &want[name];
        assert_eq!((&t["dtype"], &t["shape"]), (&w["dtype"], &w["shape"]), "{name}");
        assert_eq!(t["match"], true, "{name}");
        let elements: u64 = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product();
        assert_eq!(t["bytes"].as_u64().unwrap() % elements.max(1), 0, "{name}: bytes a multiple of the elements");
        bytes += t["bytes"].as_u64().unwrap();
    }
    assert_eq!(v["bytes"], bytes);
    assert_eq!(v["files"], files.len());
}

#[test]
fn checkpoints_written_by_python_load_with_every_tensor_matching() {
    let Some(dir) = checkpoints() else { return };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let good = dir.path().join("good");
    let sets: Vec<Vec<PathBuf>> = vec![
        vec![good.join("mixed.safetensors")],
        vec![good.join("bf16.safetensors")],
        vec![good.join("many.safetensors")],
        vec![good.join("big.safetensors")],
        vec![good.join("model.safetensors.index.json")],
        vec![good.join("mixed.safetensors"), good.join("big.safetensors"), good.join("model-00002-of-00002.safetensors")],
    ];
    let mut backends = vec!["host"];
    if cfg!(feature = "vulkan") && common::backends().contains(&"vulkan") {
        backends.push("vulkan");
    }
    for backend in backends {
        for paths in &sets {
            for direct in [false, true] {
                // Small slots: the 6 MiB tensor crosses many, and the ring wraps.
                let mut args = vec!["--backend", backend, "--slots", "4", "--slot-size", "256K"];
                if direct {
                    args.push("--direct");
                }
                load_and_check(&args, paths, &manifest);
            }
        }
    }
}

#[test]
fn damaged_checkpoints_get_an_error_naming_the_file_and_load_nothing() {
    let Some(dir) = checkpoints() else { return };
    let bad = dir.path().join("bad");
    let cases = [
        ("truncated.safetensors", "the file is truncated"),
        ("header-too-long.safetensors", "the header claims 1048576 bytes, but the file has only 5 after the length"),
        ("offsets-out-of-range.safetensors", "its tensors need 64 bytes of data but the file has 32"),
        ("overlapping.safetensors", "invalid safetensors header: invalid offset for tensor"),
        ("invalid-header.safetensors", "invalid safetensors header"),
    ];
    for (file, want) in cases {
        let path = bad.join(file);
        for args in [&["load", "--json"][..], &["load"][..]] {
            let out = gpuring(&[args, &[path.to_str().unwrap()][..]].concat());
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
            assert!(stdout.is_empty(), "{file}: nothing may be reported as loaded: {stdout}");
            assert!(stderr.contains(path.to_str().unwrap()) && stderr.contains(want) && stderr.contains("Fix:"), "{file}: {stderr}");
        }
    }
    // An index that maps a tensor to a file without it, and one whose file is missing.
    let good = dir.path().join("good");
    let index = good.join("wrong.index.json");
    std::fs::write(&index, r#"{"weight_map": {"head": "model-00001-of-00002.safetensors"}}"#).unwrap();
    let out = gpuring(&["load", index.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong.index.json") && stderr.contains("maps tensor head to") && stderr.contains("Fix:"), "{stderr}");
    std::fs::write(&index, r#"{"weight_map": {"head": "gone.safetensors"}}"#).unwrap();
    let out = gpuring(&["load", index.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gone.safetensors") && out.status.code() == Some(2), "{stderr}");
}
