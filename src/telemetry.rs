//! The driver's counters as every report shows them.

use gpuring_core::Telemetry;
use serde::Serialize;

/// The telemetry counters, flattened, as reported in JSON.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct TelemetryReport {
    /// Bytes asked for.
    pub submitted_bytes: u64,
    /// Reads submitted (short-read continuations included).
    pub submitted_reads: u64,
    /// Bytes that landed in slots.
    pub completed_bytes: u64,
    /// Successful completions.
    pub completed_reads: u64,
    /// Completions that failed.
    pub failed_completions: u64,
    /// Completions with fewer bytes than asked.
    pub short_reads: u64,
    /// Reads still in flight (0 after a finished run).
    pub inflight_reads: u64,
    /// Entries published to the io_queue.
    pub published: u64,
    /// Entries the consumer released.
    pub released: u64,
    /// Bytes the device wrote (O_DIRECT).
    pub dma_bytes: u64,
    /// Completions on the DMA path.
    pub dma_reads: u64,
    /// Bytes the kernel copied from the page cache.
    pub kernel_copy_bytes: u64,
    /// Completions on the kernel-copy path.
    pub kernel_copy_reads: u64,
    /// Bytes copied in userspace.
    pub bounce_bytes: u64,
    /// Completions on the bounce path.
    pub bounce_reads: u64,
}

impl From<&Telemetry> for TelemetryReport {
    fn from(t: &Telemetry) -> Self {
        Self {
            submitted_bytes: t.submitted_bytes,
            submitted_reads: t.submitted_reads,
            completed_bytes: t.completed_bytes,
            completed_reads: t.completed_reads,
            failed_completions: t.failed_completions,
            short_reads: t.short_reads,
            inflight_reads: t.inflight_reads,
            published: t.published,
            released: t.released,
            dma_bytes: t.dma.bytes,
            dma_reads: t.dma.reads,
            kernel_copy_bytes: t.kernel_copy.bytes,
            kernel_copy_reads: t.kernel_copy.reads,
            bounce_bytes: t.bounce.bytes,
            bounce_reads: t.bounce.reads,
        }
    }
}
