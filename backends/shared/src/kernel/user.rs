//! Kernels users write for CUDA and ROCm: [`UserKernel`], run by
//! `CudaConsumer::with_kernel` (gpuring-cuda, compiled by NVRTC) and
//! `RocmConsumer::with_kernel` (gpuring-rocm, compiled by hiprtc) on the
//! staging's queue and slots in place of gpuring's checksum kernels. One
//! source serves both when it keeps to the dialect they share (as
//! `examples/cuda_histogram.cu` does).

/// A CUDA or HIP kernel of yours, to run as a consumer.
///
/// # The kernel's contract
///
/// Your source is compiled after the published io_queue header
/// (`gpuring header --lang c`: `GPURING_*` offsets, statuses and failure
/// codes, `GPURING_ENTRY_OFFSET`). The kernel named in [`UserKernel::new`]
/// has this signature:
///
/// ```c
/// extern "C" __global__ void name(unsigned char* queue, const unsigned char* slots,
///                                 unsigned int first, unsigned int count, unsigned int capacity,
///                                 unsigned int slot_count, unsigned int slot_bytes,
///                                 unsigned char* output);
/// ```
///
/// `queue` and `slots` are the device addresses of the staging's host pages
/// (mapped into the device); `output` is a device buffer of
/// [`UserKernel::with_output`] bytes, zeroed before the first batch, which
/// the consumer's `finish` copies back. Each batch of published entries is
/// one launch of `count` blocks of [`UserKernel::with_block`] threads
/// (default 256) on the consumer's stream: block `i` owns the entry at
/// position `first + i` (wrapping), and must write its `consumer_status`
/// (`GPURING_CONSUMED`, `GPURING_SKIPPED` for an entry whose `status` is
/// not 0, or `GPURING_REJECTED`) and may write its `result`, with a
/// system-scope fence (`__threadfence_system()`) before the stores the host
/// reads. It must not write `consumer`: gpuring's host thread (the
/// batched-consumer engine, [`run_batches`](crate::batch::run_batches) with
/// [`Release::Host`](crate::batch::Release::Host)) releases the batch once
/// the stream has run it, and fails the queue on a rejected entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKernel {
    source: String,
    name: String,
    output_bytes: usize,
    block: u32,
}

impl UserKernel {
    /// The kernel `name` defined in `source` (CUDA C++ or HIP C++).
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

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of the output buffer.
    pub fn output_bytes(&self) -> usize {
        self.output_bytes
    }

    /// Threads per block.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// What the run-time compiler compiles: the io_queue contract header,
    /// then your source.
    pub fn full_source(&self) -> String {
        let mut text = format!("// gpuring: the io_queue contract, then the user's kernel `{}`.\n", self.name);
        // Writing into a String cannot fail.
        let _ = gpuring_core::contract::write_c_header(&mut text);
        text + "\n" + &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_kept_in_range_and_the_header_comes_first() {
        let k = UserKernel::new("extern \"C\" __global__ void k() {}", "k").with_output(1).with_block(4096);
        assert_eq!((k.name(), k.output_bytes(), k.block()), ("k", 4, 1024));
        assert_eq!(UserKernel::new("", "k").with_output(1025).with_block(0).output_bytes(), 1028);
        assert_eq!(UserKernel::new("", "k").with_block(0).block(), 1);
        let text = k.full_source();
        let header = text.find("#define GPURING_ENTRY_OFFSET").expect("the contract header is included");
        assert!(header < text.find("void k()").unwrap(), "the header comes before the user's source");
    }
}
