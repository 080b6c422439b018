//! Page-aligned host memory for slots and io_queues, pinned by whoever
//! hands it to a device (io_uring's registration, a GPU API), never
//! mlocked; the errors of the host side; and what to do with memory a
//! device did not let go of.

use std::fmt;
use std::ptr::NonNull;

use gpuring_core::io_queue::QueueError;
use gpuring_core::{Bytes, PAGE_SIZE};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// Why host memory could not be set up.
#[derive(Debug)]
pub enum HostError {
    /// The system could not map the memory.
    Map {
        /// Bytes asked for.
        requested: u64,
        /// The errno.
        errno: Errno,
    },
    /// The io_queue could not be initialised.
    Queue(QueueError),
    /// The consumer found an entry that breaks the protocol.
    BadEntry {
        /// Position of the entry.
        position: u32,
        /// What is wrong with it.
        what: String,
    },
    /// The consumer thread panicked.
    ConsumerPanicked,
    /// A consumer thread could not be started.
    Thread {
        /// The system's reason.
        why: String,
    },
    /// A PCI device's peer memory (P2PDMA) could not be had.
    PeerMemory {
        /// The device's PCI address.
        device: String,
        /// What went wrong.
        why: String,
        /// What to do about it.
        fix: String,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Map { requested, errno } => {
                write!(f, "could not map {} of slot memory: {errno}. Fix: free memory, or ask for a smaller ring (fewer or smaller slots)", Bytes(*requested))
            }
            Self::Queue(e) => write!(f, "{e}"),
            Self::BadEntry { position, what } => {
                write!(f, "io_queue entry at position {position} is invalid: {what}. Fix: only gpuring's driver may publish to this queue")
            }
            Self::ConsumerPanicked => write!(f, "the host consumer thread panicked. Fix: this is a bug; please report it with the panic message above"),
            Self::Thread { why } => write!(f, "could not start a consumer thread: {why}. Fix: raise the process's thread limit (ulimit -u) or free memory"),
            Self::PeerMemory { device, why, fix } => write!(f, "peer memory of PCI device {device}: {why}. Fix: {fix}"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<QueueError> for HostError {
    fn from(e: QueueError) -> Self {
        HostError::Queue(e)
    }
}

/// An anonymous, page-aligned mapping whose pages are made present up
/// front, unmapped on drop.
///
/// It is not `mlock`ed: the slots are pinned by whoever hands them to a
/// device (io_uring's buffer registration, `cuMemHostRegister`,
/// `hipHostRegister`, a Vulkan import), and the io_queue is ordinary shared
/// memory. Locking as well would count the same pages a second time against
/// RLIMIT_MEMLOCK, and a default ring would not fit an unprivileged user's
/// 8 MiB limit. The pages are faulted in here so that a registration pins
/// present pages (measured: about 1 s to register 256 MiB not yet touched,
/// 10 ms once present).
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is plain memory with no thread affinity; access to its
// bytes is synchronised by the users of `HostStaging` (the slot life cycle
// and the io_queue protocol).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out the pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `len` bytes (rounded up to whole pages), zero-filled and present.
    pub fn new(len: usize) -> Result<Self, HostError> {
        Self::new_aligned(len, PAGE_SIZE)
    }

    /// Map `len` bytes rounded up to a multiple of `align`, starting at a
    /// multiple of `align` (a power of two; a page or more), zero-filled and
    /// present. GPU APIs that import host memory ask for such alignment
    /// (Vulkan's `minImportedHostPointerAlignment`).
    pub fn new_aligned(len: usize, align: usize) -> Result<Self, HostError> {
        Self::map(len, align, Fill::Present)
    }

    /// Map `len` bytes rounded up to a multiple of `align` (a power of two,
    /// a page or more), at a multiple of `align`, zero-filled, with its
    /// pages filled in as `fill` says.
    fn map(len: usize, align: usize, fill: Fill) -> Result<Self, HostError> {
        assert!(align.is_power_of_two() && align >= PAGE_SIZE, "alignment {align} is not a power of two of at least a page");
        let too_big = || HostError::Map { requested: len as u64, errno: Errno::NOMEM };
        let len = len.checked_next_multiple_of(align).ok_or_else(too_big)?.max(align);
        let requested = len as u64;
        // Over-map by `align - PAGE_SIZE`, then give back the pages before
        // the aligned start and after its end.
        let span = len.checked_add(align - PAGE_SIZE).ok_or_else(too_big)?;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let raw = unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), span, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE) }
            .map_err(|errno| HostError::Map { requested, errno })?;
        let head = (raw as usize).next_multiple_of(align) - raw as usize;
        let tail = span - head - len;
        // SAFETY: both ranges are whole pages of the mapping just made, outside
        // the part kept; nothing refers to them.
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(raw, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap(raw.cast::<u8>().add(head + len).cast(), tail);
            }
        }
        // SAFETY: `head < span`, inside the mapping.
        let ptr = unsafe { raw.cast::<u8>().add(head) };
        let mapping = Mapping { ptr: NonNull::new(ptr).ok_or(HostError::Map { requested, errno: Errno::NOMEM })?, len };
        if fill == Fill::Lazy {
            return Ok(mapping);
        }
        // SAFETY: `ptr..ptr+len` is the part of the mapping kept, ours alone.
        let populated = unsafe { rustix::mm::madvise(ptr.cast(), len, rustix::mm::Advice::LinuxPopulateWrite) };
        match populated {
            Ok(()) => {}
            // Before Linux 5.14: fault each page in by writing the zero it holds.
            Err(Errno::INVAL) => {
                for page in (0..len).step_by(PAGE_SIZE) {
                    // SAFETY: `page < len`, inside the mapping, which nothing else uses yet.
                    unsafe { ptr.add(page).write_volatile(0) };
                }
            }
            Err(errno) => return Err(HostError::Map { requested, errno }),
        }
        Ok(mapping)
    }

    /// The first byte.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping (never: mappings are at least a page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Host memory of your own that gpuring reads into, and that `O_DIRECT`
