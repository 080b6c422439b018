//! A BAR window: device-local memory that the host can map, for `gpuring
//! probe` to test whether io_uring can register it (peer DMA into VRAM).

use std::ptr::NonNull;
use std::sync::Arc;

use ash::vk;

use crate::context::Context;
use crate::error::{call, VulkanError};

/// Device-local, host-visible memory mapped into this process; unmapped and
/// freed on drop.
pub struct BarWindow {
    ctx: Arc<Context>,
    memory: vk::DeviceMemory,
    ptr: NonNull<u8>,
    len: usize,
}

impl std::fmt::Debug for BarWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarWindow").field("device", &self.ctx.info.name).field("len", &self.len).finish()
    }
}

// SAFETY: the mapping is plain memory with no thread affinity, owned by the value.
unsafe impl Send for BarWindow {}

impl BarWindow {
    /// Map `len` bytes of device-local, host-visible memory, or `None` when
    /// the device has no such memory type.
    pub fn map(ctx: &Arc<Context>, len: usize) -> Result<Option<Self>, VulkanError> {
        let wanted = vk::MemoryPropertyFlags::DEVICE_LOCAL | vk::MemoryPropertyFlags::HOST_VISIBLE;
        let Some(type_index) = ctx.memory.memory_types_as_slice().iter().position(|t| t.property_flags.contains(wanted)) else {
            return Ok(None);
        };
        let d = &ctx.device;
        let info = vk::MemoryAllocateInfo::default().allocation_size(len as u64).memory_type_index(type_index as u32);
        // SAFETY: a plain allocation of a memory type this device has; freed
        // in `Drop` (or below on failure).
        let memory = unsafe { d.allocate_memory(&info, None) }.map_err(call("vkAllocateMemory (device-local, host-visible)"))?;
        // SAFETY: the memory is host-visible, unmapped, and `len` bytes long.
        let ptr = match unsafe { d.map_memory(memory, 0, len as u64, vk::MemoryMapFlags::empty()) } {
            Ok(ptr) => ptr,
            Err(result) => {
                // SAFETY: allocated just above, never mapped or used.
                unsafe { d.free_memory(memory, None) };
                return Err(VulkanError::Call { call: "vkMapMemory", result });
            }
        };
        let ptr = NonNull::new(ptr.cast()).ok_or(VulkanError::Call { call: "vkMapMemory", result: vk::Result::ERROR_MEMORY_MAP_FAILED })?;
        Ok(Some(Self { ctx: ctx.clone(), memory, ptr, len }))
    }

    /// The first mapped byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for BarWindow {
    fn drop(&mut self) {
        // SAFETY: our allocation, mapped once; nothing uses the mapping after
        // drop (whoever registered it had to unregister it first).
        unsafe {
            self.ctx.device.unmap_memory(self.memory);
            self.ctx.device.free_memory(self.memory, None);
        }
    }
}
