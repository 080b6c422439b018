//! Sentence embeddings with a real model whose weights gpuring loaded:
//! candle-transformers' BERT over all-MiniLM-L6-v2 (or any BERT
//! sentence-transformers checkpoint), mean pooling and L2 normalisation as
//! sentence-transformers does them (feature `candle`).
//!
//!     cargo run --release --features candle --example embed -- MODEL_DIR [--loader gpuring|candle] SENTENCE...
//!
//! MODEL_DIR holds `model.safetensors`, `config.json` and `tokenizer.json`.
//! `--loader candle` loads the same weights with candle's own
//! `candle_core::safetensors::load`, to compare. The last line printed is a
//! JSON list of the embeddings, one list of floats per sentence.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: embed MODEL_DIR [--loader gpuring|candle] SENTENCE...")?);
    let mut loader = "gpuring".to_owned();
    let mut sentences = Vec::new();
    while let Some(a) = args.next() {
        if a == "--loader" {
            loader = args.next().ok_or("--loader takes gpuring or candle")?;
        } else {
            sentences.push(a);
        }
    }
    let device = Device::Cpu;
    let weights = dir.join("model.safetensors");
    let tensors = match loader.as_str() {
        "gpuring" => gpuring::candle::load(&[&weights], &device)?,
        "candle" => candle_core::safetensors::load(&weights, &device)?,
        other => return Err(format!("unknown loader {other}: gpuring or candle").into()),
    };
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let model = BertModel::load(vb, &config)?;

    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
    // The checkpoint's tokenizer pads to 128: one sentence at a time, unpadded.
    tokenizer.with_padding(None);
    let mut embeddings = Vec::new();
    for sentence in &sentences {
        let encoding = tokenizer.encode(sentence.as_str(), true).map_err(|e| e.to_string())?;
        let ids = Tensor::new(encoding.get_ids(), &device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &types, None)?; // [1, tokens, hidden]
        let pooled = hidden.mean(1)?; // mean over the tokens
        let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        let embedding = pooled.broadcast_div(&norm)?.squeeze(0)?.to_vec1::<f32>()?;
        embeddings.push(embedding);
    }
    println!("{}", serde_json::to_string(&embeddings)?);
    Ok(())
}
