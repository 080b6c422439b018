//! The io_queue: the completion queue GPU code reads.
//!
//! It lives in memory both the host and the consumer (a GPU kernel, a
//! compute shader, or a CPU thread) can see coherently, and it is a
//! single-producer single-consumer ring: the host publishes one entry per
//! completed transfer, the consumer processes entries in order and releases
//! each one, which is what frees the entry's slot for the next read.
//!
//! # Layout
//!
//! All fields are little-endian (the host's order on x86-64 and arm64) and
//! every field is accessed atomically. Positions are `u32` counters that wrap;
//! entry `p` lives at index `p % capacity` (capacity is a power of two).
//!
//! Header, 192 bytes, three 64-byte lines (read-mostly, producer-written,
//! consumer-written):
//!
//! | bytes   | field               | written by | meaning |
//! |---------|---------------------|------------|---------|
//! | 0..4    | `magic`             | init       | `0x51524750` ("PGRQ" in memory) |
//! | 4..8    | `version`           | init       | 1 |
//! | 8..12   | `capacity`          | init       | number of entries, a power of two |
//! | 12..16  | `entry_size`        | init       | 64 |
//! | 16..20  | `closed`            | producer   | 1 once no more entries will be published |
//! | 20..64  | reserved            |            | zero |
//! | 64..68  | `producer`          | producer   | entries published so far (release store) |
//! | 68..72  | `consumer_sleeping` | consumer   | 1 while a host consumer sleeps on `producer` |
//! | 72..128 | reserved            |            | zero |
//! | 128..132| `consumer`          | consumer   | entries released so far (release store) |
//! | 132..136| `producer_sleeping` | producer   | 1 while the host producer sleeps on `consumer` |
//! | 136..140| `consumer_failed`   | consumer   | non-zero once the consumer gave up (it will release nothing more) |
//! | 140..192| reserved            |            | zero |
//!
//! Entry, 64 bytes, starting at byte 192:
//!
//! | bytes  | field             | written by | meaning |
//! |--------|-------------------|------------|---------|
//! | 0..4   | `seq`             | producer   | position + 1, stored last (release): the entry is valid for that position |
//! | 4..8   | `slot`            | producer   | slot index holding the bytes |
//! | 8..12  | `status`          | producer   | 0 success, < 0 an errno, > 0 an NVMe status |
//! | 12..16 | `kind`            | producer   | 0: `offset` is a byte offset in a file; 1: an LBA |
//! | 16..24 | `bytes`           | producer   | valid bytes at the start of the slot |
//! | 24..32 | `offset`          | producer   | where they came from (see `kind`) |
//! | 32..40 | `tag`             | producer   | the caller's tag (gpuring: the source's index) |
//! | 40..48 | `result`          | consumer   | the consumer's checksum of the slot |
//! | 48..52 | `consumer_status` | consumer   | 0 checksummed, 1 skipped (`status` was not 0), 2 rejected (the entry broke the protocol; the consumer failed) |
//! | 52..64 | reserved          |            | zero |
//!
//! # Memory ordering
//!
//! The protocol needs exactly two release/acquire pairs:
//!
//! 1. **Publish.** The producer writes an entry's fields (relaxed), then stores
//!    `seq` and then `producer` with release. A consumer that loads `producer`
//!    (or `seq`) with acquire and sees the new value therefore sees the
//!    entry's fields. It also sees the slot's bytes: they were written by the
//!    kernel's copy or the device's DMA before the kernel posted the CQE, the
//!    host observed that CQE with an acquire load of the CQ tail, and the host's
//!    release store of `producer` comes after that in program order, so the
//!    bytes happen-before the consumer's acquire by transitivity.
//! 2. **Release.** The consumer reads the slot and writes `result` and
//!    `consumer_status` (relaxed), then stores `consumer` with release. The
//!    producer loads `consumer` with acquire before it reads `result` and
//!    before it hands the slot to a new read, so the consumer's reads of the
//!    slot happen-before the kernel or device writes into it again.
//!
//! The producer never reuses an entry, nor its slot, until it has itself
//! taken the release ([`Producer::poll_released`]): free space is measured
//! from what the producer has processed, not from the raw `consumer` value.
//! Publishing a batch writes all entries first and then advances `producer`
//! once, so a batch that only partly fits publishes a prefix and reports
//! how many entries it took; the rest stay with the caller, none is lost or
//! published twice.
//!
//! GPU consumers use system-scope atomics for `producer`, `seq` and
//! `consumer` (CUDA `cuda::atomic_ref<..., thread_scope_system>`, Vulkan
//! `memoryBarrier` with the `Device` scope plus host-coherent memory), since
//! the other party is the CPU.
//!
//! Sleeping: a host party that has nothing to do may futex-wait on the other
//! party's position word. It first sets its `*_sleeping` flag, then issues a
//! SeqCst fence and re-checks the position (and `closed`); the other party,
//! after storing its position, issues a SeqCst fence and wakes the word only
//! if the flag is set. One of the two always sees the other's store, so no
//! wake-up for a moved position is lost; GPU parties never sleep and the
//! host also waits with a timeout, so a party that cannot wake (a GPU) only
//! costs latency. `close` moves no position word: a consumer that decided
//! to sleep just before it can miss its wake and sleeps until its timeout
//! (milliseconds). The loom model at the end of this file checks the
//! publish, release and sleeping steps (`RUSTFLAGS="--cfg loom"`); weakening
//! the release of `producer` or dropping a fence makes it fail.

use core::fmt;
#[cfg(not(loom))]
use core::mem::offset_of;
use core::mem::size_of;
#[cfg(not(loom))]
use core::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
// The model checker's atomics (`RUSTFLAGS="--cfg loom"`, see `loom_model`
// below): they record every access, so loom can explore the interleavings
// and the weak-memory outcomes the orderings allow.
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// `magic`: "PGRQ" when read as little-endian bytes.
pub const MAGIC: u32 = 0x5152_4750;
/// The layout version described in this module.
pub const VERSION: u32 = 1;
/// Size of the header in bytes; entries start here.
pub const HEADER_SIZE: usize = size_of::<QueueHeader>();
/// Size of one entry in bytes.
pub const ENTRY_SIZE: usize = size_of::<QueueEntry>();
/// Required alignment of the queue's memory.
pub const ALIGN: usize = 64;
/// The largest capacity (positions are wrapping `u32`s).
pub const MAX_CAPACITY: u32 = 1 << 31;

/// The queue header. See the module docs for the layout.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct QueueHeader {
    /// [`MAGIC`].
    pub(crate) magic: AtomicU32,
    /// [`VERSION`].
    pub(crate) version: AtomicU32,
    /// Number of entries (a power of two).
    pub(crate) capacity: AtomicU32,
    /// [`ENTRY_SIZE`].
    pub(crate) entry_size: AtomicU32,
    /// 1 once the producer will publish no more entries.
    pub(crate) closed: AtomicU32,
    reserved0: [AtomicU32; 11],
    /// Entries published so far (wrapping).
    pub(crate) producer: AtomicU32,
    /// 1 while a host consumer sleeps waiting for `producer` to move.
    pub(crate) consumer_sleeping: AtomicU32,
    reserved1: [AtomicU32; 14],
    /// Entries released so far (wrapping).
    pub(crate) consumer: AtomicU32,
    /// 1 while the host producer sleeps waiting for `consumer` to move.
    pub(crate) producer_sleeping: AtomicU32,
    /// Non-zero once the consumer gave up; it will release nothing more.
    pub(crate) consumer_failed: AtomicU32,
    reserved2: [AtomicU32; 13],
}

