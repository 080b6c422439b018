//! Your own consumer over files, in one call that cannot deadlock.
//!
//! A consumer (a closure on a CPU thread, a compute shader, a CUDA or HIP
//! kernel) takes each slot the driver publishes and releases it; it stops
//! once the producer has closed the queue and every entry is released.
//! [`run`] owns both ends: it drives the ingest into your staging memory
//! while your consumer runs, closes the queue on every path (an error, an
//! early return, a panic in the driver), then finishes the consumer and
//! returns what both did. A consumer's error comes first: it is what
//! explains a driver that stopped waiting for releases.
//!
//! [`host`] is the shortest way: your closure over each slot's bytes.
//!
//! ```no_run
//! use gpuring::{consume, Source};
//!
//! let sources = [Source::file("data.bin")];
//! let run = consume::host(&sources, &consume::ConsumeOptions::default(), [0u64; 256], |histogram, _entry, bytes| {
//!     bytes.iter().for_each(|&b| histogram[b as usize] += 1);
//!     0 // the entry's result, which the driver reports per segment
//! })?;
//! println!("{} bytes, {} zeros", run.stats.telemetry.completed_bytes, run.output[0]);
//! # Ok::<(), gpuring::Error>(())
//! ```
//!
//! With a GPU consumer, make the staging and start the consumer on it, then
//! hand both to [`run`] (see `examples/vulkan_histogram.rs`).
//!
//! The layers below (`gpuring::uring::Driver` stepped by hand, a consumer
//! joined by hand) stay available; there, closing the queue
//! (`Driver::close_queue`, or `staging.queue().close()` when no driver
//! could start) before joining the consumer is the caller's job.

use std::sync::Arc;
use std::time::Duration;

use gpuring_core::StagingMemory;
use gpuring_uring::{Driver, DriverOptions, IngestStats, Source, SourceKind};

use crate::backend::ConsumerRuns;
use crate::Error;

/// A running consumer of a staging region's io_queue that [`run`] can
/// finish once the queue is closed.
pub trait Consumer {
    /// What it gives back when finished.
    type Output;
    /// Where it runs, for the default number of rings: a consumer on a CPU
    /// gets one to itself.
    const RUNS: ConsumerRuns = ConsumerRuns::Elsewhere;
    /// Wait until the queue is closed and every entry released, then
    /// return what it did.
    fn finish(self) -> Result<Self::Output, Error>;
}

#[cfg(feature = "host")]
impl<T: Send + 'static> Consumer for gpuring_host::HostConsumer<T> {
    /// Its counters and your state.
    type Output = (gpuring_shared::ConsumerStats, T);
    const RUNS: ConsumerRuns = ConsumerRuns::OnCpu;
    fn finish(self) -> Result<Self::Output, Error> {
        Ok(gpuring_host::HostConsumer::finish(self)?)
    }
}

#[cfg(feature = "vulkan")]
impl Consumer for gpuring_vulkan::VulkanConsumer {
    /// Its counters and the shader's output buffer.
    type Output = (gpuring_shared::ConsumerStats, Vec<u8>);
    fn finish(self) -> Result<Self::Output, Error> {
        Ok(gpuring_vulkan::VulkanConsumer::finish(self)?)
    }
}

#[cfg(feature = "cuda")]
impl Consumer for gpuring_cuda::CudaConsumer {
    /// Its counters and the kernel's output buffer.
    type Output = (gpuring_cuda::CudaStats, Vec<u8>);
    fn finish(self) -> Result<Self::Output, Error> {
        Ok(gpuring_cuda::CudaConsumer::finish(self)?)
    }
}

#[cfg(feature = "rocm")]
impl Consumer for gpuring_rocm::RocmConsumer {
    /// Its counters and the kernel's output buffer.
    type Output = (gpuring_rocm::RocmStats, Vec<u8>);
    fn finish(self) -> Result<Self::Output, Error> {
        Ok(gpuring_rocm::RocmConsumer::finish(self)?)
    }
}

