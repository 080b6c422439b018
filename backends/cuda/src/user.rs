//! CUDA kernels users write: [`UserKernel`], run by
//! [`CudaConsumer::with_kernel`](crate::CudaConsumer::with_kernel) on the
//! staging's queue and slots in place of gpuring's checksum kernels, on the
//! context the staging was made on (yours, through
//! [`Device::from_context`](crate::Device::from_context)) and on a stream
//! of yours if you give one.
//!
//! # The kernel's contract
//!
//! Your source is compiled by NVRTC after the published io_queue header
//! (`gpuring header --lang c`: `GPURING_*` offsets and statuses,
//! `GPURING_ENTRY_OFFSET`). The kernel named in [`UserKernel::new`] has this
//! signature:
//!
//! ```c
//! extern "C" __global__ void name(unsigned char* queue, const unsigned char* slots,
//!                                 unsigned int first, unsigned int count, unsigned int capacity,
//!                                 unsigned int slot_count, unsigned int slot_bytes,
//!                                 unsigned char* output);
//! ```
//!
//! `queue` and `slots` are the device addresses of the staging's host pages
//! (mapped into the device); `output` is a device buffer of
//! [`UserKernel::with_output`] bytes, zeroed before the first batch, which
//! [`CudaConsumer::finish`](crate::CudaConsumer::finish) copies back. Each
//! batch of published entries is one launch of `count` blocks of
//! [`UserKernel::with_block`] threads (default 256): block `i` owns the
//! entry at position `first + i` (wrapping), and must write its
//! `consumer_status` (`GPURING_CONSUMED`, `GPURING_SKIPPED` for an entry whose
//! `status` is not 0, or `GPURING_REJECTED`) and may write its `result`,
//! with a system-scope fence before the stores (the host reads them). It
//! must not write `consumer`: gpuring's host thread releases the batch once
//! the stream has run it, and fails the queue on a rejected entry.

use crate::error::CudaError;

/// A CUDA kernel of yours (see the [module docs](self) for its contract).
#[derive(Clone, Debug)]
pub struct UserKernel {
    pub(crate) source: String,
    pub(crate) name: String,
    pub(crate) output_bytes: usize,
    pub(crate) block: u32,
}

impl UserKernel {
    /// The kernel `name` defined in CUDA C++ `source`.
    pub fn new(source: &str, name: &str) -> Self {
        Self { source: source.to_owned(), name: name.to_owned(), output_bytes: 4, block: 256 }
    }

    /// An output buffer of `bytes` bytes (rounded up to 4; default 4).
    pub fn with_output(mut self, bytes: usize) -> Self {
        self.output_bytes = bytes.max(4).next_multiple_of(4);
        self
    }

    /// Threads per block (default 256; at most 1024).
    pub fn with_block(mut self, threads: u32) -> Self {
        self.block = threads.clamp(1, 1024);
        self
    }

    /// What NVRTC compiles: the io_queue contract header, then your source.
    pub fn full_source(&self) -> String {
        let mut text = format!("// gpuring: the io_queue contract, then the user's kernel `{}`.\n", self.name);
        // Writing into a String cannot fail.
        let _ = gpuring_core::contract::write_c_header(&mut text);
        text + "\n" + &self.source
    }

    /// Compile to PTX for compute capability `major.minor` (NVRTC only; no
    /// device needed), as [`CudaConsumer::with_kernel`](crate::CudaConsumer::with_kernel)
    /// does for the staging's device. Compile errors come back with NVRTC's log.
    pub fn compile(&self, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
        crate::kernel::compile_source(self.full_source(), major, minor)
    }
}