/// One published completion. See the module docs for the layout.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct QueueEntry {
    /// Position + 1 of the publication this entry holds.
    pub(crate) seq: AtomicU32,
    /// Slot index.
    pub(crate) slot: AtomicU32,
    /// 0, a negative errno, or a positive NVMe status.
    pub(crate) status: AtomicI32,
    /// [`EntryKind`] as a number.
    pub(crate) kind: AtomicU32,
    /// Valid bytes in the slot.
    pub(crate) bytes: AtomicU64,
    /// Byte offset or LBA the bytes came from.
    pub(crate) offset: AtomicU64,
    /// The caller's tag.
    pub(crate) tag: AtomicU64,
    /// The consumer's checksum.
    pub(crate) result: AtomicU64,
    /// 0 checksummed, 1 skipped.
    pub(crate) consumer_status: AtomicU32,
    reserved: [AtomicU32; 3],
}

// Loom's atomics carry the model's bookkeeping, so the layout is checked
// only with the real ones.
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<QueueHeader>() == 192);
    assert!(offset_of!(QueueHeader, magic) == 0);
    assert!(offset_of!(QueueHeader, version) == 4);
    assert!(offset_of!(QueueHeader, capacity) == 8);
    assert!(offset_of!(QueueHeader, entry_size) == 12);
    assert!(offset_of!(QueueHeader, closed) == 16);
    assert!(offset_of!(QueueHeader, producer) == 64);
    assert!(offset_of!(QueueHeader, consumer_sleeping) == 68);
    assert!(offset_of!(QueueHeader, consumer) == 128);
    assert!(offset_of!(QueueHeader, producer_sleeping) == 132);
    assert!(offset_of!(QueueHeader, consumer_failed) == 136);
    assert!(size_of::<QueueEntry>() == 64);
    assert!(offset_of!(QueueEntry, seq) == 0);
    assert!(offset_of!(QueueEntry, slot) == 4);
    assert!(offset_of!(QueueEntry, status) == 8);
    assert!(offset_of!(QueueEntry, kind) == 12);
    assert!(offset_of!(QueueEntry, bytes) == 16);
    assert!(offset_of!(QueueEntry, offset) == 24);
    assert!(offset_of!(QueueEntry, tag) == 32);
    assert!(offset_of!(QueueEntry, result) == 40);
    assert!(offset_of!(QueueEntry, consumer_status) == 48);
};

/// Byte offsets of the header's and an entry's fields, for code in other
/// languages: the GPU kernel's and the shader's constants are generated
/// from these, so they cannot drift from the Rust layout.
pub mod offsets {
    use super::{QueueEntry, QueueHeader};
    use core::mem::offset_of;

    /// `magic`.
    pub const HEADER_MAGIC: usize = offset_of!(QueueHeader, magic);
    /// `version`.
    pub const HEADER_VERSION: usize = offset_of!(QueueHeader, version);
    /// `capacity`.
    pub const HEADER_CAPACITY: usize = offset_of!(QueueHeader, capacity);
    /// `entry_size`.
    pub const HEADER_ENTRY_SIZE: usize = offset_of!(QueueHeader, entry_size);
    /// `closed`.
    pub const HEADER_CLOSED: usize = offset_of!(QueueHeader, closed);
    /// `producer`.
    pub const HEADER_PRODUCER: usize = offset_of!(QueueHeader, producer);
    /// `consumer_sleeping`.
    pub const HEADER_CONSUMER_SLEEPING: usize = offset_of!(QueueHeader, consumer_sleeping);
    /// `consumer`.
    pub const HEADER_CONSUMER: usize = offset_of!(QueueHeader, consumer);
    /// `producer_sleeping`.
    pub const HEADER_PRODUCER_SLEEPING: usize = offset_of!(QueueHeader, producer_sleeping);
    /// `consumer_failed`.
    pub const HEADER_CONSUMER_FAILED: usize = offset_of!(QueueHeader, consumer_failed);
    /// `seq`.
    pub const ENTRY_SEQ: usize = offset_of!(QueueEntry, seq);
    /// `slot`.
    pub const ENTRY_SLOT: usize = offset_of!(QueueEntry, slot);
    /// `status`.
    pub const ENTRY_STATUS: usize = offset_of!(QueueEntry, status);
    /// `kind`.
    pub const ENTRY_KIND: usize = offset_of!(QueueEntry, kind);
    /// `bytes`.
    pub const ENTRY_BYTES: usize = offset_of!(QueueEntry, bytes);
    /// `offset`.
    pub const ENTRY_OFFSET: usize = offset_of!(QueueEntry, offset);
    /// `tag`.
    pub const ENTRY_TAG: usize = offset_of!(QueueEntry, tag);
    /// `result`.
    pub const ENTRY_RESULT: usize = offset_of!(QueueEntry, result);
    /// `consumer_status`.
    pub const ENTRY_CONSUMER_STATUS: usize = offset_of!(QueueEntry, consumer_status);
}

impl QueueHeader {
    /// Entries published so far (acquire: the entries below it are whole).
    pub fn producer(&self) -> u32 {
        self.producer.load(Ordering::Acquire)
    }

    /// Entries released so far (acquire: their results are there).
    pub fn consumer(&self) -> u32 {
        self.consumer.load(Ordering::Acquire)
    }

    /// The `producer` word itself, for a futex wait or wake on it.
    ///
    /// # Safety
    /// Never store to it: only the queue's [`Producer`] moves it.
    pub unsafe fn producer_word(&self) -> &AtomicU32 {
        &self.producer
    }

    /// The `consumer` word itself, for a futex wait or wake on it.
    ///
    /// # Safety
    /// Never store to it: only the queue's [`Consumer`] (or the device
    /// code it hands batches to) moves it.
    pub unsafe fn consumer_word(&self) -> &AtomicU32 {
        &self.consumer
    }
}

impl QueueEntry {
    /// Position + 1 of the publication this entry holds (acquire).
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }

    /// The completion it holds. Relaxed loads: read it only after an
    /// acquire of `producer` past its position.
    pub fn completion(&self) -> Completion {
        read_completion(self)
    }

    /// Slot index (relaxed; see [`QueueEntry::completion`]).
    pub fn slot(&self) -> u32 {
        self.slot.load(Ordering::Relaxed)
    }

    /// 0, a negative errno or a positive NVMe status (relaxed).
    pub fn status(&self) -> i32 {
        self.status.load(Ordering::Relaxed)
    }

    /// Valid bytes in the slot (relaxed).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The consumer's checksum (relaxed: read it after an acquire of
    /// `consumer` past its position).
    pub fn result(&self) -> u64 {
        self.result.load(Ordering::Relaxed)
    }

    /// [`CONSUMED`], [`SKIPPED`] or [`REJECTED`] (relaxed, as `result`).
    pub fn consumer_status(&self) -> u32 {
        self.consumer_status.load(Ordering::Relaxed)
    }
}

/// What an entry's `offset` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum EntryKind {
    /// A byte offset in a file.
    File = 0,
    /// A logical block address on an NVMe namespace.
    Lba = 1,
}

