//! Slot and io_queue memory: host pages registered (pinned) with HIP and
//! mapped into the device's address space.
//!
//! The pages come from `gpuring_shared::Mapping` (anonymous, page-aligned,
//! present), so io_uring can register them and the kernel's copy or the
//! disk's DMA writes straight into them; `hipHostRegister` with
//! `hipHostRegisterMapped` then maps the same pages into the GPU (as
//! fine-grained, coherent memory), and `hipHostGetDevicePointer` gives the
//! address the kernel reads them at. No byte is copied between the read and
//! the kernel.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use gpuring_core::io_queue::{Ends, IoQueue};
use gpuring_core::{MemoryKind, SlotGeometry, StagingMemory, PAGE_SIZE};
use gpuring_shared::Mapping;
use hip_sys::hiprt::{hipHostRegisterMapped, hipHostRegisterPortable};

use crate::device::Device;
use crate::error::RocmError;

/// Locked host pages mapped into the device; unmapped from it on drop.
pub(crate) struct Mapped {
    // Unregistered in `Drop`, before the mapping itself is unmapped.
    host: Mapping,
    device_ptr: *mut c_void,
    device: Arc<Device>,
}

impl Mapped {
    pub(crate) fn new(device: &Arc<Device>, len: usize) -> Result<Self, RocmError> {
        let host = Mapping::new(len.max(PAGE_SIZE))?;
        device.bind()?;
        let hip = device.hip;
        let ptr = host.as_ptr().as_ptr().cast::<c_void>();
        // SAFETY: `ptr` starts a live, page-aligned mapping of `host.len()`
        // bytes that stays mapped until after `Drop` unregisters it.
        let registered = unsafe { (hip.rt.hipHostRegister)(ptr, host.len(), hipHostRegisterMapped | hipHostRegisterPortable) };
        hip.check("hipHostRegister", registered)?;
        let mut device_ptr = std::ptr::null_mut();
        // SAFETY: `ptr` was just registered as mapped; the output is valid.
        let got = unsafe { (hip.rt.hipHostGetDevicePointer)(&mut device_ptr, ptr, 0) };
        if let Err(e) = hip.check("hipHostGetDevicePointer", got) {
            // SAFETY: registered just above and not used by anything yet.
            unsafe { (hip.rt.hipHostUnregister)(ptr) };
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
    pub(crate) fn device_ptr(&self) -> *mut c_void {
        self.device_ptr
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: registered in `new`; no kernel uses the pages any more
        // (the consumer waits for its stream before it lets go of the
        // staging, and the staging outlives it).
        unsafe { (self.device.hip.rt.hipHostUnregister)(self.host.as_ptr().as_ptr().cast()) };
    }
}

// SAFETY: the device pointer is an address in the GPU's space, never
// dereferenced on the host; the host side is a `Mapping`, which is Send and
// Sync, and `Device` only holds plain data and the runtime's table.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

/// ROCm staging memory: slots and io_queue in host pages (pinned by HIP) mapped into
/// the device (`MemoryKind::GpuMappedHost`).
pub struct RocmStaging {
    pub(crate) slots: Mapped,
    pub(crate) queue: Mapped,
    queue_capacity: u32,
    geometry: SlotGeometry,
    pub(crate) device: Arc<Device>,
    ends: Ends,
}

impl std::fmt::Debug for RocmStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocmStaging").field("device", &self.device.info.name).field("geometry", &self.geometry).finish()
    }
}

impl RocmStaging {
    /// Open the device `selector` names (an index or part of a name; `None`:
    /// the first usable device) and map `geometry`'s slots and an io_queue
    /// of `queue_capacity` entries into it.
    pub fn new(selector: Option<&str>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, RocmError> {
        Self::on(Device::open(selector)?, geometry, queue_capacity)
    }

    /// As [`RocmStaging::new`], on a device already open.
    pub fn on(device: Arc<Device>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, RocmError> {
        let slots = Mapped::new(&device, geometry.region_len())?;
        let queue = Mapped::new(&device, IoQueue::bytes_for(queue_capacity.max(1)))?;
        // SAFETY: the mapping is ours, aligned, zeroed, large enough, and
        // lives as long as `self`, which only hands out views borrowing it;
        // the device touches it only through the queue protocol.
        unsafe { IoQueue::init_raw(queue.ptr().as_ptr(), queue.len(), queue_capacity) }.map_err(|e| RocmError::Host(e.to_string()))?;
        Ok(Self { slots, queue, queue_capacity, geometry, device, ends: Ends::new() })
    }

    /// The device in use.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }
}

// SAFETY: both mappings are host mappings (pinned by HIP) owned by `self`,
// page-aligned, disjoint, and freed only on drop (after HIP let go of
// them); the queue was initialised in `on`.
unsafe impl StagingMemory for RocmStaging {
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

/// Device memory gpuring allocates (`hipMalloc`; for `gpuring load` and the
/// bench), freed on drop.
pub struct DeviceBuffer {
    ptr: *mut c_void,
    len: usize,
    device: Arc<Device>,
}

// SAFETY: HIP device allocations may be used from any thread.
unsafe impl Send for DeviceBuffer {}
// SAFETY: `&DeviceBuffer` only reads it back (synchronous copies).
unsafe impl Sync for DeviceBuffer {}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("len", &self.len).finish()
    }
}

impl DeviceBuffer {
    /// `len` bytes (at least 1) of `device`'s memory, zeroed.
    pub fn new(device: &Arc<Device>, len: usize) -> Result<Self, RocmError> {
        device.bind()?;
        let hip = device.hip;
        let mut this = Self { ptr: std::ptr::null_mut(), len, device: device.clone() };
        // SAFETY: a valid output; a failure leaves it null, which `Drop` skips.
        hip.check("hipMalloc", unsafe { (hip.rt.hipMalloc)(&mut this.ptr, len.max(1)) })?;
        // SAFETY: `ptr` holds at least `len` bytes of device memory.
        hip.check("hipMemset", unsafe { (hip.rt.hipMemset)(this.ptr, 0, len) })?;
        Ok(this)
    }

    /// The device address.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `len` bytes at `offset` back to the host (synchronous).
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, RocmError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            let what = format!("a read-back of {len} bytes at {offset} from a buffer of {}", self.len);
            return Err(RocmError::Unsupported { device: self.device.info.name.clone(), what });
        }
        self.device.bind()?;
        let hip = self.device.hip;
        let mut out = vec![0u8; len];
        // SAFETY: the window lies inside the allocation (checked above) and
        // `out` holds `len` bytes; the copy is synchronous.
        let code = unsafe { (hip.rt.hipMemcpy)(out.as_mut_ptr().cast(), self.ptr.cast::<u8>().add(offset).cast(), len, crate::api::DEVICE_TO_HOST) };
        hip.check("hipMemcpy (read-back)", code)?;
        Ok(out)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated in `new`; whoever copied into it (read_into)
            // waited for its copies before returning.
            unsafe { (self.device.hip.rt.hipFree)(self.ptr) };
        }
    }
}
