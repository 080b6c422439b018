//! The Vulkan consumer: a host thread that dispatches the compute shader on
//! batches of published io_queue entries.
//!
//! The thread never reads a slot. It runs gpuring-shared's batched-consumer
//! engine ([`gpuring_shared::batch`], as the CUDA and ROCm consumers do),
//! which waits for published entries; for each batch it records and submits
//! one command buffer:
//!
//! 1. `checksum`, one workgroup per entry: check the entry, checksum the
//!    slot's bytes in parallel, write `result` and `consumer_status`;
//! 2. a pipeline barrier (compute writes before compute reads and writes);
//! 3. `release`, one invocation: check that every entry was accepted and
//!    the batch is in step, else set `consumer_failed`;
//! 4. a barrier from compute writes to host reads.
//!
//! Once the batch's fence has signalled (the device's writes, results
//! included, are then visible to this thread), the thread itself releases
//! the batch: a release store of `consumer = first + count`, which hands its
//! slots back to the producer. The producer's acquire of `consumer` thus
//! follows the fence, and it reads results that are there. (Were the shader
//! to store `consumer`, the host could see that store before the results:
//! device stores to host memory are ordered for the host only by the
//! barrier and the fence.)
//!
//! The engine waits on the batch's fence (vkWaitForFences, at most
//! [`DEVICE_TIMEOUT`](gpuring_shared::batch::DEVICE_TIMEOUT)) before the
//! next one, so one batch is on the
//! device at a time and releases stay in queue order; meanwhile the driver
//! keeps reading into the slots that are free. The batch is every entry
//! published when the thread looks, so the batches grow when the device is
//! the slower side.
//!
//! ## Release order and visibility
//!
//! The Vulkan consumer releases in queue order, one batch at a time. Its
//! host thread waits for published entries (never reading a slot), counts
//! the batch's bytes from the entries *before* submitting (after the release
//! the producer may reuse them), and submits one command buffer: `checksum`
//! (one workgroup per entry; writes `result` and `consumer_status`), a
//! compute-to-compute pipeline barrier, `release` (one invocation: checks
//! that `consumer` is where the batch starts and that no entry was rejected,
//! else sets `consumer_failed`), and a compute-to-host barrier. The slot
//! bytes and entries the shader reads were written before `vkQueueSubmit`,
//! which makes host writes visible to the device. The host thread releases
//! the batch itself, after the fence signalled: a release store of
//! `consumer = first + count` (`Consumer::release_batch`). The device's
//! writes are visible to that thread once the fence has signalled (the
//! compute-to-host barrier and the fence wait), and its release store
//! passes them on to the producer's acquire of `consumer`. The shader does
//! not store `consumer`: a device store to host memory may reach the host
//! before the device's earlier stores, so the producer could have read
//! results that were not there yet. One batch is on the device at a time, so
//! releases stay in queue order; meanwhile the driver keeps reading into the
//! free slots. A rejected entry sets `consumer_failed` and releases nothing;
//! the driver then stops with the consumer's error.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use gpuring_core::io_queue::Consumer;
use gpuring_core::StagingMemory;
use gpuring_shared::batch::{run_batches, Batch, BatchDevice, Failure, Release};
use gpuring_shared::{ConsumerStats, ConsumerThread};

use crate::context::Context;
use crate::copy::Submitter;
use crate::error::{call, VulkanError};
use crate::memory::{Imported, VulkanStaging};
use crate::shader::Shader;

/// The shader, SPIR-V built from `consumer.wgsl` by build.rs.
const SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/consumer.spv"));

/// The shader's push constants (`Params` in `consumer.wgsl`).
#[derive(Clone, Copy, Debug)]
struct Params {
    first: u32,
    count: u32,
    capacity: u32,
    slot_count: u32,
    slot_bytes: u32,
}

