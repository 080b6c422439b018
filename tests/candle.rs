//! gpuring::candle (feature `candle`): the tensors candle gets from
//! gpuring equal, dtype, shape and bit for bit, the ones candle's own
//! loader makes, on checkpoints Python wrote and on the real MiniLM
//! checkpoint; and a real model (candle-transformers' BERT) gives the same
//! sentence embeddings, bit for bit, with either loader.
#![cfg(feature = "candle")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{minilm, test_dir, under_ci};

/// The tensor's bytes as candle holds them.
fn bits(t: &Tensor) -> Vec<u8> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::U8 => flat.to_vec1::<u8>().unwrap(),
        DType::U32 => flat.to_vec1::<u32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I16 => flat.to_vec1::<i16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I32 => flat.to_vec1::<i32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => flat.to_vec1::<i64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F64 => flat.to_vec1::<f64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => panic!("no bytes for {other:?} in this test"),
    }
}

fn assert_same(path: &Path, ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>) {
    let mut names: Vec<&String> = theirs.keys().collect();
    names.sort();
    assert_eq!(ours.len(), theirs.len(), "{path:?}: the same tensors");
    for name in names {
        let (a, b) = (&ours[name], &theirs[name]);
        assert_eq!((a.dtype(), a.dims()), (b.dtype(), b.dims()), "{path:?} {name}");
        assert!(bits(a) == bits(b), "{path:?} {name}: values differ from candle's own loader");
    }
}

#[test]
fn candle_tensors_from_gpuring_equal_candles_own_load_of_python_checkpoints() {
    let python = std::env::var_os("GPURING_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let dir = test_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoints.py");
    let out = Command::new(&python).arg(script).arg(dir.path()).output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(!under_ci(), "CI=true but {} cannot write the checkpoints: {out:?}", python.display());
        eprintln!("skipped: {} cannot write safetensors checkpoints", python.display());
        return;
    }
    for file in ["mixed.safetensors", "bf16.safetensors", "many.safetensors", "big.safetensors"] {
        let path = dir.path().join("good").join(file);
        let ours = gpuring::candle::load(&[&path], &Device::Cpu).unwrap();
        let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_same(&path, &ours, &theirs);
    }
    // A sharded checkpoint through its index: every tensor of both files.
    let index = dir.path().join("good/model.safetensors.index.json");
    let ours = gpuring::candle::load(&[&index], &Device::Cpu).unwrap();
    let mut theirs = candle_core::safetensors::load(dir.path().join("good/model-00001-of-00002.safetensors"), &Device::Cpu).unwrap();
    theirs.extend(candle_core::safetensors::load(dir.path().join("good/model-00002-of-00002.safetensors"), &Device::Cpu).unwrap());
    assert_same(&index, &ours, &theirs);
}

#[test]
fn minilm_through_gpuring_equals_candles_load_and_a_rank_part_equals_the_host_load() {
    let Some(dir) = minilm() else { return };
    let path = dir.join("model.safetensors");
    let ours = gpuring::candle::load(&[&path], &Device::Cpu).unwrap();
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_same(&path, &ours, &theirs);
    assert_eq!(ours.len(), 104);

    // Rank 2 of 3 along dimension 1, verified, against the host load's bytes.
    let options = gpuring::LoadOptions { part: Some(gpuring::load::Part { rank: 2, world: 3, dim: 1 }), verify: true, ..Default::default() };
    let parts = gpuring::candle::load_with(&[&path], &Device::Cpu, &options).unwrap();
    let host = gpuring::load(&[&path], &options).unwrap();
    for t in host.tensors() {
        let tensor = &parts[&t.name];
        assert_eq!(tensor.dims(), t.shape.as_slice(), "{}", t.name);
        assert!(bits(tensor) == host.bytes(&t.name).unwrap(), "{}", t.name);
    }
}

/// examples/embed.rs: the same embeddings, bit for bit, from weights
/// loaded by gpuring and by candle's own loader; and they behave like
/// sentence embeddings (unit length, a paraphrase closer than an
/// unrelated sentence).
#[test]
fn a_real_bert_gives_the_same_embeddings_with_weights_loaded_by_gpuring() {
    let Some(dir) = minilm() else { return };
    let example = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/embed");
    let sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."];
    let run = |loader: &str| {
        let out = Command::new(&example).arg(&dir).args(["--loader", loader]).args(sentences).output().unwrap();
        assert!(out.status.success(), "{loader}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_owned()
    };
    let (ours, theirs) = (run("gpuring"), run("candle"));
    assert_eq!(ours, theirs, "embeddings differ between the loaders");
    let e: Vec<Vec<f32>> = serde_json::from_str(&ours).unwrap();
    assert_eq!((e.len(), e[0].len()), (3, 384));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for v in &e {
        assert!((dot(v, v) - 1.0).abs() < 1e-5);
    }
    assert!(dot(&e[0], &e[1]) > 0.6 && dot(&e[0], &e[2]) < 0.3, "paraphrase {} unrelated {}", dot(&e[0], &e[1]), dot(&e[0], &e[2]));
}
