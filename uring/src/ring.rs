//! The io_uring instance: fixed-buffer registration, submission, completion.
//!
//! [`Ring`] owns one `io_uring::IoUring` and counts the requests it has in
//! flight. Where the kernel allows, the ring has 128-byte SQEs and 32-byte
//! CQEs (`IORING_SETUP_SQE128 | IORING_SETUP_CQE32`, Linux 5.19), which NVMe
//! passthrough (`IORING_OP_URING_CMD`) needs; plain reads travel in the first
//! half of such an SQE. Elsewhere, or when asked for a plain ring
//! ([`Ring::with_passthrough`]), it has 64-byte SQEs and refuses
//! passthrough with a clear error. Dropping it with requests in flight first cancels them all
//! (`IORING_OP_ASYNC_CANCEL` with `IORING_ASYNC_CANCEL_ANY`) and then waits
//! until the kernel has posted a completion for every one, so no request
//! outlives the ring. Even if that wait fails, the pages of a registered
//! buffer stay pinned by the kernel until its last request completes, so a
//! late write lands in pages that are not handed out again meanwhile.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::io::Errno;

use crate::error::IngestError;

/// Every `user_data` tag gpuring's own requests use, in one place: reads
/// are tagged with small numbers (their op or slot), these from
/// [`tags::INTERNAL`] up.
pub(crate) mod tags {
    /// The ring's own cancel requests.
    pub const CANCEL: u64 = u64::MAX;
    /// The driver's fixed-buffer probe read.
    pub const PROBE: u64 = u64::MAX - 1;
    /// The driver's wait for a release, queued in its ring.
    pub const RELEASE: u64 = u64::MAX - 2;
    /// A wait on a bell (a shard's own, or the coordinator's).
    pub const BELL: u64 = u64::MAX - 3;
    /// From here up, a ring's own requests (cancels, probes, waits), not
    /// reads: injected faults count and hit reads only.
    pub const INTERNAL: u64 = u64::MAX - 15;
}

/// How long to wait for a request that does not complete before giving up
/// on it (a device that never answers): above Linux's NVMe command timeout
/// (30 s by default) plus a controller reset, so the kernel's own abort
/// normally ends such a request first.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest single registered buffer the kernel accepts (1 GiB).
pub const MAX_BUFFER_BYTES: usize = 1 << 30;
/// The most buffers one ring can register (`IORING_MAX_REG_BUFFERS`).
pub const MAX_BUFFERS: u32 = 1 << 14;

fn errno(e: std::io::Error) -> Errno {
    errno_of(&e)
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_io_error(e).unwrap_or(Errno::IO)
}

/// The two shapes of ring: 64-byte SQEs and 16-byte CQEs, or 128 and 32.
enum Uring {
    Plain(IoUring<squeue::Entry, cqueue::Entry>),
    Big(IoUring<squeue::Entry128, cqueue::Entry32>),
}

impl Uring {
    fn submitter(&self) -> io_uring::Submitter<'_> {
        match self {
            Self::Plain(u) => u.submitter(),
            Self::Big(u) => u.submitter(),
        }
    }

    fn fd(&self) -> i32 {
        match self {
            Self::Plain(u) => u.as_raw_fd(),
            Self::Big(u) => u.as_raw_fd(),
        }
    }

    fn queued(&mut self) -> u32 {
        match self {
            Self::Plain(u) => u.submission().len() as u32,
            Self::Big(u) => u.submission().len() as u32,
        }
    }

    /// # Safety
    /// As `SubmissionQueue::push`: what the entry points to stays valid.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller's promise covers the entry's buffers.
        unsafe {
            match self {
                Self::Plain(u) => u.submission().push(entry).is_ok(),
                Self::Big(u) => u.submission().push(&entry.clone().into()).is_ok(),
            }
        }
    }

    fn completions(&mut self, mut f: impl FnMut(u64, i32)) {
        match self {
            Self::Plain(u) => u.completion().for_each(|c| f(c.user_data(), c.result())),
            Self::Big(u) => u.completion().for_each(|c| f(c.user_data(), c.result())),
        }
    }
}

/// An io_uring instance and what it has in flight.
pub struct Ring {
    uring: Uring,
    /// The depth asked for in [`Ring::new`] (sizes the ring's memory).
    depth: u32,
    in_flight: u32,
    queued: u32,
    /// Completions taken off a full completion queue so that the kernel
    /// could post more, in order, handed out first by [`Ring::reap`].
    set_aside: std::collections::VecDeque<(u64, i32)>,
    #[cfg(feature = "fault-injection")]
    faults: crate::fault::Faults,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("fd", &self.uring.fd()).field("big_entries", &self.big_entries()).field("in_flight", &self.in_flight).finish()
    }
}

