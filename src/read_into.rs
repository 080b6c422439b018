//! Read file ranges into memory the user owns, on every backend.
//!
//! A [`ReadRequest`] names a file, a byte range of it, and where in the
//! destination the range goes. Every function here checks all requests
//! before it reads anything (a window past the destination's end, two
//! windows that overlap, a range past its file's end: an error naming the
//! request, and nothing written); a zero-length request does nothing.
//!
//! - [`host`]: into a `&mut [u8]`; the kernel (buffered) or the device
//!   (`O_DIRECT`) writes it, with no slot and no copy in between
//!   ([`gpuring_uring::read_into()`]).
//! - [`vulkan`] / [`vulkan_buffer`]: into a device-local `vk::Buffer`; the
//!   bytes go storage → registered slot → the copy engine
//!   (`vkCmdCopyBuffer`, batched) → the buffer, overlapped with the next
//!   reads; a slot is read into again only once its copy has finished.
//! - `cuda` (feature `cuda`): into a cudarc `CudaSlice<u8>`, by
//!   `cuMemcpyHtoDAsync` on the caller's stream.
//! - `rocm` (feature `rocm`): into a device pointer, by `hipMemcpyHtoDAsync`.
//!
//! On the GPU paths the copy engine's bytes are `device_copy_bytes` in the
//! report; no byte is copied by the CPU, so `zero_bounce` holds. The
//! requests of one file whose ranges touch or overlap are read as one range
//! (a checkpoint's tensors: one read range a file), so small requests share
//! slots. Under `O_DIRECT` a range is read from its start rounded down to
//! 4096 bytes, and only the asked windows are copied.
//!
//! [`verify`] compares every destination window with an independent
//! `pread` of its range (on a GPU, the window read back by the copy engine).
//!
//! ```no_run
//! use gpuring::read_into::{self, ReadOptions, ReadRequest};
//!
//! let mut weights = gpuring::HostBuffer::new(8 << 20)?;
//! let requests = [ReadRequest::new("model.bin", 4096..(4 << 20) + 4096, 0), ReadRequest::new("model.bin", 0..4096, 4 << 20)];
//! let report = read_into::host(&requests, &mut weights, &ReadOptions::default())?;
//! let matched = read_into::verify(&requests, |r| Ok(weights[r.dst_range().start as usize..r.dst_range().end as usize].to_vec()))?;
//! assert!(matched.iter().all(|&m| m));
//! println!("{:.2} GiB/s", report.gib_per_s);
//! # Ok::<(), gpuring::Error>(())
//! ```

// The slot path serves only the GPU backends.
#![cfg_attr(not(any(feature = "vulkan", feature = "cuda", feature = "rocm")), allow(dead_code, unused_imports))]

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use gpuring_core::{StagingMemory, Telemetry};
use gpuring_shared::copy::{CopyPlan, CopyStats, CopyWindow, SourceWindows};
use gpuring_uring::read_into::check_requests;
use gpuring_uring::ReadIntoOptions;
pub use gpuring_uring::ReadRequest;
use gpuring_uring::{Driver, DriverOptions, Source};
use serde::Serialize;

use crate::backend::Backend;
use crate::telemetry::TelemetryReport;
use crate::Error;

/// How `read_into` reads, on every backend.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Read with `O_DIRECT`: the device writes the destination (on the
    /// host) or the slots (on a GPU). On the host, a window whose file
    /// offset, length or destination address is not 4096-aligned goes
    /// through a scratch buffer instead, and its bytes count as `bounce`.
    pub direct: bool,
    /// Slots in a GPU's staging ring; on the host, reads in flight per ring.
    pub slots: u32,
    /// Bytes per slot (a multiple of 4096); on the host, bytes per read.
    pub slot_size: usize,
    /// Rings that read, each on its own thread (on GPUs into their share of
    /// the slots; on the host straight into their part of the
    /// destination). Default: one per CPU
    /// ([`crate::backend::default_shards`]).
    pub shards: u32,
}

impl Default for ReadOptions {
    fn default() -> Self {
        let (slots, slot_size) = crate::backend::default_ring(None, None);
        Self { direct: false, slots, slot_size, shards: crate::backend::default_shards(crate::backend::ConsumerRuns::Elsewhere, slots, slot_size) }
    }
}

