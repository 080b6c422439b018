//! Shards: the driver's reads spread over several rings, each submitted and
//! completed on its own thread.
//!
//! A buffered read of cached pages is the kernel's copy, done inline by
//! the thread that calls `io_uring_enter`. One ring therefore copies on one
//! core. With N shards, slot `s` belongs to shard `s % N` and is registered
//! in that shard's ring as fixed buffer `s / N`. Shard 0 is the driver's
//! own ring, on the calling thread; shards 1 to N-1 each get a thread and
//! a ring here (`Shards`). So the copies of N reads run on up to N cores,
//! with N threads, not N + 1.
//!
//! The other shards only execute reads. Everything else stays with the
//! driver's thread (the *coordinator*): which segment goes into which slot, judging
//! each completion (short reads, retries, errors, a file that changed
//! size), the pending table, publishing to the io_queue and taking its
//! releases. So the io_queue keeps its one producer and the GPU-visible
//! protocol does not change: no consumer, gpuring's or a user's, can tell
//! how many shards read.
//!
//! Why one queue with one producer, and not a queue per shard or several
//! producers on one queue: the io_queue's producer does little per slot
//! (a pending-table step, an entry, a release store); the copies are the
//! work. `perf record gpuring ingest --no-verify --shards 2` of a cached
//! 1 GiB file four times on 2 CPUs: gpuring's own code on the driver's and
//! the shard's threads (the step, the hand-over, the waits) took 1.3% of
//! the samples, the kernel's copies 46% and the host consumer's checksum
//! 35%; the kernel's side of waking threads (`try_to_wake_up`, task
//! switches) about 10%. With the checksum taken out of the host consumer
//! (a one-off build standing in for a GPU consumer), 2 shards read at
//! 10.6-10.7 GiB/s against 7.2-7.4 for one. A queue per shard would
//! instead change the published contract: every consumer, users' own
//! kernels and shaders among them, would have to drain N queues.
//!
//! Ordering, from a shard's read to the consumer and back:
//! 1. The kernel writes the slot, then posts the read's completion; the
//!    shard takes it off its completion ring with an acquire load of the
//!    ring's tail (the `io-uring` crate), so the slot's bytes happen before
//!    everything the shard does next.
//! 2. The shard adds the completion to the outbox under its mutex; the
//!    coordinator takes it under the same mutex: unlock then lock orders
//!    the two threads, so the bytes happen before the coordinator's publish.
//! 3. From there the io_queue's argument applies unchanged (one producer,
//!    the coordinator): entry fields, then `seq`, then `producer` with
//!    release; the consumer acquires.
//! 4. Back: the consumer's release store of `consumer`, the coordinator's
//!    acquire in `poll_released`, then the next read of that slot handed to
//!    its shard under the inbox's mutex, then the shard's submit: the
//!    consumer is done with the slot before the kernel writes it again.
//!    A slot only ever belongs to one shard, so no two rings write it.
//!
//! Hand-over, both ways, is a mutex-protected list and a *bell*: a 32-bit
//! counter the sender increments after adding to the list and a futex
//! wake, sent only while the receiver says it sleeps. The receiver sets its
//! sleeping flag, reads the counter, looks at the list, and sleeps only
//! while the counter still holds what it read; all four steps are
//! `SeqCst`, so either the sender sees the flag and wakes, or the receiver
//! reads the moved counter and does not sleep (the argument of the
//! io_queue's sleeping protocol, with a lock-protected list for entries).
//! - The coordinator sleeps in `io_uring_enter` on its own ring, with a
//!   futex wait on its bell queued in that ring (and one on the queue's
//!   `consumer` word when it waits for a release, Linux 6.7): its own
//!   reads, the other shards' and the consumer's releases all end the one
//!   wait. Without the operation it looks every 200 µs.
//! - Another shard with reads in flight sleeps the same way on its bell:
//!   a read's completion or a new command wakes it, whichever comes
//!   first; without the operation it looks at its list every 200 µs.
//!
//! Lifetimes: a command carries a slot's address and a file descriptor.
//! The coordinator keeps the staging memory and every source's descriptor
//! until the read's completion came back; `Shards::cancel_all` returns
//! only once every shard's ring has nothing in flight (or says it could not
//! make sure, and the driver then leaks the memory); dropping `Shards`
//! cancels, stops and joins every thread before the memory can go.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex;