impl Params {
    fn bytes(&self) -> [u8; 20] {
        let words = [self.first, self.count, self.capacity, self.slot_count, self.slot_bytes];
        let mut out = [0u8; 20];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// The shader's pipelines and everything a batch needs, destroyed on drop.
/// gpuring's own shader has two (`checksum`, then `release`, which checks
/// the batch); a user's has one, `main`, and an output buffer.
struct Pipelines {
    ctx: Arc<Context>,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    main: vk::Pipeline,
    release: vk::Pipeline,
    /// A user's shader's output buffer (binding 2).
    output: Option<Imported>,
    pool: vk::DescriptorPool,
    set: vk::DescriptorSet,
    /// The command buffer and fence of one batch at a time.
    submitter: Submitter,
}

impl Pipelines {
    /// gpuring's checksum shader, or `user`'s.
    fn new(staging: &VulkanStaging, user: Option<&Shader>) -> Result<Self, VulkanError> {
        let ctx = staging.ctx.clone();
        let output = match user {
            Some(shader) => Some(Imported::new(&ctx, shader.output_bytes, "shader's output buffer")?),
            None => None,
        };
        let submitter = Submitter::new(&ctx)?;
        let null = Self {
            ctx: ctx.clone(),
            module: vk::ShaderModule::null(),
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
            main: vk::Pipeline::null(),
            release: vk::Pipeline::null(),
            output,
            pool: vk::DescriptorPool::null(),
            set: vk::DescriptorSet::null(),
            submitter,
        };
        // Every handle goes into `p` as soon as it exists, so an error on the
        // way out destroys what was made (`Drop` skips null handles).
        let mut p = null;
        let d = &ctx.device;
        let builtin: Vec<u32>;
        let words: &[u32] = match user {
            Some(shader) => &shader.spirv,
            None => {
                builtin = SPIRV.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
                &builtin
            }
        };
        let bound: &[u32] = if user.is_some() { &[0, 1, 2] } else { &[0, 1] };
        // SAFETY: for every creation below, the create infos and what they
        // point to are valid for the call, every handle they name is this
        // device's and alive, and `Drop` destroys each object once.
        unsafe {
            p.module = d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(words), None).map_err(call("vkCreateShaderModule"))?;
            let bindings: Vec<_> = bound
                .iter()
                .map(|&binding| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(binding)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            p.set_layout = d
                .create_descriptor_set_layout(&vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings), None)
                .map_err(call("vkCreateDescriptorSetLayout"))?;
            let ranges = [vk::PushConstantRange::default().stage_flags(vk::ShaderStageFlags::COMPUTE).size(20)];
            let set_layouts = [p.set_layout];
            p.layout = d
                .create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts).push_constant_ranges(&ranges), None)
                .map_err(call("vkCreatePipelineLayout"))?;
            let stage = |name| vk::PipelineShaderStageCreateInfo::default().stage(vk::ShaderStageFlags::COMPUTE).module(p.module).name(name);
            let names = match user {
                Some(shader) => vec![shader.entry.as_c_str()],
                None => vec![c"checksum", c"release"],
            };
            let infos: Vec<_> = names.iter().map(|&name| vk::ComputePipelineCreateInfo::default().stage(stage(name)).layout(p.layout)).collect();
            let pipelines = d.create_compute_pipelines(vk::PipelineCache::null(), &infos, None).map_err(|(made, result)| {
                for pipeline in made {
                    d.destroy_pipeline(pipeline, None);
                }
                VulkanError::Call { call: "vkCreateComputePipelines", result }
            })?;
            p.main = pipelines[0];
            p.release = pipelines.get(1).copied().unwrap_or(vk::Pipeline::null());
            let sizes = [vk::DescriptorPoolSize::default().ty(vk::DescriptorType::STORAGE_BUFFER).descriptor_count(bound.len() as u32)];
            p.pool = d
                .create_descriptor_pool(&vk::DescriptorPoolCreateInfo::default().max_sets(1).pool_sizes(&sizes), None)
                .map_err(call("vkCreateDescriptorPool"))?;
            p.set = d
                .allocate_descriptor_sets(&vk::DescriptorSetAllocateInfo::default().descriptor_pool(p.pool).set_layouts(&set_layouts))
                .map_err(call("vkAllocateDescriptorSets"))?[0];
            let queue_info = [vk::DescriptorBufferInfo::default().buffer(staging.queue.buffer).range(vk::WHOLE_SIZE)];
            let slots_info = [vk::DescriptorBufferInfo::default().buffer(staging.slots.buffer).range(vk::WHOLE_SIZE)];
            let output_info = p.output.as_ref().map(|o| [vk::DescriptorBufferInfo::default().buffer(o.buffer).range(vk::WHOLE_SIZE)]);
            let write = |binding, info| {
                vk::WriteDescriptorSet::default().dst_set(p.set).dst_binding(binding).descriptor_type(vk::DescriptorType::STORAGE_BUFFER).buffer_info(info)
            };
            let mut writes = vec![write(0, &queue_info), write(1, &slots_info)];
            if let Some(info) = &output_info {
                writes.push(write(2, info));
            }
            d.update_descriptor_sets(&writes, &[]);
        }
        Ok(p)
    }

    /// Record and submit one batch; its fence signals when it is done.
    fn submit(&self, params: Params) -> Result<(), VulkanError> {
        let barrier = |src, dst| [vk::MemoryBarrier::default().src_access_mask(src).dst_access_mask(dst)];
        let compute = vk::PipelineStageFlags::COMPUTE_SHADER;
        // The engine waited for the previous batch's fence, and only this
        // thread submits; every handle recorded lives as long as `self`.
        // SAFETY: the submitter's contract, as just said.
        unsafe {
            self.submitter.submit(|d, cmd| {
                d.cmd_bind_descriptor_sets(cmd, vk::PipelineBindPoint::COMPUTE, self.layout, 0, &[self.set], &[]);
                d.cmd_push_constants(cmd, self.layout, vk::ShaderStageFlags::COMPUTE, 0, &params.bytes());
                d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.main);
                d.cmd_dispatch(cmd, params.count, 1, 1);
                if self.release != vk::Pipeline::null() {
                    let between = barrier(vk::AccessFlags::SHADER_WRITE, vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE);
                    d.cmd_pipeline_barrier(cmd, compute, compute, vk::DependencyFlags::empty(), &between, &[], &[]);
                    d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.release);
                    d.cmd_dispatch(cmd, 1, 1, 1);
                }
                let to_host = barrier(vk::AccessFlags::SHADER_WRITE, vk::AccessFlags::HOST_READ);
                d.cmd_pipeline_barrier(cmd, compute, vk::PipelineStageFlags::HOST, vk::DependencyFlags::empty(), &to_host, &[], &[]);
            })
        }
    }
}

