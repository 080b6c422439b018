//! One run of each case: gpuring's, and the baselines it is compared with
//! (bounce, memcpy, pread, mmap, candle, Python's safetensors, CUDA copies).

use super::*;

/// One ingest of `sources`, timed, with the process's CPU time around it.
pub(super) fn timed_ingest(sources: &[Source], ingest: &IngestOptions, case: &str) -> Result<Sample, Error> {
    let cpu = cpu_now();
    let report = ingest::run(sources, ingest, &mut |_| {})?;
    let cpu_seconds = cpu_now() - cpu;
    if !report.complete {
        return Err(Error::BenchFailed { case: case.into(), why: "the ingest did not complete".into() });
    }
    Ok(Sample { bytes: report.bytes, seconds: report.seconds, cpu_seconds, files: report.files as u64, reads: report.telemetry.completed_reads })
}

pub(super) fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// A gpuring or bounce ingest, verification off (the consumer still checksums).
pub(super) fn in_process(data: &Data, case: &Case, config: &BenchConfig) -> Result<Sample, Error> {
    let mut ingest = IngestOptions { verify: false, bounce: case.kind == Kind::Bounce, direct: case.group == "large-direct", ..config.ingest.clone() };
    let sources: Vec<Source> = match case.group {
        "small-files" => {
            ingest.direct = false;
            data.small.clone()
        }
        _ => vec![Source::file(&data.large)],
    };
    timed_ingest(&sources, &ingest, &case.name)
}

/// A CUDA reference case on the large file's bytes (see `gpuring_cuda::baseline`).
#[cfg(feature = "cuda")]
pub(super) fn cuda_baseline(data: &Data, case: &Case, config: &BenchConfig) -> Result<Sample, Error> {
    use gpuring_cuda::baseline;
    let device = gpuring_cuda::Device::open(config.ingest.device.as_deref())?;
    let (slot, slots) = (config.ingest.slot_size, config.ingest.slots);
    let cpu = cpu_now();
    let moved = match case.kind {
        Kind::ReadHtod => baseline::read_then_copy(&device, &data.large, slot, slots)?,
        _ => baseline::pinned_copy(&device, config.size, slot, slots)?,
    };
    Ok(Sample { bytes: moved.bytes, seconds: moved.seconds, cpu_seconds: cpu_now() - cpu, files: 1, reads: moved.bytes.div_ceil(slot as u64) })
}

#[cfg(not(feature = "cuda"))]
pub(super) fn cuda_baseline(_: &Data, case: &Case, _: &BenchConfig) -> Result<Sample, Error> {
    Err(Error::BenchFailed { case: case.name.clone(), why: "the cuda backend is not compiled into this gpuring".into() })
}

/// The bench's target for `read_into` and `load`: the backend and ring of
/// the gpuring cases.
pub(super) fn target(config: &BenchConfig) -> gpuring::read_into::Target {
    let i = &config.ingest;
    let slots = gpuring::read_into::ReadOptions { direct: false, slots: i.slots, slot_size: i.slot_size, shards: config.read_shards };
    gpuring::read_into::Target { backend: i.backend, device: i.device.clone(), slots }
}

/// `read_into` of the whole large file: on the host into the destination
/// made for it, on a GPU into a new buffer of the backend's (allocated
/// before the clock starts).
pub(super) fn read_into(data: &Data, config: &BenchConfig) -> Result<Sample, Error> {
    let requests = [gpuring::read_into::ReadRequest::new(&data.large, 0..config.size, 0)];
    let cpu = cpu_now();
    let target = target(config);
    let report = match target.backend {
        ingest::Backend::Host => gpuring::read_into::host(&requests, &mut data.destination.borrow_mut(), &target.slots)?,
        _ => gpuring::read_into::into_new_buffer(&target, &requests, config.size, false)?.0,
    };
    let cpu_seconds = cpu_now() - cpu;
    Ok(Sample { bytes: report.bytes, seconds: report.seconds, cpu_seconds, files: 1, reads: report.telemetry.completed_reads })
}

