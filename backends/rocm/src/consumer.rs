//! The ROCm consumer: gpuring's batched kernels of `consumer.cu`
//! ([`RocmConsumer::start`]) or a kernel of yours
//! ([`RocmConsumer::with_kernel`]) on the staging's device.
//!
//! A host thread, gpuring-shared's batched-consumer engine
//! ([`gpuring_shared::batch`], which the CUDA and Vulkan consumers run
//! too), waits for published entries and queues one batch per wake-up on
//! a stream. gpuring's kernels: `gr_partial` (the slots read in place,
//! through the mapping, several blocks per slot), `gr_finish` (results,
//! then one release store of `consumer`), and a stream callback that wakes
//! the producer if it sleeps; the engine does not wait for the batch, as
//! the stream keeps batches in order, so the next batch is queued while the
//! device works and the driver reads into the slots that are free. A
//! user's kernel: one launch per batch, which the engine waits for before
//! it reads the verdicts and releases the batch from the host.
//!
//! There is no persistent mode here as there is for CUDA: its blocks wait on
//! each other, which needs a cooperative launch, and HIP has none for
//! modules (hiprtc's output) before ROCm 6.

use std::ffi::c_void;
use std::sync::Arc;

use gpuring_core::StagingMemory;
use gpuring_shared::batch::{run_batches, Batch, BatchDevice, Failure, Release};
use gpuring_shared::copy::CopyPlan;
use gpuring_shared::kernel::{chunks_per_slot, UserKernel, CHUNK_WORDS, THREADS};
use gpuring_shared::{wake_producer, ConsumerThread};
use hip_sys::hiprt::{hipFunction_t, hipStreamNonBlocking, hipStream_t};

use crate::api::{Hip, HOST_TO_DEVICE, NOT_READY};
use crate::device::Device;
use crate::error::RocmError;
use crate::kernel::{compile_kernel, Kernels, Module};
use crate::memory::{DeviceBuffer, RocmStaging};

/// What the consumer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RocmStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes of the entries whose read succeeded (that gpuring's kernels
    /// checksummed, or a user's kernel was given).
    pub bytes: u64,
    /// Entries released without being read because their read had failed.
    pub skipped: u64,
    /// Kernel launches (two per batch for gpuring's kernels, one for yours).
    pub launches: u64,
    /// Bytes the copy engine moved into a buffer of yours
    /// ([`RocmConsumer::copy_into`]).
    pub device_copy_bytes: u64,
}

/// A stream and a zeroed device buffer (the batched kernels' scratch lanes,
/// or a user kernel's output), freed on drop (after the stream finished).
struct Resources {
    stream: hipStream_t,
    /// Whether `stream` is ours to destroy (not the caller's).
    own_stream: bool,
    /// `None` for no bytes (the copy consumer has none).
    buffer: Option<DeviceBuffer>,
    hip: &'static Hip,
}

impl Resources {
    /// `bytes` of `device`'s memory; `stream`: the caller's, or `None` for
    /// a new one.
    fn new(device: &Arc<Device>, bytes: usize, stream: Option<hipStream_t>) -> Result<Self, RocmError> {
        let hip = device.hip;
        let mut this = Self { stream: stream.unwrap_or(std::ptr::null_mut()), own_stream: stream.is_none(), buffer: None, hip };
        if this.own_stream {
            // SAFETY: a valid output; a failure leaves it null, which `Drop` skips.
            hip.check("hipStreamCreateWithFlags", unsafe { (hip.rt.hipStreamCreateWithFlags)(&mut this.stream, hipStreamNonBlocking) })?;
        }
        if bytes > 0 {
            this.buffer = Some(DeviceBuffer::new(device, bytes)?);
        }
        Ok(this)
    }

    /// The buffer's device address (null without one).
    fn buffer_ptr(&self) -> *mut c_void {
        self.buffer.as_ref().map_or(std::ptr::null_mut(), DeviceBuffer::as_ptr)
    }

    /// The buffer's bytes, copied back (the stream must be idle).
    fn read(&self) -> Result<Vec<u8>, RocmError> {
        self.buffer.as_ref().map_or(Ok(Vec::new()), |b| b.read(0, b.len()))
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        // Made in `new` (a caller's stream is not ours, a null one failed to
        // be made); the consumer thread waited for the stream before it drops
        // it, or leaked it. The buffer frees itself after.
        // SAFETY: per the lines above.
        unsafe {
            if self.own_stream && !self.stream.is_null() {
                (self.hip.rt.hipStreamDestroy)(self.stream);
            }
        }
    }
}

