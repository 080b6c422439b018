//! The CUDA consumer: the kernels of `consumer.cu` on the staging's device,
//! in one of three modes ([`Mode`]).
//!
//! - **Batched** (the default): a host thread, gpuring-shared's
//!   batched-consumer engine ([`gpuring_shared::batch`], which the ROCm and
//!   Vulkan consumers run too), waits for published entries and queues one
//!   batch per wake-up on a stream: `gr_partial` (the slots read
//!   in place, through the mapping, several blocks per slot), `gr_finish`
//!   (results, then one release store of `consumer`), and a host function
//!   that wakes the producer if it sleeps. It does not wait for the batch:
//!   the stream keeps batches in order, so the next batch is queued while
//!   the device works and the driver reads into the slots that are free.
//! - **Persistent**: one launch of `gr_persistent` for the whole run; its
//!   blocks poll the io_queue themselves. The host thread only watches
//!   `consumer` to wake the producer (a GPU cannot wake a futex) and tells
//!   the kernel to stop if the consumer is dropped early.
//! - **DeviceCopy**: as batched, but each published slot is first copied into
//!   device memory by the copy engine (`cuMemcpyHtoDAsync` on a second
//!   stream, which the compute stream waits for), and the kernels read the
//!   copy in VRAM: for consumers that need the bytes on the device. The
//!   copies are counted ([`CudaStats::device_copy_bytes`]); they are not a
//!   userspace copy, so the zero-bounce verdict is unchanged.
//!
//! ## Memory scope and release order
//!
//! The CUDA consumer reads and writes every io_queue word with system scope
//! (volatile access plus `__threadfence_system()`, before a release store,
//! after an acquire load), since the other party is the CPU across PCIe.
//! Batched and device-copy modes queue batches on one stream without waiting
//! for them: `gr_partial` (lanes of slot chunks, summed into per-entry
//! scratch with atomics), `gr_finish` (results, then one release of
//! `consumer = first + count` after checking `consumer == first`), then a
//! host function that futex-wakes the producer. Stream order makes the
//! releases happen in queue order; the host thread tracks what it handed over
//! (`Consumer::hand_over`) separately from what was released. In device-copy
//! mode the slot copies run on a second stream and the compute stream waits
//! for their event; a VRAM copy of slot *s* is only overwritten after the
//! entry that last used *s* was released, which happens after the kernels
//! that read the copy. The persistent kernel's block 0 is the releaser; the
//! other blocks claim positions in order from a device counter, checksum,
//! and mark `done[position % capacity] = position + 1` (the marks start at
//! the first position, never zero, which is the `position + 1` of the entry
//! at 2^32 - 1); the releaser moves
//! `consumer` over every done entry in order. It is launched cooperatively
//! (all blocks resident, or the launch fails), since its blocks wait on each
//! other; a device without cooperative launches gets an error at start,
//! never a plain launch; the host thread only watches `consumer` to wake the producer and
//! sets an abort word if the consumer is dropped early.
//!
//! ## Deliberately absent

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{sys, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use gpuring_core::io_queue::Consumer;
use gpuring_core::StagingMemory;
use gpuring_shared::batch::{run_batches, wait_idle, Batch, BatchDevice, Failure, Release};
use gpuring_shared::kernel::{chunks_per_slot, UserKernel, CHUNK_WORDS, THREADS};
use gpuring_shared::{wake_producer, ConsumerThread};

use crate::device::check;
use crate::error::{call, CudaError};
use crate::kernel::{compile_kernel, Kernels};
use crate::memory::CudaStaging;

/// Empty polls of the persistent mode's host thread before it naps.
const SPINS: u32 = 256;
/// The nap.
const NAP: Duration = Duration::from_micros(20);

/// How the consumer runs on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// One launch per batch of published entries, reading the mapped slots.
    #[default]
    Batched,
    /// One kernel for the whole run, polling the io_queue.
    Persistent,
    /// As batched, after the copy engine moved each slot into device memory.
    DeviceCopy,
    /// A kernel of the caller's, one launch per batch
    /// ([`CudaConsumer::with_kernel`]); not one `--cuda-mode` offers.
    User,
}

impl Mode {
    /// Every mode, default first.
    pub const ALL: [Mode; 3] = [Mode::Batched, Mode::Persistent, Mode::DeviceCopy];