/// `pread()` of the large file into the host destination, a slot's worth
/// per call, what a program without gpuring does.
pub(super) fn pread_into(data: &Data, config: &BenchConfig) -> Result<Sample, Error> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&data.large).map_err(io_error(&data.large, "opening"))?;
    let mut buffer = data.destination.borrow_mut();
    let chunk = config.ingest.slot_size;
    let (cpu, start) = (cpu_now(), Instant::now());
    for (i, window) in buffer.chunks_mut(chunk).enumerate() {
        file.read_exact_at(window, (i * chunk) as u64).map_err(io_error(&data.large, "reading"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&*buffer);
    Ok(Sample { bytes: config.size, seconds, cpu_seconds: cpu_now() - cpu, files: 1, reads: config.size.div_ceil(chunk as u64) })
}

/// Write and free `len` bytes of new memory, so that the next allocation of
/// that size finds pages the hypervisor has backed. In this VM, memory freed
/// a while ago is handed back to the host, and the first program to touch
/// it again pays for that (measured: `MADV_POPULATE_WRITE` of a fresh 1 GiB
/// arena took 0.24 s in a bench of the load cases alone and 0.74 to 1.06 s
/// inside full runs); without this, whichever load case runs first in a
/// round pays it.
pub(super) fn prime(len: u64) {
    std::hint::black_box(vec![1u8; len as usize]);
}

/// Load `checkpoint` into a new buffer, verification off, and keep it
/// until the clock stops: on the host `gpuring::load` (its `Loaded` owns a
/// `HostBuffer`), on a GPU a device buffer of the backend's.
pub(super) fn load(checkpoint: &gpuring::load::Checkpoint, config: &BenchConfig) -> Result<Sample, Error> {
    prime(checkpoint.arena_bytes);
    let target = target(config);
    let (cpu, start) = (cpu_now(), Instant::now());
    let (report, kept) = if target.backend == ingest::Backend::Host {
        let options = gpuring::LoadOptions { read: target.slots.clone(), ..Default::default() };
        let loaded = gpuring::load(&checkpoint.files, &options)?;
        (loaded.report().clone(), Some(loaded))
    } else {
        let plan = checkpoint.plan(&gpuring::LoadOptions::default())?;
        (gpuring::load::report(&plan, &target, false)?, None)
    };
    // The whole call (headers, buffer, reads); the buffer is freed after.
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_now() - cpu;
    drop(kept);
    Ok(Sample { bytes: report.bytes, seconds, cpu_seconds, files: report.files as u64, reads: report.telemetry.completed_reads })
}

/// candle's loader (`candle-load`) or gpuring's into candle tensors
/// (`gpuring-candle`), on the CPU, every file of `checkpoint`.
#[cfg(feature = "candle")]
pub(super) fn candle_load(checkpoint: &gpuring::load::Checkpoint, case: &Case) -> Result<Sample, Error> {
    prime(checkpoint.arena_bytes);
    let failed = |why: String| Error::BenchFailed { case: case.name.clone(), why };
    let (cpu, start) = (cpu_now(), Instant::now());
    let mut kept = Vec::new();
    for file in &checkpoint.files {
        kept.push(match case.kind {
            Kind::CandleLoad => candle_core::safetensors::load(file, &candle_core::Device::Cpu).map_err(|e| failed(e.to_string()))?,
            _ => gpuring::candle::load(&[file], &candle_core::Device::Cpu)?,
        });
    }
    // The tensors are freed after the clock stops, as in the other cases.
    let (seconds, cpu_seconds) = (start.elapsed().as_secs_f64(), cpu_now() - cpu);
    let tensors: usize = kept.iter().map(|t| t.len()).sum();
    drop(kept);
    Ok(Sample { bytes: checkpoint.bytes(), seconds, cpu_seconds, files: checkpoint.files.len() as u64, reads: tensors as u64 })
}

#[cfg(not(feature = "candle"))]
pub(super) fn candle_load(_: &gpuring::load::Checkpoint, case: &Case) -> Result<Sample, Error> {
    Err(Error::BenchFailed { case: case.name.clone(), why: "gpuring was built without the candle feature".into() })
}

/// Times `safetensors.numpy.load_file` of every file given, inside the
/// interpreter (start-up and imports not counted): wall and CPU seconds.
pub(super) const NUMPY_LOAD: &str = "import sys, time\nfrom safetensors.numpy import load_file\nw, c = time.perf_counter(), time.process_time()\nkept = [load_file(p) for p in sys.argv[1:]]\nw, c = time.perf_counter() - w, time.process_time() - c\nprint(w, c, sum(len(k) for k in kept))\n";

/// The Python that has `safetensors.numpy` (`GPURING_PYTHON`, else
/// `python3`), or why there is none.
pub(super) fn numpy_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("GPURING_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    match Command::new(&python).args(["-c", "import safetensors.numpy, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(_) => Err(format!("{} has no safetensors or numpy (pip install safetensors numpy); safetensors-numpy is left out", python.display())),
        Err(e) => Err(format!("{} cannot run ({e}); safetensors-numpy is left out", python.display())),
    }
}

