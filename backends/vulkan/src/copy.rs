//! Copies into buffers the user owns: the copy consumer of `read_into`, a
//! device-local buffer, and reading a buffer back.
//!
//! [`CopyConsumer`] runs the batched-consumer engine
//! ([`gpuring_shared::batch`]) with the copy engine as the device: per
//! batch of published entries it records one `vkCmdCopyBuffer` from the
//! imported slots into the destination buffer, one region per entry
//! (clipped to its requests' windows by [`CopyPlan`]), then a barrier that
//! makes the copies visible to whatever the queue runs next, and submits it
//! with a fence. The engine waits on the fence before it releases the batch,
//! so a slot is read into again only after its copy has finished; the
//! driver meanwhile keeps reading into the free slots.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use gpuring_core::StagingMemory;
use gpuring_shared::batch::{run_batches, Batch, BatchDevice, Failure, Release};
use gpuring_shared::copy::{CopyPlan, CopyStats, Region};
use gpuring_shared::ConsumerThread;

use crate::context::Context;
use crate::error::{call, VulkanError};
use crate::memory::{Imported, VulkanStaging};

/// A command buffer and its fence, for one submission at a time.
pub(crate) struct Submitter {
    ctx: Arc<Context>,
    commands: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    /// Set once `vkQueueSubmit` succeeded, cleared when the fence was seen signalled.
    in_flight: AtomicBool,
}

impl Submitter {
    pub(crate) fn new(ctx: &Arc<Context>) -> Result<Self, VulkanError> {
        let d = &ctx.device;
        let mut s = Self {
            ctx: ctx.clone(),
            commands: vk::CommandPool::null(),
            cmd: vk::CommandBuffer::null(),
            fence: vk::Fence::null(),
            in_flight: AtomicBool::new(false),
        };
        // SAFETY: the create infos are valid for each call; every handle goes
        // into `s` at once, and its `Drop` destroys each once (null ones too).
        unsafe {
            let pool = vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family).flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
            s.commands = d.create_command_pool(&pool, None).map_err(call("vkCreateCommandPool"))?;
            let info = vk::CommandBufferAllocateInfo::default().command_pool(s.commands).level(vk::CommandBufferLevel::PRIMARY).command_buffer_count(1);
            s.cmd = d.allocate_command_buffers(&info).map_err(call("vkAllocateCommandBuffers"))?[0];
            s.fence = d.create_fence(&vk::FenceCreateInfo::default(), None).map_err(call("vkCreateFence"))?;
        }
        Ok(s)
    }

    /// Record one command buffer with `record` and submit it with the fence.
    ///
    /// # Safety
    /// Everything `record` names must be this device's, alive until the
    /// fence signals, and usable as recorded; no other submission of this
    /// `Submitter` may be in flight (wait for it first).
    pub(crate) unsafe fn submit(&self, record: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<(), VulkanError> {
        let d = &self.ctx.device;
        // SAFETY: the command buffer is idle (the caller's promise) and only
        // this object records or submits it; the fence is reset before use;
        // the queue is submitted to under the context's lock.
        unsafe {
            d.reset_fences(&[self.fence]).map_err(call("vkResetFences"))?;
            d.begin_command_buffer(self.cmd, &vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT))
                .map_err(call("vkBeginCommandBuffer"))?;
            record(d, self.cmd);
            d.end_command_buffer(self.cmd).map_err(call("vkEndCommandBuffer"))?;
            let cmds = [self.cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            let _turn = self.ctx.queue_lock.lock().unwrap_or_else(|e| e.into_inner());
            d.queue_submit(self.ctx.queue, &submit, self.fence).map_err(call("vkQueueSubmit"))?;
        }
        self.in_flight.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the last submission has finished.
    pub(crate) fn idle(&self) -> Result<bool, VulkanError> {
        if !self.in_flight.load(Ordering::Acquire) {
            return Ok(true);
        }
        // SAFETY: the fence is this device's and alive.
        let done = unsafe { self.ctx.device.get_fence_status(self.fence) }.map_err(call("vkGetFenceStatus"))?;
        if done {
            self.in_flight.store(false, Ordering::Release);
        }
        Ok(done)
    }

    /// Sleep until the last submission finished (`Ok(true)`) or `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<bool, VulkanError> {
        if !self.in_flight.load(Ordering::Acquire) {
            return Ok(true);
        }
        // SAFETY: the fence is this device's and alive.
        match unsafe { self.ctx.device.wait_for_fences(&[self.fence], true, timeout.as_nanos().min(u64::MAX as u128) as u64) } {
            Ok(()) => {
                self.in_flight.store(false, Ordering::Release);
                Ok(true)
            }
            Err(vk::Result::TIMEOUT) => Ok(false),
            Err(result) => Err(VulkanError::Call { call: "vkWaitForFences", result }),
        }
    }
}