    /// The mode's name, as `--cuda-mode` takes it and reports show it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Persistent => "persistent",
            Mode::DeviceCopy => "device-copy",
            Mode::User => "user",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What the consumer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes checksummed.
    pub bytes: u64,
    /// Entries released without a checksum because their read had failed.
    pub skipped: u64,
    /// Bytes the copy engine moved from the slots into device memory
    /// ([`Mode::DeviceCopy`]; 0 otherwise).
    pub device_copy_bytes: u64,
    /// Kernel launches (two per batch; one for the persistent mode).
    pub launches: u64,
}

/// Device memory the kernels need besides the staging.
struct Buffers {
    /// Batched: two lanes per queue entry. Persistent: the claim counter,
    /// the skipped count and the byte count (`consumer.cu`).
    scratch: CudaSlice<u32>,
    /// Persistent: `position + 1` of the entry done at each index.
    done: CudaSlice<u32>,
    /// DeviceCopy: a copy of the slot region in device memory.
    mirror: Option<CudaSlice<u8>>,
    /// DeviceCopy: the stream the copies run on.
    copies: Option<Arc<CudaStream>>,
}

/// A running CUDA consumer: gpuring's checksum kernels
/// ([`CudaConsumer::start`]) or one of yours ([`CudaConsumer::with_kernel`]).
/// Stop it with [`CudaConsumer::join`] (or `finish`, for a kernel's output)
/// after the producer closed the queue; dropping it stops it early.
#[derive(Debug)]
pub struct CudaConsumer {
    thread: ConsumerThread<(CudaStats, Vec<u8>), CudaError>,
    mode: Mode,
}

impl CudaConsumer {
    /// Compile the kernels for `staging`'s device (NVRTC), allocate what
    /// `mode` needs on it, and start consuming on a new thread. Compile and
    /// allocation errors come back here, before any read.
    pub fn start(staging: Arc<CudaStaging>, mode: Mode) -> Result<Self, CudaError> {
        let device = staging.device.clone();
        let geometry = staging.geometry();
        refuse_huge_slots(&staging)?;
        if mode == Mode::User {
            let what = "a kernel to run: the user mode runs a kernel of the caller's, through CudaConsumer::with_kernel".into();
            return Err(CudaError::Unsupported { device: device.info.name.clone(), what });
        }
        if mode == Mode::Persistent && !device.info.cooperative_launch {
            // Its blocks wait on each other: launched plainly, a block that is
            // not resident would never run and the others would spin forever.
            let what = "a cooperative launch, which the persistent mode needs (its blocks wait on each other, so all must be resident at once); the batched mode needs none".into();
            return Err(CudaError::Unsupported { device: device.info.name.clone(), what });
        }
        device.bind()?;
        let kernels = Kernels::load(&device)?;
        let stream = device.ctx.new_stream().map_err(call("cuStreamCreate"))?;
        let capacity = staging.queue().capacity() as usize;
        // Zeroed lanes (batched); for the persistent kernel, the claim counter
        // starts where the queue's consumer is and the counters at zero.
        let start = staging.queue().header().consumer();
        let mut initial = vec![0u32; (2 * capacity).max(4)];
        initial[0] = if mode == Mode::Persistent { start } else { 0 };
        let scratch = stream.clone_htod(&initial).map_err(call("cuMemcpyHtoD (scratch)"))?;
        // Done marks hold `position + 1` of the entry done at each index;
        // they start at the first position, which is no entry's `position +
        // 1` in the first lap (zero would be, at position 2^32 - 1).
        let marks = vec![start; if mode == Mode::Persistent { capacity } else { 1 }];
        let done = stream.clone_htod(&marks).map_err(call("cuMemcpyHtoD (done marks)"))?;
        let (mirror, copies) = if mode == Mode::DeviceCopy {
            let mirror = stream.alloc_zeros::<u8>(geometry.region_len()).map_err(call("cuMemAlloc (device copy of the slots)"))?;
            (Some(mirror), Some(device.ctx.new_stream().map_err(call("cuStreamCreate"))?))
        } else {
            (None, None)
        };
        stream.synchronize().map_err(call("cuStreamSynchronize"))?;
        let buffers = Buffers { scratch, done, mirror, copies };
        staging.abort_flag().store(0, Ordering::Release);
        // Takes the queue's one consumer end: a second consumer is an error.
        let thread = ConsumerThread::spawn("gpuring-cuda", &staging, Some(abort(&staging)), move |staging, consumer, stop| {
            let result = staging.device.bind().and_then(|()| match mode {
                Mode::Persistent => persistent(staging, &kernels, &stream, &buffers, stop),
                // `Mode::User` was refused above.
                Mode::Batched | Mode::DeviceCopy | Mode::User => {
                    let work = Work::Checksum { kernels: &kernels, buffers: &buffers };
                    batched(staging, &stream, work, Release::Device, stop, consumer)
                }
            });
            if let Err(e @ CudaError::Timeout { .. }) = &result {
                // The device may still run a kernel or a copy on this
                // memory: never free it under the device.
                gpuring_shared::abandon_to_device("cuda", e, (staging.clone(), buffers, stream, kernels));
            }
            result.map(|stats| (stats, Vec::new()))
        })?;
        Ok(Self { thread, mode })
    }

