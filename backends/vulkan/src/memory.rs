//! Slot and io_queue memory: host pages imported into Vulkan.
//!
//! The pages come from `gpuring_shared::Mapping` (anonymous, present, aligned to
//! the device's `minImportedHostPointerAlignment`), so io_uring can register
//! them and the kernel or the disk writes straight into them; the same pages
//! are imported with `VK_EXT_external_memory_host` into a host-coherent
//! memory type and bound to a storage buffer the shader reads. No byte is
//! copied between the read and the shader.

use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;
use gpuring_core::io_queue::{Ends, IoQueue};
use gpuring_core::{MemoryKind, SlotGeometry, StagingMemory, PAGE_SIZE};
use gpuring_shared::Mapping;

use crate::context::Context;
use crate::error::{call, VulkanError};

const HOST_ALLOCATION: vk::ExternalMemoryHandleTypeFlags = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;

/// Host pages imported into the device and bound to a storage buffer.
pub(crate) struct Imported {
    pub(crate) buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    // Dropped after the buffer and the device memory are gone (see `Drop`).
    host: Mapping,
    ctx: Arc<Context>,
}

impl Imported {
    pub(crate) fn new(ctx: &Arc<Context>, len: usize, what: &'static str) -> Result<Self, VulkanError> {
        // The import covers whole alignment units, and the storage buffer
        // is bound whole, so the rounded size must fit the device's range.
        let align = (ctx.info.import_alignment as usize).max(PAGE_SIZE).next_power_of_two();
        let max = ctx.info.max_storage_buffer_range;
        let rounded = len.max(1).checked_next_multiple_of(align).ok_or(VulkanError::TooLarge { what, len: len as u64, max })? as u64;
        if rounded > max {
            return Err(VulkanError::TooLarge { what, len: rounded, max });
        }
        let host = Mapping::new_aligned(len, align)?;
        let mut imported = Imported { buffer: vk::Buffer::null(), memory: vk::DeviceMemory::null(), host, ctx: ctx.clone() };
        let device = &ctx.device;
        let size = imported.host.len() as u64;
        let pointer = imported.host.as_ptr().as_ptr().cast::<std::ffi::c_void>();

        let mut pointer_props = vk::MemoryHostPointerPropertiesEXT::default();
        let get_props = ctx.host_memory.fp().get_memory_host_pointer_properties_ext;
        // SAFETY: `pointer` starts a live, aligned host allocation of `size`
        // bytes; the output structure is valid for writing.
        unsafe { get_props(device.handle(), HOST_ALLOCATION, pointer, &mut pointer_props) }.result().map_err(call("vkGetMemoryHostPointerPropertiesEXT"))?;

        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(HOST_ALLOCATION);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::TRANSFER_DST)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: `info` and its chain are valid for the call; the buffer is
        // destroyed in `Drop`.
        imported.buffer = unsafe { device.create_buffer(&info, None) }.map_err(call("vkCreateBuffer"))?;
        // SAFETY: the buffer was just created on this device.
        let needs = unsafe { device.get_buffer_memory_requirements(imported.buffer) };
        let wanted = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let allowed = needs.memory_type_bits & pointer_props.memory_type_bits;
        let type_index =
            ctx.memory.memory_types_as_slice().iter().enumerate().position(|(i, t)| allowed & (1 << i) != 0 && t.property_flags.contains(wanted)).ok_or_else(
                || VulkanError::Unsupported {
                    device: ctx.info.name.clone(),
                    what: format!("it cannot import host memory as a host-coherent storage buffer (memory types allowed: {allowed:#x})"),
                },
            )?;
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default().handle_type(HOST_ALLOCATION).host_pointer(pointer);
        let allocate = vk::MemoryAllocateInfo::default().allocation_size(size).memory_type_index(type_index as u32).push_next(&mut import);
        // SAFETY: the imported range is the live mapping above, whose size
        // and start honour the device's import alignment; the memory is freed
        // in `Drop` before the mapping is unmapped.
        imported.memory = unsafe { device.allocate_memory(&allocate, None) }.map_err(call("vkAllocateMemory (host pointer import)"))?;
        // SAFETY: buffer and memory are this device's, unbound, and large enough.
        unsafe { device.bind_buffer_memory(imported.buffer, imported.memory, 0) }.map_err(call("vkBindBufferMemory"))?;
        Ok(imported)
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.host.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.host.len()
    }
}

impl Drop for Imported {
    fn drop(&mut self) {
        let device = &self.ctx.device;
        // No batch can be running (consumers wait for theirs before they let
        // go of the staging); on gpuring's own device, wait for idle anyway.
        self.ctx.settle();
        // SAFETY: as just said; null handles (a half-built import) are
        // allowed by both calls.
        unsafe {
            device.destroy_buffer(self.buffer, None);
            device.free_memory(self.memory, None);
        }
    }
}

/// Vulkan staging memory: slots and io_queue in host pages that the
/// device imported (`MemoryKind::GpuMappedHost`).
pub struct VulkanStaging {
    pub(crate) slots: Imported,
    pub(crate) queue: Imported,
    queue_capacity: u32,
    geometry: SlotGeometry,
    pub(crate) ctx: Arc<Context>,
    ends: Ends,
}

impl std::fmt::Debug for VulkanStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanStaging").field("device", &self.ctx.info.name).field("geometry", &self.geometry).finish()
    }
}

impl VulkanStaging {
    /// Open the device `selector` names (an index or part of a name; `None`:
    /// the first usable device, GPUs first) and import `geometry`'s slots and
    /// an io_queue of `queue_capacity` entries into it.
    pub fn new(selector: Option<&str>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, VulkanError> {
        Self::on(Arc::new(Context::new(selector)?), geometry, queue_capacity)
    }

    /// As [`VulkanStaging::new`], on a device already open.
    pub fn on(ctx: Arc<Context>, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, VulkanError> {
        let slots = Imported::new(&ctx, geometry.region_len(), "slots")?;
        let queue = Imported::new(&ctx, IoQueue::bytes_for(queue_capacity.max(1)), "io_queue")?;
        // SAFETY: the mapping is ours, aligned, zeroed, large enough, and
        // lives as long as `self`, which only hands out views borrowing it;
        // the device touches it only through the queue protocol (atomics).
        unsafe { IoQueue::init_raw(queue.ptr().as_ptr(), queue.len(), queue_capacity) }.map_err(|e| VulkanError::Host(e.into()))?;
        Ok(Self { slots, queue, queue_capacity, geometry, ctx, ends: Ends::new() })
    }

    /// The device in use.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

// SAFETY: both imports are host mappings owned by `self`, aligned to
// at least a page, disjoint, and freed only on drop (after the device let go
// of them); the queue was initialised in `on`.
unsafe impl StagingMemory for VulkanStaging {
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