/// Record `vkCmdCopyBuffer(src → dst, regions)` and a barrier that makes
/// the copies visible to everything after (the host included).
///
/// # Safety
/// `cmd` is recording; both buffers are `d`'s, alive until the submission
/// finished, with TRANSFER_SRC and TRANSFER_DST usage; the regions lie
/// inside them.
unsafe fn record_copy(d: &ash::Device, cmd: vk::CommandBuffer, src: vk::Buffer, dst: vk::Buffer, regions: &[vk::BufferCopy]) {
    let barrier = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::MEMORY_WRITE | vk::AccessFlags::HOST_READ)];
    let (from, to) = (vk::PipelineStageFlags::TRANSFER, vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST);
    // SAFETY: the caller's promise.
    unsafe {
        if !regions.is_empty() {
            d.cmd_copy_buffer(cmd, src, dst, regions);
        }
        d.cmd_pipeline_barrier(cmd, from, to, vk::DependencyFlags::empty(), &barrier, &[], &[]);
    }
}

impl Drop for Submitter {
    fn drop(&mut self) {
        let d = &self.ctx.device;
        // SAFETY: a submission still in flight is waited for, without a
        // limit, before its command buffer goes; each handle is destroyed once.
        unsafe {
            if self.in_flight.load(Ordering::Acquire) {
                let _ = d.wait_for_fences(&[self.fence], true, u64::MAX);
            }
            d.destroy_fence(self.fence, None);
            d.destroy_command_pool(self.commands, None);
        }
    }
}

/// The copy engine as the batched-consumer engine's device.
struct Copier<'a> {
    staging: &'a VulkanStaging,
    submitter: &'a Submitter,
    dst: vk::Buffer,
    plan: &'a CopyPlan,
    stats: CopyStats,
    /// One entry's regions.
    found: Vec<Region>,
    regions: Vec<vk::BufferCopy>,
}

impl BatchDevice for Copier<'_> {
    type Error = VulkanError;

    fn launch(&mut self, batch: &Batch) -> Result<(), VulkanError> {
        let q = self.staging.queue();
        self.regions.clear();
        for position in batch.positions() {
            let found = self.plan.regions(&q.entry(position).completion(), batch.slot_count, batch.slot_bytes as u64, &mut self.found);
            found.map_err(|what| VulkanError::Rejected { position, what })?;
            for r in &self.found {
                self.regions.push(vk::BufferCopy { src_offset: r.slot_offset, dst_offset: r.dst, size: r.len });
                self.stats.bytes += r.len;
            }
        }
        self.stats.copies += self.regions.len() as u64;
        let (src, dst, regions) = (self.staging.slots.buffer, self.dst, &self.regions);
        // The slots' buffer lives with the staging this thread holds; `dst`
        // is the caller's, promised alive and large enough until the consumer
        // is joined (every region was checked against its length); the engine
        // waits for each batch before the next `launch`.
        // SAFETY: per the lines above.
        unsafe { self.submitter.submit(|d, cmd| record_copy(d, cmd, src, dst, regions)) }
    }

    fn idle(&mut self) -> Result<bool, VulkanError> {
        self.submitter.idle()
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, VulkanError> {
        self.submitter.wait(timeout)
    }

    fn failure(&self, failure: Failure) -> VulkanError {
        match failure {
            Failure::Timeout { what, seconds } => VulkanError::Timeout { what, seconds },
            Failure::Rejected { position, what } => VulkanError::Rejected { position, what },
        }
    }
}

/// A running copy consumer: each published slot's window goes into the
/// destination buffer by the copy engine. Stop it with
/// [`CopyConsumer::join`] after the producer closed the queue; dropping it
/// stops it early (and waits for the copy in flight).
#[derive(Debug)]
pub struct CopyConsumer(ConsumerThread<CopyStats, VulkanError>);