use crate::error::IngestError;
use crate::ring::{Ring, DEVICE_TIMEOUT};

use crate::ring::tags;

/// How often a party that cannot sleep on both of its events looks at the other.
const POLL: Duration = Duration::from_micros(200);

/// The most shards a driver starts: more threads than slots or cores buy nothing.
pub const MAX_SHARDS: u32 = 256;

/// A counter to sleep on, and whether its owner sleeps.
#[derive(Debug, Default)]
struct Bell {
    word: AtomicU32,
    sleeping: AtomicU32,
}

impl Bell {
    /// After adding to the list this bell guards: move the counter and wake
    /// the owner if it sleeps.
    fn ring(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) != 0 {
            // Only a bad address makes a wake fail; a reference is never one.
            let _ = futex::wake(&self.word, futex::Flags::PRIVATE, i32::MAX as u32);
        }
    }

    /// Before looking at the list: say that the owner may sleep, and return
    /// the counter to sleep on.
    fn prepare(&self) -> u32 {
        self.sleeping.store(1, Ordering::SeqCst);
        self.word.load(Ordering::SeqCst)
    }

    fn end(&self) {
        self.sleeping.store(0, Ordering::SeqCst);
    }
}

/// Lock, even if another thread panicked while holding the lock: every
/// list here stays consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the coordinator asks of a shard.
#[derive(Debug)]
pub(crate) enum Command {
    /// A read of `len` bytes at `offset` into the slot memory at `buf`
    /// (inside the shard's fixed buffer `fixed`, where registered).
    Read { fd: RawFd, buf: usize, len: u32, offset: u64, fixed: Option<u16>, user_data: u64 },
    /// An NVMe passthrough command (`op`, the command's bytes).
    UringCmd { fd: RawFd, op: u32, cmd: [u8; 72], fixed: Option<u16>, user_data: u64 },
    /// Cancel everything in flight, wait until it ended, and reply.
    Cancel,
}

/// A shard's list of commands and its bell.
#[derive(Debug, Default)]
struct Inbox {
    bell: Bell,
    commands: Mutex<Vec<Command>>,
    /// Set when the shard should cancel what it has and end.
    stop: AtomicU32,
}

/// What every shard sends back: completions, a broken ring, and the bell.
#[derive(Debug, Default)]
struct Outbox {
    bell: Bell,
    completions: Mutex<Vec<(u64, i32)>>,
    /// The first error a shard's ring gave (the shard keeps draining).
    error: Mutex<Option<IngestError>>,
}

/// One shard thread, as the coordinator sees it.
#[derive(Debug)]
struct Worker {
    inbox: Arc<Inbox>,
    /// Replies to `Cancel`.
    cancelled: mpsc::Receiver<Result<(), IngestError>>,
    thread: Option<JoinHandle<()>>,
    /// Commands queued since the last submit.
    queued: Vec<Command>,
}

/// Shards 1 to N-1: rings on threads of their own, executing the driver's
/// reads (see the module docs).
#[derive(Debug)]
pub(crate) struct Shards {
    workers: Vec<Worker>,
    outbox: Arc<Outbox>,
    /// Commands sent or queued whose completion was not reaped yet.
    in_flight: u32,
    taken: Vec<(u64, i32)>,
}

