//! A whole ingest: backend memory and consumer, the driver, verification.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

use gpuring_core::checksum::{Lanes, StreamDigest};
use gpuring_core::{SlotGeometry, StagingMemory, Telemetry};
use gpuring_uring::{Driver, DriverOptions, Event, Source, SourceKind};
use serde::Serialize;

pub use crate::backend::{default_ring, default_shards, Backend, CudaMode, BACKENDS, DEFAULT_SLOTS, DEFAULT_SLOT_SIZE};
use crate::error::Error;
pub use crate::telemetry::TelemetryReport;

/// How to ingest.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// The backend (one of [`BACKENDS`]).
    pub backend: Backend,
    /// The GPU backend's device: an index or part of a name (`None`: the
    /// backend's choice, GPUs first).
    pub device: Option<String>,
    /// Number of slots (default: [`default_ring`]).
    pub slots: u32,
    /// Bytes per slot (default: [`default_ring`]).
    pub slot_size: usize,
    /// Rings reading at once, each on its own thread (default:
    /// [`default_shards`] for the host backend; see `gpuring_uring::shard`).
    pub shards: u32,
    /// Read with O_DIRECT.
    pub direct: bool,
    /// Read with `pread()` into a heap buffer and copy into the slots (the
    /// bounce path, for comparison) instead of io_uring.
    pub bounce: bool,
    /// Compare the consumer's checksums with an independent read.
    pub verify: bool,
    /// Give up when the consumer releases nothing for this long.
    pub release_timeout: Duration,
    /// NVMe Reads into the registered slots (`Some(true)`), by plain address
    /// (`Some(false)`), or as the kernel allows (`None`, probed).
    pub nvme_fixed: Option<bool>,
    /// How the CUDA consumer runs (`None`: batched). Only the cuda backend
    /// takes it.
    pub cuda_mode: Option<CudaMode>,
    /// Put the slots in this PCI device's peer memory (P2PDMA; its address,
    /// as `gpuring probe` lists it) instead of host memory; the host
    /// backend's consumer reads them through the mapping. Only the host
    /// backend takes it.
    pub peer_memory: Option<String>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        let (slots, slot_size) = default_ring(None, None);
        Self {
            backend: Backend::Host,
            device: None,
            slots,
            slot_size,
            shards: default_shards(Backend::Host.consumer_runs(), slots, slot_size),
            direct: false,
            bounce: false,
            verify: true,
            release_timeout: Duration::from_secs(60),
            nvme_fixed: None,
            cuda_mode: None,
            peer_memory: None,
        }
    }
}

/// The checksum verdict.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ChecksumReport {
    /// True when every file's digest from the consumer equals the reference
    /// (false when not verified).
    #[serde(rename = "match")]
    pub matched: bool,
    /// Whether the reference read was done.
    pub verified: bool,
    /// Files whose digests matched.
    pub files_matched: usize,
    /// Files whose digests differ.
    pub mismatched: Vec<String>,
    /// All files' consumer digests combined, as 16 hex digits.
    pub digest: String,
}

/// What an ingest did.
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    /// Backend name.
    pub backend: String,
    /// The device the backend used (`null` for the host backend).
    pub device: Option<String>,
    /// What the slot memory was.
    pub memory_kind: &'static str,
    /// Files ingested.
    pub files: usize,
    /// Bytes ingested.
    pub bytes: u64,
    /// Wall time of the ingest (not of the verification).
    pub seconds: f64,
    /// Throughput in GiB/s.
    pub gib_per_s: f64,
    /// Slots in the ring.
    pub slots: u32,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Rings that read, each on its own thread (1 for the bounce path).
    pub shards: u32,
    /// Whether O_DIRECT was used.
    pub direct: bool,
    /// Whether the bounce path (`pread()` + copy) was used instead of io_uring.
    pub bounce: bool,
    /// How the GPU consumer ran (`batched`, `persistent`, `device-copy` for
    /// cuda; `null` for backends with one way).
    pub consumer_mode: Option<&'static str>,
    /// Bytes the GPU's copy engine moved from the slots into device memory
    /// after they were published (cuda's `device-copy` mode; 0 otherwise).
    /// Not a userspace copy: `zero_bounce` does not count it.
    pub device_copy_bytes: u64,
    /// Whether NVMe Reads went through the registered slot buffers
    /// (`null` when nothing was read through NVMe passthrough).
    pub nvme_fixed_buffers: Option<bool>,
    /// The slots were registered with io_uring as fixed buffers (false: a
    /// device's peer memory, which the kernel refuses to register, read by
    /// address; or the bounce path, which registers nothing).
    pub slots_registered: bool,
    /// Every counter.
    pub telemetry: TelemetryReport,
    /// No userspace copy happened.
    pub zero_bounce: bool,
    /// Every byte was written by the device.
    pub dma_only: bool,
    /// Every byte asked for arrived, without a failed completion.
    pub complete: bool,
    /// The checksum verdict.
    pub checksum: ChecksumReport,
}