impl CopyConsumer {
    /// Start copying the entries of `staging`'s queue into `dst` by `plan`,
    /// on a new thread (which takes the queue's consumer end).
    ///
    /// # Safety
    /// `dst` must be a buffer of `staging`'s device, created with
    /// `TRANSFER_DST` usage, bound to memory, at least `plan.dst_len` bytes,
    /// and alive until [`CopyConsumer::join`] (or the drop) has returned;
    /// nothing else may use its windows meanwhile, and nothing outside
    /// gpuring may submit to the context's queue meanwhile (Vulkan's rule
    /// for queues; gpuring's own submissions take the context's lock).
    pub unsafe fn start(staging: Arc<VulkanStaging>, dst: vk::Buffer, plan: CopyPlan) -> Result<Self, VulkanError> {
        let submitter = Submitter::new(&staging.ctx)?;
        let thread = ConsumerThread::spawn("gpuring-vulkan-copy", &staging, None, move |staging, consumer, stop| {
            let mut copier = Copier { staging, submitter: &submitter, dst, plan: &plan, stats: CopyStats::default(), found: Vec::new(), regions: Vec::new() };
            let done = run_batches(&staging.queue(), staging.geometry(), consumer, stop, Release::Host, &mut copier)?;
            Ok(CopyStats { entries: done.entries, batches: done.batches, ..copier.stats })
        })?;
        Ok(Self(thread))
    }

    /// Wait until the producer has closed the queue and every entry is
    /// copied and released.
    pub fn join(self) -> Result<CopyStats, VulkanError> {
        self.0.join(VulkanError::ConsumerPanicked)
    }
}

/// A device-local buffer gpuring allocates (for `gpuring load`, the bench
/// and tests): `TRANSFER_DST`, `TRANSFER_SRC` and `STORAGE_BUFFER` usage.
pub struct DeviceBuffer {
    ctx: Arc<Context>,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    len: u64,
    /// Made by the first [`DeviceBuffer::read`] and kept for the next ones
    /// (verifying a checkpoint reads every tensor back).
    read_back: std::sync::Mutex<Option<ReadBack>>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("len", &self.len).finish()
    }
}

impl DeviceBuffer {
    /// `len` bytes (at least 1) of the device's local memory.
    pub fn new(ctx: &Arc<Context>, len: u64) -> Result<Self, VulkanError> {
        let d = &ctx.device;
        let mut b = Self { ctx: ctx.clone(), buffer: vk::Buffer::null(), memory: vk::DeviceMemory::null(), len, read_back: Default::default() };
        let usage = vk::BufferUsageFlags::TRANSFER_DST | vk::BufferUsageFlags::TRANSFER_SRC | vk::BufferUsageFlags::STORAGE_BUFFER;
        let info = vk::BufferCreateInfo::default().size(len.max(1)).usage(usage).sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: the create infos are valid for each call; both handles go
        // into `b` at once, and its `Drop` destroys each once.
        unsafe {
            b.buffer = d.create_buffer(&info, None).map_err(call("vkCreateBuffer (device-local)"))?;
            let needs = d.get_buffer_memory_requirements(b.buffer);
            let local = vk::MemoryPropertyFlags::DEVICE_LOCAL;
            let types = ctx.memory.memory_types_as_slice();
            let fits = |i: usize| needs.memory_type_bits & (1 << i) != 0;
            let index = (0..types.len()).find(|&i| fits(i) && types[i].property_flags.contains(local)).or_else(|| (0..types.len()).find(|&i| fits(i)));
            let index = index.ok_or_else(|| VulkanError::Unsupported { device: ctx.info.name.clone(), what: "no memory type for a transfer buffer".into() })?;
            let allocate = vk::MemoryAllocateInfo::default().allocation_size(needs.size).memory_type_index(index as u32);
            b.memory = d.allocate_memory(&allocate, None).map_err(call("vkAllocateMemory (device-local)"))?;
            d.bind_buffer_memory(b.buffer, b.memory, 0).map_err(call("vkBindBufferMemory"))?;
        }
        Ok(b)
    }

