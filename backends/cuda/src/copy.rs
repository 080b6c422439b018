//! The copy consumer of `read_into`: each published slot's window goes into
//! a device buffer of the user's by the copy engine.
//!
//! It runs the batched-consumer engine ([`gpuring_shared::batch`]) with
//! `cuMemcpyHtoDAsync` as the device work: per batch, one copy per entry
//! (clipped to its requests' windows by [`CopyPlan`]) from the page-locked
//! slot into the destination, on the caller's stream. The engine waits
//! until the stream is idle before it releases the batch, so a slot is read
//! into again only once its copy has finished; the driver meanwhile keeps
//! reading into the free slots.

use std::sync::Arc;

use cudarc::driver::{sys, CudaStream};
use gpuring_core::StagingMemory;
use gpuring_shared::batch::{run_batches, Batch, BatchDevice, Failure, Release};
use gpuring_shared::copy::{CopyPlan, CopyStats, Region};
use gpuring_shared::ConsumerThread;

use crate::consumer::{failure, stream_idle};
use crate::device::check;
use crate::error::CudaError;
use crate::memory::CudaStaging;

/// `cuMemcpyHtoDAsync` as the engine's device.
struct Copier<'a> {
    staging: &'a CudaStaging,
    stream: &'a CudaStream,
    dst: sys::CUdeviceptr,
    plan: &'a CopyPlan,
    stats: CopyStats,
    /// One entry's regions.
    found: Vec<Region>,
}

impl BatchDevice for Copier<'_> {
    type Error = CudaError;

    fn launch(&mut self, batch: &Batch) -> Result<(), CudaError> {
        let q = self.staging.queue();
        let base = self.staging.slot_ptr(0).as_ptr();
        for position in batch.positions() {
            let found = self.plan.regions(&q.entry(position).completion(), batch.slot_count, batch.slot_bytes as u64, &mut self.found);
            found.map_err(|what| CudaError::Rejected { position, what })?;
            for r in &self.found {
                // The source lies in the slot region (`regions` checked the
                // slot and length), page-locked by the staging, so the copy
                // is asynchronous DMA; it stays ours until the engine
                // released the batch, after the stream is idle. The
                // destination window lies inside the caller's buffer
                // (checked against `dst_len`), which the caller keeps alive
                // until the consumer is joined.
                // SAFETY: per the lines above.
                let copied =
                    unsafe { sys::cuMemcpyHtoDAsync_v2(self.dst + r.dst, base.add(r.slot_offset as usize).cast(), r.len as usize, self.stream.cu_stream()) };
                check("cuMemcpyHtoDAsync", copied)?;
                self.stats.bytes += r.len;
                self.stats.copies += 1;
            }
        }
        Ok(())
    }

    fn idle(&mut self) -> Result<bool, CudaError> {
        stream_idle(self.stream)
    }

    fn failure(&self, f: Failure) -> CudaError {
        failure(f)
    }
}

/// A running copy consumer. Stop it with [`CudaCopyConsumer::join`] after
/// the producer closed the queue; dropping it stops it early.
#[derive(Debug)]
pub struct CudaCopyConsumer(ConsumerThread<CopyStats, CudaError>);

impl CudaCopyConsumer {
    /// Start copying the entries of `staging`'s queue into the device
    /// memory at `dst` by `plan`, on `stream`, from a new thread (which
    /// takes the queue's consumer end).
    ///
    /// # Safety
    /// `dst .. dst + plan.dst_len` must be device memory of `staging`'s
    /// context, alive and not used by anything else until
    /// [`CudaCopyConsumer::join`] (or the drop) has returned; `stream` must
    /// be a stream of that context.
    pub unsafe fn start(staging: Arc<CudaStaging>, dst: sys::CUdeviceptr, plan: CopyPlan, stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        let thread = ConsumerThread::spawn("gpuring-cuda-copy", &staging, None, move |staging, consumer, stop| {
            staging.device.bind()?;
            let mut copier = Copier { staging, stream: &stream, dst, plan: &plan, stats: CopyStats::default(), found: Vec::new() };
            match run_batches(&staging.queue(), staging.geometry(), consumer, stop, Release::Host, &mut copier) {
                Ok(done) => Ok(CopyStats { entries: done.entries, batches: done.batches, ..copier.stats }),
                Err(e @ CudaError::Timeout { .. }) => {
                    // Copies may still read the slots: keep them.
                    gpuring_shared::abandon_to_device("cuda", &e, (staging.clone(), stream));
                    Err(e)
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(Self(thread))
    }

    /// Wait until the producer has closed the queue and every entry is
    /// copied and released.
    pub fn join(self) -> Result<CopyStats, CudaError> {
        self.0.join(CudaError::ConsumerPanicked)
    }
}