// SAFETY: HIP streams and device allocations may be used from any thread;
// only the consumer thread uses them once it started.
unsafe impl Send for Resources {}

/// A running ROCm consumer: gpuring's checksum kernels
/// ([`RocmConsumer::start`]) or one of yours ([`RocmConsumer::with_kernel`]).
/// Stop it with [`RocmConsumer::join`] (or `finish`, for a kernel's
/// output) after the producer closed the queue; dropping it stops it early.
#[derive(Debug)]
pub struct RocmConsumer(ConsumerThread<(RocmStats, Vec<u8>), RocmError>);

impl RocmConsumer {
    /// Compile the kernels for `staging`'s device (hiprtc), allocate their
    /// scratch, and start consuming on a new thread. Compile and allocation
    /// errors come back here, before any read.
    pub fn start(staging: Arc<RocmStaging>) -> Result<Self, RocmError> {
        let device = staging.device.clone();
        refuse_huge_slots(&staging)?;
        let kernels = Kernels::load(&device)?;
        let lanes = 2 * staging.queue().capacity() as usize;
        let resources = Resources::new(&device, lanes * std::mem::size_of::<u32>(), None)?;
        Self::spawn("gpuring-rocm", staging, Release::Device, Work::Checksum(kernels), resources)
    }

    /// Run a kernel of yours as the consumer, one launch per batch of
    /// published entries, on `stream` (yours, on the staging's device;
    /// `None`: a new one), under the contract [`UserKernel`] documents; the
    /// same source serves CUDA and HIP when it keeps to their common
    /// dialect. The host thread (the shared batched-consumer engine) waits
    /// for each launch, fails the queue on a rejected entry, and releases
    /// the batch; [`RocmConsumer::finish`] returns the kernel's output.
    /// Takes the queue's consumer end.
    ///
    /// # Safety
    /// The kernel has the documented signature, reads the queue and the
    /// slots only within their sizes, writes only its entries' `result` and
    /// `consumer_status` and its output buffer, and returns: the device
    /// writes into this process's mapped pages, which Rust cannot check. A
    /// `stream` of yours is a live stream of the staging's device that
    /// outlives the consumer.
    pub unsafe fn with_kernel(staging: Arc<RocmStaging>, kernel: &UserKernel, stream: Option<hipStream_t>) -> Result<Self, RocmError> {
        let device = staging.device.clone();
        refuse_huge_slots(&staging)?;
        device.bind()?;
        let module = Module::load(&device, &compile_kernel(kernel, None)?)?;
        let function = module.function(kernel.name())?;
        let resources = Resources::new(&device, kernel.output_bytes(), stream)?;
        let work = Work::User { function, block: kernel.block(), _module: module };
        Self::spawn("gpuring-rocm-user", staging, Release::Host, work, resources)
    }

    /// Copy each published slot's window into device memory of yours by
    /// `plan` (the copy consumer of `read_into`): one `hipMemcpyAsync` per
    /// entry on `stream` (yours, or `None`: a new one); the host thread
    /// waits for each batch's copies before it releases the batch. Takes
    /// the queue's consumer end.
    ///
    /// # Safety
    /// `dst .. dst + plan.dst_len` is device memory of the staging's device,
    /// alive and not used by anything else until the consumer is joined (or
    /// dropped); a `stream` of yours is a live stream of that device that
    /// outlives the consumer.
    pub unsafe fn copy_into(staging: Arc<RocmStaging>, dst: *mut c_void, plan: CopyPlan, stream: Option<hipStream_t>) -> Result<Self, RocmError> {
        let resources = Resources::new(&staging.device, 0, stream)?;
        Self::spawn("gpuring-rocm-copy", staging, Release::Host, Work::Copy { plan, dst }, resources)
    }

