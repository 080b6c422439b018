//! A CUDA kernel of your own as the consumer: a byte histogram of files,
//! computed on an NVIDIA GPU by `cuda_histogram.cu`, which follows the
//! published io_queue contract.
//!
//!     cargo run --release --features cuda --example cuda_histogram -- FILE...
//!
//! gpuring maps the slots into the GPU, reads the files into them, launches
//! the kernel once per batch of published slots, and releases each batch
//! once the kernel has run. The last line printed is one JSON object:
//! `{"files": N, "bytes": N, "histogram": [256 counts]}`. Without a GPU or
//! a driver it prints the driver's error and its fix, and exits with 2.

use std::sync::Arc;

use gpuring::core::SlotGeometry;
use gpuring::cuda::{CudaConsumer, CudaStaging, UserKernel};

use gpuring::ConsumeOptions;

mod common;

/// The kernel's source (the contract header is put before it).
const KERNEL: &str = include_str!("cuda_histogram.cu");

fn main() -> std::process::ExitCode {
    common::exit("cuda_histogram", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let sources = common::sources("cuda_histogram")?;

    // The first usable GPU, 16 slots of 1 MiB mapped into it, and an
    // io_queue for every slot.
    let staging = Arc::new(CudaStaging::new(None, SlotGeometry::new(16, 1 << 20)?, 16)?);
    let kernel = UserKernel::new(KERNEL, "histogram").with_output(256 * 4).with_block(256);
    // SAFETY: `histogram` has the documented signature, reads the queue and
    // its slot within their sizes, and writes only its entry's result and
    // consumer_status and the 256 counts of its output.
    let consumer = unsafe { CudaConsumer::with_kernel(staging.clone(), &kernel, None)? };
    let device = staging.device().info().name.clone();
    // One call drives the reads, closes the queue whatever happens, and
    // finishes the consumer.
    let run = gpuring::consume::run(staging, consumer, &sources, &ConsumeOptions::default())?;
    let (stats, (consumed, output)) = (run.stats, run.output);
    eprintln!("{} files, {} bytes on {device} in {:.3} s, {} launches", sources.len(), consumed.bytes, stats.elapsed.as_secs_f64(), consumed.launches);
    common::print_output(sources.len(), consumed.bytes, &output);
    Ok(())
}