/// `consumer_status`: the consumer checksummed the slot.
pub const CONSUMED: u32 = 0;
/// `consumer_status`: the entry carried an error status, so there was nothing to checksum.
pub const SKIPPED: u32 = 1;
/// `consumer_status`: the entry broke the protocol (wrong `seq`, slot out of
/// range, more bytes than a slot). A consumer that writes this also sets
/// `consumer_failed` and releases nothing more.
pub const REJECTED: u32 = 2;

/// `consumer_failed`: the consumer rejected an entry (marked `REJECTED`).
/// Any non-zero code fails the queue; gpuring's consumers store these two.
pub const FAILED_REJECTED: u32 = 0x4752_0001;
/// `consumer_failed`: a batch did not start at the queue's `consumer`.
pub const FAILED_OUT_OF_STEP: u32 = 0x4752_0002;

/// A completion to publish (the producer-written fields of an entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Slot index holding the bytes.
    pub slot: u32,
    /// 0, a negative errno, or a positive NVMe status.
    pub status: i32,
    /// What `offset` means.
    pub kind: EntryKind,
    /// Valid bytes at the start of the slot.
    pub bytes: u64,
    /// Byte offset or LBA.
    pub offset: u64,
    /// The caller's tag.
    pub tag: u64,
}

/// An entry the consumer has released, as the producer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The position it was published at.
    pub position: u32,
    /// What was published.
    pub completion: Completion,
    /// The consumer's checksum.
    pub result: u64,
    /// [`CONSUMED`] or [`SKIPPED`].
    pub consumer_status: u32,
}

/// A queue could not be set up, or one of its parties broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Capacity is zero, not a power of two, or too large.
    BadCapacity {
        /// The capacity asked for.
        capacity: u32,
    },
    /// The memory is smaller than the queue needs.
    RegionTooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The memory is not 64-byte aligned.
    Misaligned {
        /// The address.
        addr: usize,
    },
    /// The memory does not hold an initialised queue of this version.
    NotAQueue,
    /// There is no free entry; release some first.
    Full {
        /// The capacity.
        capacity: u32,
    },
    /// The consumer released entries that were never published.
    ConsumerAhead {
        /// The consumer's position.
        consumer: u32,
        /// The producer's position.
        producer: u32,
    },
    /// An entry's `seq` does not match the position it is read at.
    TornEntry {
        /// The position.
        position: u32,
        /// The `seq` found.
        seq: u32,
    },
    /// The queue's positions can only be moved while it is fresh.
    NotFresh,
    /// That end of the queue was handed out already.
    EndTaken {
        /// `producer` or `consumer`.
        end: &'static str,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadCapacity { capacity } => write!(
                f,
                "io_queue capacity {capacity} is not a power of two between 1 and 2^31. Fix: use a power of two such as {}",
                capacity.clamp(1, MAX_CAPACITY).next_power_of_two()
            ),
            Self::RegionTooSmall { len, needed } => write!(
                f,
                "the io_queue needs {needed} bytes but its memory holds {len}. Fix: allocate IoQueue::bytes_for(capacity) bytes, or lower the capacity"
            ),
            Self::Misaligned { addr } => write!(
                f,
                "io_queue memory at {addr:#x} is not {ALIGN}-byte aligned. Fix: allocate it page-aligned"
            ),
            Self::NotAQueue => write!(
                f,
                "the memory does not hold an initialised version-{VERSION} io_queue. Fix: initialise it with IoQueue::init before attaching"
            ),
            Self::Full { capacity } => write!(
                f,
                "the io_queue is full ({capacity} entries awaiting release). Fix: wait for the consumer to release entries, or use a larger queue"
            ),
            Self::ConsumerAhead { consumer, producer } => write!(
                f,
                "the consumer released up to position {consumer} but only {producer} were published. Fix: the consumer must release each published entry once, in order"
            ),
            Self::TornEntry { position, seq } => write!(
                f,
                "io_queue entry at position {position} carries seq {seq}, not {}. Fix: only the producer may write entries, and a consumer must read past `producer` never",
                position.wrapping_add(1)
            ),
            Self::EndTaken { end } => write!(
                f,
                "the io_queue's {end} end was taken already: a queue has one producer and one consumer. Fix: give each staging region one driver and one consumer (make another staging region for another)"
            ),
            Self::NotFresh => write!(
                f,
                "the io_queue's positions can only be set before anything is published or closed. Fix: call IoQueue::start_at right after the queue is made, before its producer and consumer attach"
            ),
        }
    }
}

impl core::error::Error for QueueError {}

/// A view of an io_queue in shared memory. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct IoQueue<'a> {
    header: &'a QueueHeader,
    entries: &'a [QueueEntry],
}

impl<'a> IoQueue<'a> {
    /// Bytes of memory a queue of `capacity` entries needs.
    pub const fn bytes_for(capacity: u32) -> usize {
        HEADER_SIZE + capacity as usize * ENTRY_SIZE
    }

    fn check(addr: usize, len: usize, capacity: u32) -> Result<(), QueueError> {
        if capacity == 0 || capacity > MAX_CAPACITY || !capacity.is_power_of_two() {
            return Err(QueueError::BadCapacity { capacity });
        }
        if !addr.is_multiple_of(ALIGN) {
            return Err(QueueError::Misaligned { addr });
        }
        let needed = Self::bytes_for(capacity);
        if len < needed {
            return Err(QueueError::RegionTooSmall { len, needed });
        }
        Ok(())
    }

    /// Initialise a queue of `capacity` entries in `region` and return a view of it.
    pub fn init(region: &'a mut [u8], capacity: u32) -> Result<Self, QueueError> {
        // SAFETY: `region` is valid and exclusively ours for 'a; handing out
        // shared atomic views of it for 'a is what the exclusive borrow allows.
        unsafe { Self::init_raw(region.as_mut_ptr(), region.len(), capacity) }
    }