impl Ring {
    /// A ring able to hold `depth` requests in flight (plus one cancel), with
    /// 128-byte SQEs and 32-byte CQEs where the kernel supports them.
    pub fn new(depth: u32) -> Result<Self, IngestError> {
        Self::with_passthrough(depth, true)
    }

    /// As [`Ring::new`]; with `passthrough` false, plain 64-byte SQEs and
    /// 16-byte CQEs, which cannot carry NVMe passthrough. They cost no
    /// measurable time less here: `gpuring ingest --no-verify`, 8
    /// interleaved runs each, cached 1 GiB median 7.30 (plain) against 7.21
    /// GiB/s, 2048 files of 64 KiB 68.3k against 68.9k files/s.
    pub fn with_passthrough(depth: u32, passthrough: bool) -> Result<Self, IngestError> {
        if depth > MAX_BUFFERS {
            return Err(IngestError::RingGeometry {
                what: format!(
                    "a ring of {depth} requests in flight exceeds the {MAX_BUFFERS} slots io_uring can register. Fix: use at most {MAX_BUFFERS} slots"
                ),
            });
        }
        // At most 2^14 + 1: the power of two cannot overflow.
        let entries = (depth.max(1) + 1).next_power_of_two();
        // COOP_TASKRUN (5.19+) avoids interrupting this thread to run
        // completions. SQE128/CQE32 arrived in the same release; a kernel
        // without them gets a plain ring, and one without COOP_TASKRUN a
        // ring without that flag.
        let big = match passthrough {
            true => IoUring::<squeue::Entry128, cqueue::Entry32>::builder().setup_coop_taskrun().build(entries),
            false => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
        };
        let uring = big
            .map(Uring::Big)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(entries).map(Uring::Plain))
            .or_else(|_| IoUring::new(entries).map(Uring::Plain))
            .map_err(|e| IngestError::Ring { op: "setup", errno: errno(e) })?;
        Ok(Self {
            uring,
            depth,
            in_flight: 0,
            queued: 0,
            set_aside: std::collections::VecDeque::new(),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
    }

    /// Whether the ring has 128-byte SQEs and 32-byte CQEs (NVMe passthrough).
    pub fn big_entries(&self) -> bool {
        matches!(self.uring, Uring::Big(_))
    }

    /// Requests submitted (or queued) whose completion has not been reaped.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Register `buffers` (address, length) as fixed buffers 0, 1, ...
    ///
    /// # Safety
    /// Each buffer must stay valid for writes until the ring is dropped.
    pub unsafe fn register_buffers(&mut self, buffers: &[(*mut u8, usize)]) -> Result<(), IngestError> {
        if buffers.len() > MAX_BUFFERS as usize {
            return Err(IngestError::RingGeometry {
                what: format!("{} slots exceed io_uring's {MAX_BUFFERS} registered buffers. Fix: use at most {MAX_BUFFERS} slots", buffers.len()),
            });
        }
        if let Some(&(_, len)) = buffers.iter().find(|(_, len)| *len > MAX_BUFFER_BYTES) {
            return Err(IngestError::RingGeometry {
                what: format!("a slot of {len} bytes exceeds io_uring's 1 GiB limit per registered buffer. Fix: use slots of at most 1 GiB"),
            });
        }
        let iovecs: Vec<libc::iovec> = buffers.iter().map(|&(ptr, len)| libc::iovec { iov_base: ptr.cast(), iov_len: len }).collect();
        let submitter = self.uring.submitter();
        // A ring of this user that just went away (another process's) may
        // still be charged for a moment (the kernel tears rings down in a
        // worker): when the limit refuses, try again a few times over about
        // 200 ms before saying so.
        let mut retries = 0;
        let registered = loop {
            // SAFETY: the caller keeps every buffer valid until the ring is dropped.
            match unsafe { submitter.register_buffers(&iovecs) } {
                Err(e) if retries < 8 && matches!(errno_of(&e), Errno::NOMEM | Errno::PERM) && crate::memlock::budget().is_some() => {
                    retries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => break other,
            }
        };
        registered.map_err(|e| {
            let requested = buffers.iter().map(|b| b.1 as u64).sum();
            match errno(e) {
                Errno::NOMEM | Errno::PERM => IngestError::MemlockLimit {
                    slots: buffers.len() as u32,
                    slot_size: buffers.iter().map(|b| b.1).max().unwrap_or(0),
                    requested,
                    ring: crate::memlock::ring_bytes(self.depth),
                    limit: rustix::process::getrlimit(rustix::process::Resource::Memlock).current,
                },
                errno => IngestError::Ring { op: "buffer registration", errno },
            }
        })
    }

    /// Queue a `READ_FIXED` of `len` bytes at file `offset` into `buf`,
    /// which lies inside fixed buffer `buf_index`.
    ///
    /// # Safety
    /// `buf..buf+len` must lie inside registered buffer `buf_index` and stay
    /// valid, and untouched by anyone else, until this request's completion
    /// is reaped or the ring is dropped. `fd` must stay open until then.
    pub unsafe fn push_read_fixed(
        &mut self,
        fd: BorrowedFd<'_>,
        buf: *mut u8,
        len: u32,
        offset: u64,
        buf_index: u16,
        user_data: u64,
    ) -> Result<(), IngestError> {
        let entry = opcode::ReadFixed::new(types::Fd(fd.as_raw_fd()), buf, len, buf_index).offset(offset).build().user_data(user_data);
        // SAFETY: the caller keeps the buffer and the fd valid until completion.
        unsafe { self.push(&entry) }
    }

    /// Queue a plain `READ` of `len` bytes at file `offset` into `buf`, for
    /// memory that cannot be registered (a device's peer memory).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid, and untouched by anyone else, until
    /// this request's completion is reaped or the ring is dropped. `fd` must
    /// stay open until then.
    pub unsafe fn push_read(&mut self, fd: BorrowedFd<'_>, buf: *mut u8, len: u32, offset: u64, user_data: u64) -> Result<(), IngestError> {
        let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), buf, len).offset(offset).build().user_data(user_data);
        // SAFETY: the caller keeps the buffer and the fd valid until completion.
        unsafe { self.push(&entry) }
    }