    /// Run a kernel of yours as the consumer, one launch per batch of
    /// published entries, on `stream` (yours; `None`: a new one on the
    /// staging's context, which may be yours too:
    /// [`Device::from_context`](crate::Device::from_context)), under the
    /// contract [`UserKernel`] documents. The host thread (the shared
    /// batched-consumer engine) waits for each launch, fails the queue on a
    /// rejected entry, and releases the batch; [`CudaConsumer::finish`]
    /// returns the kernel's output. Takes the queue's consumer end.
    ///
    /// # Safety
    /// The kernel has the documented signature, reads the queue and the
    /// slots only within their sizes, writes only its entries' `result` and
    /// `consumer_status` and its output buffer, and returns: the device
    /// writes into this process's mapped pages, which Rust cannot check.
    pub unsafe fn with_kernel(staging: Arc<CudaStaging>, kernel: &UserKernel, stream: Option<Arc<CudaStream>>) -> Result<Self, CudaError> {
        let device = staging.device.clone();
        refuse_huge_slots(&staging)?;
        device.bind()?;
        let (major, minor) = device.info.compute_capability;
        let ptx = compile_kernel(kernel, major, minor)?;
        let module = device.ctx.load_module(ptx).map_err(call("cuModuleLoadData (a driver older than NVRTC refuses its PTX)"))?;
        let function = module.load_function(kernel.name()).map_err(call("cuModuleGetFunction (the kernel's name)"))?;
        let stream = match stream {
            Some(stream) => stream,
            None => device.ctx.new_stream().map_err(call("cuStreamCreate"))?,
        };
        let output = stream.alloc_zeros::<u8>(kernel.output_bytes()).map_err(call("cuMemAlloc (the kernel's output)"))?;
        stream.synchronize().map_err(call("cuStreamSynchronize"))?;
        let block = kernel.block();
        // Takes the queue's one consumer end: a second consumer is an error.
        let thread = ConsumerThread::spawn("gpuring-cuda-user", &staging, Some(abort(&staging)), move |staging, consumer, stop| {
            let work = Work::User { function: &function, block, output: &output };
            let result = staging.device.bind().and_then(|()| batched(staging, &stream, work, Release::Host, stop, consumer));
            if let Err(e @ CudaError::Timeout { .. }) = &result {
                // As in `start`: never free what the device may still use.
                gpuring_shared::abandon_to_device("cuda", e, (staging.clone(), output, stream, function, module));
                return result.map(|stats| (stats, Vec::new()));
            }
            let stats = result?;
            let bytes = stream.clone_dtoh(&output).map_err(call("cuMemcpyDtoH (the kernel's output)"))?;
            Ok((stats, bytes))
        })?;
        Ok(Self { thread, mode: Mode::User })
    }

    /// The mode it runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Wait until the producer has closed the queue and every entry is
    /// released, then return what the consumer did.
    pub fn join(self) -> Result<CudaStats, CudaError> {
        self.finish().map(|(stats, _)| stats)
    }

    /// As [`CudaConsumer::join`], and return a user kernel's output buffer
    /// (empty for gpuring's own kernels).
    pub fn finish(self) -> Result<(CudaStats, Vec<u8>), CudaError> {
        self.thread.join(CudaError::ConsumerPanicked)
    }
}

