//! Futex sleeps on io_queue position words (see the sleeping protocol in
//! `gpuring_core::io_queue`).

use std::sync::atomic::AtomicU32;

use gpuring_core::IoQueue;
use std::time::Duration;

use rustix::thread::futex;

/// Sleep on `word` while it holds `seen`, at most `timeout`.
pub(crate) fn sleep_on(word: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = futex::Timespec { tv_sec: timeout.as_secs() as _, tv_nsec: timeout.subsec_nanos() as _ };
    // EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: look again.
    let _ = futex::wait(word, futex::Flags::PRIVATE, seen, Some(&ts));
}

/// The queue's `producer` word, to wait and wake on.
pub(crate) fn producer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only waited and woken on here, never stored to.
    unsafe { q.header().producer_word() }
}

/// The queue's `consumer` word, to wait and wake on.
pub(crate) fn consumer_word<'a>(q: &IoQueue<'a>) -> &'a AtomicU32 {
    // SAFETY: only waited and woken on here, never stored to.
    unsafe { q.header().consumer_word() }
}

/// Wake every sleeper on `word`.
pub(crate) fn wake(word: &AtomicU32) {
    // Only a bad address can make this fail, and a reference is never one.
    let _ = futex::wake(word, futex::Flags::PRIVATE, i32::MAX as u32);
}