    /// Queue an NVMe passthrough command (`IORING_OP_URING_CMD` with
    /// `cmd_op`, the 72-byte `struct nvme_uring_cmd` in `cmd`) on the
    /// namespace's character device `fd`. With `buf_index`, the command's data
    /// address lies in that registered buffer (`IORING_URING_CMD_FIXED`).
    ///
    /// # Safety
    /// The command's data buffer must stay valid, and untouched by anyone
    /// else, until this request's completion is reaped or the ring is
    /// dropped; with `buf_index` it must lie inside that registered buffer.
    /// `fd` must stay open until then.
    pub unsafe fn push_uring_cmd(
        &mut self,
        fd: BorrowedFd<'_>,
        cmd_op: u32,
        cmd: &[u8; 72],
        buf_index: Option<u16>,
        user_data: u64,
    ) -> Result<(), IngestError> {
        let mut bytes = [0u8; 80];
        bytes[..72].copy_from_slice(cmd);
        let entry = opcode::UringCmd80::new(types::Fd(fd.as_raw_fd()), cmd_op).cmd(bytes).buf_index(buf_index).build().user_data(user_data);
        loop {
            let Uring::Big(u) = &mut self.uring else {
                let what = "this kernel's io_uring has no 128-byte SQEs, which NVMe passthrough needs. Fix: use Linux 5.19 or later".to_owned();
                return Err(IngestError::Unsupported { what });
            };
            // SAFETY: the caller's promise covers the command's buffer and fd.
            if unsafe { u.submission().push(&entry) }.is_ok() {
                self.in_flight += 1;
                self.queued += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Queue a wait (`IORING_OP_FUTEX_WAIT`, Linux 6.7) on the 32-bit futex
    /// `word` while it holds `seen`: it completes with 0 when woken, with
    /// `-EAGAIN` if the word no longer holds `seen`, and with `-EINVAL` (or
    /// `-EOPNOTSUPP`) on kernels without the operation.
    ///
    /// # Safety
    /// `word` must stay valid until this request's completion is reaped or
    /// the ring is dropped.
    pub unsafe fn push_futex_wait(&mut self, word: &std::sync::atomic::AtomicU32, seen: u32, user_data: u64) -> Result<(), IngestError> {
        /// `FUTEX2_SIZE_U32 | FUTEX2_PRIVATE` (linux/futex.h).
        const FUTEX2_U32_PRIVATE: u32 = 0x02 | 128;
        let entry = opcode::FutexWait::new(word.as_ptr(), seen as u64, u32::MAX as u64, FUTEX2_U32_PRIVATE).build().user_data(user_data);
        // SAFETY: the caller keeps the word valid until completion.
        unsafe { self.push(&entry) }
    }

    /// Queue any entry, submitting first if the queue is full.
    ///
    /// # Safety
    /// Whatever `entry` points to must stay valid until its completion is reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), IngestError> {
        loop {
            // SAFETY: the caller's promise covers the entry's buffers.
            if unsafe { self.uring.push(entry) } {
                self.in_flight += 1;
                self.queued += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Submit queued requests without waiting.
    pub fn submit(&mut self) -> Result<(), IngestError> {
        if self.queued == 0 {
            return Ok(());
        }
        self.enter(0, None)
    }

    /// Submit queued requests and wait until at least one completion is
    /// ready or `timeout` passes, without spinning.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), IngestError> {
        self.enter(1, timeout)
    }

    /// Wait until at least `want` completions are ready.
    pub fn wait_for(&mut self, want: u32) -> Result<(), IngestError> {
        self.enter(want, None)
    }

    /// Submit, and wait for a completion until `deadline`: `Ok(false)` once
    /// the deadline has passed (nothing is waited for then). A completion
    /// may or may not be ready after `Ok(true)`; reap to see.
    pub fn wait_until(&mut self, deadline: std::time::Instant) -> Result<bool, IngestError> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            self.submit()?;
            return Ok(false);
        }
        self.wait(Some(left))?;
        Ok(true)
    }

    fn enter(&mut self, want: u32, timeout: Option<Duration>) -> Result<(), IngestError> {
        // Completions set aside count as ready: never wait for one of those.
        let want = want.saturating_sub(self.set_aside.len().try_into().unwrap_or(u32::MAX));
        loop {
            let result = match timeout {
                Some(t) => {
                    let ts = types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.uring.submitter().submit_with_args(want as usize, &args)
                }
                None => self.uring.submitter().submit_and_wait(want as usize),
            };
            match result {
                Ok(_) => {
                    self.queued = self.uring.queued();
                    return Ok(());
                }
                Err(e) => match errno(e) {
                    Errno::TIME => {
                        self.queued = self.uring.queued();
                        return Ok(());
                    }
                    Errno::INTR => continue,
                    // The completion queue is full (kernels that refuse to
                    // submit while completions overflow): move them aside,
                    // which frees it, and try again. A full queue with
                    // nothing to move is the kernel short of memory: say so
                    // rather than retry forever.
                    Errno::BUSY | Errno::AGAIN => {
                        if self.take_completions() == 0 {
                            return Err(IngestError::Ring { op: "submit (completion queue full)", errno: Errno::BUSY });
                        }
                    }
                    errno => return Err(IngestError::Ring { op: "submit", errno }),
                },
            }
        }
    }

    /// Take every ready completion without blocking, passing each request's
    /// `user_data` and `res` to `f`: first those set aside, then those in
    /// the completion queue, straight from it. Returns how many there were.
    pub fn reap(&mut self, mut f: impl FnMut(u64, i32)) -> u32 {
        let (mut n, mut all) = (0, 0);
        let mut hand = |user_data: u64, res: i32| {
            all += 1;
            if user_data != tags::CANCEL {
                n += 1;
                f(user_data, res);
            }
        };
        for (user_data, res) in self.set_aside.drain(..) {
            hand(user_data, res);
        }
        Self::each_completion(
            &mut self.uring,
            #[cfg(feature = "fault-injection")]
            &mut self.faults,
            hand,
        );
        self.in_flight -= all;
        n
    }

    /// Move every completion the kernel posted into `set_aside`, so that it
    /// can post more (a full completion queue); returns how many.
    fn take_completions(&mut self) -> usize {
        let before = self.set_aside.len();
        let set_aside = &mut self.set_aside;
        Self::each_completion(
            &mut self.uring,
            #[cfg(feature = "fault-injection")]
            &mut self.faults,
            |user_data, res| set_aside.push_back((user_data, res)),
        );
        self.set_aside.len() - before
    }

    /// Take every completion in the queue, through the injected faults with
    /// that feature (which may hold one back or change its result).
    fn each_completion(uring: &mut Uring, #[cfg(feature = "fault-injection")] faults: &mut crate::fault::Faults, mut f: impl FnMut(u64, i32)) {
        uring.completions(|user_data, res| {
            #[cfg(feature = "fault-injection")]
            let Some(res) = (if user_data >= tags::INTERNAL { Some(res) } else { faults.apply(user_data, res) }) else {
                return;
            };
            f(user_data, res);
        });
    }

    /// Inject `faults` into the completions to come (see [`crate::fault`]).
    #[cfg(feature = "fault-injection")]
    pub fn inject(&mut self, faults: &[crate::fault::Fault]) {
        self.faults.arm(faults);
    }

    /// Cancel everything in flight and wait, at most [`DEVICE_TIMEOUT`], for
    /// all of it to complete, discarding the completions. Reads of files
    /// are cancelled or finish at once; an NVMe passthrough command cannot
    /// be cancelled, so it ends when the device answers or the kernel's NVMe
    /// driver aborts it (its io_timeout, 30 s by default). After a timeout
    /// the requests are still in flight: the caller must not free their
    /// memory (the driver leaks it).
    pub fn cancel_all(&mut self) -> Result<(), IngestError> {
        if self.in_flight == 0 {
            return Ok(());
        }
        self.submit()?;
        // Completions an injected stall held back: their requests ended.
        #[cfg(feature = "fault-injection")]
        if self.faults.held() > 0 {
            self.set_aside.extend(self.faults.release_held());
        }
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(tags::CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.push(&cancel)? };
        let deadline = std::time::Instant::now() + DEVICE_TIMEOUT;
        while self.in_flight > 0 {
            if !self.wait_until(deadline)? {
                let what = format!("cancelling {} request(s) in flight", self.in_flight);
                return Err(IngestError::DeviceStalled { what, seconds: DEVICE_TIMEOUT.as_secs() });
            }
            self.reap(|_, _| {});
        }
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // If waiting fails, the registered pages stay pinned by the kernel
        // until each request ends (see the module docs); nothing more to do.
        if self.cancel_all().is_ok() && self.in_flight == 0 {
            // Nothing in flight: unregister now, which gives the pages'
            // RLIMIT_MEMLOCK charge back at once. Left to the ring's teardown,
            // which the kernel defers to a worker, the charge outlives the
            // process for a moment, and a ring the same user sets up right
            // after would be refused (seen: two ingests 1 ms apart as
            // `nobody`). No buffers registered is an error to ignore.
            let _ = self.uring.submitter().unregister_buffers();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The futex wait in the ring, which the driver uses to wait for a read
    /// and a release at once: woken by a plain `futex` wake from another
    /// thread, and answered at once when the word has already moved.
    #[test]
    fn a_futex_wait_in_the_ring_ends_on_a_wake_or_a_moved_word() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let word = std::sync::Arc::new(AtomicU32::new(7));
        let mut ring = Ring::new(4).unwrap();
        // The word has moved on: the wait ends at once with EAGAIN.
        // SAFETY: `word` outlives the ring's requests (reaped below).
        unsafe { ring.push_futex_wait(&word, 6, 1).unwrap() };
        ring.wait_for(1).unwrap();
        let mut got = Vec::new();
        ring.reap(|user_data, res| got.push((user_data, res)));
        if got == [(1, -Errno::INVAL.raw_os_error())] || got == [(1, -Errno::OPNOTSUPP.raw_os_error())] {
            eprintln!("skipped: this kernel has no IORING_OP_FUTEX_WAIT (Linux 6.7); the driver polls for releases instead");
            return;
        }
        assert_eq!(got, [(1, -Errno::AGAIN.raw_os_error())]);
        // The word holds what the wait expects: it ends when woken.
        // SAFETY: as above.
        unsafe { ring.push_futex_wait(&word, 7, 2).unwrap() };
        ring.submit().unwrap();
        let waker = {
            let word = word.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                word.store(8, Ordering::Release);
                let _ = rustix::thread::futex::wake(&word, rustix::thread::futex::Flags::PRIVATE, 1);
            })
        };
        let started = std::time::Instant::now();
        ring.wait_for(1).unwrap();
        got.clear();
        ring.reap(|user_data, res| got.push((user_data, res)));
        assert_eq!(got, [(2, 0)], "woken");
        assert!(started.elapsed() >= Duration::from_millis(20), "it waited for the wake");
        waker.join().unwrap();
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn reads_into_a_fixed_buffer() {
        let mut ring = Ring::new(4).unwrap();
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` outlives `ring` (declared before it, dropped after).
        unsafe { ring.register_buffers(&[(buf.as_mut_ptr(), buf.len())]).unwrap() };
        let file = tempfile::tempfile().unwrap();
        rustix::io::pwrite(&file, b"hello, ring", 0).unwrap();
        // SAFETY: `buf` and `file` live until after the completion is reaped.
        unsafe { ring.push_read_fixed(file.as_fd(), buf.as_mut_ptr().add(100), 4096, 7, 0, 42).unwrap() };
        ring.wait_for(1).unwrap();
        let mut got = vec![];
        assert_eq!(ring.reap(|u, r| got.push((u, r))), 1);
        assert_eq!(got, [(42, 4)]);
        assert_eq!(&buf[100..104], b"ring");
        assert_eq!(ring.in_flight(), 0);
        drop(ring);
    }

    #[test]
    fn a_tiny_ring_with_more_in_flight_than_its_completion_queue_holds_neither_hangs_nor_loses_one() {
        // Ring::new(1): 2 SQEs, 4 CQEs. Push 64 reads without reaping: the
        // completion queue fills up long before the last push; the ring
        // must drain it aside, not retry the submit forever.
        const READS: u64 = 64;
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ring = Ring::new(1).unwrap();
            let mut buf = vec![0u8; READS as usize * 8];
            // SAFETY: `buf` outlives `ring` (declared before it, dropped after).
            unsafe { ring.register_buffers(&[(buf.as_mut_ptr(), buf.len())]).unwrap() };
            let file = tempfile::tempfile().unwrap();
            let bytes: Vec<u8> = (0..READS as usize * 8).map(|i| i as u8 ^ 0x5A).collect();
            rustix::io::pwrite(&file, &bytes, 0).unwrap();
            for i in 0..READS {
                // SAFETY: `buf` and `file` live until every completion is reaped below.
                unsafe { ring.push_read_fixed(file.as_fd(), buf.as_mut_ptr().add(i as usize * 8), 8, i * 8, 0, i).unwrap() };
                ring.submit().unwrap();
            }
            let mut got = Vec::new();
            while got.len() < READS as usize {
                ring.wait_for(1).unwrap();
                ring.reap(|u, r| got.push((u, r)));
            }
            assert_eq!(ring.in_flight(), 0);
            got.sort();
            assert_eq!(got, (0..READS).map(|i| (i, 8)).collect::<Vec<_>>(), "every read completed once");
            assert_eq!(buf, bytes);
            done.send(()).unwrap();
        });
        finished.recv_timeout(Duration::from_secs(30)).expect("the ring hung (or the test thread panicked)");
    }

    #[test]
    fn waits_for_a_request_that_never_completes_end_at_their_deadline() {
        // A read of an empty pipe that nobody writes: a device that never answers.
        let (reader, _writer) = rustix::pipe::pipe().unwrap();
        let mut ring = Ring::new(1).unwrap();
        let mut buf = [0u8; 8];
        let read = opcode::Read::new(types::Fd(reader.as_raw_fd()), buf.as_mut_ptr(), 8).build().user_data(1);
        // SAFETY: `buf` and the pipe outlive the ring (declared before it), whose drop cancels the read.
        unsafe { ring.push(&read).unwrap() };
        let start = std::time::Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut waits = 0;
        while ring.wait_until(deadline).unwrap() {
            waits += 1;
            assert_eq!(ring.reap(|_, _| panic!("nothing completes")), 0);
            assert!(waits < 1000, "wait_until must stop at its deadline");
        }
        assert!(start.elapsed() >= Duration::from_millis(100) && start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        assert_eq!(ring.in_flight(), 1);
        // A pipe read can be cancelled: the ring's drop ends it.
        ring.cancel_all().unwrap();
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn oversized_registrations_are_refused_with_a_fix() {
        let mut ring = Ring::new(1).unwrap();
        let many = vec![(std::ptr::null_mut(), 4096); MAX_BUFFERS as usize + 1];
        // SAFETY: refused before anything is registered.
        let err = unsafe { ring.register_buffers(&many) }.unwrap_err();
        assert!(err.to_string().contains("Fix: use at most 16384 slots"), "{err}");
        // SAFETY: as above.
        let err = unsafe { ring.register_buffers(&[(std::ptr::null_mut(), MAX_BUFFER_BYTES + 4096)]) }.unwrap_err();
        assert!(err.to_string().contains("at most 1 GiB"), "{err}");
    }
}