    /// Start the consumer thread: the engine on `work`'s kernels.
    fn spawn(name: &str, staging: Arc<RocmStaging>, release: Release, work: Work, resources: Resources) -> Result<Self, RocmError> {
        // Takes the queue's one consumer end: a second consumer is an error.
        let thread = ConsumerThread::spawn(name, &staging, None, move |staging, consumer, stop| {
            let result = staging.device.bind().and_then(|()| {
                let mut launcher = Launcher { staging, resources: &resources, work: &work, launches: 0, copied: 0 };
                let done = run_batches(&staging.queue(), staging.geometry(), consumer, stop, release, &mut launcher)?;
                let (launches, device_copy_bytes) = (launcher.launches, launcher.copied);
                Ok(RocmStats { entries: done.entries, bytes: done.bytes, skipped: done.skipped, launches, device_copy_bytes })
            });
            if let Err(e @ RocmError::Timeout { .. }) = &result {
                // The device may still run a kernel on this memory:
                // never free it (or unload the module) under the device.
                gpuring_shared::abandon_to_device("rocm", e, (staging.clone(), resources, work));
                return result.map(|stats| (stats, Vec::new()));
            }
            let stats = result?;
            // The stream is idle: the output is final.
            let output = if release == Release::Host { resources.read()? } else { Vec::new() };
            Ok((stats, output))
        })
        .map_err(RocmError::from)?;
        Ok(Self(thread))
    }

    /// Wait until the producer has closed the queue and every entry is
    /// released, then return what the consumer did.
    pub fn join(self) -> Result<RocmStats, RocmError> {
        self.finish().map(|(stats, _)| stats)
    }

    /// As [`RocmConsumer::join`], and return a user kernel's output buffer
    /// (empty for gpuring's own kernels).
    pub fn finish(self) -> Result<(RocmStats, Vec<u8>), RocmError> {
        self.0.join(RocmError::ConsumerPanicked)
    }
}

/// Slots of 4 GiB or more cannot be indexed by the kernels' 32-bit sizes.
fn refuse_huge_slots(staging: &RocmStaging) -> Result<(), RocmError> {
    if staging.geometry().slot_size() as u64 > u32::MAX as u64 {
        return Err(RocmError::Unsupported { device: staging.device.info.name.clone(), what: "a slot of 4 GiB or more".into() });
    }
    Ok(())
}

/// Runs on the runtime's callback thread after a batch's release: wake the
/// producer if it sleeps waiting for it.
unsafe extern "C" fn after_release(_stream: hipStream_t, _status: std::ffi::c_int, staging: *mut c_void) {
    // SAFETY: `staging` is the `RocmStaging` of the consumer thread that
    // queued this call; that thread holds it and waits for its stream to
    // finish (this call included) before it returns.
    let staging = unsafe { &*staging.cast::<RocmStaging>() };
    wake_producer(&staging.queue());
}

/// What a batch runs on the device, loaded.
enum Work {
    /// gpuring's `gr_partial` + `gr_finish`.
    Checksum(Kernels),
    /// A user's kernel, one launch of `block` threads per entry.
    User {
        function: hipFunction_t,
        block: u32,
        // Keeps `function` loaded.
        _module: Module,
    },
    /// Copies of each entry's window into the caller's device memory.
    Copy { plan: CopyPlan, dst: *mut c_void },
}

// SAFETY: function handles are process-wide in HIP (see `Module`); only
// the consumer thread launches them.
unsafe impl Send for Work {}

/// The HIP side of the batched-consumer engine.
struct Launcher<'a> {
    staging: &'a Arc<RocmStaging>,
    resources: &'a Resources,
    work: &'a Work,
    launches: u64,
    /// Bytes queued for the copy engine.
    copied: u64,
}

impl Launcher<'_> {
    /// Launch `f` as (`grid`, `block` threads) on the stream with `args`
    /// (pointers to each argument, in the kernel's parameter order).
    fn launch_one(&mut self, name: &'static str, f: hipFunction_t, grid: (u32, u32), block: u32, args: &mut [*mut c_void]) -> Result<(), RocmError> {
        let (hip, stream, params) = (self.resources.hip, self.resources.stream, args.as_mut_ptr());
        // SAFETY: `args` point at live values whose types match the kernel's
        // parameters in order (the callers below, and for a user's kernel the
        // signature `with_kernel`'s caller promised); HIP copies them at launch.
        let code = unsafe { (hip.rt.hipModuleLaunchKernel)(f, grid.0, grid.1, 1, block, 1, 1, 0, stream, params, std::ptr::null_mut()) };
        hip.check(name, code)?;
        self.launches += 1;
        Ok(())
    }
}

/// A kernel argument as `hipModuleLaunchKernel` takes it.
fn arg<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