/// Ingest `sources` as `config` says, calling `progress` with the bytes of
/// each segment the consumer releases.
pub fn run(sources: &[Source], config: &IngestOptions, progress: &mut dyn FnMut(u64)) -> Result<IngestReport, Error> {
    let geometry = SlotGeometry::new(config.slots, config.slot_size)?;
    let max = gpuring_uring::ring::MAX_BUFFERS;
    if config.slots > max {
        let what = format!("{} slots exceed io_uring's {max} registered buffers. Fix: use at most {max} slots", config.slots);
        return Err(gpuring_uring::IngestError::RingGeometry { what }.into());
    }
    // At most 2^14 slots: the power of two cannot overflow.
    let queue_capacity = config.slots.next_power_of_two();
    if config.cuda_mode.is_some() && config.backend != Backend::Cuda {
        return Err(Error::OptionNotForBackend { option: "cuda_mode", backend: config.backend.name().to_owned(), needs: "cuda" });
    }
    if config.peer_memory.is_some() && (config.backend != Backend::Host || config.bounce) {
        let backend = if config.bounce { "host with the bounce path".to_owned() } else { config.backend.name().to_owned() };
        return Err(Error::OptionNotForBackend { option: "peer_memory", backend, needs: "host (without the bounce path)" });
    }
    match config.backend {
        #[cfg(feature = "host")]
        Backend::Host => {
            if config.device.is_some() {
                return Err(Error::NoDevices { backend: config.backend.name().to_owned() });
            }
            if let Some(pci) = &config.peer_memory {
                let staging = Arc::new(gpuring_host::PeerStaging::new(pci, geometry, queue_capacity)?);
                let consumer = gpuring_host::HostConsumer::start(staging.clone())?;
                let device = Some(format!("peer memory of PCI device {pci}"));
                return with_consumer(staging, device, || Ok(consumer.join().map(|_| ConsumerDone::default())?), sources, config, progress);
            }
            let staging = Arc::new(gpuring_host::HostStaging::new(geometry, queue_capacity)?);
            let consumer = gpuring_host::HostConsumer::start(staging.clone())?;
            with_consumer(staging, None, || Ok(consumer.join().map(|_| ConsumerDone::default())?), sources, config, progress)
        }
        #[cfg(feature = "vulkan")]
        Backend::Vulkan => {
            let staging = Arc::new(gpuring_vulkan::VulkanStaging::new(config.device.as_deref(), geometry, queue_capacity)?);
            let device = Some(staging.context().info().name.clone());
            let consumer = gpuring_vulkan::VulkanConsumer::start(staging.clone())?;
            with_consumer(staging, device, || Ok(consumer.join().map(|_| ConsumerDone::default())?), sources, config, progress)
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            let mode = match config.cuda_mode.unwrap_or_default() {
                CudaMode::Batched => gpuring_cuda::Mode::Batched,
                CudaMode::Persistent => gpuring_cuda::Mode::Persistent,
                CudaMode::DeviceCopy => gpuring_cuda::Mode::DeviceCopy,
            };
            let staging = Arc::new(gpuring_cuda::CudaStaging::new(config.device.as_deref(), geometry, queue_capacity)?);
            let device = Some(staging.device().info().name.clone());
            let consumer = gpuring_cuda::CudaConsumer::start(staging.clone(), mode)?;
            let join = || {
                let stats = consumer.join()?;
                Ok(ConsumerDone { mode: Some(mode.name()), device_copy_bytes: stats.device_copy_bytes })
            };
            with_consumer(staging, device, join, sources, config, progress)
        }
        #[cfg(feature = "rocm")]
        Backend::Rocm => {
            let staging = Arc::new(gpuring_rocm::RocmStaging::new(config.device.as_deref(), geometry, queue_capacity)?);
            let device = Some(staging.device().info().name.clone());
            let consumer = gpuring_rocm::RocmConsumer::start(staging.clone())?;
            with_consumer(staging, device, || Ok(consumer.join().map(|_| ConsumerDone::default())?), sources, config, progress)
        }
        #[allow(unreachable_patterns)] // every backend compiled in
        other => Err(Error::BackendNotBuilt { name: other.name().to_owned() }),
    }
}

