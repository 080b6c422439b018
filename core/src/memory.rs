//! The one trait every backend implements: staging memory.
//!
//! A backend allocates the slot region and the io_queue in memory its
//! consumer can read (locked host memory, host memory mapped into a GPU, or
//! GPU memory exposed for peer DMA) and says which kind it is. The ingest
//! driver registers the slot region with io_uring and lets the kernel or the
//! device write into it, which is why the trait is `unsafe`.

use core::ptr::NonNull;

use crate::io_queue::{Consumer, Ends, IoQueue, Producer, QueueError};
use crate::slot::SlotGeometry;

/// What kind of memory the slots are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Page-aligned host memory, pinned while io_uring has it registered (no
    /// GPU involved). Named `locked_host` in reports.
    LockedHost,
    /// Host memory mapped into a GPU's address space.
    GpuMappedHost,
    /// GPU memory exposed to other devices (BAR1 peer DMA).
    DevicePeer,
}

impl MemoryKind {
    /// The kind's name as used in reports.
    pub fn name(self) -> &'static str {
        match self {
            MemoryKind::LockedHost => "locked_host",
            MemoryKind::GpuMappedHost => "gpu_mapped_host",
            MemoryKind::DevicePeer => "device_peer",
        }
    }
}

/// Slot memory and io_queue memory supplied by a backend.
///
/// # Safety
/// An implementor promises that, for as long as the value lives:
/// - `slot_base()` points to `geometry().region_len()` bytes that are valid
///   for reads and writes from this process, page-aligned, never moved, and
///   may be written by the kernel or a device at any time (they are never
///   reallocated or freed before the value is dropped);
/// - `queue()` returns a view of an initialised io_queue in memory with the
///   same guarantees, disjoint from the slot region, and always the same queue;
/// - dropping the value is the only thing that frees either region.
///
/// - `ends()` always returns the same [`Ends`], belonging to this queue.
///
/// Users promise in turn to let nothing write a slot except through the
/// slot life cycle of [`crate::pending`]. One producer and one consumer per
/// queue is not a promise but a fact: their ends are handed out once each.
pub unsafe trait StagingMemory: Send + Sync {
    /// The slots' geometry.
    fn geometry(&self) -> SlotGeometry;

    /// The first byte of slot 0.
    fn slot_base(&self) -> NonNull<u8>;

    /// The io_queue the consumer reads.
    fn queue(&self) -> IoQueue<'_>;

    /// What kind of memory the slots are.
    fn kind(&self) -> MemoryKind;

    /// The flags through which the queue's two ends are handed out once
    /// each (a field of the implementor, `Ends::new()`).
    fn ends(&self) -> &Ends;

    /// The queue's producer end, for the driver: once; a second take is
    /// [`QueueError::EndTaken`].
    fn take_producer(&self) -> Result<Producer, QueueError> {
        self.ends().take_producer(&self.queue())
    }

    /// The queue's consumer end, for the consumer: once; a second take is
    /// [`QueueError::EndTaken`].
    fn take_consumer(&self) -> Result<Consumer, QueueError> {
        self.ends().take_consumer(&self.queue())
    }

    /// The first byte of slot `index` (which must be below `slot_count`).
    fn slot_ptr(&self, index: u32) -> NonNull<u8> {
        let offset = index as usize * self.geometry().slot_size();
        assert!(index < self.geometry().slot_count(), "slot {index} out of range");
        // SAFETY: `index < slot_count`, so the offset is inside the region the
        // implementor promised is valid.
        unsafe { self.slot_base().add(offset) }
    }
}
