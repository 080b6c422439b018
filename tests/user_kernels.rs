//! Consumers users write for GPUs, checked where no GPU is: the example
//! CUDA kernel compiles with NVRTC against the published contract (CI
//! provides NVRTC 13 under target/nvrtc), and the example exits with the
//! driver's error and its fix where there is no driver.

#![cfg(feature = "cuda")]

mod common;

use common::under_ci;
use gpuring::cuda::{CudaError, UserKernel};

#[test]
fn the_cuda_histogram_kernel_compiles_with_nvrtc_against_the_contract() {
    let kernel = UserKernel::new(include_str!("../examples/cuda_histogram.cu"), "histogram");
    assert!(kernel.full_source().starts_with("// gpuring: the io_queue contract"), "the header comes first");
    for (major, minor) in [(7, 5), (8, 0), (9, 0)] {
        match kernel.compile(major, minor) {
            Ok(ptx) => assert!(ptx.to_src().contains(".entry histogram("), "compute_{major}{minor}"),
            Err(e @ CudaError::NoNvrtc { .. }) if !under_ci() => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("compute_{major}{minor}: {e}"),
        }
    }
    // A kernel that does not follow the contract's names fails with NVRTC's log.
    let broken = UserKernel::new("extern \"C\" __global__ void k() { int x = GPURING_NO_SUCH_THING; }", "k");
    match broken.compile(9, 0) {
        Err(CudaError::Compile { log }) => assert!(log.contains("GPURING_NO_SUCH_THING"), "{log}"),
        Err(CudaError::NoNvrtc { .. }) if !under_ci() => {}
        other => panic!("expected NVRTC's error, got {other:?}"),
    }
}