impl BatchDevice for Launcher<'_> {
    type Error = RocmError;

    fn launch(&mut self, batch: &Batch) -> Result<(), RocmError> {
        let Batch { mut first, mut count, mut capacity, mut slot_count, mut slot_bytes } = *batch;
        let (mut queue_ptr, mut slots_ptr, mut buffer) = (self.staging.queue.device_ptr(), self.staging.slots.device_ptr(), self.resources.buffer_ptr());
        match self.work {
            Work::Copy { plan, dst } => {
                let (hip, q, base) = (self.resources.hip, self.staging.queue(), self.staging.slot_ptr(0).as_ptr());
                let mut found = Vec::new();
                for position in batch.positions() {
                    let regions = plan.regions(&q.entry(position).completion(), slot_count, slot_bytes as u64, &mut found);
                    regions.map_err(|what| RocmError::Rejected { position, what })?;
                    for r in &found {
                        // The source lies in the slot region (`regions`
                        // checked slot and length), page-locked by the
                        // staging, and stays ours until the batch is
                        // released, after the stream is idle; the
                        // destination window lies inside the caller's memory
                        // (checked against `dst_len`), which `copy_into`'s
                        // caller keeps alive until the join.
                        // SAFETY: per the lines above.
                        let code = unsafe {
                            let from = base.add(r.slot_offset as usize).cast::<c_void>();
                            (hip.rt.hipMemcpyAsync)(dst.add(r.dst as usize), from, r.len as usize, HOST_TO_DEVICE, self.resources.stream)
                        };
                        hip.check("hipMemcpyAsync", code)?;
                        self.copied += r.len;
                    }
                }
                Ok(())
            }
            Work::User { function, block, .. } => {
                // name(queue, slots, first, count, capacity, slot_count, slot_bytes, output)
                let mut args = [
                    arg(&mut queue_ptr),
                    arg(&mut slots_ptr),
                    arg(&mut first),
                    arg(&mut count),
                    arg(&mut capacity),
                    arg(&mut slot_count),
                    arg(&mut slot_bytes),
                    arg(&mut buffer),
                ];
                self.launch_one("hipModuleLaunchKernel (the user's kernel)", *function, (count, 1), *block, &mut args)
            }
            Work::Checksum(kernels) => {
                let (chunks, mut chunk_words) = (chunks_per_slot(slot_bytes), CHUNK_WORDS);
                // gr_partial(queue, slots, scratch, first, capacity, slot_count, slot_bytes, chunk_words)
                let mut partial = [
                    arg(&mut queue_ptr),
                    arg(&mut slots_ptr),
                    arg(&mut buffer),
                    arg(&mut first),
                    arg(&mut capacity),
                    arg(&mut slot_count),
                    arg(&mut slot_bytes),
                    arg(&mut chunk_words),
                ];
                self.launch_one("hipModuleLaunchKernel (gr_partial)", kernels.partial, (chunks, count), THREADS, &mut partial)?;
                // gr_finish(queue, scratch, first, count, capacity, slot_count, slot_bytes)
                let mut finish =
                    [arg(&mut queue_ptr), arg(&mut buffer), arg(&mut first), arg(&mut count), arg(&mut capacity), arg(&mut slot_count), arg(&mut slot_bytes)];
                self.launch_one("hipModuleLaunchKernel (gr_finish)", kernels.finish, (1, 1), THREADS, &mut finish)?;
                let hip = self.resources.hip;
                // SAFETY: `after_release` only reads the staging, which outlives the
                // stream's work (see `after_release`).
                let woken =
                    unsafe { (hip.rt.hipStreamAddCallback)(self.resources.stream, Some(after_release), Arc::as_ptr(self.staging).cast_mut().cast(), 0) };
                hip.check("hipStreamAddCallback", woken)
            }
        }
    }

    fn idle(&mut self) -> Result<bool, RocmError> {
        let hip = self.resources.hip;
        // SAFETY: the stream is alive (the resources own it, or the caller
        // promised it outlives the consumer).
        match unsafe { (hip.rt.hipStreamQuery)(self.resources.stream) } {
            NOT_READY => Ok(false),
            code => hip.check("hipStreamQuery", code).map(|()| true),
        }
    }

    fn failure(&self, failure: Failure) -> RocmError {
        match failure {
            Failure::Timeout { what, seconds } => RocmError::Timeout { what, seconds },
            Failure::Rejected { position, what } => RocmError::Rejected { position, what },
        }
    }
}
