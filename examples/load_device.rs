//! Load a checkpoint into CUDA device memory that stays, then read every
//! tensor back through its view and compare it with a host load of the same
//! file (feature `cuda`).
//!
//!     cargo run --release --features cuda --example load_device -- model.safetensors [--direct]
//!
//! `gpuring::load::cuda` allocates the arena on a stream of the first GPU,
//! reads every tensor through slots mapped into the device and its copy
//! engine, and returns a `Loaded<CudaSlice<u8>>`; `view(name)` is a
//! `CudaView` of one tensor. The last line printed is one JSON object:
//! `{"tensors", "bytes", "seconds", "gib_per_s", "zero_bounce", "matched"}`.
//! Without a GPU it exits 2 with the driver's error and its fix.

use std::sync::Arc;

use gpuring::{LoadOptions, ReadOptions};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load_device: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if paths.is_empty() {
        return Err("usage: load_device FILE.safetensors... [--direct]".into());
    }
    let options = LoadOptions { read: ReadOptions { direct: args.iter().any(|a| a == "--direct"), ..ReadOptions::default() }, ..LoadOptions::default() };
    let device = gpuring::cuda::Device::open(None)?;
    let stream: Arc<_> = device.context().new_stream()?;
    let on_gpu = gpuring::load::cuda(&paths, &stream, &options)?;
    let on_host = gpuring::load(&paths, &options)?;
    let mut matched = true;
    for t in on_host.tensors() {
        let back = stream.clone_dtoh(&on_gpu.view(&t.name)?)?;
        matched &= back == on_host.bytes(&t.name)?;
    }
    let r = on_gpu.report();
    println!(
        "{{\"tensors\": {}, \"bytes\": {}, \"seconds\": {:.4}, \"gib_per_s\": {:.3}, \"zero_bounce\": {}, \"matched\": {matched}}}",
        on_gpu.tensors().len(),
        r.bytes,
        r.seconds,
        r.gib_per_s,
        r.zero_bounce
    );
    Ok(matched)
}