/// What a backend's consumer reports when it is joined, beyond success.
#[derive(Clone, Copy, Debug, Default)]
struct ConsumerDone {
    /// The mode it ran in, for backends with more than one.
    mode: Option<&'static str>,
    /// Bytes it had the GPU copy into device memory.
    device_copy_bytes: u64,
}

/// Drive the ingest into `staging` while its consumer runs, then close the
/// queue, `join` the consumer and verify.
fn with_consumer<S: StagingMemory>(
    staging: Arc<S>,
    device: Option<String>,
    join: impl FnOnce() -> Result<ConsumerDone, Error>,
    sources: &[Source],
    config: &IngestOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<IngestReport, Error> {
    let outcome = drive(staging.clone(), sources, config, progress);
    // The driver closes the queue when it drops; if it was never built,
    // close it here so the consumer stops.
    staging.queue().close();
    // A consumer failure explains a stalled driver: report it first.
    let done = join()?;
    finish(outcome?, device, done, sources, config)
}

/// What the driver produced, before verification.
struct Driven {
    memory_kind: &'static str,
    telemetry: Telemetry,
    seconds: f64,
    digests: Vec<StreamDigest>,
    nvme_fixed: Option<bool>,
    registered: bool,
    shards: u32,
}

fn drive<S: StagingMemory>(staging: Arc<S>, sources: &[Source], config: &IngestOptions, progress: &mut dyn FnMut(u64)) -> Result<Driven, Error> {
    let memory_kind = staging.kind().name();
    let options = DriverOptions {
        direct: config.direct,
        release_timeout: config.release_timeout,
        nvme_fixed: config.nvme_fixed,
        shards: config.shards,
        // 128-byte SQEs only where a source needs them.
        passthrough: sources.iter().any(|s| s.kind == SourceKind::Nvme),
        ..DriverOptions::default()
    };
    let mut digests = vec![StreamDigest::new(); sources.len()];
    let on_event = |event| {
        if let Event::Released { source, segment, bytes, result: checksum, .. } = event {
            digests[source].add_segment(segment, checksum, bytes);
            progress(bytes);
        }
    };
    let (mut nvme_fixed, mut registered, mut shards) = (None, false, 1);
    let stats = if config.bounce {
        gpuring_uring::bounce::ingest(&*staging, sources, &options, on_event)?
    } else {
        let mut driver = Driver::new(staging, options)?;
        registered = driver.registered();
        shards = driver.shards();
        let result = driver.ingest(sources, on_event);
        driver.close_queue();
        if sources.iter().any(|s| s.kind == SourceKind::Nvme) {
            nvme_fixed = driver.nvme_fixed();
        }
        result?
    };
    Ok(Driven { memory_kind, telemetry: stats.telemetry, seconds: stats.elapsed.as_secs_f64(), digests, nvme_fixed, registered, shards })
}

fn finish(driven: Driven, device: Option<String>, done: ConsumerDone, sources: &[Source], config: &IngestOptions) -> Result<IngestReport, Error> {
    let t = &driven.telemetry;
    let verdict = t.validate().map_err(|e| Error::Ingest(e.into()))?;
    let bytes = t.completed_bytes;
    let mut checksum = ChecksumReport { matched: false, verified: config.verify, files_matched: 0, mismatched: Vec::new(), digest: String::new() };
    let mut all = StreamDigest::new();
    for (i, d) in driven.digests.iter().enumerate() {
        all.add_segment(i as u64, d.finish(), d.bytes());
    }
    checksum.digest = format!("{:016x}", all.finish());
    if config.verify {
        for (source, got) in sources.iter().zip(&driven.digests) {
            let reference = match source.kind {
                SourceKind::File => reference_digest(source, config.slot_size)?,
                SourceKind::Nvme => nvme_reference_digest(source, config.slot_size)?,
            };
            if reference == *got {
                checksum.files_matched += 1;
            } else {
                checksum.mismatched.push(source.path.display().to_string());
            }
        }
        checksum.matched = checksum.mismatched.is_empty();
    }
    Ok(IngestReport {
        backend: config.backend.name().to_owned(),
        device,
        memory_kind: driven.memory_kind,
        files: sources.len(),
        bytes,
        seconds: driven.seconds,
        gib_per_s: if driven.seconds > 0.0 { bytes as f64 / driven.seconds / (1u64 << 30) as f64 } else { 0.0 },
        slots: config.slots,
        slot_size: config.slot_size,
        shards: driven.shards,
        direct: config.direct,
        bounce: config.bounce,
        consumer_mode: done.mode,
        device_copy_bytes: done.device_copy_bytes,
        nvme_fixed_buffers: driven.nvme_fixed,
        slots_registered: driven.registered,
        telemetry: TelemetryReport::from(t),
        zero_bounce: verdict.zero_bounce,
        dma_only: verdict.dma_only,
        complete: verdict.complete,
        checksum,
    })
}

/// The digest of `source` computed from an independent, plain `read()` of
/// the file, cut into the same slot-sized segments.
fn reference_digest(source: &Source, slot_size: usize) -> Result<StreamDigest, Error> {
    let io = |op, error| Error::Io { path: source.path.clone(), op, error };
    let mut file = std::fs::File::open(&source.path).map_err(|e| io("opening for verification", e))?;
    let (start, end) = match &source.range {
        Some(r) => (r.start, r.end),
        // A block device's metadata says 0 bytes; its end is its size.
        None => (0, std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(|e| io("finding the size", e))?),
    };
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).map_err(|e| io("seeking", e))?;
    let mut file = file.take(end - start);
    let chunk = slot_size.min(1 << 20);
    let mut buf = vec![0u8; chunk];
    let mut digest = StreamDigest::new();
    let mut segment = 0u64;
    loop {
        let mut lanes = Lanes::default();
        let mut len = 0usize;
        while len < slot_size {
            let want = chunk.min(slot_size - len);
            let got = read_full(&mut file, &mut buf[..want]).map_err(|e| io("reading for verification", e))?;
            lanes = lanes + Lanes::over(&buf[..got], (len / 4) as u32);
            len += got;
            if got < want {
                break;
            }
        }
        if len == 0 {
            return Ok(digest);
        }
        digest.add_segment(segment, lanes.finish(len as u64), len as u64);
        segment += 1;
        if len < slot_size {
            return Ok(digest);
        }
    }
}