    /// The context whose device holds it.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The buffer.
    pub fn buffer(&self) -> vk::Buffer {
        self.buffer
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `len` bytes at `offset` back to the host (through a host buffer
    /// the device imports, by the copy engine).
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, VulkanError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VulkanError::TooLarge { what: "read-back window", len: offset.saturating_add(len), max: self.len });
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut slot = self.read_back.lock().unwrap_or_else(|e| e.into_inner());
        let back = match slot.take() {
            Some(back) => back,
            None => ReadBack::new(&self.ctx)?,
        };
        // This buffer is the context's, TRANSFER_SRC, alive for the call
        // (borrowed), and the window was checked against its length; the
        // lock keeps the read-back to one caller at a time.
        // SAFETY: per the lines above.
        let read = unsafe { back.read(self.buffer, offset, len) };
        match &read {
            Err(e @ VulkanError::Timeout { .. }) => gpuring_shared::abandon_to_device("vulkan", e, back),
            _ => *slot = Some(back),
        }
        read
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.ctx.settle();
        // SAFETY: nothing gpuring queued uses the buffer any more (every
        // consumer and read-back waits for its work); null handles are allowed.
        unsafe {
            self.ctx.device.destroy_buffer(self.buffer, None);
            self.ctx.device.free_memory(self.memory, None);
        }
    }
}

/// A host buffer the device imports and a command buffer, to copy device
/// buffers back to the host by the copy engine, 64 MiB at a time.
struct ReadBack {
    host: Imported,
    submitter: Submitter,
}

impl ReadBack {
    /// Bytes copied back per submission at most.
    const CHUNK: u64 = 64 << 20;

    fn new(ctx: &Arc<Context>) -> Result<Self, VulkanError> {
        Ok(Self { host: Imported::new(ctx, Self::CHUNK as usize, "read-back buffer")?, submitter: Submitter::new(ctx)? })
    }

    /// Copy `len` bytes at `offset` of `buffer` back. After a
    /// [`VulkanError::Timeout`] a copy may still write the host buffer: the
    /// caller must abandon `self` to the device, never drop or reuse it.
    ///
    /// # Safety
    /// As [`read_buffer`]'s, for `buffer` on this read-back's device.
    unsafe fn read(&self, buffer: vk::Buffer, offset: u64, len: u64) -> Result<Vec<u8>, VulkanError> {
        let mut out = Vec::with_capacity(len as usize);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(Self::CHUNK);
            let region = [vk::BufferCopy { src_offset: offset + done, dst_offset: 0, size: n }];
            let to = self.host.buffer;
            // Both buffers are this device's and alive until the wait below;
            // the region lies inside each (the caller's promise, and the host
            // buffer's size); the previous chunk was waited for.
            // SAFETY: per the lines above.
            unsafe { self.submitter.submit(|d, cmd| record_copy(d, cmd, buffer, to, &region))? };
            if !self.submitter.wait(gpuring_shared::batch::DEVICE_TIMEOUT)? {
                return Err(VulkanError::Timeout { what: "a read-back copy".into(), seconds: gpuring_shared::batch::DEVICE_TIMEOUT.as_secs() });
            }
            // The copy finished (its fence signalled after a barrier to host
            // reads), and the host pages hold at least `n` bytes.
            // SAFETY: per the line above.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(self.host.ptr().as_ptr(), n as usize) });
            done += n;
        }
        Ok(out)
    }
}

/// Copy `len` bytes at `offset` of `buffer` back to the host, 64 MiB at a
/// time, through an imported host buffer.
///
/// # Safety
/// `buffer` must be a buffer of `ctx`'s device with `TRANSFER_SRC` usage,
/// bound, at least `offset + len` bytes, alive and not written during the
/// call; nothing outside gpuring may submit to the context's queue
/// meanwhile (gpuring's own submissions take the context's lock).
pub unsafe fn read_buffer(ctx: &Arc<Context>, buffer: vk::Buffer, offset: u64, len: u64) -> Result<Vec<u8>, VulkanError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let back = ReadBack::new(ctx)?;
    // SAFETY: the caller's promise.
    let read = unsafe { back.read(buffer, offset, len) };
    if let Err(e @ VulkanError::Timeout { .. }) = &read {
        gpuring_shared::abandon_to_device("vulkan", e, back);
    }
    read
}