/// The Vulkan side of the batched-consumer engine: one submission per
/// batch, waited for by its fence before the engine releases the batch.
struct Dispatcher<'a> {
    pipelines: &'a Pipelines,
}

impl BatchDevice for Dispatcher<'_> {
    type Error = VulkanError;

    fn launch(&mut self, batch: &Batch) -> Result<(), VulkanError> {
        let Batch { first, count, capacity, slot_count, slot_bytes } = *batch;
        self.pipelines.submit(Params { first, count, capacity, slot_count, slot_bytes })
    }

    fn idle(&mut self) -> Result<bool, VulkanError> {
        self.pipelines.submitter.idle()
    }

    fn wait(&mut self, timeout: Duration) -> Result<bool, VulkanError> {
        // Sleep in the driver until the fence signals: polling would take
        // CPU from the device where the device is the CPU (lavapipe).
        self.pipelines.submitter.wait(timeout)
    }

    fn failure(&self, failure: Failure) -> VulkanError {
        match failure {
            Failure::Timeout { what, seconds } => VulkanError::Timeout { what, seconds },
            Failure::Rejected { position, what } => VulkanError::Rejected { position, what },
        }
    }
}

impl Drop for Pipelines {
    fn drop(&mut self) {
        // A batch still in flight (after an error or a timeout) is waited
        // for, without a limit, before anything it uses goes.
        let _ = self.submitter.wait(Duration::MAX);
        let d = &self.ctx.device;
        // SAFETY: nothing runs on the device any more (just waited); each
        // handle is this device's and destroyed once; null handles are
        // allowed. The submitter's own command buffer and fence go after.
        unsafe {
            d.destroy_descriptor_pool(self.pool, None);
            d.destroy_pipeline(self.main, None);
            d.destroy_pipeline(self.release, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_shader_module(self.module, None);
        }
    }
}

/// A running Vulkan consumer: gpuring's checksum shader
/// ([`VulkanConsumer::start`]) or one of yours ([`VulkanConsumer::with_shader`]).
/// Stop it with [`VulkanConsumer::join`] (or `finish`, for a shader's
/// output) after the producer closed the queue; dropping it stops it early.
#[derive(Debug)]
pub struct VulkanConsumer(ConsumerThread<(ConsumerStats, Vec<u8>), VulkanError>);

impl VulkanConsumer {
    /// Build gpuring's checksum shader's pipelines on `staging`'s device and
    /// start dispatching on a new thread. Takes the queue's consumer end: a
    /// second consumer of one staging region is an error.
    pub fn start(staging: Arc<VulkanStaging>) -> Result<Self, VulkanError> {
        Self::launch(staging, None)
    }