impl Shards {
    /// Start shards 1 to `count - 1` over `slots` (every slot's address and
    /// length, slot 0 first; shard 0 is the caller's), each with its own
    /// ring of its share of the slots,
    /// registered as fixed buffers when `register`. Fails, with every
    /// started thread stopped, when a ring cannot be set up or registered
    /// (as [`Ring::new`] and [`Ring::register_buffers`]).
    ///
    /// # Safety
    /// Every slot must stay valid for writes until the returned `Shards`
    /// is dropped or [`Shards::cancel_all`] failed (then never freed).
    pub(crate) unsafe fn start(slots: &[(*mut u8, usize)], count: u32, register: bool, passthrough: bool) -> Result<Self, IngestError> {
        let outbox = Arc::new(Outbox::default());
        let mut shards = Shards { workers: Vec::new(), outbox: outbox.clone(), in_flight: 0, taken: Vec::new() };
        let mut ready = Vec::new();
        for k in 1..count {
            // As addresses: raw pointers do not cross threads.
            let mine: Vec<(usize, usize)> = slots.iter().skip(k as usize).step_by(count as usize).map(|&(p, len)| (p as usize, len)).collect();
            let inbox = Arc::new(Inbox::default());
            let (ready_tx, ready_rx) = mpsc::channel();
            let (cancel_tx, cancel_rx) = mpsc::channel();
            let (inbox2, outbox2) = (inbox.clone(), outbox.clone());
            let thread = std::thread::Builder::new()
                .name(format!("gpuring-shard-{k}"))
                .spawn(move || shard_main(&mine, register, passthrough, &inbox2, &outbox2, &ready_tx, &cancel_tx))
                .map_err(|e| IngestError::Ring { op: "starting a shard thread", errno: Errno::from_io_error(&e).unwrap_or(Errno::AGAIN) })?;
            shards.workers.push(Worker { inbox, cancelled: cancel_rx, thread: Some(thread), queued: Vec::new() });
            ready.push(ready_rx);
        }
        for rx in ready {
            // A thread that ended without a word panicked setting up its ring.
            let setup = rx.recv().unwrap_or(Err(IngestError::Ring { op: "shard setup (the thread ended)", errno: Errno::IO }));
            setup?; // dropping `shards` stops the others
        }
        Ok(shards)
    }

    /// Reads sent or queued whose completion was not reaped.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Queue `command` (a read or an NVMe command) for `shard` (1 or more).
    ///
    /// # Safety
    /// As [`Ring::push_read_fixed`] or [`Ring::push_uring_cmd`]: the
    /// command's memory lies inside the slot (inside that shard's fixed
    /// buffer, if it names one) and stays valid and untouched until its
    /// completion is reaped or `cancel_all` returned; its descriptor stays
    /// open as long.
    pub(crate) unsafe fn push(&mut self, shard: u32, command: Command) {
        self.workers[shard as usize - 1].queued.push(command);
        self.in_flight += 1;
    }

    /// The coordinator's bell, which every shard rings after sending
    /// completions back: to wait on while `has_completions` is false.
    pub(crate) fn bell(&self) -> &AtomicU32 {
        &self.outbox.bell.word
    }

    /// Before looking with [`Shards::has_completions`] and sleeping on the
    /// bell: the bell's value to sleep on. Shards wake the bell while the
    /// coordinator sleeps, until [`Shards::end_sleep`].
    pub(crate) fn prepare_sleep(&self) -> u32 {
        self.outbox.bell.prepare()
    }

    /// The coordinator no longer sleeps on the bell.
    pub(crate) fn end_sleep(&self) {
        self.outbox.bell.end();
    }

    /// Whether completions wait to be reaped.
    pub(crate) fn has_completions(&self) -> bool {
        !lock(&self.outbox.completions).is_empty()
    }

