//! The host consumer: a CPU thread doing what a GPU consumer kernel does.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::checksum::slot_checksum;
use gpuring_core::io_queue::{Completion, Consumer, IoQueue, CONSUMED, SKIPPED};
use gpuring_core::StagingMemory;
use rustix::thread::futex;

use crate::memory::HostError;

/// How long the consumer sleeps at most before looking again (it is normally
/// woken sooner, by the producer's futex wake).
const SLEEP: Duration = Duration::from_millis(5);
/// Empty polls before the consumer goes to sleep.
const SPINS: u32 = 64;

/// What the consumer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes checksummed.
    pub bytes: u64,
    /// Entries released without a checksum because their read had failed.
    pub skipped: u64,
}

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

/// Sleep on `word` while it holds `seen`, at most [`SLEEP`].
pub(crate) fn futex_sleep(word: &AtomicU32, seen: u32) {
    let timeout = futex::Timespec { tv_sec: 0, tv_nsec: SLEEP.as_nanos() as _ };
    // EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: look again.
    let _ = futex::wait(word, futex::Flags::PRIVATE, seen, Some(&timeout));
}

/// Wake every sleeper on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // Waking can only fail for a bad address, which a reference cannot be.
    let _ = futex::wake(word, futex::Flags::PRIVATE, i32::MAX as u32);
}

/// The queue's `producer` word, to wait and wake on.
fn producer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only waited and woken on here, never stored to.
    unsafe { q.header().producer_word() }
}

/// The queue's `consumer` word, to wake on.
fn consumer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only woken on here, never stored to.
    unsafe { q.header().consumer_word() }
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
            Arc::new(move || futex_wake(producer_word(&staging.queue()))) as Arc<dyn Fn() + Send + Sync>
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

/// What [`wait_for_entries`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// This many published entries wait to be consumed.
    Ready(u32),
    /// The producer closed the queue and everything was consumed.
    Finished,
    /// The caller's stop flag was set.
    Stopped,
}

/// Wait until `consumer` has published entries to take, the queue is
/// finished, or `stop` is set: a short spin, then futex sleeps on `producer`
/// by the io_queue's sleeping protocol. Every consumer that runs a host
/// thread (this backend's, and the GPU backends' dispatch threads) waits
/// this way.
pub fn wait_for_entries(q: &IoQueue<'_>, consumer: &Consumer, stop: &AtomicBool) -> Waited {
    let mut idle = 0u32;
    loop {
        if stop.load(Ordering::Acquire) {
            return Waited::Stopped;
        }
        let available = consumer.available(q);
        if available > 0 {
            return Waited::Ready(available);
        }
        if consumer.finished(q) {
            return Waited::Finished;
        }
        idle += 1;
        if idle < SPINS {
            std::hint::spin_loop();
        } else if consumer.prepare_sleep(q) {
            futex_sleep(producer_word(q), consumer.position());
            consumer.end_sleep(q);
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

/// Start a consumer thread called `name` for `staging`: take the queue's
/// consumer end (a second consumer is an error, before any thread starts),
/// then run `body` with it. If `body` fails, the queue is failed (keeping a
/// non-zero code the device already stored) and the producer woken, so the
/// driver stops with the consumer's error. What `body` must do before it
/// returns (wait for the device, or leak what the device may still use) is
/// its own business. Every GPU backend starts its consumers this way.
pub fn spawn_consumer<S, T, E>(
    name: &str,
    staging: &Arc<S>,
    body: impl FnOnce(&Arc<S>, &mut Consumer) -> Result<T, E> + Send + 'static,
) -> Result<JoinHandle<Result<T, E>>, HostError>
where
    S: StagingMemory + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut consumer = staging.take_consumer()?;
    let staging = staging.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let result = body(&staging, &mut consumer);
            if result.is_err() {
                let q = staging.queue();
                if q.consumer_failed() == 0 {
                    consumer.fail(&q, 1);
                }
                futex_wake(consumer_word(&q));
            }
            result
        })
        .map_err(|e| HostError::Thread { why: e.to_string() })?;
    Ok(handle)
}

/// Wake a consumer sleeping on `producer` (to make it see a stop flag).
pub fn wake_consumer(q: &IoQueue<'_>) {
    futex_wake(producer_word(q));
}

/// Wake the producer if it sleeps waiting for releases (after a release).
pub fn wake_producer(q: &IoQueue<'_>) {
    if q.producer_needs_wake() {
        futex_wake(consumer_word(q));
    }
}
