//! The host side of every consumer: waiting for published entries (a short
//! spin, then futex sleeps by the io_queue's sleeping protocol), waking the
//! other side, and starting a consumer thread that fails the queue when it
//! fails. The host backend's consumer and the GPU backends' dispatch
//! threads all run this way.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gpuring_core::io_queue::{Consumer, IoQueue};
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

/// Sleep on `word` while it holds `seen`, at most [`SLEEP`].
fn futex_sleep(word: &AtomicU32, seen: u32) {
    let timeout = futex::Timespec { tv_sec: 0, tv_nsec: SLEEP.as_nanos() as _ };
    // EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: look again.
    let _ = futex::wait(word, futex::Flags::PRIVATE, seen, Some(&timeout));
}

/// Wake every sleeper on `word`.
fn futex_wake(word: &AtomicU32) {
    // Waking can only fail for a bad address, which a reference cannot be.
    let _ = futex::wake(word, futex::Flags::PRIVATE, i32::MAX as u32);
}

/// The queue's `producer` word, to wait and wake on.
pub(crate) fn producer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only waited and woken on here, never stored to.
    unsafe { q.header().producer_word() }
}

/// The queue's `consumer` word, to wake on.
fn consumer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only woken on here, never stored to.
    unsafe { q.header().consumer_word() }
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

/// A consumer thread ([`spawn_consumer`]) and its stop flag: the handle a
/// backend's consumer type holds. [`ConsumerThread::join`] waits for the
/// thread; dropping the handle stops the thread early (sets the flag, runs
/// the interrupt, which wakes the consumer, and joins).
pub struct ConsumerThread<T, E> {
    handle: Option<JoinHandle<Result<T, E>>>,
    stop: Arc<AtomicBool>,
    interrupt: Box<dyn Fn() + Send + Sync>,
}

impl<T, E> std::fmt::Debug for ConsumerThread<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").field("running", &self.handle.is_some()).finish()
    }
}

impl<T: Send + 'static, E: Send + 'static> ConsumerThread<T, E> {
    /// [`spawn_consumer`] with a stop flag, which `body` gets and which a
    /// drop sets. `extra_interrupt` runs on a drop before the consumer is
    /// woken (CUDA's tells its persistent kernel to stop).
    pub fn spawn<S>(
        name: &str,
        staging: &Arc<S>,
        extra_interrupt: Option<Box<dyn Fn() + Send + Sync>>,
        body: impl FnOnce(&Arc<S>, &mut Consumer, &AtomicBool) -> Result<T, E> + Send + 'static,
    ) -> Result<Self, HostError>
    where
        S: StagingMemory + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            spawn_consumer(name, staging, move |staging, consumer| body(staging, consumer, &stop))?
        };
        let waker = staging.clone();
        let interrupt = Box::new(move || {
            if let Some(extra) = &extra_interrupt {
                extra();
            }
            wake_consumer(&waker.queue());
        });
        Ok(Self { handle: Some(handle), stop, interrupt })
    }

    /// Wait for the thread's result; `panicked` is the backend's error for
    /// a thread that panicked.
    pub fn join(mut self, panicked: E) -> Result<T, E> {
        let handle = self.handle.take().expect("joined once");
        handle.join().unwrap_or(Err(panicked))
    }
}

impl<T, E> Drop for ConsumerThread<T, E> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.store(true, Ordering::Release);
            (self.interrupt)();
            let _ = handle.join();
        }
    }
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