    /// Initialise a queue in raw memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for `'a`, and
    /// for `'a` every other access to that memory (by this process, the GPU
    /// or the kernel) must be an atomic access through this queue's protocol.
    pub unsafe fn init_raw(ptr: *mut u8, len: usize, capacity: u32) -> Result<Self, QueueError> {
        Self::check(ptr as usize, len, capacity)?;
        // SAFETY: checked alignment and length above; the caller promises validity.
        unsafe { core::ptr::write_bytes(ptr, 0, Self::bytes_for(capacity)) };
        // SAFETY: as above; all fields are atomics, valid for the zero bit pattern.
        let queue = unsafe { Self::view(ptr, capacity) };
        let h = queue.header;
        h.version.store(VERSION, Ordering::Relaxed);
        h.capacity.store(capacity, Ordering::Relaxed);
        h.entry_size.store(ENTRY_SIZE as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(queue)
    }

    /// View a queue that [`IoQueue::init_raw`] initialised.
    ///
    /// # Safety
    /// As for [`IoQueue::init_raw`].
    pub unsafe fn attach_raw(ptr: *mut u8, len: usize) -> Result<Self, QueueError> {
        if len < HEADER_SIZE {
            return Err(QueueError::RegionTooSmall { len, needed: HEADER_SIZE });
        }
        if !(ptr as usize).is_multiple_of(ALIGN) {
            return Err(QueueError::Misaligned { addr: ptr as usize });
        }
        // SAFETY: aligned, at least a header long, valid per the caller.
        let header = unsafe { &*(ptr as *const QueueHeader) };
        if header.magic.load(Ordering::Acquire) != MAGIC
            || header.version.load(Ordering::Relaxed) != VERSION
            || header.entry_size.load(Ordering::Relaxed) != ENTRY_SIZE as u32
        {
            return Err(QueueError::NotAQueue);
        }
        let capacity = header.capacity.load(Ordering::Relaxed);
        Self::check(ptr as usize, len, capacity)?;
        // SAFETY: checked above; valid per the caller.
        Ok(unsafe { Self::view(ptr, capacity) })
    }

    /// Start a fresh queue's positions at `start` instead of 0: `producer`
    /// and `consumer` both become `start`. Positions are 32-bit and wrap at
    /// 2^32 (every comparison is a wrapping difference); a queue started just
    /// below the wrap crosses it within its first entries, which is how the
    /// consumers are tested across it. Only while the queue is fresh (nothing
    /// published, not closed or failed), before its [`Producer`] and
    /// [`Consumer`] attach, which take their positions from the header.
    pub fn start_at(&self, start: u32) -> Result<(), QueueError> {
        let h = self.header;
        let fresh = h.producer.load(Ordering::Acquire) == h.consumer.load(Ordering::Acquire)
            && self.entries.iter().all(|e| e.seq.load(Ordering::Relaxed) == 0)
            && h.closed.load(Ordering::Acquire) == 0
            && h.consumer_failed.load(Ordering::Acquire) == 0;
        if !fresh {
            return Err(QueueError::NotFresh);
        }
        h.consumer.store(start, Ordering::Relaxed);
        h.producer.store(start, Ordering::Release);
        Ok(())
    }

    /// View a queue that [`IoQueue::init_raw`] initialised with `capacity`,
    /// without checking its header again (for a backend that owns the memory
    /// and hands out views often).
    ///
    /// # Safety
    /// `ptr` is 64-byte aligned, valid for `bytes_for(capacity)` bytes for
    /// 'a, was initialised with this `capacity`, and is accessed by others
    /// only atomically through this queue's protocol.
    pub unsafe fn view(ptr: *mut u8, capacity: u32) -> Self {
        // SAFETY: per this function's contract; `QueueHeader` and `QueueEntry`
        // are made of atomics, which may alias memory other parties write atomically.
        unsafe {
            let header = &*(ptr as *const QueueHeader);
            let entries = core::slice::from_raw_parts(ptr.add(HEADER_SIZE) as *const QueueEntry, capacity as usize);
            Self { header, entries }
        }
    }

    /// The header.
    pub fn header(&self) -> &'a QueueHeader {
        self.header
    }

    /// Number of entries.
    pub fn capacity(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The entry that position `position` uses.
    pub fn entry(&self, position: u32) -> &'a QueueEntry {
        &self.entries[(position & (self.capacity() - 1)) as usize]
    }

    /// Announce that no more entries will be published, so the consumer
    /// stops once it has released everything. The producer does this
    /// ([`Producer::close`]); this is for whoever must stop a consumer when
    /// no producer was ever made (a driver that failed to start). It moves
    /// no position: it cannot make a slot anyone's.
    pub fn close(&self) {
        self.header.closed.store(1, Ordering::Release);
    }

    /// True once the producer has closed the queue.
    pub fn is_closed(&self) -> bool {
        self.header.closed.load(Ordering::Acquire) != 0
    }

    /// The consumer's failure code, if it gave up (0: it has not).
    pub fn consumer_failed(&self) -> u32 {
        self.header.consumer_failed.load(Ordering::Acquire)
    }

    /// A sleeping consumer should be woken (call after publishing or closing).
    pub fn consumer_needs_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.header.consumer_sleeping.load(Ordering::Relaxed) != 0
    }

    /// A sleeping producer should be woken (call after releasing).
    pub fn producer_needs_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        self.header.producer_sleeping.load(Ordering::Relaxed) != 0
    }
}

/// Decide whether to sleep on a position word, per the module's sleeping
/// protocol: set `flag`, fence, then re-check. Returns false (and clears the
/// flag) when `word` moved from `seen` or the queue closed meanwhile.
fn prepare_sleep(flag: &AtomicU32, word: &AtomicU32, seen: u32, closed: &AtomicU32) -> bool {
    flag.store(1, Ordering::Relaxed);
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != seen || closed.load(Ordering::Relaxed) != 0 {
        flag.store(0, Ordering::Relaxed);
        return false;
    }
    true
}

/// The positions `first, first + 1, ...`, `count` of them, wrapping at
/// 2^32. Walk a batch of entries with this, never with `first..first +
/// count`, a range that is empty once the batch crosses the wrap.
pub fn positions(first: u32, count: u32) -> impl Iterator<Item = u32> + Clone {
    (0..count).map(move |i| first.wrapping_add(i))
}

/// Which queue an end belongs to: its header's address. Every call checks
/// it, so an end used on another queue panics instead of breaking that
/// queue's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bound(usize);

impl Bound {
    fn of(q: &IoQueue<'_>) -> Self {
        Bound(q.header as *const QueueHeader as usize)
    }

    fn check(self, q: &IoQueue<'_>) {
        assert!(self == Bound::of(q), "an io_queue end was used on a queue it does not belong to");
    }
}

/// The two ends of a staging region's io_queue, each handed out once:
/// [`StagingMemory::take_producer`](crate::StagingMemory::take_producer)
/// and [`StagingMemory::take_consumer`](crate::StagingMemory::take_consumer)
/// set these flags, and a second take is an error. This is what makes one
/// producer and one consumer per queue hold by construction: a second
/// consumer could release a slot the first still reads, and the driver
/// would read into it.
#[derive(Debug, Default)]
pub struct Ends {
    producer: core::sync::atomic::AtomicBool,
    consumer: core::sync::atomic::AtomicBool,
}

impl Ends {
    /// Both ends still to take.
    pub const fn new() -> Self {
        Self { producer: core::sync::atomic::AtomicBool::new(false), consumer: core::sync::atomic::AtomicBool::new(false) }
    }

    /// Take the producer end of `q`, whose ends these are.
    pub fn take_producer(&self, q: &IoQueue<'_>) -> Result<Producer, QueueError> {
        if self.producer.swap(true, core::sync::atomic::Ordering::AcqRel) {
            return Err(QueueError::EndTaken { end: "producer" });
        }
        // SAFETY: the flag was clear, and is set now for good: this is the
        // queue's only producer taken through its ends.
        Ok(unsafe { Producer::attach(q) })
    }

    /// Take the consumer end of `q`, whose ends these are.
    pub fn take_consumer(&self, q: &IoQueue<'_>) -> Result<Consumer, QueueError> {
        if self.consumer.swap(true, core::sync::atomic::Ordering::AcqRel) {
            return Err(QueueError::EndTaken { end: "consumer" });
        }
        // SAFETY: as for the producer.
        Ok(unsafe { Consumer::attach(q) })
    }
}

/// The producer's side of the protocol. Only one producer may exist per
/// queue: take it from the staging memory
/// ([`StagingMemory::take_producer`](crate::StagingMemory::take_producer)),
/// which hands it out once.
#[derive(Debug)]
pub struct Producer {
    next: u32,
    released: u32,
    queue: Bound,
}

impl Producer {
    /// The producer of `q`, from the positions in its header (a fresh queue
    /// starts at 0, or where [`IoQueue::start_at`] put it).
    ///
    /// # Safety
    /// No other producer of `q` may exist or be made while this one is
    /// used: a second producer would publish over entries the consumer is
    /// reading. Staging memory takes care of this through [`Ends`]; this is
    /// for a queue in memory of the caller's own.
    pub unsafe fn attach(q: &IoQueue<'_>) -> Self {
        let next = q.header.producer.load(Ordering::Acquire);
        Self { next, released: q.header.consumer.load(Ordering::Acquire), queue: Bound::of(q) }
    }

