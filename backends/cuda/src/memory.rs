//! Slot and io_queue memory: host pages page-locked with CUDA and mapped
//! into the device's address space.
//!
//! The pages come from `gpuring_shared::Mapping` (anonymous, page-aligned,
//! present), so io_uring can register them and the kernel's copy or the
//! disk's DMA writes straight into them; `cuMemHostRegister` with
//! `DEVICEMAP` then maps the same pages into the GPU, and
//! `cuMemHostGetDevicePointer` gives the address the kernel reads them at.
//! No byte is copied between the read and the kernel.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::sys;
use gpuring_core::io_queue::{Ends, IoQueue};
use gpuring_core::{MemoryKind, SlotGeometry, StagingMemory, PAGE_SIZE};
use gpuring_shared::Mapping;

use crate::device::{check, Device};
use crate::error::CudaError;

/// Locked host pages mapped into the device; unmapped from it on drop.
pub(crate) struct Mapped {
    // Unregistered in `Drop`, before the mapping itself is unmapped.
    host: Mapping,
    device_ptr: sys::CUdeviceptr,
    device: Arc<Device>,
}

impl Mapped {
    pub(crate) fn new(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        let host = Mapping::new(len.max(PAGE_SIZE))?;
        device.bind()?;
        let ptr = host.as_ptr().as_ptr().cast::<c_void>();
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: `ptr` starts a live, page-aligned mapping of `host.len()`
        // bytes that stays mapped until after `Drop` unregisters it.
        check("cuMemHostRegister", unsafe { sys::cuMemHostRegister_v2(ptr, host.len(), flags) })?;
        let mut device_ptr = 0;
        // SAFETY: `ptr` was just registered with DEVICEMAP; the output is valid.
        if let Err(e) = check("cuMemHostGetDevicePointer", unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, ptr, 0) }) {
            // SAFETY: registered just above and not used by anything yet.
            unsafe { sys::cuMemHostUnregister(ptr) };
            return Err(e);
        }
        Ok(Self { host, device_ptr, device: device.clone() })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.host.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.host.len()
    }

    /// Where the device sees the first byte.
    pub(crate) fn device_ptr(&self) -> sys::CUdeviceptr {
        self.device_ptr
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: registered in `new`; no kernel or copy uses the pages any
        // more (consumers synchronise their stream before they let go of
        // the staging, and the staging outlives them).
        unsafe { sys::cuMemHostUnregister(self.host.as_ptr().as_ptr().cast()) };
    }
}

/// CUDA staging memory: slots and io_queue in host pages (pinned by CUDA) mapped into
/// the device (`MemoryKind::GpuMappedHost`), plus a page of control words
/// the host uses to tell a running kernel to stop.
pub struct CudaStaging {
    pub(crate) slots: Mapped,
    pub(crate) queue: Mapped,
    pub(crate) control: Mapped,
    queue_capacity: u32,
    geometry: SlotGeometry,
    pub(crate) device: Arc<Device>,
    ends: Ends,
}

impl std::fmt::Debug for CudaStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStaging").field("device", &self.device.info.name).field("geometry", &self.geometry).finish()
    }
}

impl CudaStaging {
    /// Open the device `selector` names (an index or part of a name; `None`:
    /// the first usable device) and map `geometry`'s slots and an io_queue
    /// of `queue_capacity` entries into it.
    pub fn new(selector: Option<&str>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, CudaError> {
        Self::on(Device::open(selector)?, geometry, queue_capacity)
    }

    /// As [`CudaStaging::new`], on a device already open.
    pub fn on(device: Arc<Device>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, CudaError> {
        let slots = Mapped::new(&device, geometry.region_len())?;
        let queue = Mapped::new(&device, IoQueue::bytes_for(queue_capacity.max(1)))?;
        let control = Mapped::new(&device, PAGE_SIZE)?;
        // SAFETY: the mapping is ours, aligned, zeroed, large enough, and
        // lives as long as `self`, which only hands out views borrowing it;
        // the device touches it only through the queue protocol.
        unsafe { IoQueue::init_raw(queue.ptr().as_ptr(), queue.len(), queue_capacity) }.map_err(|e| CudaError::Host(e.into()))?;
        Ok(Self { slots, queue, control, queue_capacity, geometry, device, ends: Ends::new() })
    }

    /// The device in use.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The word a persistent kernel polls to know it must stop (host side).
    pub(crate) fn abort_flag(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the control page is ours, page-aligned and zeroed, and the
        // reference borrows `self`, which keeps it mapped.
        unsafe { &*self.control.ptr().as_ptr().cast::<std::sync::atomic::AtomicU32>() }
    }
}

// SAFETY: all three mappings are host mappings (pinned by CUDA) owned by `self`,
// page-aligned, disjoint, and freed only on drop (after CUDA let go of
// them); the queue was initialised in `on`.
unsafe impl StagingMemory for CudaStaging {
    fn geometry(&self) -> SlotGeometry {
        self.geometry
    }

    fn slot_base(&self) -> NonNull<u8> {
        self.slots.ptr()
    }

    fn queue(&self) -> IoQueue<'_> {
        // SAFETY: initialised in `on` with this capacity; the view borrows `self`.
        unsafe { IoQueue::view(self.queue.ptr().as_ptr(), self.queue_capacity) }
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::GpuMappedHost
    }

    fn ends(&self) -> &Ends {
        &self.ends
    }
}
