//! The host backend's staging memory: slots and an io_queue in
//! page-aligned mappings (from gpuring-shared), pinned by io_uring's
//! registration while a driver uses them.

use gpuring_core::io_queue::{Ends, IoQueue};
use gpuring_core::{MemoryKind, SlotGeometry, StagingMemory};
use gpuring_shared::{HostError, Mapping};
use std::ptr::NonNull;

/// Host staging memory: slots and an io_queue in present, page-aligned
/// mappings. io_uring's registration pins the slots while a driver uses them.
#[derive(Debug)]
pub struct HostStaging {
    slots: Mapping,
    queue: Mapping,
    queue_capacity: u32,
    geometry: SlotGeometry,
    ends: Ends,
}

impl HostStaging {
    /// Allocate `geometry`'s slots and an io_queue of `queue_capacity` entries.
    pub fn new(geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, HostError> {
        let queue_len = IoQueue::bytes_for(queue_capacity.max(1));
        let slots = Mapping::new(geometry.region_len())?;
        let queue = Mapping::new(queue_len)?;
        // SAFETY: the mapping is ours, aligned, large enough, and lives as
        // long as `HostStaging`, which only hands out queue views borrowing it.
        unsafe { IoQueue::init_raw(queue.as_ptr().as_ptr(), queue.len(), queue_capacity)? };
        Ok(Self { slots, queue, queue_capacity, geometry, ends: Ends::new() })
    }

    /// Bytes mapped in all (slots and queue).
    pub fn mapped_bytes(&self) -> usize {
        self.slots.len() + self.queue.len()
    }
}

// SAFETY: both mappings are page-aligned, owned by `self`, freed only
// on drop, and disjoint; the queue was initialised in `new`.
unsafe impl StagingMemory for HostStaging {
    fn geometry(&self) -> SlotGeometry {
        self.geometry
    }

    fn slot_base(&self) -> NonNull<u8> {
        self.slots.as_ptr()
    }

    fn queue(&self) -> IoQueue<'_> {
        // SAFETY: initialised in `new` with this capacity; the view borrows
        // `self`, which owns the memory.
        unsafe { IoQueue::view(self.queue.as_ptr().as_ptr(), self.queue_capacity) }
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::LockedHost
    }

    fn ends(&self) -> &Ends {
        &self.ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuring_core::PAGE_SIZE;

    #[test]
    fn staging_is_aligned_zeroed_and_has_a_queue() {
        let g = SlotGeometry::new(4, 64 << 10).unwrap();
        let s = HostStaging::new(g, 4).unwrap();
        assert_eq!(s.slot_base().as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(s.slot_ptr(3).as_ptr() as usize - s.slot_base().as_ptr() as usize, 3 * (64 << 10));
        assert_eq!(s.queue().capacity(), 4);
        assert_eq!(s.kind(), MemoryKind::LockedHost);
        assert_eq!(s.mapped_bytes(), 256 << 10 | 4096);
    }
}