    /// Entries published and not yet taken back through [`Producer::poll_released`].
    pub fn outstanding(&self) -> u32 {
        self.next.wrapping_sub(self.released)
    }

    /// Publish as many of `items` as fit, in order, and make them visible
    /// with one release store. Returns how many were published; the rest were
    /// not touched and may be published later.
    pub fn publish_batch(&mut self, q: &IoQueue<'_>, items: &[Completion]) -> usize {
        self.queue.check(q);
        let free = (q.capacity() - self.outstanding()) as usize;
        let n = items.len().min(free);
        for (i, c) in items[..n].iter().enumerate() {
            let position = self.next.wrapping_add(i as u32);
            let e = q.entry(position);
            e.slot.store(c.slot, Ordering::Relaxed);
            e.status.store(c.status, Ordering::Relaxed);
            e.kind.store(c.kind as u32, Ordering::Relaxed);
            e.bytes.store(c.bytes, Ordering::Relaxed);
            e.offset.store(c.offset, Ordering::Relaxed);
            e.tag.store(c.tag, Ordering::Relaxed);
            e.result.store(0, Ordering::Relaxed);
            e.consumer_status.store(0, Ordering::Relaxed);
            e.seq.store(position.wrapping_add(1), Ordering::Release);
        }
        if n > 0 {
            self.next = self.next.wrapping_add(n as u32);
            q.header.producer.store(self.next, Ordering::Release);
        }
        n
    }

    /// Publish one completion.
    pub fn publish(&mut self, q: &IoQueue<'_>, c: &Completion) -> Result<u32, QueueError> {
        let position = self.next;
        match self.publish_batch(q, core::slice::from_ref(c)) {
            1 => Ok(position),
            _ => Err(QueueError::Full { capacity: q.capacity() }),
        }
    }

    /// Take every entry the consumer has released since the last call, in
    /// order, passing each to `f`. Returns how many there were.
    pub fn poll_released(&mut self, q: &IoQueue<'_>, mut f: impl FnMut(Released)) -> Result<u32, QueueError> {
        self.queue.check(q);
        let consumer = q.header.consumer.load(Ordering::Acquire);
        let count = consumer.wrapping_sub(self.released);
        if count > self.outstanding() {
            return Err(QueueError::ConsumerAhead { consumer, producer: self.next });
        }
        for _ in 0..count {
            let position = self.released;
            let e = q.entry(position);
            let completion = read_completion(e);
            f(Released { position, completion, result: e.result.load(Ordering::Relaxed), consumer_status: e.consumer_status.load(Ordering::Relaxed) });
            self.released = position.wrapping_add(1);
        }
        Ok(count)
    }

    /// The consumer position last taken; sleep on `header().consumer` while it equals this.
    pub fn released_position(&self) -> u32 {
        self.released
    }

    /// Announce that no more entries will be published.
    pub fn close(&self, q: &IoQueue<'_>) {
        self.queue.check(q);
        q.header.closed.store(1, Ordering::Release);
    }

    /// Per the sleeping protocol: returns true if the caller may now sleep
    /// on `header().consumer` while it equals [`Producer::released_position`];
    /// the caller must call [`Producer::end_sleep`] afterwards.
    pub fn prepare_sleep(&self, q: &IoQueue<'_>) -> bool {
        self.queue.check(q);
        let h = q.header;
        prepare_sleep(&h.producer_sleeping, &h.consumer, self.released, &AtomicU32::new(0))
    }

    /// Clear the sleeping flag.
    pub fn end_sleep(&self, q: &IoQueue<'_>) {
        self.queue.check(q);
        q.header.producer_sleeping.store(0, Ordering::Relaxed);
    }
}

fn read_completion(e: &QueueEntry) -> Completion {
    Completion {
        slot: e.slot.load(Ordering::Relaxed),
        status: e.status.load(Ordering::Relaxed),
        kind: if e.kind.load(Ordering::Relaxed) == EntryKind::Lba as u32 { EntryKind::Lba } else { EntryKind::File },
        bytes: e.bytes.load(Ordering::Relaxed),
        offset: e.offset.load(Ordering::Relaxed),
        tag: e.tag.load(Ordering::Relaxed),
    }
}

/// The consumer's side of the protocol, for CPU consumers (GPU consumers
/// implement the same steps in their own language, driven by a host thread
/// that holds this). Only one consumer may exist per queue: take it from
/// the staging memory
/// ([`StagingMemory::take_consumer`](crate::StagingMemory::take_consumer)),
/// which hands it out once.
#[derive(Debug)]
pub struct Consumer {
    next: u32,
    queue: Bound,
}

impl Consumer {
    /// The consumer of `q`, from the `consumer` position in its header.
    ///
    /// # Safety
    /// No other consumer of `q` may exist or be made while this one is
    /// used: a second consumer could release a slot this one still reads,
    /// and the producer would read into it. Staging memory takes care of
    /// this through [`Ends`]; this is for a queue in memory of the caller's
    /// own.
    pub unsafe fn attach(q: &IoQueue<'_>) -> Self {
        Self { next: q.header.consumer.load(Ordering::Acquire), queue: Bound::of(q) }
    }

    /// The next position to consume; sleep on `header().producer` while it equals this.
    pub fn position(&self) -> u32 {
        self.next
    }

    /// How many published entries wait to be consumed.
    pub fn available(&self, q: &IoQueue<'_>) -> u32 {
        self.queue.check(q);
        q.header.producer.load(Ordering::Acquire).wrapping_sub(self.next)
    }

    /// For a consumer whose releases are stored by someone else (a GPU
    /// kernel that advances `consumer` itself): take the released position
    /// from the header and return how many entries it moved by.
    pub fn follow(&mut self, q: &IoQueue<'_>) -> u32 {
        self.queue.check(q);
        let released = q.header.consumer.load(Ordering::Acquire);
        let moved = released.wrapping_sub(self.next);
        self.next = released;
        moved
    }

    /// Release the next `count` published entries at once, with one release
    /// store of `consumer`: for a consumer whose results (`result`,
    /// `consumer_status`) someone else wrote, a device, and that this thread
    /// has seen completed (a fence it waited for). The store orders those
    /// writes before the release for the producer. Fails, releasing
    /// nothing, when fewer than `count` entries are published.
    pub fn release_batch(&mut self, q: &IoQueue<'_>, count: u32) -> Result<(), QueueError> {
        self.queue.check(q);
        let producer = q.header.producer.load(Ordering::Acquire);
        if count > producer.wrapping_sub(self.next) {
            return Err(QueueError::ConsumerAhead { consumer: self.next.wrapping_add(count), producer });
        }
        self.next = self.next.wrapping_add(count);
        q.header.consumer.store(self.next, Ordering::Release);
        Ok(())
    }

    /// For a consumer that hands published entries to someone else who
    /// releases them later (a GPU stream that runs batches in order): move
    /// past `count` of the available entries without releasing them, so
    /// [`Consumer::available`] and [`Consumer::finished`] count from there.
    pub fn hand_over(&mut self, count: u32) {
        self.next = self.next.wrapping_add(count);
    }