/// What a `read_into` did.
#[derive(Clone, Debug, Serialize)]
pub struct ReadIntoReport {
    /// The backend (`host`, `vulkan`, `cuda`, `rocm`).
    pub backend: &'static str,
    /// Bytes put into the destination.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// `bytes / seconds`, GiB/s.
    pub gib_per_s: f64,
    /// How the bytes arrived (in slots on a GPU, in the destination on host).
    pub telemetry: TelemetryReport,
    /// Bytes the GPU's copy engine moved from slots into the destination.
    pub device_copy_bytes: u64,
    /// No byte was copied by the CPU in userspace.
    pub zero_bounce: bool,
    /// Every byte was written by the device.
    pub dma_only: bool,
}

impl ReadIntoReport {
    fn new(backend: &'static str, telemetry: &Telemetry, bytes: u64, seconds: f64, device_copy_bytes: u64) -> Result<Self, Error> {
        let verdict = telemetry.validate().map_err(|e| Error::Ingest(e.into()))?;
        let gib_per_s = if seconds > 0.0 { bytes as f64 / seconds / (1u64 << 30) as f64 } else { 0.0 };
        Ok(Self {
            backend,
            bytes,
            seconds,
            gib_per_s,
            telemetry: telemetry.into(),
            device_copy_bytes,
            zero_bounce: verdict.zero_bounce,
            dma_only: verdict.dma_only,
        })
    }
}

/// Where [`into_new_buffer`] puts the bytes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The backend whose memory holds the buffer.
    pub backend: Backend,
    /// The GPU backend's device (an index or part of a name).
    pub device: Option<String>,
    /// Read with `O_DIRECT`; the GPU backends' staging ring (the host
    /// backend reads `slot_size` at a time, `slots` reads in flight).
    pub slots: ReadOptions,
}

impl Default for Target {
    fn default() -> Self {
        Self { backend: Backend::Host, device: None, slots: ReadOptions::default() }
    }
}

/// Allocate `len` bytes on `target`'s backend (a `Vec`, a Vulkan
/// [`DeviceBuffer`](gpuring_vulkan::DeviceBuffer), a CUDA `CudaSlice`, a
/// ROCm device buffer), read `requests` into it, and, with `verify`, compare
/// every window (read back by the copy engine) with the file: one verdict
/// per request. The buffer is freed on return: this is the command line's
/// and the bench's path, and an example of each backend's calls.
pub fn into_new_buffer(target: &Target, requests: &[ReadRequest], len: u64, verify: bool) -> Result<(ReadIntoReport, Option<Vec<bool>>), Error> {
    let options = &target.slots;
    let check = |read_back: &mut dyn FnMut(&ReadRequest) -> Result<Vec<u8>, Error>| if verify { self::verify(requests, read_back).map(Some) } else { Ok(None) };
    match target.backend {
        Backend::Host => {
            let mut buffer = crate::HostBuffer::new(len as usize)?;
            let report = host(requests, &mut buffer, options)?;
            let matched = check(&mut |r| Ok(buffer[r.dst_range().start as usize..r.dst_range().end as usize].to_vec()))?;
            Ok((report, matched))
        }
        #[cfg(feature = "vulkan")]
        Backend::Vulkan => {
            let ctx = Arc::new(gpuring_vulkan::Context::new(target.device.as_deref())?);
            let mut buffer = gpuring_vulkan::DeviceBuffer::new(&ctx, len)?;
            let report = vulkan(requests, &mut buffer, options)?;
            let matched = check(&mut |r| Ok(buffer.read(r.dst_offset, r.bytes())?))?;
            Ok((report, matched))
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            use gpuring_cuda::CudaError;
            let device = gpuring_cuda::Device::open(target.device.as_deref())?;
            let stream = device.context().new_stream().map_err(|error| CudaError::Call { call: "cuStreamCreate", error })?;
            let mut buffer = stream.alloc_zeros::<u8>(len.max(1) as usize).map_err(|error| CudaError::Call { call: "cuMemAlloc", error })?;
            let report = cuda(requests, &mut buffer, &stream, options)?;
            let matched = check(&mut |r| {
                let window = buffer.slice(r.dst_offset as usize..(r.dst_offset + r.bytes()) as usize);
                Ok(stream.clone_dtoh(&window).map_err(|error| CudaError::Call { call: "cuMemcpyDtoH (read-back)", error })?)
            })?;
            Ok((report, matched))
        }
        #[cfg(feature = "rocm")]
        Backend::Rocm => {
            let device = gpuring_rocm::Device::open(target.device.as_deref())?;
            let buffer = gpuring_rocm::DeviceBuffer::new(&device, len as usize)?;
            // SAFETY: the buffer is `len` bytes of `device`'s memory, alive
            // and used by nothing else for the call; gpuring's own stream.
            let report = unsafe { rocm(&device, requests, buffer.as_ptr(), len, None, options) }?;
            let matched = check(&mut |r| Ok(buffer.read(r.dst_offset as usize, r.bytes() as usize)?))?;
            Ok((report, matched))
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::BackendNotBuilt { name: other.name().into() }),
    }
}

