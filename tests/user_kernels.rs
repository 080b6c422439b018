//! Consumers users write for GPUs, checked where no GPU is: the example
//! kernel (`examples/cuda_histogram.cu`, in the dialect CUDA and HIP share)
//! compiles against the published contract with NVRTC (CI provides NVRTC 13
//! under target/nvrtc) and with hiprtc (the test command installs Debian's
//! HIP runtime), and the example exits with the driver's error and its fix
//! where there is no driver (`cargo xtask examples`).

#![cfg(any(feature = "cuda", feature = "rocm"))]

mod common;

use common::under_ci;

#[cfg(feature = "cuda")]
#[test]
fn the_cuda_histogram_kernel_compiles_with_nvrtc_against_the_contract() {
    use gpuring::cuda::{CudaError, UserKernel};
    let kernel = UserKernel::new(include_str!("../examples/cuda_histogram.cu"), "histogram");
    assert!(kernel.full_source().starts_with("// gpuring: the io_queue contract"), "the header comes first");
    for (major, minor) in [(7, 5), (8, 0), (9, 0)] {
        match gpuring::cuda::compile_kernel(&kernel, major, minor) {
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
    match gpuring::cuda::compile_kernel(&broken, 9, 0) {
        Err(CudaError::Compile { log }) => assert!(log.contains("GPURING_NO_SUCH_THING"), "{log}"),
        Err(CudaError::NoNvrtc { .. }) if !under_ci() => {}
        other => panic!("expected NVRTC's error, got {other:?}"),
    }
}

#[cfg(feature = "rocm")]
#[test]
fn the_same_kernel_compiles_with_hiprtc_for_amd_gpus() {
    use gpuring::rocm::{compile_kernel, RocmError, UserKernel};
    let kernel = UserKernel::new(include_str!("../examples/cuda_histogram.cu"), "histogram");
    // (Not gfx942: Debian's hiprtc, ROCm 5.2, predates it and crashes on it.)
    for arch in ["gfx90a", "gfx1030"] {
        match compile_kernel(&kernel, Some(arch)) {
            Ok(code) => {
                assert_eq!(&code[..4], b"\x7fELF", "{arch}: not an ELF code object");
                assert!(code.windows(b"histogram.kd".len()).any(|w| w == b"histogram.kd"), "{arch}: no kernel descriptor for `histogram`");
            }
            Err(e @ (RocmError::NoRuntime { .. } | RocmError::NoHiprtc { .. })) if !under_ci() => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        }
    }
    let broken = UserKernel::new("extern \"C\" __global__ void k() { int x = GPURING_NO_SUCH_THING; }", "k");
    match compile_kernel(&broken, Some("gfx90a")) {
        Err(RocmError::Compile { log }) => assert!(log.contains("GPURING_NO_SUCH_THING"), "{log}"),
        Err(RocmError::NoRuntime { .. } | RocmError::NoHiprtc { .. }) if !under_ci() => {}
        other => panic!("expected hiprtc's error, got {other:?}"),
    }
}