/// What a drop does besides setting the stop flag: tell a persistent kernel
/// to stop (its abort flag).
fn abort(staging: &Arc<CudaStaging>) -> Box<dyn Fn() + Send + Sync> {
    let staging = staging.clone();
    Box::new(move || staging.abort_flag().store(1, Ordering::Release))
}

/// Slots of 4 GiB or more cannot be indexed by the kernels' 32-bit sizes:
/// refused before any thread starts.
fn refuse_huge_slots(staging: &CudaStaging) -> Result<(), CudaError> {
    if staging.geometry().slot_size() as u64 > u32::MAX as u64 {
        return Err(CudaError::Unsupported { device: staging.device.info.name.clone(), what: "a slot of 4 GiB or more".into() });
    }
    Ok(())
}

/// Runs on the driver's callback thread after a batch's release: wake the
/// producer if it sleeps waiting for it.
unsafe extern "C" fn after_release(staging: *mut c_void) {
    // SAFETY: `staging` is the `CudaStaging` of the consumer thread that
    // queued this call; that thread holds it and waits for its stream to
    // finish (this call included) before it returns.
    let staging = unsafe { &*staging.cast::<CudaStaging>() };
    wake_producer(&staging.queue());
}

/// Whether everything queued on `stream` has finished.
pub(crate) fn stream_idle(stream: &CudaStream) -> Result<bool, CudaError> {
    // SAFETY: the stream is alive (borrowed).
    match unsafe { sys::cuStreamQuery(stream.cu_stream()) } {
        sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        code => check("cuStreamQuery", code).map(|()| true),
    }
}

/// The engine's error for a failure.
pub(crate) fn failure(failure: Failure) -> CudaError {
    match failure {
        Failure::Timeout { what, seconds } => CudaError::Timeout { what, seconds },
        Failure::Rejected { position, what } => CudaError::Rejected { position, what },
    }
}

/// What a batch runs on the device.
enum Work<'a> {
    /// gpuring's `gr_partial` + `gr_finish` (and, for DeviceCopy, the
    /// copies into `buffers.mirror` first).
    Checksum { kernels: &'a Kernels, buffers: &'a Buffers },
    /// A user's kernel, one launch per batch.
    User { function: &'a CudaFunction, block: u32, output: &'a CudaSlice<u8> },
}

/// The CUDA side of the batched-consumer engine.
struct Launcher<'a> {
    staging: &'a Arc<CudaStaging>,
    stream: &'a Arc<CudaStream>,
    work: Work<'a>,
    launches: u64,
    device_copy_bytes: u64,
}