/// Read `requests` into `dst`, in host memory (see the module docs): the
/// kernel (buffered) or the device (`O_DIRECT`) writes `dst` itself.
///
/// Under `O_DIRECT`, give it a [`HostBuffer`](crate::HostBuffer) (or a
/// window of one at a 4096-aligned offset) and 4096-aligned file ranges:
/// every byte is then DMA. A `Vec<u8>` is not page-aligned, so every
/// window of it goes through a scratch buffer and a copy: the report's
/// `telemetry.bounce_bytes` counts them and `zero_bounce` is false.
pub fn host(requests: &[ReadRequest], dst: &mut [u8], options: &ReadOptions) -> Result<ReadIntoReport, Error> {
    let stats = gpuring_uring::read_into(requests, dst, &uring_options(options))?;
    ReadIntoReport::new("host", &stats.telemetry, stats.bytes, stats.elapsed.as_secs_f64(), 0)
}

/// Read every request into its own destination, `dsts[request.dst]`, in
/// host memory: a scatter read (one allocation per tensor, say), with the
/// checks, reads and accounting of [`host`]; requests name their
/// destination with [`ReadRequest::to_destination`]. The requests of one
/// file are read in file order, whatever destination they go to.
pub fn host_many(requests: &[ReadRequest], dsts: &mut [&mut [u8]], options: &ReadOptions) -> Result<ReadIntoReport, Error> {
    let stats = gpuring_uring::read_into_many(requests, dsts, &uring_options(options))?;
    ReadIntoReport::new("host", &stats.telemetry, stats.bytes, stats.elapsed.as_secs_f64(), 0)
}

/// The ring's options for `options` on the host: reads of a slot's size,
/// as many in flight as there are slots.
fn uring_options(options: &ReadOptions) -> ReadIntoOptions {
    let chunk = u32::try_from(options.slot_size).unwrap_or(u32::MAX) / 4096 * 4096;
    ReadIntoOptions { direct: options.direct, chunk: chunk.max(4096), depth: options.slots.max(1), shards: options.shards, ..ReadIntoOptions::default() }
}

/// Compare every non-empty request's destination window (as `read_back`
/// returns it) with an independent `pread` of its range: one verdict per
/// request (`true` for empty ones).
pub fn verify(requests: &[ReadRequest], mut read_back: impl FnMut(&ReadRequest) -> Result<Vec<u8>, Error>) -> Result<Vec<bool>, Error> {
    let mut files: Vec<(&std::path::Path, std::fs::File)> = Vec::new();
    let mut verdicts = Vec::with_capacity(requests.len());
    for r in requests {
        if r.is_empty() {
            verdicts.push(true);
            continue;
        }
        let at = match files.iter().position(|(p, _)| *p == r.path.as_path()) {
            Some(at) => at,
            None => {
                let file = std::fs::File::open(&r.path).map_err(|e| reference_error(r, e))?;
                files.push((&r.path, file));
                files.len() - 1
            }
        };
        let mut want = vec![0u8; r.bytes() as usize];
        files[at].1.read_exact_at(&mut want, r.range.start).map_err(|e| reference_error(r, e))?;
        let got = read_back(r)?;
        verdicts.push(got == want);
    }
    Ok(verdicts)
}

fn reference_error(r: &ReadRequest, e: std::io::Error) -> Error {
    let errno = rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO);
    Error::Ingest(gpuring_uring::IngestError::Open { path: r.path.clone(), errno })
}