/// How [`run`] and [`host`] read.
#[derive(Clone, Debug)]
pub struct ConsumeOptions {
    /// Read with `O_DIRECT`.
    pub direct: bool,
    /// Rings that read, each on its own thread (0: one per CPU, less one
    /// for a consumer on the host, as many as the slots and RLIMIT_MEMLOCK
    /// allow: [`crate::backend::default_shards`]).
    pub shards: u32,
    /// Give up when the consumer releases nothing for this long.
    pub release_timeout: Duration,
    /// [`host`]'s ring: slots.
    pub slots: u32,
    /// [`host`]'s ring: bytes per slot.
    pub slot_size: usize,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        let (slots, slot_size) = crate::backend::default_ring(None, None);
        Self { direct: false, shards: 0, release_timeout: Duration::from_secs(60), slots, slot_size }
    }
}

/// What [`run`] did.
#[derive(Debug)]
pub struct Consumed<T> {
    /// The driver's counters and time.
    pub stats: IngestStats,
    /// What the consumer gave back.
    pub output: T,
}

/// Closes the queue when dropped: on return, on error and on unwinding.
struct CloseOnDrop<'a, S: StagingMemory>(&'a S);

impl<S: StagingMemory> Drop for CloseOnDrop<'_, S> {
    fn drop(&mut self) {
        self.0.queue().close();
    }
}

/// Read `sources` into `staging` while `consumer` (running on it already)
/// consumes them; close the queue on every path, finish the consumer and
/// return both results (see the module docs). `consumer` must be the one
/// started on this `staging`: the queue closed here is the one it waits on.
pub fn run<S, C>(staging: Arc<S>, consumer: C, sources: &[Source], options: &ConsumeOptions) -> Result<Consumed<C::Output>, Error>
where
    S: StagingMemory + 'static,
    C: Consumer,
{
    let driven = {
        let _close = CloseOnDrop(&*staging);
        drive(staging.clone(), sources, options, C::RUNS)
    };
    let output = consumer.finish()?;
    Ok(Consumed { stats: driven?, output })
}

fn drive<S: StagingMemory + 'static>(staging: Arc<S>, sources: &[Source], options: &ConsumeOptions, runs: ConsumerRuns) -> Result<IngestStats, Error> {
    let geometry = staging.geometry();
    let shards = match options.shards {
        0 => crate::backend::default_shards(runs, geometry.slot_count(), geometry.slot_size()),
        n => n,
    };
    let driver_options = DriverOptions {
        direct: options.direct,
        shards,
        release_timeout: options.release_timeout,
        passthrough: sources.iter().any(|s| s.kind == SourceKind::Nvme),
        ..DriverOptions::default()
    };
    let mut driver = Driver::new(staging, driver_options)?;
    Ok(driver.ingest(sources, |_| {})?)
}

/// Run `f`, your consumer, over every slot of `sources` on a CPU thread,
/// with `state` (given back as the output): a host ring of
/// `options.slots` slots of `options.slot_size`. `f` gets the state, the
/// entry (its slot, bytes, file offset) and the slot's bytes, and returns
/// the entry's result.
#[cfg(feature = "host")]
pub fn host<T, F>(sources: &[Source], options: &ConsumeOptions, state: T, f: F) -> Result<Consumed<T>, Error>
where
    T: Send + 'static,
    F: FnMut(&mut T, &gpuring_core::io_queue::Completion, &[u8]) -> u64 + Send + 'static,
{
    let geometry = gpuring_core::SlotGeometry::new(options.slots, options.slot_size)?;
    let staging = Arc::new(gpuring_host::HostStaging::new(geometry, options.slots.next_power_of_two())?);
    let consumer = gpuring_host::HostConsumer::with(staging.clone(), state, f)?;
    let done = run(staging, consumer, sources, options)?;
    Ok(Consumed { stats: done.stats, output: done.output.1 })
}