/// reads can DMA into: page-aligned, zero-filled, exactly
/// [`HostBuffer::len`] bytes as a `[u8]` (it derefs to one). Any offset
/// that is a multiple of 4096 is aligned for direct I/O; a `Vec<u8>` is
/// not (the allocator places it where it likes), so a direct read into one
/// goes through a scratch buffer and a copy (`bounce` bytes).
///
/// Its pages are faulted in on first touch, not up front: `read_into`
/// faults in what it is about to read into, and a buffer that is never
/// touched costs no memory. It asks for no transparent huge pages: in
/// this project's VM (2 vCPUs, THP `madvise`) they were not reliably
/// faster. `gpuring load --no-verify` of a 1 GiB checkpoint with
/// `MADV_HUGEPAGE` took 0.21 s once and 1.1-2.5 s three times, against
/// 0.43-0.46 s with 4 KiB pages; `MADV_POPULATE_WRITE` of 1 GiB took 3.3 s
/// with huge pages the first time and 0.29-0.30 s after, against
/// 0.50-0.58 s with 4 KiB pages, with 6.8 GiB free in 2 MiB blocks (so not
/// the kernel compacting: most likely the hypervisor backing guest memory
/// that was never touched). Freed (unmapped) on drop; a read into it
/// borrows it mutably, so it cannot be freed while the kernel writes it.
///
/// ```
/// let mut buffer = gpuring_shared::HostBuffer::new(3 << 20)?;
/// assert_eq!((buffer.len(), buffer.as_ptr() as usize % 4096), (3 << 20, 0));
/// buffer[..4].copy_from_slice(b"abcd");
/// assert_eq!(&buffer[..5], b"abcd\0");
/// # Ok::<(), gpuring_shared::HostError>(())
/// ```
pub struct HostBuffer {
    mapping: Mapping,
    len: usize,
}

impl HostBuffer {
    /// `len` zero bytes, page-aligned (see the type's docs).
    pub fn new(len: usize) -> Result<Self, HostError> {
        Ok(Self { mapping: Mapping::map(len, PAGE_SIZE, Fill::Lazy)?, len })
    }

    /// Its length in bytes, as asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for HostBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is ours, readable, zero-filled or written, at
        // least `len` bytes, and lives as long as `self`; `&self` keeps
        // writers (which need `&mut self`) away.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr().as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for HostBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.as_ptr().as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for HostBuffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for HostBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuffer").field("ptr", &self.mapping.as_ptr()).field("len", &self.len).finish()
    }
}

/// How a new [`Mapping`]'s pages are filled in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// All present before `map` returns (4 KiB pages).
    Present,
    /// On first touch.
    Lazy,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; nothing refers to it after drop (the
        // `StagingMemory` contract keeps writers away until then).
        // An error here would mean the mapping is already gone; nothing to do.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Leak `what` (staging memory, device buffers, modules, streams: whatever
/// a device that did not finish in time may still read or write) rather
/// than free it under the device, saying so loudly on stderr. The process
/// keeps the memory until it exits. GPU consumers call this when waiting
/// for their device timed out; the driver does the same with slots the
/// kernel may still write.
pub fn abandon_to_device<T>(backend: &str, why: &dyn fmt::Display, what: T) {
    eprintln!("gpuring-{backend}: {why}. The device may still use the slot and queue memory, so it is leaked, not freed, until this process exits");
    std::mem::forget(what);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_memory_is_never_freed() {
        struct Freed<'a>(&'a std::cell::Cell<bool>);
        impl Drop for Freed<'_> {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let freed = std::cell::Cell::new(false);
        let mapping = Mapping::new(4096).unwrap();
        let ptr = mapping.as_ptr();
        abandon_to_device("test", &"the device did not finish", (mapping, Freed(&freed)));
        assert!(!freed.get(), "what a device may still use is leaked, not dropped");
        // SAFETY: the mapping was leaked, so its page stays mapped and is ours.
        unsafe { ptr.as_ptr().write_volatile(1) };
    }

    #[test]
    fn aligned_mappings_start_and_end_on_the_alignment() {
        for align in [PAGE_SIZE, 64 << 10, 2 << 20] {
            let m = Mapping::new_aligned(5000, align).unwrap();
            assert_eq!((m.as_ptr().as_ptr() as usize % align, m.len()), (0, align.max(8192)));
            // SAFETY: the mapping is ours and `len` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts_mut(m.as_ptr().as_ptr(), m.len()) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(0x5A);
        }
    }

    #[test]
    fn host_buffers_are_aligned_zeroed_and_exactly_their_length() {
        for len in [0, 1, 4096, 5000, 2 << 20, (2 << 20) + 1] {
            let mut b = HostBuffer::new(len).unwrap();
            assert_eq!((b.len(), b.as_ptr() as usize % PAGE_SIZE), (len, 0), "{len}");
            assert!(b.iter().all(|&x| x == 0), "{len}");
            b.fill(0xA5);
            assert!(b.iter().all(|&x| x == 0xA5));
        }
    }
}