impl BatchDevice for Launcher<'_> {
    type Error = CudaError;

    fn launch(&mut self, batch: &Batch) -> Result<(), CudaError> {
        let (stream, staging) = (self.stream, self.staging);
        let queue_ptr = staging.queue.device_ptr();
        let Batch { first, count, capacity, slot_count, slot_bytes } = *batch;
        match self.work {
            Work::User { function, block, output } => {
                let slots_ptr = staging.slots.device_ptr();
                let config = LaunchConfig { grid_dim: (count, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
                let mut launch = stream.launch_builder(function);
                launch.arg(&queue_ptr).arg(&slots_ptr).arg(&first).arg(&count).arg(&capacity).arg(&slot_count).arg(&slot_bytes).arg(output);
                // SAFETY: the arguments are those of the documented signature,
                // which `with_kernel`'s caller promised the kernel has; every
                // pointer covers what the contract lets the kernel touch.
                unsafe { launch.launch(config) }.map_err(call("cuLaunchKernel (the user's kernel)"))?;
                self.launches += 1;
            }
            Work::Checksum { kernels, buffers } => {
                let slots_ptr = match &buffers.mirror {
                    Some(mirror) => mirror.device_ptr(stream).0,
                    None => staging.slots.device_ptr(),
                };
                if let Some(copies) = &buffers.copies {
                    self.device_copy_bytes += copy_slots(staging, batch, slots_ptr, copies)?;
                    let copied = copies.record_event(None).map_err(call("cuEventRecord"))?;
                    stream.wait(&copied).map_err(call("cuStreamWaitEvent"))?;
                }
                let partial = LaunchConfig { grid_dim: (chunks_per_slot(slot_bytes), count, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                let mut launch = stream.launch_builder(&kernels.partial);
                launch.arg(&queue_ptr).arg(&slots_ptr).arg(&buffers.scratch).arg(&first).arg(&capacity).arg(&slot_count).arg(&slot_bytes).arg(&CHUNK_WORDS);
                // SAFETY: the arguments match `gr_partial`'s parameters in order and
                // type; every pointer covers what the kernel indexes with these sizes.
                unsafe { launch.launch(partial) }.map_err(call("cuLaunchKernel (gr_partial)"))?;
                let finish = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
                let mut launch = stream.launch_builder(&kernels.finish);
                launch.arg(&queue_ptr).arg(&buffers.scratch).arg(&first).arg(&count).arg(&capacity).arg(&slot_count).arg(&slot_bytes);
                // SAFETY: as above, for `gr_finish`.
                unsafe { launch.launch(finish) }.map_err(call("cuLaunchKernel (gr_finish)"))?;
                // SAFETY: `after_release` only reads the staging, which outlives the
                // stream's work (see `after_release`).
                let woken = unsafe { sys::cuLaunchHostFunc(stream.cu_stream(), Some(after_release), Arc::as_ptr(staging).cast_mut().cast()) };
                check("cuLaunchHostFunc", woken)?;
                self.launches += 2;
            }
        }
        Ok(())
    }

    fn idle(&mut self) -> Result<bool, CudaError> {
        // Copies queued after the last batch the compute stream waited for
        // (a launch that failed midway) count too.
        let copies = match &self.work {
            Work::Checksum { buffers: Buffers { copies: Some(copies), .. }, .. } => stream_idle(copies)?,
            _ => true,
        };
        Ok(copies && stream_idle(self.stream)?)
    }

    fn failure(&self, f: Failure) -> CudaError {
        failure(f)
    }
}

/// DeviceCopy: queue a copy of each good slot of `batch` into the device
/// copy of the slots at `mirror`, on `copies`; returns the bytes queued.
fn copy_slots(staging: &CudaStaging, batch: &Batch, mirror: u64, copies: &CudaStream) -> Result<u64, CudaError> {
    let q = staging.queue();
    let mut queued = 0;
    for position in batch.positions() {
        let e = q.entry(position);
        let (slot, bytes) = (e.slot(), e.bytes());
        // A failed read has nothing to copy; an entry out of range is left
        // to the kernel to reject.
        if e.status() != 0 || slot >= batch.slot_count || bytes > batch.slot_bytes as u64 || bytes == 0 {
            continue;
        }
        let (to, from) = (mirror + slot as u64 * batch.slot_bytes as u64, staging.slot_ptr(slot).as_ptr().cast());
        // SAFETY: both ranges lie inside their regions (checked just above); the host slot is page-locked (so the copy is asynchronous DMA) and stays ours until the batch is released, which the compute stream does only after it waited for this copy.
        let copied = unsafe { sys::cuMemcpyHtoDAsync_v2(to, from, bytes as usize, copies.cu_stream()) };
        check("cuMemcpyHtoDAsync", copied)?;
        queued += bytes;
    }
    Ok(queued)
}

/// Run batches of `work` until the queue is finished; `release` says who
/// stores `consumer`.
fn batched(
    staging: &Arc<CudaStaging>,
    stream: &Arc<CudaStream>,
    work: Work<'_>,
    release: Release,
    stop: &AtomicBool,
    consumer: &mut Consumer,
) -> Result<CudaStats, CudaError> {
    let mut launcher = Launcher { staging, stream, work, launches: 0, device_copy_bytes: 0 };
    let done = run_batches(&staging.queue(), staging.geometry(), consumer, stop, release, &mut launcher)?;
    Ok(CudaStats {
        entries: done.entries,
        bytes: done.bytes,
        skipped: done.skipped,
        device_copy_bytes: launcher.device_copy_bytes,
        launches: launcher.launches,
    })
}

fn persistent(staging: &CudaStaging, kernels: &Kernels, stream: &Arc<CudaStream>, buffers: &Buffers, stop: &AtomicBool) -> Result<CudaStats, CudaError> {
    let q = staging.queue();
    let geometry = staging.geometry();
    let info = &staging.device.info;
    let (capacity, slot_count, slot_bytes) = (q.capacity(), geometry.slot_count(), geometry.slot_size() as u32);
    // One worker block per multiprocessor (no more than there are entries),
    // plus the releaser; all must be resident at once, since they wait on
    // each other, which a cooperative launch guarantees (or refuses).
    let workers = info.multiprocessors.min(capacity).max(1);
    let config = LaunchConfig { grid_dim: (workers + 1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let (queue_ptr, slots_ptr, abort_ptr) = (staging.queue.device_ptr(), staging.slots.device_ptr(), staging.control.device_ptr());
    let mut launch = stream.launch_builder(&kernels.persistent);
    launch.arg(&queue_ptr).arg(&slots_ptr).arg(&buffers.scratch).arg(&buffers.done).arg(&abort_ptr).arg(&capacity).arg(&slot_count).arg(&slot_bytes);
    // `start` refused devices without cooperative launches.
    // SAFETY: the arguments match `gr_persistent`'s parameters in order and
    // type; every pointer covers what the kernel indexes with these sizes.
    let launched = unsafe { launch.launch_cooperative(config) };
    launched.map_err(call("cuLaunchCooperativeKernel (gr_persistent)"))?;

    let first = q.header().consumer();
    let mut released = first;
    let mut idle = 0;
    let watched = loop {
        if stop.load(Ordering::Acquire) {
            staging.abort_flag().store(1, Ordering::Release);
            break Ok(());
        }
        let now = q.header().consumer();
        if now != released {
            released = now;
            wake_producer(&q);
            idle = 0;
        }
        if q.consumer_failed() != 0 || (q.is_closed() && q.header().producer() == released) {
            break Ok(());
        }
        // SAFETY: the stream is alive (borrowed).
        match unsafe { sys::cuStreamQuery(stream.cu_stream()) } {
            sys::CUresult::CUDA_ERROR_NOT_READY => {}
            // The kernel returned: the checks below say whether it finished.
            sys::CUresult::CUDA_SUCCESS => break Ok(()),
            code => break check("cuStreamQuery", code),
        }
        idle += 1;
        if idle < SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(NAP);
        }
    };
    if watched.is_err() {
        staging.abort_flag().store(1, Ordering::Release);
    }
    let finished = wait_idle(&mut Watch(stream), "the persistent kernel after the queue was finished");
    if finished.is_err() {
        staging.abort_flag().store(1, Ordering::Release);
    }
    watched?;
    finished?;
    wake_producer(&q);
    if q.consumer_failed() != 0 {
        return Err(rejection(staging, q.header().producer()));
    }
    let released = q.header().consumer();
    let producer = q.header().producer();
    if !stop.load(Ordering::Acquire) && released != producer {
        return Err(CudaError::Rejected {
            position: released,
            what: format!("the persistent kernel returned with entries {released}..{producer} unreleased (the queue was not closed?)"),
        });
    }
    let counters = stream.clone_dtoh(&buffers.scratch.slice(0..4)).map_err(call("cuMemcpyDtoH (counters)"))?;
    Ok(CudaStats {
        entries: released.wrapping_sub(first) as u64,
        bytes: counters[2] as u64 | (counters[3] as u64) << 32,
        skipped: counters[1] as u64,
        device_copy_bytes: 0,
        launches: 1,
    })
}

/// Why the kernel failed the queue; `end` bounds the entries to look at.
fn rejection(staging: &CudaStaging, end: u32) -> CudaError {
    let (position, what) = gpuring_shared::kernel::rejection(&staging.queue(), staging.geometry(), end);
    CudaError::Rejected { position, what }
}

/// The persistent kernel's stream, for [`wait_idle`].
struct Watch<'a>(&'a CudaStream);

impl BatchDevice for Watch<'_> {
    type Error = CudaError;

    fn launch(&mut self, _: &Batch) -> Result<(), CudaError> {
        unreachable!("the persistent kernel takes no batches")
    }

    fn idle(&mut self) -> Result<bool, CudaError> {
        stream_idle(self.0)
    }

    fn failure(&self, f: Failure) -> CudaError {
        failure(f)
    }
}
