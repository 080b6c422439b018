//! The ROCm consumer: the batched kernels of `consumer.cu` on the staging's
//! device.
//!
//! A host thread waits for published entries (as the host consumer does,
//! [`gpuring_shared::wait_for_entries`]) and queues one batch per wake-up on a
//! stream: `gr_partial` (the slots read in place, through the mapping,
//! several blocks per slot), `gr_finish` (results, then one release store of
//! `consumer`), and a stream callback that wakes the producer if it sleeps.
//! It does not wait for the batch: the stream keeps batches in order, so the
//! next batch is queued while the device works and the driver reads into
//! the slots that are free.
//!
//! There is no persistent mode here as there is for CUDA: its blocks wait on
//! each other, which needs a cooperative launch, and HIP has none for
//! modules (hiprtc's output) before ROCm 6.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpuring_core::io_queue::{self, Consumer};
use gpuring_core::StagingMemory;
use gpuring_shared::kernel::{chunks_per_slot, CHUNK_WORDS, THREADS};
use gpuring_shared::{spawn_consumer, wait_for_entries, wake_consumer, wake_producer, Waited};
use hip_sys::hiprt::{hipStreamNonBlocking, hipStream_t};

use crate::api::{Hip, NOT_READY};
use crate::error::RocmError;
use crate::kernel::Kernels;
use crate::memory::RocmStaging;

/// How long the device may take to finish what was queued.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries per batch at most (a grid's y dimension).
const MAX_BATCH: u32 = 65_535;
/// The nap between polls of a stream that is still busy.
const NAP: Duration = Duration::from_micros(20);

/// What the consumer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RocmStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes checksummed.
    pub bytes: u64,
    /// Entries released without a checksum because their read had failed.
    pub skipped: u64,
    /// Kernel launches (two per batch).
    pub launches: u64,
}

/// A stream and the scratch lanes of the batched kernels, freed on drop
/// (after the stream finished).
struct Resources {
    stream: hipStream_t,
    scratch: *mut c_void,
    hip: &'static Hip,
}

impl Resources {
    fn new(hip: &'static Hip, lanes: usize) -> Result<Self, RocmError> {
        let mut this = Self { stream: std::ptr::null_mut(), scratch: std::ptr::null_mut(), hip };
        // SAFETY: valid outputs; a failure leaves them null, which `Drop` skips.
        hip.check("hipStreamCreateWithFlags", unsafe { (hip.rt.hipStreamCreateWithFlags)(&mut this.stream, hipStreamNonBlocking) })?;
        let bytes = lanes * std::mem::size_of::<u32>();
        // SAFETY: as above.
        hip.check("hipMalloc (scratch lanes)", unsafe { (hip.rt.hipMalloc)(&mut this.scratch, bytes) })?;
        // SAFETY: `scratch` holds `bytes` bytes of device memory.
        hip.check("hipMemset (scratch lanes)", unsafe { (hip.rt.hipMemset)(this.scratch, 0, bytes) })?;
        Ok(this)
    }

    /// Wait for everything queued on the stream, at most [`DEVICE_TIMEOUT`].
    fn finish(&self, what: &str) -> Result<(), RocmError> {
        let deadline = Instant::now() + DEVICE_TIMEOUT;
        loop {
            // SAFETY: the stream is alive (owned by `self`).
            match unsafe { (self.hip.rt.hipStreamQuery)(self.stream) } {
                NOT_READY if Instant::now() < deadline => std::thread::sleep(NAP),
                NOT_READY => return Err(RocmError::Timeout { what: what.to_owned(), seconds: DEVICE_TIMEOUT.as_secs() }),
                code => return self.hip.check("hipStreamQuery", code),
            }
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        // SAFETY: created in `new` (null ones are skipped); the consumer
        // thread waited for the stream before it drops them.
        unsafe {
            if !self.scratch.is_null() {
                (self.hip.rt.hipFree)(self.scratch);
            }
            if !self.stream.is_null() {
                (self.hip.rt.hipStreamDestroy)(self.stream);
            }
        }
    }
}

// SAFETY: HIP streams and device allocations may be used from any thread;
// only the consumer thread uses them once it started.
unsafe impl Send for Resources {}

/// A running ROCm consumer. Stop it with [`RocmConsumer::join`] after the
/// producer closed the queue; dropping it stops it early.
pub struct RocmConsumer {
    handle: Option<JoinHandle<Result<RocmStats, RocmError>>>,
    stop: Arc<AtomicBool>,
    staging: Arc<RocmStaging>,
}

impl std::fmt::Debug for RocmConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocmConsumer").field("running", &self.handle.is_some()).finish()
    }
}

