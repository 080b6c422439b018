//! The host consumer: a CPU thread doing what a GPU consumer kernel does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::checksum::slot_checksum;
use gpuring_core::io_queue::{Completion, Consumer, CONSUMED, SKIPPED};
use gpuring_core::StagingMemory;
use gpuring_shared::{spawn_consumer, wait_for_entries, wake_consumer, wake_producer, ConsumerStats, HostError, Waited};

/// A running host consumer: a CPU thread that takes each published slot,
/// hands it to a function, and releases it. [`HostConsumer::start`] runs
/// gpuring's checksum; [`HostConsumer::with`] runs a function of your own
/// over a state `T` of your own, which [`HostConsumer::finish`] gives back.
/// Stop it with [`HostConsumer::join`] or `finish` after the producer
/// closed the queue; dropping it stops it early.
pub struct HostConsumer<T = ()> {
    handle: Option<JoinHandle<Result<(ConsumerStats, T), HostError>>>,
    stop: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl<T> std::fmt::Debug for HostConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConsumer").field("running", &self.handle.is_some()).finish()
    }
}

impl HostConsumer {
    /// Start consuming `staging`'s io_queue on a new thread with gpuring's
    /// checksum (what the driver reports and the ingest verifies). It takes
    /// the queue's consumer end: a second consumer of one staging region is
    /// an error ([`gpuring_core::QueueError::EndTaken`]).
    pub fn start<S: StagingMemory + 'static>(staging: Arc<S>) -> Result<Self, HostError> {
        Self::with(staging, (), |_, _, bytes| slot_checksum(bytes))
    }
}

impl<T: Send + 'static> HostConsumer<T> {
    /// Start consuming `staging`'s io_queue on a new thread with `f`, your
    /// own consumer, over `state`: `f` is called once per published slot
    /// whose read succeeded, in queue order, with the state, the entry's
    /// completion and the slot's valid bytes (borrowed for the call only:
    /// the slot is the producer's again once `f` returns), and returns the
    /// entry's `result` (gpuring's own consumer returns the core checksum,
    /// which the driver reports with each segment as `checksum`). Slots of
    /// failed reads are released as skipped without a call. Takes the
    /// queue's consumer end, as [`HostConsumer::start`] does;
    /// [`HostConsumer::finish`] gives the state back.
    pub fn with<S, F>(staging: Arc<S>, mut state: T, mut f: F) -> Result<Self, HostError>
    where
        S: StagingMemory + 'static,
        F: FnMut(&mut T, &Completion, &[u8]) -> u64 + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = {
            let staging = staging.clone();
            Arc::new(move || wake_consumer(&staging.queue())) as Arc<dyn Fn() + Send + Sync>
        };
        let handle = {
            let stop = stop.clone();
            spawn_consumer("gpuring-consumer", &staging, move |staging, consumer| {
                run(&**staging, consumer, &stop, &mut |c, bytes| f(&mut state, c, bytes)).map(|stats| (stats, state))
            })?
        };
        Ok(Self { handle: Some(handle), stop, wake })
    }

    /// Wait until the producer has closed the queue and every entry is
    /// released, then return what the consumer did.
    pub fn join(self) -> Result<ConsumerStats, HostError> {
        self.finish().map(|(stats, _)| stats)
    }

    /// As [`HostConsumer::join`], and give the state back, with whatever
    /// the function gathered in it.
    pub fn finish(mut self) -> Result<(ConsumerStats, T), HostError> {
        let handle = self.handle.take().expect("joined once");
        handle.join().map_err(|_| HostError::ConsumerPanicked)?
    }
}

impl<T> Drop for HostConsumer<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.store(true, Ordering::Release);
            (self.wake)();
            let _ = handle.join();
        }
    }
}

fn run<S: StagingMemory>(
    staging: &S,
    consumer: &mut Consumer,
    stop: &AtomicBool,
    f: &mut impl FnMut(&Completion, &[u8]) -> u64,
) -> Result<ConsumerStats, HostError> {
    let q = staging.queue();
    let geometry = staging.geometry();
    let mut stats = ConsumerStats::default();
    while let Waited::Ready(available) = wait_for_entries(&q, consumer, stop) {
        for _ in 0..available {
            let entry = consumer.peek(&q)?.expect("published entries stay until released");
            let position = consumer.position();
            if entry.slot >= geometry.slot_count() || entry.bytes > geometry.slot_size() as u64 {
                return Err(HostError::BadEntry {
                    position,
                    what: format!(
                        "slot {} with {} bytes, but there are {} slots of {} bytes",
                        entry.slot,
                        entry.bytes,
                        geometry.slot_count(),
                        geometry.slot_size()
                    ),
                });
            }
            let (result, status) = if entry.status == 0 {
                // SAFETY: between publish and release the consumer owns the slot:
                // no read is in flight into it (the slot life cycle) and its bytes
                // happen-before the acquire in `peek` (the io_queue protocol).
                let bytes = unsafe { std::slice::from_raw_parts(staging.slot_ptr(entry.slot).as_ptr(), entry.bytes as usize) };
                // `f` borrows the bytes for the call only (its signature lets
                // no reference escape), and the release comes after it.
                let sum = f(&entry, bytes);
                stats.bytes += entry.bytes;
                (sum, CONSUMED)
            } else {
                stats.skipped += 1;
                (0, SKIPPED)
            };
            consumer.release(&q, result, status);
            stats.entries += 1;
            wake_producer(&q);
        }
    }
    Ok(stats)
}