/// The sources and the copy plan for `requests` into `dst_len` bytes.
/// The requests of one file whose ranges touch or overlap are read as one
/// source (a checkpoint's tensors are contiguous: one source a file), so
/// small requests share slots and reads, and under `O_DIRECT` no block is
/// read twice; a source starts at its first range's start, rounded down to
/// 4096 under `O_DIRECT`.
fn plan(requests: &[ReadRequest], dst_len: u64, direct: bool) -> Result<(Vec<Source>, CopyPlan), Error> {
    check_requests(requests, &[dst_len])?;
    let align = |at: u64| if direct { at / 4096 * 4096 } else { at };
    // Each file's requests, files in the order they first appear.
    let mut files: Vec<(&std::path::Path, Vec<&ReadRequest>)> = Vec::new();
    for r in requests.iter().filter(|r| !r.is_empty()) {
        match files.iter_mut().find(|(p, _)| *p == r.path.as_path()) {
            Some((_, list)) => list.push(r),
            None => files.push((&r.path, vec![r])),
        }
    }
    let (mut sources, mut plans) = (Vec::new(), Vec::new());
    for (path, mut list) in files {
        list.sort_by_key(|r| r.range.start);
        let mut i = 0;
        while i < list.len() {
            let (start, mut end) = (align(list[i].range.start), list[i].range.end);
            let mut windows = Vec::new();
            while i < list.len() && align(list[i].range.start) <= end {
                let r = list[i];
                end = end.max(r.range.end);
                windows.push(CopyWindow { start: r.range.start, end: r.range.end, dst: r.dst_offset });
                i += 1;
            }
            sources.push(Source::range(path, start..end));
            plans.push(SourceWindows::new(windows));
        }
    }
    Ok((sources, CopyPlan { sources: plans, dst_len }))
}

/// Read `requests` through `staging`'s slots while a copy consumer, which
/// `start` launches with the plan, moves each slot into the destination;
/// `join` waits for it. The GPU backends' common part.
fn through_slots<S: StagingMemory, C>(
    backend: &'static str,
    staging: Arc<S>,
    requests: &[ReadRequest],
    dst_len: u64,
    options: &ReadOptions,
    start: impl FnOnce(CopyPlan) -> Result<C, Error>,
    join: impl FnOnce(C) -> Result<CopyStats, Error>,
) -> Result<ReadIntoReport, Error> {
    let (sources, plan) = plan(requests, dst_len, options.direct)?;
    let bytes = plan.bytes();
    let started = std::time::Instant::now();
    let consumer = start(plan)?;
    let driven = (|| {
        let mut driver =
            Driver::new(staging.clone(), DriverOptions { direct: options.direct, shards: options.shards, passthrough: false, ..DriverOptions::default() })?;
        let result = driver.ingest(&sources, |_| {});
        driver.close_queue();
        result
    })();
    // The driver closes the queue when it drops; if it was never built,
    // close it here so the consumer stops.
    staging.queue().close();
    // A consumer failure explains a stalled driver: report it first.
    let copied = join(consumer)?;
    let stats = driven?;
    if copied.bytes != bytes {
        return Err(Error::CopyMismatch { copied: copied.bytes, asked: bytes });
    }
    ReadIntoReport::new(backend, &stats.telemetry, bytes, started.elapsed().as_secs_f64(), copied.bytes)
}

/// Read `requests` into `dst`, through slots imported into its device and
/// that device's copy engine (see the module docs).
///
/// gpuring's own submissions to the context's queue take the context's
/// lock; on a device of yours ([`gpuring_vulkan::Context::from_device`]),
/// do not submit to that queue yourself during the call.
#[cfg(feature = "vulkan")]
pub fn vulkan(requests: &[ReadRequest], dst: &mut gpuring_vulkan::DeviceBuffer, options: &ReadOptions) -> Result<ReadIntoReport, Error> {
    // SAFETY: a `DeviceBuffer` is a bound TRANSFER_DST buffer of its
    // context's device, `len` bytes, borrowed mutably for the call; the
    // queue rule is the one `Context::from_device` already puts on its caller.
    unsafe { vulkan_buffer(dst.context(), requests, dst.buffer(), dst.len(), options) }
}

