//! The GPU consumer kernel's source, shared by the GPU backends that compile
//! it at run time: gpuring-cuda (NVRTC) and gpuring-rocm (hiprtc).
//!
//! `kernel/consumer.cu` is written in the dialect CUDA and HIP share; what
//! differs between them, and every constant of the io_queue protocol, comes
//! from a prelude generated here from gpuring-core ([`source`]), so the
//! kernels cannot drift from the Rust side of the protocol. The same text is
//! compiled by the host C++ compiler in this crate's tests, with the GPU
//! built-ins emulated by CPU threads (`kernel/cpu_shim.h`), so its logic is
//! checked on machines without a GPU.
//!
//! Kernels (launch geometry in each backend's consumer):
//! - `gr_partial` + `gr_finish`, the batched consumer: a grid of
//!   ([`chunks_per_slot`], entries) blocks of [`THREADS`] threads, each
//!   summing [`CHUNK_WORDS`] words of one slot into per-entry scratch, then
//!   one block that turns the lanes into results and releases the batch.
//! - `gr_persistent`: one launch for the whole run, polling the io_queue.

use gpuring_core::checksum::{FMIX_1, FMIX_2, INDEX_KEY, LEN_KEY, MUL_A, MUL_B};
use gpuring_core::io_queue::{self, IoQueue, FAILED_OUT_OF_STEP, REJECTED};
use gpuring_core::SlotGeometry;

/// Threads per block of every kernel (`GR_THREADS`).
pub const THREADS: u32 = 256;

/// Words of a slot one block of `gr_partial` checksums: 64 KiB, so a
/// 256 KiB slot is read by four blocks at once.
pub const CHUNK_WORDS: u32 = 16 << 10;

/// Which run-time compiler the source is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// NVRTC: CUDA C++.
    Cuda,
    /// hiprtc: HIP C++ for AMD GPUs.
    Hip,
}

impl Dialect {
    /// `GR_SLEEP()`: a short back-off in the persistent kernel's polling
    /// loops (about 256 ns on NVIDIA; 8 × 64 clocks on AMD).
    fn sleep(self) -> &'static str {
        match self {
            Dialect::Cuda => "__nanosleep(256)",
            Dialect::Hip => "__builtin_amdgcn_s_sleep(8)",
        }
    }
}

/// The kernel source as compiled for `dialect`: the prelude, then
/// `consumer.cu`.
pub fn source(dialect: Dialect) -> String {
    let mut text = format!("// Generated from gpuring-core by gpuring-shared's kernel.rs ({dialect:?}).\n");
    // The io_queue's published contract first: one source of truth for
    // users' kernels and this one.
    // Writing into a String cannot fail.
    let _ = gpuring_core::contract::write_c_header(&mut text);
    let u32s: &[(&str, u32)] = &[("GR_INDEX_KEY", INDEX_KEY), ("GR_MUL_A", MUL_A), ("GR_MUL_B", MUL_B), ("GR_THREADS", THREADS)];
    for (name, value) in u32s {
        text += &format!("#define {name} {value:#x}u\n");
    }
    for (name, value) in [("GR_LEN_KEY", LEN_KEY), ("GR_FMIX_1", FMIX_1), ("GR_FMIX_2", FMIX_2)] {
        text += &format!("#define {name} {value:#x}ull\n");
    }
    text += &format!("#define GR_SLEEP() {}\n", dialect.sleep());
    text + include_str!("kernel/consumer.cu")
}

/// Blocks of `gr_partial` per slot of `slot_bytes`.
pub fn chunks_per_slot(slot_bytes: u32) -> u32 {
    (slot_bytes / 4).div_ceil(CHUNK_WORDS).max(1)
}

/// Why a kernel set `consumer_failed`: the position of the entry it
/// rejected and what was wrong with it, looking at the entries from the
/// queue's `consumer` up to `end`.
pub fn rejection(q: &IoQueue<'_>, geometry: SlotGeometry, end: u32) -> (u32, String) {
    let consumer = q.header().consumer();
    if q.consumer_failed() == FAILED_OUT_OF_STEP {
        return (consumer, format!("the queue's consumer position was {consumer}, not the batch's first entry"));
    }
    for position in io_queue::positions(consumer, end.wrapping_sub(consumer)) {
        let e = q.entry(position);
        if e.consumer_status() == REJECTED {
            let (seq, slot, bytes) = (e.seq(), e.slot(), e.bytes());
            let what = if seq != position.wrapping_add(1) {
                format!("its seq is {seq}, not {}", position.wrapping_add(1))
            } else if slot >= geometry.slot_count() || bytes > geometry.slot_size() as u64 {
                format!("slot {slot} with {bytes} bytes, but there are {} slots of {} bytes", geometry.slot_count(), geometry.slot_size())
            } else {
                format!("the consumer marked it rejected (slot {slot}, {bytes} bytes)")
            };
            return (position, what);
        }
    }
    (consumer, format!("consumer_failed is {:#x}", q.consumer_failed()))
}

/// How a batched consumer ended, once the device finished everything it
/// queued: `Err` with the position and the reason when the kernels failed
/// the queue ([`rejection`]) or released other than the `handed` entries
/// (unless the consumer was `stopped` early).
pub fn batched_outcome(q: &IoQueue<'_>, geometry: SlotGeometry, handed: u32, stopped: bool) -> Result<(), (u32, String)> {
    if q.consumer_failed() != 0 {
        return Err(rejection(q, geometry, handed));
    }
    let released = q.header().consumer();
    if !stopped && released != handed {
        return Err((released, format!("the kernels released up to {released}, not {handed}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
mod user;

pub use user::UserKernel;