    /// The next published entry, if any, without consuming it.
    pub fn peek(&self, q: &IoQueue<'_>) -> Result<Option<Completion>, QueueError> {
        self.queue.check(q);
        let producer = q.header.producer.load(Ordering::Acquire);
        if producer == self.next {
            return Ok(None);
        }
        let e = q.entry(self.next);
        let seq = e.seq.load(Ordering::Acquire);
        if seq != self.next.wrapping_add(1) {
            return Err(QueueError::TornEntry { position: self.next, seq });
        }
        Ok(Some(read_completion(e)))
    }

    /// Release the entry [`Consumer::peek`] returned, with the consumer's
    /// checksum and status. The slot is the producer's again after this.
    pub fn release(&mut self, q: &IoQueue<'_>, result: u64, consumer_status: u32) {
        self.queue.check(q);
        let e = q.entry(self.next);
        e.result.store(result, Ordering::Relaxed);
        e.consumer_status.store(consumer_status, Ordering::Relaxed);
        self.next = self.next.wrapping_add(1);
        q.header.consumer.store(self.next, Ordering::Release);
    }

    /// True when the producer closed the queue and everything was consumed.
    pub fn finished(&self, q: &IoQueue<'_>) -> bool {
        self.queue.check(q);
        q.is_closed() && q.header.producer.load(Ordering::Acquire) == self.next
    }

    /// Per the sleeping protocol: returns true if the caller may now sleep
    /// on `header().producer` while it equals [`Consumer::position`]; the
    /// caller must call [`Consumer::end_sleep`] afterwards.
    pub fn prepare_sleep(&self, q: &IoQueue<'_>) -> bool {
        self.queue.check(q);
        let h = q.header;
        prepare_sleep(&h.consumer_sleeping, &h.producer, self.next, &h.closed)
    }

    /// Give up: tell the producer no more entries will be released.
    /// `code` must not be 0.
    pub fn fail(&self, q: &IoQueue<'_>, code: u32) {
        self.queue.check(q);
        q.header.consumer_failed.store(code.max(1), Ordering::Release);
    }

    /// Clear the sleeping flag.
    pub fn end_sleep(&self, q: &IoQueue<'_>) {
        self.queue.check(q);
        q.header.consumer_sleeping.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    #[repr(C, align(64))]
    struct Mem([u8; IoQueue::bytes_for(4)]);

    /// The two ends of a test queue, which has no staging memory to hand
    /// them out: each test makes one producer and one consumer per queue.
    fn ends(q: &IoQueue<'_>) -> (Producer, Consumer) {
        // SAFETY: per the doc comment, the only ones of `q`.
        unsafe { (Producer::attach(q), Consumer::attach(q)) }
    }

    fn completion(slot: u32) -> Completion {
        Completion { slot, status: 0, kind: EntryKind::File, bytes: 4096, offset: slot as u64 * 4096, tag: 9 }
    }

    #[test]
    fn layout_bytes_match_the_docs() {
        let mut mem = Mem([0xAA; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let mut p = ends(&q).0;
        p.publish(&q, &Completion { slot: 3, status: -5, kind: EntryKind::Lba, bytes: 0x1122, offset: 0x3344, tag: 0x5566 }).unwrap();
        let bytes = &mem.0;
        assert_eq!(&bytes[0..4], b"PGRQ");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 64);
        assert_eq!(u32::from_le_bytes(bytes[64..68].try_into().unwrap()), 1);
        let e = &bytes[192..256];
        assert_eq!(u32::from_le_bytes(e[0..4].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(e[4..8].try_into().unwrap()), 3);
        assert_eq!(i32::from_le_bytes(e[8..12].try_into().unwrap()), -5);
        assert_eq!(u32::from_le_bytes(e[12..16].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(e[16..24].try_into().unwrap()), 0x1122);
        assert_eq!(u64::from_le_bytes(e[24..32].try_into().unwrap()), 0x3344);
        assert_eq!(u64::from_le_bytes(e[32..40].try_into().unwrap()), 0x5566);
        // Init zeroes what it owns: the second entry and the reserved words.
        assert!(bytes[256..320].iter().all(|&b| b == 0));
        assert!(bytes[20..64].iter().all(|&b| b == 0));
    }

    #[test]
    fn publish_consume_release_in_order() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let (mut p, mut c) = ends(&q);
        assert_eq!(c.peek(&q).unwrap(), None);
        for round in 0..5u32 {
            let items: Vec<_> = (0..3).map(|i| completion(round * 3 + i)).collect();
            assert_eq!(p.publish_batch(&q, &items), 3);
            for want in &items {
                let got = c.peek(&q).unwrap().unwrap();
                assert_eq!(&got, want);
                c.release(&q, got.slot as u64 * 10, CONSUMED);
            }
            let mut seen = Vec::new();
            assert_eq!(p.poll_released(&q, |r| seen.push((r.completion.slot, r.result))).unwrap(), 3);
            assert_eq!(seen, items.iter().map(|c| (c.slot, c.slot as u64 * 10)).collect::<Vec<_>>());
            assert_eq!(p.poll_released(&q, |_| panic!("released twice")).unwrap(), 0);
        }
        assert!(!c.finished(&q));
        p.close(&q);
        assert!(c.finished(&q));
    }

    #[test]
    fn each_end_is_handed_out_once_and_belongs_to_its_queue() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let handed = Ends::new();
        let mut p = handed.take_producer(&q).unwrap();
        let c = handed.take_consumer(&q).unwrap();
        assert_eq!(handed.take_producer(&q).unwrap_err(), QueueError::EndTaken { end: "producer" });
        assert_eq!(handed.take_consumer(&q).unwrap_err(), QueueError::EndTaken { end: "consumer" });
        assert!(handed.take_consumer(&q).unwrap_err().to_string().contains("Fix: give each staging region one driver and one consumer"));
        p.publish(&q, &completion(1)).unwrap();
        assert_eq!(c.peek(&q).unwrap(), Some(completion(1)));
        // An end used on another queue panics rather than break that queue.
        let mut other = Mem([0; IoQueue::bytes_for(4)]);
        let q2 = IoQueue::init(&mut other.0, 4).unwrap();
        let stray = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.publish(&q2, &completion(2))));
        assert!(stray.is_err());
        assert_eq!(q2.header().producer(), 0, "nothing reached the other queue");
    }

    #[test]
    fn positions_cross_the_wrap_at_2_pow_32() {
        assert_eq!(positions(u32::MAX - 1, 4).collect::<Vec<_>>(), [u32::MAX - 1, u32::MAX, 0, 1]);
        assert_eq!(positions(7, 0).count(), 0);
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let start = u32::MAX - 2;
        q.start_at(start).unwrap();
        let (mut p, mut c) = ends(&q);
        assert_eq!((p.outstanding(), c.position(), c.available(&q)), (0, start, 0));
        let mut seen = Vec::new();
        for round in 0..3u32 {
            let items: Vec<_> = (0..3).map(|i| completion(round * 3 + i)).collect();
            assert_eq!(p.publish_batch(&q, &items), 3);
            assert_eq!(c.available(&q), 3);
            for want in &items {
                assert_eq!(&c.peek(&q).unwrap().unwrap(), want);
                c.release(&q, want.slot as u64, CONSUMED);
            }
            assert_eq!(p.poll_released(&q, |r| seen.push((r.position, r.completion.slot))).unwrap(), 3);
        }
        let want: Vec<_> = positions(start, 9).zip(0..9).collect();
        assert_eq!(seen, want, "every entry once, in order, across the wrap");
        assert_eq!(q.header().consumer.load(Ordering::Relaxed), start.wrapping_add(9));
        // Only a fresh queue may be moved.
        assert_eq!(q.start_at(0), Err(QueueError::NotFresh));
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        q.close();
        assert_eq!(q.start_at(5), Err(QueueError::NotFresh));
    }