/// As [`vulkan`], into a buffer of yours.
///
/// # Safety
/// `dst` must be a buffer of `ctx`'s device with `TRANSFER_DST` usage,
/// bound to memory, at least `dst_len` bytes, alive and unused by anything
/// else for the call; nothing outside gpuring may submit to `ctx`'s queue
/// during it.
#[cfg(feature = "vulkan")]
pub unsafe fn vulkan_buffer(
    ctx: &Arc<gpuring_vulkan::Context>,
    requests: &[ReadRequest],
    dst: gpuring_vulkan::ash::vk::Buffer,
    dst_len: u64,
    options: &ReadOptions,
) -> Result<ReadIntoReport, Error> {
    let geometry = gpuring_core::SlotGeometry::new(options.slots, options.slot_size)?;
    let staging = Arc::new(gpuring_vulkan::VulkanStaging::on(ctx.clone(), geometry, options.slots)?);
    // SAFETY: the caller's promise covers `dst`; `through_slots` joins the
    // consumer before it returns.
    let start = |plan| Ok(unsafe { gpuring_vulkan::CopyConsumer::start(staging.clone(), dst, plan) }?);
    through_slots("vulkan", staging.clone(), requests, dst_len, options, start, |c: gpuring_vulkan::CopyConsumer| Ok(c.join()?))
}

/// Read `requests` into `dst`, device memory of `stream`'s context, through
/// slots mapped into that device and its copy engine
/// (`cuMemcpyHtoDAsync` on `stream`; see the module docs). Returns once
/// every copy has finished.
#[cfg(feature = "cuda")]
pub fn cuda(
    requests: &[ReadRequest],
    dst: &mut gpuring_cuda::cudarc::driver::CudaSlice<u8>,
    stream: &Arc<gpuring_cuda::cudarc::driver::CudaStream>,
    options: &ReadOptions,
) -> Result<ReadIntoReport, Error> {
    use gpuring_cuda::cudarc::driver::DevicePtrMut;
    let device = gpuring_cuda::Device::from_context(stream.context().clone())?;
    if !Arc::ptr_eq(dst.context(), stream.context()) {
        let what = "a destination of another context than the stream's: allocate it on the stream's context".into();
        return Err(gpuring_cuda::CudaError::Unsupported { device: device.info().name.clone(), what }.into());
    }
    let geometry = gpuring_core::SlotGeometry::new(options.slots, options.slot_size)?;
    let staging = Arc::new(gpuring_cuda::CudaStaging::on(device, geometry, options.slots)?);
    let len = dst.len() as u64;
    // `_written` makes later work on `dst`'s stream wait for this call's.
    let (ptr, _written) = dst.device_ptr_mut(stream);
    // SAFETY: `dst` is borrowed mutably for the call, `len` bytes of the
    // stream's context; `through_slots` joins the consumer before it returns.
    let start = |plan| Ok(unsafe { gpuring_cuda::CudaCopyConsumer::start(staging.clone(), ptr, plan, stream.clone()) }?);
    through_slots("cuda", staging.clone(), requests, len, options, start, |c: gpuring_cuda::CudaCopyConsumer| Ok(c.join()?))
}

/// Read `requests` into `dst_len` bytes of device memory at `dst` on
/// `device`, through slots mapped into it and its copy engine
/// (`hipMemcpyAsync` on `stream`, yours, or `None` for a new one; see the
/// module docs). Returns once every copy has finished.
///
/// # Safety
/// `dst .. dst + dst_len` is device memory of `device`, alive and unused by
/// anything else for the call; a `stream` of yours is a live stream of it.
#[cfg(feature = "rocm")]
pub unsafe fn rocm(
    device: &Arc<gpuring_rocm::Device>,
    requests: &[ReadRequest],
    dst: *mut std::ffi::c_void,
    dst_len: u64,
    stream: Option<gpuring_rocm::hip_sys::hiprt::hipStream_t>,
    options: &ReadOptions,
) -> Result<ReadIntoReport, Error> {
    let geometry = gpuring_core::SlotGeometry::new(options.slots, options.slot_size)?;
    let staging = Arc::new(gpuring_rocm::RocmStaging::on(device.clone(), geometry, options.slots)?);
    // SAFETY: the caller's promise covers `dst` and `stream`; `through_slots`
    // joins the consumer before it returns.
    let start = |plan| Ok(unsafe { gpuring_rocm::RocmConsumer::copy_into(staging.clone(), dst, plan, stream) }?);
    let join = |c: gpuring_rocm::RocmConsumer| {
        let stats = c.join()?;
        Ok(CopyStats { entries: stats.entries, bytes: stats.device_copy_bytes, copies: 0, batches: 0 })
    };
    through_slots("rocm", staging.clone(), requests, dst_len, options, start, join)
}
