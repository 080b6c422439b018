//! A HIP kernel of your own as the consumer on an AMD GPU: the byte
//! histogram of `cuda_histogram.cu`, whose source keeps to the dialect CUDA
//! and HIP share, so hiprtc compiles the same file.
//!
//!     cargo run --release --features rocm --example rocm_histogram -- FILE...
//!
//! gpuring maps the slots into the GPU (`hipHostRegister`), reads the files
//! into them, launches the kernel once per batch of published slots, and
//! releases each batch once the kernel has run. The last line printed is
//! one JSON object: `{"files": N, "bytes": N, "histogram": [256 counts]}`.
//! Without the HIP runtime or an AMD GPU it prints the error and its fix,
//! and exits with 2.

use std::sync::Arc;

use gpuring::core::SlotGeometry;
use gpuring::rocm::{RocmConsumer, RocmStaging, UserKernel};
use gpuring::uring::{Driver, DriverOptions, Source};

/// The kernel's source (the contract header is put before it).
const KERNEL: &str = include_str!("cuda_histogram.cu");

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rocm_histogram: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        return Err("usage: rocm_histogram FILE...".into());
    }
    let sources: Vec<Source> = paths.iter().map(Source::file).collect();

    // The first usable AMD GPU, 16 slots of 1 MiB mapped into it, and an
    // io_queue for every slot.
    let staging = Arc::new(RocmStaging::new(None, SlotGeometry::new(16, 1 << 20)?, 16)?);
    let kernel = UserKernel::new(KERNEL, "histogram").with_output(256 * 4).with_block(256);
    // SAFETY: `histogram` has the documented signature, reads the queue and
    // its slot within their sizes, and writes only its entry's result and
    // consumer_status and the 256 counts of its output; no stream is passed.
    let consumer = unsafe { RocmConsumer::with_kernel(staging.clone(), &kernel, None)? };
    let device = staging.device().info().name.clone();
    let mut driver = Driver::new(staging, DriverOptions::default())?;
    let ingested = driver.ingest(&sources, |_| {});
    driver.close_queue();
    let (consumed, output) = consumer.finish()?;
    let stats = ingested?;
    let histogram: Vec<u64> = output.chunks_exact(4).take(256).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64).collect();
    eprintln!("{} files, {} bytes on {device} in {:.3} s, {} launches", sources.len(), consumed.bytes, stats.elapsed.as_secs_f64(), consumed.launches);
    let counts: Vec<String> = histogram.iter().map(u64::to_string).collect();
    println!("{{\"files\": {}, \"bytes\": {}, \"histogram\": [{}]}}", sources.len(), consumed.bytes, counts.join(", "));
    Ok(())
}