    #[test]
    fn a_batch_release_moves_consumer_once_and_never_past_producer() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let (mut p, mut c) = ends(&q);
        assert_eq!(p.publish_batch(&q, &[completion(0), completion(1), completion(2)]), 3);
        // A device wrote the results; the host releases the batch after its fence.
        q.entry(0).result.store(5, Ordering::Relaxed);
        assert_eq!(c.release_batch(&q, 4), Err(QueueError::ConsumerAhead { consumer: 4, producer: 3 }));
        assert_eq!(q.header().consumer.load(Ordering::Relaxed), 0, "a refused release moves nothing");
        c.release_batch(&q, 2).unwrap();
        assert_eq!((c.position(), q.header().consumer.load(Ordering::Relaxed)), (2, 2));
        let mut seen = Vec::new();
        assert_eq!(p.poll_released(&q, |r| seen.push(r.result)).unwrap(), 2);
        assert_eq!(seen, [5, 0]);
    }

    #[test]
    fn a_follower_takes_releases_stored_by_someone_else() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let (mut p, mut follower) = ends(&q);
        assert_eq!(follower.available(&q), 0);
        assert_eq!(p.publish_batch(&q, &[completion(0), completion(1), completion(2)]), 3);
        assert_eq!(follower.available(&q), 3);
        // A device releases the first two entries by storing `consumer` and
        // the results itself, as the Vulkan shader does.
        q.entry(0).result.store(7, Ordering::Relaxed);
        q.entry(1).result.store(8, Ordering::Relaxed);
        q.header().consumer.store(2, Ordering::Release);
        assert_eq!(follower.follow(&q), 2);
        assert_eq!((follower.position(), follower.available(&q), follower.follow(&q)), (2, 1, 0));
        let mut seen = Vec::new();
        assert_eq!(p.poll_released(&q, |r| seen.push(r.result)).unwrap(), 2);
        assert_eq!(seen, [7, 8]);
    }

    #[test]
    fn a_batch_that_does_not_fit_publishes_a_prefix_exactly_once() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let (mut p, mut c) = ends(&q);
        let items: Vec<_> = (0..6).map(completion).collect();
        let first = p.publish_batch(&q, &items);
        assert_eq!(first, 4);
        assert_eq!(p.publish(&q, &items[4]), Err(QueueError::Full { capacity: 4 }));
        // The consumer releasing is not enough: the producer must take the releases first.
        let got = c.peek(&q).unwrap().unwrap();
        c.release(&q, 0, CONSUMED);
        assert_eq!(got.slot, 0);
        assert_eq!(p.publish_batch(&q, &items[first..]), 0);
        assert_eq!(p.poll_released(&q, |_| {}).unwrap(), 1);
        assert_eq!(p.publish_batch(&q, &items[first..]), 1);
        // Every item reaches the consumer once, in order.
        let mut slots = vec![0];
        while let Some(e) = c.peek(&q).unwrap() {
            slots.push(e.slot);
            c.release(&q, 0, CONSUMED);
        }
        assert_eq!(slots, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn positions_wrap() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 2).unwrap();
        q.start_at(u32::MAX - 1).unwrap();
        let (mut p, mut c) = ends(&q);
        for i in 0..6 {
            p.publish(&q, &completion(i)).unwrap();
            assert_eq!(c.peek(&q).unwrap().unwrap().slot, i);
            c.release(&q, i as u64, CONSUMED);
            p.poll_released(&q, |r| assert_eq!(r.result, i as u64)).unwrap();
        }
        assert_eq!(c.position(), 4);
    }

    #[test]
    fn protocol_violations_are_reported() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let mut p = ends(&q).0;
        q.header().consumer.store(1, Ordering::Release);
        let err = p.poll_released(&q, |_| {}).unwrap_err();
        assert_eq!(err, QueueError::ConsumerAhead { consumer: 1, producer: 0 });
        assert!(err.to_string().contains("Fix:"));
        q.header().consumer.store(0, Ordering::Release);
        // A producer position moved by someone else, with no entry behind it.
        q.header().producer.store(1, Ordering::Release);
        assert_eq!(ends(&q).1.peek(&q), Err(QueueError::TornEntry { position: 0, seq: 0 }));
    }

    #[test]
    fn setup_errors_name_a_fix() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        assert_eq!(IoQueue::init(&mut mem.0, 3).unwrap_err(), QueueError::BadCapacity { capacity: 3 });
        assert!(QueueError::BadCapacity { capacity: 3 }.to_string().contains("such as 4"));
        assert_eq!(IoQueue::init(&mut mem.0, 0).unwrap_err(), QueueError::BadCapacity { capacity: 0 });
        let err = IoQueue::init(&mut mem.0, 8).unwrap_err();
        assert_eq!(err, QueueError::RegionTooSmall { len: 448, needed: 704 });
        assert!(matches!(IoQueue::init(&mut mem.0[1..], 1), Err(QueueError::Misaligned { .. })));
        let mut blank = Mem([0; IoQueue::bytes_for(4)]);
        // SAFETY: `blank` is valid, aligned and unshared for this test.
        let attached = unsafe { IoQueue::attach_raw(blank.0.as_mut_ptr(), blank.0.len()) };
        assert_eq!(attached.unwrap_err(), QueueError::NotAQueue);
        IoQueue::init(&mut mem.0, 4).unwrap();
        // SAFETY: as above.
        let again = unsafe { IoQueue::attach_raw(mem.0.as_mut_ptr(), mem.0.len()) }.unwrap();
        assert_eq!(again.capacity(), 4);
    }

    #[test]
    fn sleeping_protocol_backs_off_when_the_word_moved() {
        let mut mem = Mem([0; IoQueue::bytes_for(4)]);
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        let (mut p, c) = ends(&q);
        assert!(c.prepare_sleep(&q));
        assert!(q.consumer_needs_wake());
        c.end_sleep(&q);
        assert!(!q.consumer_needs_wake());
        p.publish(&q, &completion(0)).unwrap();
        assert!(!c.prepare_sleep(&q), "producer moved: do not sleep");
        assert!(!q.consumer_needs_wake());
        assert!(p.prepare_sleep(&q));
        assert!(q.producer_needs_wake());
        p.end_sleep(&q);
        p.close(&q);
        let c3 = Consumer { next: 1, queue: Bound::of(&q) };
        assert!(!c3.prepare_sleep(&q), "closed: do not sleep");
    }

    #[test]
    fn two_threads_pass_every_entry_once() {
        let mut mem = std::boxed::Box::new(Mem([0; IoQueue::bytes_for(4)]));
        let q = IoQueue::init(&mut mem.0, 4).unwrap();
        // Under Miri (which also checks the interleavings for data races)
        // a few hundred entries go round the 4-entry queue many times.
        const N: u32 = if cfg!(miri) { 400 } else { 20_000 };
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut c = ends(&q).1;
                let mut expect = 0;
                while !c.finished(&q) {
                    if let Some(e) = c.peek(&q).unwrap() {
                        assert_eq!(e.offset, expect as u64);
                        expect += 1;
                        c.release(&q, e.offset * 3, CONSUMED);
                    } else {
                        std::hint::spin_loop();
                    }
                }
                assert_eq!(expect, N);
            });
            let mut p = ends(&q).0;
            let (mut sent, mut back) = (0u32, 0u64);
            while back < N as u64 {
                if sent < N {
                    let c = Completion { offset: sent as u64, ..completion(sent % 4) };
                    sent += p.publish_batch(&q, &[c]) as u32;
                }
                p.poll_released(&q, |r| {
                    assert_eq!(r.result, back * 3);
                    back += 1;
                })
                .unwrap();
            }
            p.close(&q);
        });
    }
}