/// The digest of an NVMe source computed from an independent `O_DIRECT`
/// read of the namespace's block device (`/dev/nvmeXnY`, through the
/// kernel's block layer rather than passthrough), cut into the same
/// segments as the driver's NVMe Reads.
fn nvme_reference_digest(source: &Source, slot_size: usize) -> Result<StreamDigest, Error> {
    let dev = gpuring_uring::nvme::NvmeDevice::open(&source.path)?;
    let ns = dev.namespace;
    let block = dev.block_device.ok_or_else(|| Error::NoBlockDevice { path: source.path.clone() })?;
    let io = |op, error| Error::Io { path: block.clone(), op, error };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(&block)
        .map_err(|e| io("opening with O_DIRECT for verification", e))?;
    let lba = ns.lba_size as u64;
    let blocks = source.range.clone().unwrap_or(0..ns.capacity_blocks);
    let (start, end) = (blocks.start * lba, blocks.end * lba);
    let segment = gpuring_core::nvme::segment_bytes(&ns, slot_size) as u64;
    let mut buf = gpuring_uring::buffer::HeapBuffer::new(segment as usize, 0);
    let mut digest = StreamDigest::new();
    let mut at = start;
    while at < end {
        let len = (end - at).min(segment) as usize;
        let bytes = &mut buf.as_mut_slice()[..len];
        std::os::unix::fs::FileExt::read_exact_at(&file, bytes, at).map_err(|e| io("reading with O_DIRECT for verification", e))?;
        digest.add_segment((at - start) / segment, Lanes::over(bytes, 0).finish(len as u64), len as u64);
        at += len as u64;
    }
    Ok(digest)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuring_core::slot_checksum;

    #[test]
    fn reference_digest_matches_slot_checksums_of_segments() {
        let data: Vec<u8> = (0..3 * 8192 + 123).map(|i| (i * 7 % 251) as u8).collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        let mut want = StreamDigest::new();
        for (i, seg) in data.chunks(8192).enumerate() {
            want.add_segment(i as u64, slot_checksum(seg), seg.len() as u64);
        }
        assert_eq!(reference_digest(&Source::file(file.path()), 8192).unwrap(), want);
        let mut range = StreamDigest::new();
        range.add_segment(0, slot_checksum(&data[4096..8192 + 4096]), 8192);
        range.add_segment(1, slot_checksum(&data[8192 + 4096..8192 + 5000]), 904);
        assert_eq!(reference_digest(&Source::range(file.path(), 4096..8192 + 5000), 8192).unwrap(), range);
    }
}