    /// As [`VulkanConsumer::start`], with a compute shader of yours in
    /// place of gpuring's: one dispatch of a workgroup per published entry
    /// and batch, bound as the [`shader`](crate::shader) module documents.
    /// The host thread releases each batch once its fence has signalled,
    /// and fails the queue if the shader marked an entry `GPURING_REJECTED`.
    pub fn with_shader(staging: Arc<VulkanStaging>, shader: &Shader) -> Result<Self, VulkanError> {
        Self::launch(staging, Some(shader))
    }

    fn launch(staging: Arc<VulkanStaging>, shader: Option<&Shader>) -> Result<Self, VulkanError> {
        let geometry = staging.geometry();
        if geometry.slot_size() as u64 > u32::MAX as u64 {
            return Err(VulkanError::TooLarge { what: "slot", len: geometry.slot_size() as u64, max: u32::MAX as u64 });
        }
        let pipelines = Pipelines::new(&staging, shader)?;
        // Takes the queue's one consumer end: a second consumer is an error.
        let thread = ConsumerThread::spawn("gpuring-vulkan", &staging, None, move |staging, consumer, stop| {
            let result = run(staging, &pipelines, stop, consumer);
            // A successful `run` returns with the device idle (after the
            // last fence): the output is final. After an error a batch may
            // still run; dropping the pipelines waits for the device.
            let output = match &result {
                Ok(_) => pipelines.output.as_ref().map_or_else(Vec::new, |o| {
                    // SAFETY: the output buffer's host pages are ours,
                    // `len` bytes, and no batch is running.
                    unsafe { std::slice::from_raw_parts(o.ptr().as_ptr(), o.len()) }.to_vec()
                }),
                Err(_) => Vec::new(),
            };
            drop(pipelines);
            result.map(|stats| (stats, output))
        })?;
        Ok(Self(thread))
    }

    /// Wait until the producer has closed the queue and every entry is
    /// released, then return what the consumer did.
    pub fn join(self) -> Result<ConsumerStats, VulkanError> {
        self.finish().map(|(stats, _)| stats)
    }

    /// As [`VulkanConsumer::join`], and return the contents of a user
    /// shader's output buffer (empty for gpuring's own shader; the mapping
    /// may be longer than [`Shader::with_output`] asked for, rounded up to
    /// the device's import alignment).
    pub fn finish(self) -> Result<(ConsumerStats, Vec<u8>), VulkanError> {
        self.0.join(VulkanError::ConsumerPanicked)
    }
}

fn run(staging: &VulkanStaging, pipelines: &Pipelines, stop: &AtomicBool, consumer: &mut Consumer) -> Result<ConsumerStats, VulkanError> {
    let mut dispatcher = Dispatcher { pipelines };
    let done = run_batches(&staging.queue(), staging.geometry(), consumer, stop, Release::Host, &mut dispatcher)?;
    Ok(ConsumerStats { entries: done.entries, bytes: done.bytes, skipped: done.skipped })
}