    /// Hand queued commands to their shards; fails with the first error a
    /// shard's ring gave.
    pub(crate) fn submit(&mut self) -> Result<(), IngestError> {
        for w in &mut self.workers {
            if w.queued.is_empty() {
                continue;
            }
            lock(&w.inbox.commands).append(&mut w.queued);
            w.inbox.bell.ring();
        }
        match lock(&self.outbox.error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Take every completion the shards sent back, passing each request's
    /// `user_data` and `res` to `f`.
    pub(crate) fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        let mut taken = std::mem::take(&mut self.taken);
        std::mem::swap(&mut *lock(&self.outbox.completions), &mut taken);
        self.in_flight -= taken.len() as u32;
        for (user_data, res) in taken.drain(..) {
            f(user_data, res);
        }
        self.taken = taken;
    }

    /// Cancel everything every shard has in flight and wait until each
    /// ring has drained, discarding the completions (as
    /// [`Ring::cancel_all`], at most [`DEVICE_TIMEOUT`] per shard, in
    /// parallel). Commands not yet handed over are dropped.
    pub(crate) fn cancel_all(&mut self) -> Result<(), IngestError> {
        for w in &mut self.workers {
            w.queued.clear();
            lock(&w.inbox.commands).push(Command::Cancel);
            w.inbox.bell.ring();
        }
        let mut result = Ok(());
        for w in &self.workers {
            let reply = w.cancelled.recv_timeout(DEVICE_TIMEOUT + Duration::from_secs(5)).unwrap_or_else(|_| {
                let what = "a shard to cancel its reads".to_owned();
                Err(IngestError::DeviceStalled { what, seconds: DEVICE_TIMEOUT.as_secs() })
            });
            if let Err(e) = reply {
                result = result.and(Err(e));
            }
        }
        lock(&self.outbox.completions).clear();
        lock(&self.outbox.error).take();
        self.in_flight = 0;
        result
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        // Each shard cancels and drains its ring before its thread ends.
        for w in &self.workers {
            w.inbox.stop.store(1, Ordering::SeqCst);
            w.inbox.bell.ring();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A shard thread: set up its ring, then execute commands until told to stop.
fn shard_main(
    mine: &[(usize, usize)],
    register: bool,
    passthrough: bool,
    inbox: &Inbox,
    outbox: &Outbox,
    ready: &mpsc::Sender<Result<(), IngestError>>,
    cancelled: &mpsc::Sender<Result<(), IngestError>>,
) {
    // Its slots, its bell wait and a cancel.
    let mut ring = match Ring::with_passthrough(mine.len() as u32 + 2, passthrough) {
        Ok(ring) => ring,
        Err(e) => return drop(ready.send(Err(e))),
    };
    if register {
        let buffers: Vec<(*mut u8, usize)> = mine.iter().map(|&(p, len)| (p as *mut u8, len)).collect();
        // SAFETY: the coordinator keeps the slots valid until this thread
        // has ended (`Shards::drop` joins it) or leaks them.
        if let Err(e) = unsafe { ring.register_buffers(&buffers) } {
            return drop(ready.send(Err(e)));
        }
    }
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut shard = Shard { ring, armed: false, futex_wait: None, commands: Vec::new(), done: Vec::new() };
    shard.run(inbox, outbox, cancelled);
}

/// A shard thread's own state.
struct Shard {
    ring: Ring,
    /// A wait on the inbox's bell is in the ring (and its sleeping flag set).
    armed: bool,
    /// Whether the ring can wait on a futex, once known.
    futex_wait: Option<bool>,
    commands: Vec<Command>,
    done: Vec<(u64, i32)>,
}

impl Shard {
    fn run(&mut self, inbox: &Inbox, outbox: &Outbox, cancelled: &mpsc::Sender<Result<(), IngestError>>) {
        loop {
            let stop = inbox.stop.load(Ordering::SeqCst) != 0;
            std::mem::swap(&mut *lock(&inbox.commands), &mut self.commands);
            let mut moved = !self.commands.is_empty();
            let mut commands = std::mem::take(&mut self.commands);
            for command in commands.drain(..) {
                if let Err(e) = self.execute(command, inbox, cancelled) {
                    lock(&outbox.error).get_or_insert(e);
                    outbox.bell.ring();
                }
            }
            self.commands = commands;
            if stop {
                // Nothing may outlive the thread: the coordinator frees the
                // slots after joining it (and leaks them if it never returns).
                let _ = self.ring.cancel_all();
                return;
            }
            if let Err(e) = self.ring.submit() {
                lock(&outbox.error).get_or_insert(e);
                outbox.bell.ring();
            }
            moved |= self.reap(inbox, outbox);
            if !moved {
                self.idle(inbox);
            }
        }
    }

    fn execute(&mut self, command: Command, inbox: &Inbox, cancelled: &mpsc::Sender<Result<(), IngestError>>) -> Result<(), IngestError> {
        match command {
            Command::Read { fd, buf, len, offset, fixed, user_data } => {
                // SAFETY: the descriptor is open and the memory valid until
                // the coordinator takes this read's completion or a cancel
                // returned (see the module docs).
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                // SAFETY: as above; `fixed` is this shard's buffer holding `buf`.
                unsafe {
                    match fixed {
                        Some(index) => self.ring.push_read_fixed(fd, buf as *mut u8, len, offset, index, user_data),
                        None => self.ring.push_read(fd, buf as *mut u8, len, offset, user_data),
                    }
                }
            }
            Command::UringCmd { fd, op, cmd, fixed, user_data } => {
                // SAFETY: as for a read.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                // SAFETY: as for a read; the command's address lies in the slot.
                unsafe { self.ring.push_uring_cmd(fd, op, &cmd, fixed, user_data) }
            }
            Command::Cancel => {
                let result = self.ring.cancel_all();
                if self.armed {
                    // The bell wait was cancelled with the rest.
                    self.armed = false;
                    inbox.bell.end();
                }
                self.done.clear();
                let _ = cancelled.send(result);
                Ok(())
            }
        }
    }

    /// Send back what completed; whether anything did.
    fn reap(&mut self, inbox: &Inbox, outbox: &Outbox) -> bool {
        let (done, armed, futex_wait) = (&mut self.done, &mut self.armed, &mut self.futex_wait);
        let mut bell = false;
        self.ring.reap(|user_data, res| {
            if user_data == tags::BELL {
                *armed = false;
                inbox.bell.end();
                if [Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS].iter().any(|e| res == -e.raw_os_error()) {
                    *futex_wait = Some(false);
                } else if futex_wait.is_none() {
                    *futex_wait = Some(true);
                }
                bell = true;
            } else {
                done.push((user_data, res));
            }
        });
        if self.done.is_empty() {
            return bell;
        }
        lock(&outbox.completions).append(&mut self.done);
        outbox.bell.ring();
        true
    }

    /// Nothing moved: sleep until a read completes or a command comes.
    fn idle(&mut self, inbox: &Inbox) {
        if self.ring.in_flight() == 0 {
            let seen = inbox.bell.prepare();
            if lock(&inbox.commands).is_empty() && inbox.stop.load(Ordering::SeqCst) == 0 {
                let ts = futex::Timespec { tv_sec: 1, tv_nsec: 0 };
                let _ = futex::wait(&inbox.bell.word, futex::Flags::PRIVATE, seen, Some(&ts));
            }
            inbox.bell.end();
            return;
        }
        if !self.armed && self.futex_wait != Some(false) {
            let seen = inbox.bell.prepare();
            if !lock(&inbox.commands).is_empty() || inbox.stop.load(Ordering::SeqCst) != 0 {
                inbox.bell.end();
                return;
            }
            // SAFETY: the bell lives in the inbox, which this thread holds
            // (an `Arc`) until after its ring is dropped.
            match unsafe { self.ring.push_futex_wait(&inbox.bell.word, seen, tags::BELL) } {
                Ok(()) => self.armed = true,
                Err(_) => inbox.bell.end(),
            }
        }
        let timeout = if self.armed { DEVICE_TIMEOUT } else { POLL };
        // A failed wait shows again at the next submit, which reports it.
        let _ = self.ring.wait(Some(timeout));
    }
}