/// The protocol under the loom model checker: `RUSTFLAGS="--cfg loom"
/// cargo test -p gpuring-core --lib loom_model` (`cargo xtask ci` runs it).
/// A producer and a consumer pass entries through a queue smaller than the
/// stream, each sleeping on the other's position word exactly as the host
/// code does (set the sleeping flag, `fence(SeqCst)`, re-check, sleep; the
/// other side moves its position, `fence(SeqCst)`, checks the flag, wakes).
/// Loom explores their interleavings and the values each relaxed or
/// acquire load may see, and checks that every entry arrives once, in
/// order, with its fields (published before `seq`/`producer` with
/// release), that every result reaches the producer, and that no sleeper
/// misses the wake for a position that moved: such a sleeper would wait
/// forever, which loom reports as a deadlock.
///
/// Not modelled as a lost wake-up: `close`. It moves no position word, so
/// a consumer that decided to sleep just before the close can miss its
/// wake; real sleeps end after a few milliseconds anyway (the host
/// consumer's and the driver's futex waits have timeouts), and the model's
/// sleeper likewise stops waiting once it sees `closed`.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    extern crate std;
    use loom::sync::{Arc, Condvar, Mutex};
    use std::vec::Vec;

    const CAPACITY: usize = 2;

    fn header() -> QueueHeader {
        let zero = || AtomicU32::new(0);
        QueueHeader {
            magic: AtomicU32::new(MAGIC),
            version: AtomicU32::new(VERSION),
            capacity: AtomicU32::new(CAPACITY as u32),
            entry_size: zero(),
            closed: zero(),
            reserved0: core::array::from_fn(|_| zero()),
            producer: zero(),
            consumer_sleeping: zero(),
            reserved1: core::array::from_fn(|_| zero()),
            consumer: zero(),
            producer_sleeping: zero(),
            consumer_failed: zero(),
            reserved2: core::array::from_fn(|_| zero()),
        }
    }

    fn entry() -> QueueEntry {
        let (z32, z64) = (|| AtomicU32::new(0), || AtomicU64::new(0));
        QueueEntry {
            seq: z32(),
            slot: z32(),
            status: AtomicI32::new(0),
            kind: z32(),
            bytes: z64(),
            offset: z64(),
            tag: z64(),
            result: z64(),
            consumer_status: z32(),
            reserved: core::array::from_fn(|_| z32()),
        }
    }

    /// A futex on one word: `wait` sleeps only while the word holds what
    /// the caller saw (checked under the lock, as the kernel checks under
    /// its hash-bucket lock), until a `wake` after that check.
    #[derive(Default)]
    struct Futex {
        wakes: Mutex<u32>,
        woken: Condvar,
    }

    impl Futex {
        fn wait(&self, word: &AtomicU32, seen: u32, closed: &AtomicU32) {
            let mut wakes = self.wakes.lock().unwrap();
            if word.load(Ordering::Relaxed) != seen {
                return;
            }
            let before = *wakes;
            // See the module note on `close`: a sleep that sees it ends, as
            // a real one ends at its timeout.
            while *wakes == before && closed.load(Ordering::Acquire) == 0 {
                wakes = self.woken.wait(wakes).unwrap();
            }
        }

        fn wake(&self) {
            *self.wakes.lock().unwrap() += 1;
            self.woken.notify_all();
        }
    }

    struct Shared {
        header: QueueHeader,
        entries: [QueueEntry; CAPACITY],
        /// Where the consumer sleeps (on `producer`), and the producer (on `consumer`).
        on_producer: Futex,
        on_consumer: Futex,
    }

    impl Shared {
        fn q(&self) -> IoQueue<'_> {
            IoQueue { header: &self.header, entries: &self.entries }
        }
    }

    fn item(i: u32) -> Completion {
        Completion { slot: i % CAPACITY as u32, status: -(i as i32), kind: EntryKind::Lba, bytes: 100 + i as u64, offset: 7 * i as u64, tag: 1000 + i as u64 }
    }

    /// `n` entries through the queue, both sides sleeping when they must.
    fn stream(n: u32) {
        let shared =
            Arc::new(Shared { header: header(), entries: core::array::from_fn(|_| entry()), on_producer: Futex::default(), on_consumer: Futex::default() });
        let consumer = {
            let shared = shared.clone();
            loom::thread::spawn(move || {
                let q = shared.q();
                // SAFETY: the model's only consumer.
                let mut c = unsafe { Consumer::attach(&q) };
                let mut seen = 0u32;
                loop {
                    match c.peek(&q).unwrap() {
                        Some(e) => {
                            assert_eq!(e, item(seen), "entry {seen} arrives whole and in order");
                            c.release(&q, e.tag * 3, CONSUMED);
                            if q.producer_needs_wake() {
                                shared.on_consumer.wake();
                            }
                            seen += 1;
                        }
                        None if c.finished(&q) => return seen,
                        None => {
                            if c.prepare_sleep(&q) {
                                shared.on_producer.wait(&q.header().producer, c.position(), &q.header().closed);
                                c.end_sleep(&q);
                            }
                        }
                    }
                }
            })
        };
        let q = shared.q();
        // SAFETY: the model's only producer.
        let mut p = unsafe { Producer::attach(&q) };
        let mut results = Vec::new();
        let mut take = |p: &mut Producer| p.poll_released(&q, |r| results.push((r.position, r.result, r.consumer_status))).unwrap();
        // Sleep until the consumer releases something.
        let wait_for_release = |p: &Producer| {
            if p.prepare_sleep(&q) {
                shared.on_consumer.wait(&q.header().consumer, p.released_position(), &AtomicU32::new(0));
                p.end_sleep(&q);
            }
        };
        for i in 0..n {
            loop {
                take(&mut p);
                if p.outstanding() < CAPACITY as u32 {
                    break;
                }
                wait_for_release(&p);
            }
            p.publish(&q, &item(i)).unwrap();
            if q.consumer_needs_wake() {
                shared.on_producer.wake();
            }
        }
        p.close(&q);
        shared.on_producer.wake();
        while p.outstanding() > 0 {
            take(&mut p);
            if p.outstanding() > 0 {
                wait_for_release(&p);
            }
        }
        assert_eq!(consumer.join().unwrap(), n);
        let want: Vec<_> = (0..n).map(|i| (i, item(i).tag * 3, CONSUMED)).collect();
        assert_eq!(results, want, "every result reaches the producer, once, in order");
    }

    #[test]
    fn loom_model_stream_through_a_full_queue_with_sleeps_on_both_sides() {
        let mut model = loom::model::Builder::new();
        // Enough preemptions to interleave every step of a round trip;
        // unbounded, three entries through two would take hours.
        model.preemption_bound = Some(3);
        model.check(|| stream(3));
    }
}