impl RocmConsumer {
    /// Compile the kernels for `staging`'s device (hiprtc), allocate their
    /// scratch, and start consuming on a new thread. Compile and allocation
    /// errors come back here, before any read.
    pub fn start(staging: Arc<RocmStaging>) -> Result<Self, RocmError> {
        let device = staging.device.clone();
        if staging.geometry().slot_size() as u64 > u32::MAX as u64 {
            return Err(RocmError::Unsupported { device: device.info.name.clone(), what: "a slot of 4 GiB or more".into() });
        }
        let kernels = Kernels::load(&device)?;
        let resources = Resources::new(device.hip, 2 * staging.queue().capacity() as usize)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            // Takes the queue's one consumer end: a second consumer is an error.
            spawn_consumer("gpuring-rocm", &staging, move |staging, consumer| {
                let result = staging.device.bind().and_then(|()| batched(staging, &kernels, &resources, &stop, consumer));
                if let Err(e @ RocmError::Timeout { .. }) = &result {
                    // The device may still run a kernel on this memory:
                    // never free it (or unload the module) under the device.
                    gpuring_shared::abandon_to_device("rocm", e, (staging.clone(), resources, kernels));
                }
                result
            })
            .map_err(RocmError::from)?
        };
        Ok(Self { handle: Some(handle), stop, staging })
    }

    /// Wait until the producer has closed the queue and every entry is
    /// released, then return what the consumer did.
    pub fn join(mut self) -> Result<RocmStats, RocmError> {
        let handle = self.handle.take().expect("joined once");
        handle.join().map_err(|_| RocmError::ConsumerPanicked)?
    }
}

impl Drop for RocmConsumer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.stop.store(true, Ordering::Release);
            wake_consumer(&self.staging.queue());
            let _ = handle.join();
        }
    }
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

fn batched(staging: &Arc<RocmStaging>, kernels: &Kernels, resources: &Resources, stop: &AtomicBool, handed: &mut Consumer) -> Result<RocmStats, RocmError> {
    let mut stats = RocmStats::default();
    let queued = queue_batches(staging, kernels, resources, stop, handed, &mut stats);
    // Whatever happened, nothing may still run on the device when the
    // staging can be freed.
    let finished = resources.finish("the queued batches");
    queued?;
    finished?;
    let q = staging.queue();
    gpuring_shared::kernel::batched_outcome(&q, staging.geometry(), handed.position(), stop.load(Ordering::Acquire))
        .map_err(|(position, what)| RocmError::Rejected { position, what })?;
    wake_producer(&q);
    Ok(stats)
}

/// Launch `f` on the stream with `args` (pointers to each argument, in the
/// kernel's parameter order).
fn launch(
    hip: &Hip,
    name: &'static str,
    f: hip_sys::hiprt::hipFunction_t,
    grid: (u32, u32),
    stream: hipStream_t,
    args: &mut [*mut c_void],
) -> Result<(), RocmError> {
    // SAFETY: `args` point at live values whose types match the kernel's
    // parameters in order (the callers below); the values are copied at launch.
    let code = unsafe { (hip.rt.hipModuleLaunchKernel)(f, grid.0, grid.1, 1, THREADS, 1, 1, 0, stream, args.as_mut_ptr(), std::ptr::null_mut()) };
    hip.check(name, code)
}

/// A kernel argument as `hipModuleLaunchKernel` takes it.
fn arg<T>(value: &mut T) -> *mut c_void {
    (value as *mut T).cast()
}

fn queue_batches(
    staging: &Arc<RocmStaging>,
    kernels: &Kernels,
    resources: &Resources,
    stop: &AtomicBool,
    handed: &mut Consumer,
    stats: &mut RocmStats,
) -> Result<(), RocmError> {
    let hip = staging.device.hip;
    let q = staging.queue();
    let geometry = staging.geometry();
    let (mut capacity, mut slot_count, mut slot_bytes) = (q.capacity(), geometry.slot_count(), geometry.slot_size() as u32);
    let (mut queue_ptr, mut slots_ptr, mut scratch) = (staging.queue.device_ptr(), staging.slots.device_ptr(), resources.scratch);
    let (chunks, mut chunk_words) = (chunks_per_slot(slot_bytes), CHUNK_WORDS);
    while let Waited::Ready(available) = wait_for_entries(&q, handed, stop) {
        if q.consumer_failed() != 0 {
            break;
        }
        let mut first = handed.position();
        let mut count = available.min(MAX_BATCH);
        // Count while the entries are still ours.
        for position in io_queue::positions(first, count) {
            let e = q.entry(position);
            stats.entries += 1;
            if e.status() != 0 {
                stats.skipped += 1;
            } else {
                stats.bytes += e.bytes();
            }
        }
        // gr_partial(queue, slots, scratch, first, capacity, slot_count, slot_bytes, chunk_words)
        let mut partial = [
            arg(&mut queue_ptr),
            arg(&mut slots_ptr),
            arg(&mut scratch),
            arg(&mut first),
            arg(&mut capacity),
            arg(&mut slot_count),
            arg(&mut slot_bytes),
            arg(&mut chunk_words),
        ];
        launch(hip, "hipModuleLaunchKernel (gr_partial)", kernels.partial, (chunks, count), resources.stream, &mut partial)?;
        // gr_finish(queue, scratch, first, count, capacity, slot_count, slot_bytes)
        let mut finish =
            [arg(&mut queue_ptr), arg(&mut scratch), arg(&mut first), arg(&mut count), arg(&mut capacity), arg(&mut slot_count), arg(&mut slot_bytes)];
        launch(hip, "hipModuleLaunchKernel (gr_finish)", kernels.finish, (1, 1), resources.stream, &mut finish)?;
        // SAFETY: `after_release` only reads the staging, which outlives the
        // stream's work (see `after_release`).
        let woken = unsafe { (hip.rt.hipStreamAddCallback)(resources.stream, Some(after_release), Arc::as_ptr(staging).cast_mut().cast(), 0) };
        hip.check("hipStreamAddCallback", woken)?;
        stats.launches += 2;
        handed.hand_over(count);
    }
    Ok(())
}