/// Python's `safetensors.numpy.load_file` of `checkpoint`, timed inside
/// the interpreter.
pub(super) fn numpy_load(data: &Data, checkpoint: &gpuring::load::Checkpoint) -> Result<Sample, Error> {
    let failed = |why: String| Error::BenchFailed { case: "safetensors-numpy".into(), why };
    let python = data.python.as_ref().map_err(|why| failed(why.clone()))?;
    prime(checkpoint.arena_bytes);
    let out = Command::new(python).args(["-c", NUMPY_LOAD]).args(&checkpoint.files).output().map_err(|e| failed(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(|w| w.parse::<f64>());
    match (out.status.success(), words.next(), words.next()) {
        (true, Some(Ok(seconds)), Some(Ok(cpu_seconds))) => {
            Ok(Sample { bytes: checkpoint.bytes(), seconds, cpu_seconds, files: checkpoint.files.len() as u64, reads: checkpoint.tensors.len() as u64 })
        }
        _ => Err(failed(format!("{}: {}", python.display(), String::from_utf8_lossy(&out.stderr).trim()))),
    }
}

/// What Rust programs do today: map the checkpoint, let the `safetensors`
/// crate parse it, and copy each tensor's bytes into the arena (host
/// memory: for a GPU backend this stops short of the device).
pub(super) fn mmap_load(checkpoint: &gpuring::load::Checkpoint) -> Result<Sample, Error> {
    let path = &checkpoint.files[0];
    let file = std::fs::File::open(path).map_err(io_error(path, "opening"))?;
    let len = file.metadata().map_err(io_error(path, "stat"))?.len() as usize;
    prime(checkpoint.arena_bytes);
    // The arena is allocated inside the clock, as every other load case's
    // memory is: a load into fresh memory pays for it.
    let (cpu, start) = (cpu_now(), Instant::now());
    let mut arena = vec![0u8; checkpoint.arena_bytes as usize];
    let mapped = Mapped::new(&file, len).map_err(io_error(path, "mmap"))?;
    let tensors = safetensors::SafeTensors::deserialize(mapped.bytes())
        .map_err(|e| Error::BenchFailed { case: "mmap-load".into(), why: format!("{}: {e}", path.display()) })?;
    let mut bytes = 0u64;
    for t in &checkpoint.tensors {
        let view = tensors.tensor(&t.name).map_err(|e| Error::BenchFailed { case: "mmap-load".into(), why: e.to_string() })?;
        arena[t.offset as usize..t.offset as usize + view.data().len()].copy_from_slice(view.data());
        bytes += view.data().len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(&arena);
    Ok(Sample { bytes, seconds, cpu_seconds: cpu_now() - cpu, files: 1, reads: checkpoint.tensors.len() as u64 })
}

/// A read-only shared mapping of a whole file, unmapped on drop.
pub(super) struct Mapped {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File, len: usize) -> std::io::Result<Self> {
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        // SAFETY: a new mapping at an address the kernel picks, of the file's
        // length; nothing else lives there.
        let ptr = unsafe { mmap(std::ptr::null_mut(), len.max(1), ProtFlags::READ, MapFlags::SHARED, file, 0) }?;
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes until `self` drops; the
        // bench's own checkpoint is not written while it is mapped.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`, `len.max(1)` bytes, not used after this.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len.max(1)) };
    }
}

/// Copy `total` bytes with every CPU this process may use, `slot_size` at a
/// time, from a source larger than the caches into a ring of `slots` slots
/// (the memory traffic of a page-cache read into the slots). Each thread
/// owns its share of the ring.
pub(super) fn memcpy(total: u64, slots: u32, slot_size: usize) -> Sample {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let source_len = (total.min(1 << 30) as usize).max(slot_size).next_multiple_of(slot_size);
    let source = HeapBuffer::new(source_len, 0x5A);
    let per_thread = (slots as usize).div_ceil(threads).max(1) * slot_size;
    let mut ring = HeapBuffer::new(per_thread * threads, 0);
    let chunks = total.div_ceil(slot_size as u64);
    let barrier = std::sync::Barrier::new(threads + 1);
    let cpu = cpu_now();
    let seconds = std::thread::scope(|s| {
        for (t, own) in ring.as_mut_slice().chunks_mut(per_thread).enumerate() {
            let (source, barrier) = (source.as_slice(), &barrier);
            s.spawn(move || {
                barrier.wait();
                let mut i = t as u64;
                let mut to = 0;
                while i < chunks {
                    let from = (i as usize * slot_size) % source_len;
                    let len = (total - i * slot_size as u64).min(slot_size as u64) as usize;
                    own[to..to + len].copy_from_slice(&source[from..from + len]);
                    to = (to + slot_size) % own.len();
                    i += threads as u64;
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed().as_secs_f64()
    });
    std::hint::black_box(ring.as_mut_slice());
    Sample { bytes: total, seconds, cpu_seconds: cpu_now() - cpu, files: 0, reads: chunks }
}
