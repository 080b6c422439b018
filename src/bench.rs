//! `gpuring bench`: gpuring against fio, the bounce path and memcpy, on the
//! same bytes, in one run. Part of the command, not of the library: it uses
//! only the library's public API.
//!
//! The bench makes its own data under a directory (one large file, and a
//! directory of many small files named the way fio names its own, so fio
//! reads the very same files), then runs every case `runs` times,
//! interleaved (case A, B, C, A, B, C, ...), so that a slow moment of a
//! shared machine spreads over all cases instead of sinking one. Each case
//! reports the median of its runs and the spread (min and max).
//!
//! Besides the ingest cases, `read-into` reads the large file into a buffer
//! (`gpuring-read-into`: on the host one made present before the runs, on a
//! GPU a new buffer of the backend's) against `pread()` into that host
//! buffer (`pread-into`), and `load` loads a checkpoint of about the
//! large file's size in 300 tensors, written with the `safetensors` crate
//! (`gpuring-load`), against that crate over a mmap with each tensor copied
//! into a host arena (`mmap-load`, what Rust programs do today), against
//! candle's loader (`candle-load`, `candle_core::safetensors::load`: the
//! whole file read, then a copy per tensor) and gpuring's loader into
//! candle tensors (`gpuring-candle`), both with the `candle` feature, and
//! against Python's `safetensors.numpy.load_file` timed inside the
//! interpreter (`safetensors-numpy`, where a Python with safetensors is
//! found: `GPURING_PYTHON`, else `python3`). With `--model DIR` (default:
//! `GPURING_MINILM`, the real all-MiniLM-L6-v2 the test command fetches),
//! the same load cases run on that model's `model.safetensors` too
//! (`gpuring-load-model`, ...). `gpuring-load` keeps what it loaded until
//! its clock stops (on the host a `Loaded` over a `HostBuffer`). For a GPU
//! backend both baselines stop in host memory; on CUDA the `read-htod` case
//! is the one that reaches the device.
//!
//! Cache state per case: the buffered and small-file cases read warm data
//! (the bench reads it once first); the direct cases start with the large
//! file dropped from the page cache (`POSIX_FADV_DONTNEED`), though O_DIRECT
//! bypasses it anyway.
//!
//! fio runs twice per group: with one job, and with as many jobs as
//! gpuring has shards (`fio-buffered-2jobs`: the large file cut into one
//! contiguous range per job, fio's `offset_increment`; the small files cut
//! into one contiguous run of files per job, through links named as fio
//! names a job's files), and a gpuring case's `vs_fio`
//! is over the fio case with its number of jobs (`vs_fio_1job` over the
//! other).
//!
//! Two sections follow the cases. `scaling`: the buffered large-file ingest
//! with 1, 2, 4, ... shards up to the CPUs. `size`: GiB/s and the peak
//! resident memory (the kernel's high-water mark, reset before each run
//! through `/proc/self/clear_refs`) of ingests of 1 MiB to `--size-max`
//! (ranges of one file) and of 10 to `--files-max` files of 4 KiB, run
//! last, after the cases' buffers were freed.
//!
//! CPU time is the process's CPU clock around an in-process case (every
//! thread: the driver, the consumer and io_uring's workers), and fio's own
//! `usr_cpu + sys_cpu` for fio. gpuring's CPU time includes the consumer's
//! checksum of every byte; fio's includes no consumer at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use gpuring::ingest::{self, IngestOptions};
use gpuring::Error;
use gpuring_uring::bounce::HeapBuffer;
use gpuring_uring::Source;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Where the data is made (kept between runs when its sizes match).
    pub dir: PathBuf,
    /// Bytes in the large file.
    pub size: u64,
    /// Number of small files.
    pub small_files: u32,
    /// Bytes per small file.
    pub small_size: u64,
    /// About the bytes of the load cases' checkpoint.
    pub checkpoint_size: u64,
    /// Runs per case.
    pub runs: u32,
    /// Slots, backend and slot size of the gpuring cases (and the block
    /// size and depth of fio's).
    pub ingest: IngestOptions,
    /// Run fio when it is installed.
    pub fio: bool,
    /// Rings of the read-into and load cases (`gpuring::read_into::default_shards`).
    pub read_shards: u32,
    /// The size section's largest input (bytes of one file).
    pub size_max: u64,
    /// The size section's most files.
    pub files_max: u32,
    /// A real model's directory (with `model.safetensors`) for the load
    /// cases' second group, `load-model`.
    pub model: Option<PathBuf>,
}

/// One case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    /// Case name, e.g. `gpuring-buffered`.
    pub name: String,
    /// The data set and cache state: `large-buffered`, `large-direct`,
    /// `small-files`, `read-into` (the large file, warm, into a new buffer)
    /// or `load` (the checkpoint, warm, into a new arena).
    pub group: &'static str,
    /// Median throughput.
    pub gib_per_s: f64,
    /// Slowest and fastest run.
    pub spread: Spread,
    /// Median CPU seconds per GiB moved.
    pub cpu_s_per_gib: f64,
    /// Median files per second (small-file cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_per_s: Option<f64>,
    /// Median reads per second (small-file cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iops: Option<f64>,
    /// GiB/s of every run, in order.
    pub runs: Vec<f64>,
    /// For gpuring cases: gpuring's throughput over each reference's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratios: Option<Ratios>,
    /// For other cases: this case's throughput over the gpuring case of its
    /// group (memcpy: over `gpuring-buffered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_gpuring: Option<f64>,
}

/// Min and max GiB/s over the runs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Slowest run.
    pub min: f64,
    /// Fastest run.
    pub max: f64,
}

/// A gpuring case's throughput divided by the references'.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ratios {
    /// Over fio on the same data with as many jobs as gpuring has shards
    /// (null when fio did not run).
    pub vs_fio: Option<f64>,
    /// Over fio with one job (null when fio did not run).
    pub vs_fio_1job: Option<f64>,
    /// Over `read()` + copy on the same data.
    pub vs_bounce: Option<f64>,
    /// Over the multi-threaded memcpy ceiling.
    pub vs_memcpy: Option<f64>,
    /// cuda: over `read()` into pageable memory + `cuMemcpyHtoD` of the
    /// same file (null for other backends).
    pub vs_read_htod: Option<f64>,
    /// cuda: over the pinned host-to-device copy of as many bytes, the PCIe
    /// ceiling (null for other backends).
    pub vs_pinned_htod: Option<f64>,
    /// read-into: over `pread()` of the same file straight into a host
    /// buffer, what a program does without gpuring (null for other cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_pread: Option<f64>,
    /// load: over the `safetensors` crate over a mmap of the checkpoint,
    /// each tensor then copied into the host arena (null for other cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_mmap: Option<f64>,
    /// load: over candle's loader on the same checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_candle: Option<f64>,
    /// load: over Python's `safetensors.numpy.load_file`, timed inside the
    /// interpreter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_numpy: Option<f64>,
    /// load: over `gpuring-read-into` (the large file, of about the same
    /// bytes, into a warm buffer): what faulting in fresh memory costs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_read_into: Option<f64>,
}

/// Whether fio ran, and why not.
#[derive(Clone, Debug, Serialize)]
pub struct FioStatus {
    /// fio's cases ran.
    pub ran: bool,
    /// `fio --version`, when installed.
    pub version: Option<String>,
    /// Why not, when it did not run.
    pub why_not: Option<String>,
}

/// The whole bench.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// UTC date of the run (YYYY-MM-DD).
    pub date: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// Backend of the gpuring cases.
    pub backend: String,
    /// Where the data lives.
    pub dir: String,
    /// Large-file bytes.
    pub size: u64,
    /// Small files and their size.
    pub small_files: u32,
    /// Bytes per small file.
    pub small_size: u64,
    /// The load cases' checkpoint: tensor bytes and tensors.
    pub checkpoint_bytes: u64,
    /// Tensors in it.
    pub checkpoint_tensors: usize,
    /// Slots (and fio's iodepth).
    pub slots: u32,
    /// Slot size (and fio's block size).
    pub slot_size: usize,
    /// gpuring's shards (and the jobs of fio's same-jobs cases).
    pub shards: u32,
    /// Rings of the read-into and load cases.
    pub read_shards: u32,
    /// Runs per case.
    pub runs: u32,
    /// fio's status.
    pub fio: FioStatus,
    /// Every case.
    pub cases: Vec<CaseReport>,
    /// Buffered large-file ingests by shard count.
    pub scaling: Vec<ScalingPoint>,
    /// The size section: ingests by input size and file count, with peak
    /// resident memory.
    pub size_section: Vec<SizePoint>,
    /// The real model of the `load-model` group (its `model.safetensors`),
    /// or why there is none.
    pub model: String,
    /// Whether the `safetensors-numpy` cases ran: the interpreter, or why not.
    pub python: String,
}

/// One shard count of the `scaling` section.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingPoint {
    /// Shards (rings, each on its own thread).
    pub shards: u32,
    /// Median buffered GiB/s of the large file, warm.
    pub gib_per_s: f64,
    /// Slowest and fastest run.
    pub spread: Spread,
    /// Median CPU seconds per GiB.
    pub cpu_s_per_gib: f64,
}

/// One input of the `size` section.
#[derive(Clone, Debug, Serialize)]
pub struct SizePoint {
    /// Bytes read.
    pub bytes: u64,
    /// Files read (1 for a range of the size file).
    pub files: u64,
    /// Median GiB/s.
    pub gib_per_s: f64,
    /// Median files per second.
    pub files_per_s: f64,
    /// The process's resident memory before the runs.
    pub rss_before_bytes: u64,
    /// The highest peak resident memory of the runs (VmHWM).
    pub peak_rss_bytes: u64,
}

/// One run of one case.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
    files: u64,
    reads: u64,
}

impl Sample {
    fn gib_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / GIB
    }

    fn cpu_per_gib(&self) -> f64 {
        self.cpu_seconds / (self.bytes as f64 / GIB).max(1e-12)
    }
}

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Memcpy,
    Gpuring,
    Bounce,
    Fio,
    /// cuda: `read()` + `cuMemcpyHtoD`.
    ReadHtod,
    /// cuda: pinned host-to-device copies.
    PinnedHtod,
    /// `read_into` of the large file into a buffer of the backend's.
    ReadInto,
    /// `pread()` of the large file straight into a host buffer.
    PreadInto,
    /// `gpuring load` of the checkpoint (verification off).
    Load,
    /// fio with as many jobs as gpuring has shards.
    FioJobs,
    /// The `safetensors` crate over a mmap, each tensor copied into an arena.
    MmapLoad,
    /// `candle_core::safetensors::load`.
    CandleLoad,
    /// `gpuring::candle::load`.
    GpuringCandle,
    /// Python's `safetensors.numpy.load_file`, timed in the interpreter.
    SafetensorsNumpy,
}

struct Case {
    name: String,
    kind: Kind,
    group: &'static str,
    samples: Vec<Sample>,
}

/// The data set on disk.
struct Data {
    large: PathBuf,
    /// A safetensors checkpoint of about `size` bytes in a few hundred tensors.
    checkpoint: gpuring::load::Checkpoint,
    /// The real model's checkpoint, for the `load-model` group.
    model: Option<gpuring::load::Checkpoint>,
    /// A Python with `safetensors.numpy`, for `safetensors-numpy`.
    python: Result<PathBuf, String>,
    /// The host read-into cases' destination: the large file's size, made
    /// present once, so both cases measure the read into memory that
    /// exists (a fresh buffer's page faults cost more than the read here,
    /// and vary from run to run in a VM).
    destination: std::cell::RefCell<Vec<u8>>,
    small_dir: PathBuf,
    small: Vec<Source>,
    /// fio's link directory for its same-jobs small-file case is in place.
    links_ready: std::cell::Cell<bool>,
}

/// Run the bench, calling `say` with a line of progress now and then.
pub fn run(config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<BenchReport, Error> {
    let data = prepare(config, say)?;
    let fio = fio_status(config);
    let jobs = config.ingest.shards;
    let mut cases = Vec::new();
    let mut add = |name: &str, kind, group| cases.push(Case { name: name.into(), kind, group, samples: Vec::new() });
    add("memcpy", Kind::Memcpy, "large-buffered");
    for (group, mode) in [("large-buffered", "buffered"), ("large-direct", "direct"), ("small-files", "small-files")] {
        add(&format!("gpuring-{mode}"), Kind::Gpuring, group);
        add(&format!("bounce-{mode}"), Kind::Bounce, group);
        if fio.ran {
            add(&format!("fio-{mode}"), Kind::Fio, group);
            if jobs > 1 {
                add(&format!("fio-{mode}-{jobs}jobs"), Kind::FioJobs, group);
            }
        }
    }
    if config.ingest.backend == ingest::Backend::Cuda {
        add("read-htod", Kind::ReadHtod, "large-buffered");
        add("pinned-htod", Kind::PinnedHtod, "large-buffered");
    }
    add("gpuring-read-into", Kind::ReadInto, "read-into");
    add("pread-into", Kind::PreadInto, "read-into");
    let load_groups: &[(&str, &str)] = if data.model.is_some() { &[("load", ""), ("load-model", "-model")] } else { &[("load", "")] };
    for (group, suffix) in load_groups {
        add(&format!("gpuring-load{suffix}"), Kind::Load, group);
        add(&format!("mmap-load{suffix}"), Kind::MmapLoad, group);
        if cfg!(feature = "candle") {
            add(&format!("candle-load{suffix}"), Kind::CandleLoad, group);
            add(&format!("gpuring-candle{suffix}"), Kind::GpuringCandle, group);
        }
        if data.python.is_ok() {
            add(&format!("safetensors-numpy{suffix}"), Kind::SafetensorsNumpy, group);
        }
    }
    for run in 1..=config.runs {
        say(&format!("run {run} of {}", config.runs));
        let mut warm_group = "";
        for case in &mut cases {
            if case.group != warm_group {
                set_cache(&data, case.group)?;
                warm_group = case.group;
            }
            let sample = match case.kind {
                Kind::Memcpy => memcpy(config.size, config.ingest.slots, config.ingest.slot_size),
                Kind::Gpuring | Kind::Bounce => in_process(&data, case, config)?,
                Kind::Fio => run_fio(&data, case.group, config, 1)?,
                Kind::FioJobs => run_fio(&data, case.group, config, jobs)?,
                Kind::ReadHtod | Kind::PinnedHtod => cuda_baseline(&data, case, config)?,
                Kind::ReadInto => read_into(&data, config)?,
                Kind::PreadInto => pread_into(&data, config)?,
                Kind::Load => load(data.load_checkpoint(case.group), config)?,
                Kind::MmapLoad => mmap_load(data.load_checkpoint(case.group))?,
                Kind::CandleLoad | Kind::GpuringCandle => candle_load(data.load_checkpoint(case.group), case)?,
                Kind::SafetensorsNumpy => numpy_load(&data, data.load_checkpoint(case.group))?,
            };
            say(&format!("  {:<20} {:>7.2} GiB/s", case.name, sample.gib_per_s()));
            case.samples.push(sample);
        }
    }
    let scaling = scaling_section(&data, config, say)?;
    let mut report = report(config, &data, fio, &cases, scaling);
    // Last, with the cases' memory given back: the size section.
    drop(data);
    report.size_section = size_section(config, say)?;
    Ok(report)
}

/// Shard counts to measure: 1, 2, 4, ... below `cpus`, and `cpus`.
fn shard_counts(cpus: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = std::iter::successors(Some(1u32), |n| n.checked_mul(2)).take_while(|&n| n < cpus).collect();
    counts.push(cpus.max(1));
    counts
}

/// The buffered large-file ingest with each shard count, interleaved.
fn scaling_section(data: &Data, config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Vec<ScalingPoint>, Error> {
    // A driver has at most one shard per slot.
    let counts = shard_counts(gpuring_uring::default_shards().min(config.ingest.slots));
    let mut samples = vec![Vec::new(); counts.len()];
    set_cache(data, "large-buffered")?;
    for run in 1..=config.runs {
        say(&format!("scaling, run {run} of {}", config.runs));
        for (i, &shards) in counts.iter().enumerate() {
            let ingest = IngestOptions { shards, verify: false, direct: false, ..config.ingest.clone() };
            let sample = timed_ingest(&[Source::file(&data.large)], &ingest, &format!("scaling ({shards} shards)"))?;
            say(&format!("  {shards:>3} shards {:>7.2} GiB/s", sample.gib_per_s()));
            samples[i].push(sample);
        }
    }
    Ok(counts
        .iter()
        .zip(&samples)
        .map(|(&shards, s)| {
            let runs: Vec<f64> = s.iter().map(Sample::gib_per_s).collect();
            ScalingPoint { shards, gib_per_s: median(runs.clone()), spread: spread(&runs), cpu_s_per_gib: median(s.iter().map(Sample::cpu_per_gib).collect()) }
        })
        .collect())
}

/// The process's resident memory now and its high-water mark, in bytes
/// (`VmRSS`, `VmHWM` of /proc/self/status).
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the high-water mark to the current resident memory (Linux 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Ingests of 1 MiB to `size_max` bytes (ranges of one file of that size)
/// and of 10 to `files_max` files of 4 KiB, warm, with peak memory.
fn size_section(config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Vec<SizePoint>, Error> {
    const FILE: u64 = 4096;
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(io_error(dir, "creating the bench directory"))?;
    let big = dir.join(format!("size-{}.bin", config.size_max));
    if std::fs::metadata(&big).map(|m| m.len()).ok() != Some(config.size_max) {
        say(&format!("writing {} to {}", gpuring::core::Bytes(config.size_max), big.display()));
        write_pattern(&big, config.size_max, 3, false)?;
    }
    let files_dir = dir.join(format!("files-{}x{FILE}", config.files_max));
    std::fs::create_dir_all(&files_dir).map_err(io_error(&files_dir, "creating the size section's directory"))?;
    let mut files = Vec::with_capacity(config.files_max as usize);
    for i in 0..config.files_max {
        let path = files_dir.join(format!("f{i:06}"));
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(FILE) {
            if files.len() == i as usize && i % 10_000 == 0 {
                say(&format!("writing files of {} to {} ({i} of {})", gpuring::core::Bytes(FILE), files_dir.display(), config.files_max));
            }
            write_pattern(&path, FILE, i as u64 + 11, false)?;
        }
        files.push(Source::file(path));
    }
    let mut inputs: Vec<Vec<Source>> = Vec::new();
    let mut bytes = 1u64 << 20;
    while bytes < config.size_max {
        inputs.push(vec![Source::range(&big, 0..bytes)]);
        bytes *= 16;
    }
    inputs.push(vec![Source::range(&big, 0..config.size_max)]);
    let mut count = 10usize;
    while count < config.files_max as usize {
        inputs.push(files[..count].to_vec());
        count *= 10;
    }
    inputs.push(files.clone());
    let ingest = IngestOptions { verify: false, direct: false, ..config.ingest.clone() };
    let mut points = Vec::new();
    for sources in inputs {
        let bytes: u64 = sources.iter().map(|s| s.range.as_ref().map_or(FILE, |r| r.end - r.start)).sum();
        warm(&sources)?;
        let (before, _) = resident();
        let (mut samples, mut peak) = (Vec::new(), 0);
        for _ in 0..config.runs {
            reset_peak();
            samples.push(timed_ingest(&sources, &ingest, "size")?);
            peak = peak.max(resident().1);
        }
        let point = SizePoint {
            bytes,
            files: sources.len() as u64,
            gib_per_s: median(samples.iter().map(Sample::gib_per_s).collect()),
            files_per_s: median(samples.iter().map(|s| s.files as f64 / s.seconds.max(1e-9)).collect()),
            rss_before_bytes: before,
            peak_rss_bytes: peak,
        };
        say(&format!(
            "size: {} in {} file(s): {:.2} GiB/s, peak resident {}",
            gpuring::core::Bytes(bytes),
            point.files,
            point.gib_per_s,
            gpuring::core::Bytes(peak)
        ));
        points.push(point);
    }
    Ok(points)
}

/// Read `sources` once, so that they are in the page cache.
fn warm(sources: &[Source]) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    for s in sources {
        let file = std::fs::File::open(&s.path).map_err(io_error(&s.path, "opening"))?;
        let (mut at, end) = s.range.as_ref().map_or((0, u64::MAX), |r| (r.start, r.end));
        while at < end {
            let want = buf.len().min((end - at).try_into().unwrap_or(usize::MAX));
            let n = file.read_at(&mut buf[..want], at).map_err(io_error(&s.path, "warming the page cache"))?;
            if n == 0 {
                break;
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// One ingest of `sources`, timed, with the process's CPU time around it.
fn timed_ingest(sources: &[Source], ingest: &IngestOptions, case: &str) -> Result<Sample, Error> {
    let cpu = cpu_now();
    let report = ingest::run(sources, ingest, &mut |_| {})?;
    let cpu_seconds = cpu_now() - cpu;
    if !report.complete {
        return Err(Error::BenchFailed { case: case.into(), why: "the ingest did not complete".into() });
    }
    Ok(Sample { bytes: report.bytes, seconds: report.seconds, cpu_seconds, files: report.files as u64, reads: report.telemetry.completed_reads })
}

fn io_error<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |error| Error::Io { path: path.to_owned(), op, error }
}

/// Make the large file and the small files unless they already exist with
/// the right sizes.
fn prepare(config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Data, Error> {
    let dir = &config.dir;
    std::fs::create_dir_all(dir).map_err(io_error(dir, "creating the bench directory"))?;
    let large = dir.join("large.bin");
    if std::fs::metadata(&large).map(|m| m.len()).ok() != Some(config.size) {
        say(&format!("writing {} to {}", gpuring::core::Bytes(config.size), large.display()));
        write_pattern(&large, config.size, 1, true)?;
    }
    let small_dir = dir.join(format!("small-{}x{}", config.small_files, config.small_size));
    std::fs::create_dir_all(&small_dir).map_err(io_error(&small_dir, "creating the small-file directory"))?;
    let mut small = Vec::with_capacity(config.small_files as usize);
    let mut wrote = false;
    for i in 0..config.small_files {
        // fio's default name for file i of job `small`.
        let path = small_dir.join(format!("small.0.{i}"));
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(config.small_size) {
            if !wrote {
                say(&format!("writing {} files of {} to {}", config.small_files, gpuring::core::Bytes(config.small_size), small_dir.display()));
                wrote = true;
            }
            write_pattern(&path, config.small_size, i as u64 + 2, true)?;
        }
        small.push(Source::file(path));
    }
    let checkpoint = checkpoint(dir, config.checkpoint_size, say)?;
    let model = match &config.model {
        Some(dir) => Some(gpuring::load::Checkpoint::open(&[dir.join("model.safetensors")])?),
        None => None,
    };
    let destination = std::cell::RefCell::new(vec![0x5Au8; config.size as usize]);
    Ok(Data { large, checkpoint, model, python: numpy_python(), destination, small_dir, small, links_ready: std::cell::Cell::new(false) })
}

/// A tensor the bench's checkpoint is written from, made when written.
struct Generated {
    shape: Vec<usize>,
    seed: u64,
}

impl safetensors::View for Generated {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut x = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes = (0..self.data_len() / 4)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u32).to_le_bytes()
            })
            .collect();
        std::borrow::Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// The shapes of the bench's checkpoint: `layers` layers of a weight
/// matrix (about `size / layers` bytes), a bias and a norm, as a model's
/// checkpoint has: about `size` bytes in `3 * layers` tensors.
fn checkpoint_shapes(size: u64, layers: usize) -> Vec<(String, Vec<usize>)> {
    let cols = 1024;
    let rows = ((size / layers as u64 / 4 / cols as u64) as usize).max(1);
    (0..layers)
        .flat_map(|i| {
            [
                (format!("layers.{i:03}.weight"), vec![rows + i % 3, cols]),
                (format!("layers.{i:03}.bias"), vec![cols]),
                (format!("layers.{i:03}.norm"), vec![cols + 2 * (i % 5)]),
            ]
        })
        .collect()
}

/// Write the checkpoint with the `safetensors` crate unless it is there.
fn checkpoint(dir: &Path, size: u64, say: &mut dyn FnMut(&str)) -> Result<gpuring::load::Checkpoint, Error> {
    let path = dir.join(format!("checkpoint-{size}.safetensors"));
    let shapes = checkpoint_shapes(size, 100);
    let want: u64 = shapes.iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 4).sum();
    if let Ok(found) = gpuring::load::Checkpoint::open(std::slice::from_ref(&path)) {
        if found.bytes() == want && found.tensors.len() == shapes.len() {
            return Ok(found);
        }
    }
    say(&format!("writing a checkpoint of {} in {} tensors to {}", gpuring::core::Bytes(want), shapes.len(), path.display()));
    let tensors = shapes.into_iter().enumerate().map(|(i, (name, shape))| (name, Generated { shape, seed: i as u64 + 7 }));
    safetensors::serialize_to_file(tensors, None, &path)
        .map_err(|e| Error::BenchFailed { case: "checkpoint".into(), why: format!("writing {}: {e}", path.display()) })?;
    gpuring::load::Checkpoint::open(&[path])
}

/// Write `len` pseudo-random bytes (xorshift) to `path`, and with `sync`
/// wait until they are on the disk (the direct cases read from there).
fn write_pattern(path: &Path, len: u64, seed: u64, sync: bool) -> Result<(), Error> {
    let mut file = std::fs::File::create(path).map_err(io_error(path, "creating"))?;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).map_err(io_error(path, "writing"))?;
        left -= n as u64;
    }
    if sync {
        file.sync_all().map_err(io_error(path, "syncing"))?;
    }
    Ok(())
}

/// Warm the files a group reads, or drop the large file from the cache.
fn set_cache(data: &Data, group: &str) -> Result<(), Error> {
    let sources: Vec<Source> = match group {
        "small-files" => data.small.clone(),
        "load" | "load-model" => data.load_checkpoint(group).files.iter().map(Source::file).collect(),
        _ => vec![Source::file(&data.large)],
    };
    if group != "large-direct" {
        return warm(&sources);
    }
    for s in &sources {
        let file = std::fs::File::open(&s.path).map_err(io_error(&s.path, "opening"))?;
        // Best effort: dirty or mapped pages stay, which O_DIRECT ignores anyway.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(())
}

fn cpu_now() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// A gpuring or bounce ingest, verification off (the consumer still checksums).
fn in_process(data: &Data, case: &Case, config: &BenchConfig) -> Result<Sample, Error> {
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
fn cuda_baseline(data: &Data, case: &Case, config: &BenchConfig) -> Result<Sample, Error> {
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
fn cuda_baseline(_: &Data, case: &Case, _: &BenchConfig) -> Result<Sample, Error> {
    Err(Error::BenchFailed { case: case.name.clone(), why: "the cuda backend is not compiled into this gpuring".into() })
}

/// The bench's target for `read_into` and `load`: the backend and ring of
/// the gpuring cases.
fn target(config: &BenchConfig) -> gpuring::read_into::Target {
    let i = &config.ingest;
    let slots = gpuring::read_into::ReadOptions { direct: false, slots: i.slots, slot_size: i.slot_size, shards: config.read_shards };
    gpuring::read_into::Target { backend: i.backend, device: i.device.clone(), slots }
}

/// `read_into` of the whole large file: on the host into the destination
/// made for it, on a GPU into a new buffer of the backend's (allocated
/// before the clock starts).
fn read_into(data: &Data, config: &BenchConfig) -> Result<Sample, Error> {
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
fn pread_into(data: &Data, config: &BenchConfig) -> Result<Sample, Error> {
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
fn prime(len: u64) {
    std::hint::black_box(vec![1u8; len as usize]);
}

impl Data {
    /// The checkpoint of load group `group`.
    fn load_checkpoint(&self, group: &str) -> &gpuring::load::Checkpoint {
        match (group, &self.model) {
            ("load-model", Some(model)) => model,
            _ => &self.checkpoint,
        }
    }
}

/// Load `checkpoint` into a new buffer, verification off, and keep it
/// until the clock stops: on the host `gpuring::load` (its `Loaded` owns a
/// `HostBuffer`), on a GPU a device buffer of the backend's.
fn load(checkpoint: &gpuring::load::Checkpoint, config: &BenchConfig) -> Result<Sample, Error> {
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
fn candle_load(checkpoint: &gpuring::load::Checkpoint, case: &Case) -> Result<Sample, Error> {
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
fn candle_load(_: &gpuring::load::Checkpoint, case: &Case) -> Result<Sample, Error> {
    Err(Error::BenchFailed { case: case.name.clone(), why: "gpuring was built without the candle feature".into() })
}

/// Times `safetensors.numpy.load_file` of every file given, inside the
/// interpreter (start-up and imports not counted): wall and CPU seconds.
const NUMPY_LOAD: &str = "import sys, time\nfrom safetensors.numpy import load_file\nw, c = time.perf_counter(), time.process_time()\nkept = [load_file(p) for p in sys.argv[1:]]\nw, c = time.perf_counter() - w, time.process_time() - c\nprint(w, c, sum(len(k) for k in kept))\n";

/// The Python that has `safetensors.numpy` (`GPURING_PYTHON`, else
/// `python3`), or why there is none.
fn numpy_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("GPURING_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    match Command::new(&python).args(["-c", "import safetensors.numpy, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(python),
        Ok(_) => Err(format!("{} has no safetensors or numpy (pip install safetensors numpy); safetensors-numpy is left out", python.display())),
        Err(e) => Err(format!("{} cannot run ({e}); safetensors-numpy is left out", python.display())),
    }
}

/// Python's `safetensors.numpy.load_file` of `checkpoint`, timed inside
/// the interpreter.
fn numpy_load(data: &Data, checkpoint: &gpuring::load::Checkpoint) -> Result<Sample, Error> {
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
fn mmap_load(checkpoint: &gpuring::load::Checkpoint) -> Result<Sample, Error> {
    let path = &checkpoint.files[0];
    let file = std::fs::File::open(path).map_err(io_error(path, "opening"))?;
    let len = file.metadata().map_err(io_error(path, "stat"))?.len() as usize;
    prime(checkpoint.arena_bytes);
    let mut arena = vec![0u8; checkpoint.arena_bytes as usize];
    let (cpu, start) = (cpu_now(), Instant::now());
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
struct Mapped {
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
fn memcpy(total: u64, slots: u32, slot_size: usize) -> Sample {
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

fn fio_status(config: &BenchConfig) -> FioStatus {
    let version =
        Command::new("fio").arg("--version").output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let why_not = match (&version, config.fio) {
        (_, false) => Some("--no-fio was given".to_owned()),
        (None, true) => Some("fio is not installed (Debian: apt-get install fio); its cases are left out".to_owned()),
        (Some(_), true) => None,
    };
    FioStatus { ran: why_not.is_none(), version, why_not }
}

/// For fio's `jobs`-job small-file case: a directory where job k's file i,
/// `small.k.i` as fio names it, links to small file k * per + i (the last
/// few files, under one per job, are left out, as fio would cut them).
/// Made, or checked with one `readlink` per link, on the first run only.
fn fio_links(data: &Data, config: &BenchConfig, jobs: u32) -> Result<PathBuf, Error> {
    let per = (config.small_files / jobs).max(1);
    let links = config.dir.join(format!("small-{}x{}-{jobs}jobs", config.small_files, config.small_size));
    if data.links_ready.get() {
        return Ok(links);
    }
    std::fs::create_dir_all(&links).map_err(io_error(&links, "creating fio's link directory"))?;
    for k in 0..jobs {
        for i in 0..per {
            let link = links.join(format!("small.{k}.{i}"));
            let target = &data.small[(k * per + i) as usize].path;
            if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(target, &link).map_err(io_error(&link, "linking a small file for fio"))?;
            }
        }
    }
    data.links_ready.set(true);
    Ok(links)
}

/// fio's io_uring engine with fixed buffers and registered files, page-aligned
/// buffers, the slots' block size and depth.
fn run_fio(data: &Data, group: &str, config: &BenchConfig, jobs: u32) -> Result<Sample, Error> {
    let bs = config.ingest.slot_size as u64;
    let mut cmd = Command::new("fio");
    cmd.args(["--ioengine=io_uring", "--fixedbufs", "--registerfiles", "--rw=read", "--mem_align=4096", "--output-format=json", "--thread"]);
    // Each job has its share of the slots as its depth, as each shard does.
    cmd.arg(format!("--iodepth={}", config.ingest.slots.div_ceil(jobs).max(1)));
    if jobs > 1 {
        cmd.arg("--group_reporting");
    }
    let (files, expect) = match group {
        "small-files" if jobs > 1 => {
            // One contiguous run of the files per job (see `fio_links`).
            let per = (config.small_files / jobs).max(1);
            let links = fio_links(data, config, jobs)?;
            cmd.arg("--name=small").arg(format!("--directory={}", links.display())).arg(format!("--numjobs={jobs}"));
            cmd.arg(format!("--nrfiles={per}")).arg(format!("--filesize={}", config.small_size));
            cmd.arg(format!("--size={}", config.small_size * per as u64));
            cmd.args(["--file_service_type=sequential", "--invalidate=0", "--direct=0"]);
            cmd.arg(format!("--bs={}", bs.min(config.small_size)));
            ((per * jobs) as u64, config.small_size * (per * jobs) as u64)
        }
        "small-files" => {
            cmd.arg("--name=small").arg(format!("--directory={}", data.small_dir.display()));
            cmd.arg(format!("--nrfiles={}", config.small_files)).arg(format!("--filesize={}", config.small_size));
            cmd.arg(format!("--size={}", config.small_size * config.small_files as u64));
            cmd.args(["--file_service_type=sequential", "--invalidate=0", "--direct=0"]);
            cmd.arg(format!("--bs={}", bs.min(config.small_size)));
            (config.small_files as u64, config.small_size * config.small_files as u64)
        }
        _ => {
            // One contiguous range per job (block multiples; the rest of
            // the file, under a block per job, is left out).
            let per = (config.size / jobs as u64) / 4096 * 4096;
            cmd.arg("--name=large").arg(format!("--filename={}", data.large.display())).arg(format!("--size={per}"));
            if jobs > 1 {
                cmd.arg(format!("--numjobs={jobs}")).arg(format!("--offset_increment={per}"));
            }
            cmd.arg(format!("--bs={bs}"));
            cmd.args(if group == "large-direct" { ["--direct=1", "--invalidate=0"] } else { ["--direct=0", "--invalidate=0"] });
            (1, per * jobs as u64)
        }
    };
    let failed = |why: String| Error::BenchFailed { case: format!("fio ({group})"), why };
    let out = cmd.output().map_err(|e| failed(format!("could not start fio: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!("fio exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("unreadable JSON from fio: {e}")))?;
    let job = &json["jobs"][0];
    let read = &job["read"];
    let (bytes, runtime_ms) = (read["io_bytes"].as_u64().unwrap_or(0), read["runtime"].as_f64().unwrap_or(0.0));
    if job["error"].as_i64() != Some(0) || bytes != expect || runtime_ms <= 0.0 {
        return Err(failed(format!("fio read {bytes} of {expect} bytes in {runtime_ms} ms (error {})", job["error"])));
    }
    let seconds = runtime_ms / 1000.0;
    let cpu_pct = job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0);
    Ok(Sample { bytes, seconds, cpu_seconds: cpu_pct / 100.0 * seconds, files, reads: read["total_ios"].as_u64().unwrap_or(0) })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Slowest and fastest of `runs`.
fn spread(runs: &[f64]) -> Spread {
    Spread { min: runs.iter().copied().fold(f64::INFINITY, f64::min), max: runs.iter().copied().fold(0.0, f64::max) }
}

fn report(config: &BenchConfig, data: &Data, fio: FioStatus, cases: &[Case], scaling: Vec<ScalingPoint>) -> BenchReport {
    let medians = |case: &Case| median(case.samples.iter().map(Sample::gib_per_s).collect());
    let find = |kind: Kind, group: &str| cases.iter().find(|c| c.kind == kind && c.group == group).map(medians);
    let mut out = Vec::new();
    for case in cases {
        let gib = medians(case);
        let runs: Vec<f64> = case.samples.iter().map(Sample::gib_per_s).collect();
        let per_file = case.group == "small-files";
        let over = |other: Option<f64>| other.filter(|o| *o > 0.0).map(|o| gib / o);
        let (ratios, vs_gpuring) = match case.kind {
            Kind::Gpuring => (
                Some(Ratios {
                    vs_fio: over(find(if config.ingest.shards > 1 { Kind::FioJobs } else { Kind::Fio }, case.group)),
                    vs_fio_1job: over(find(Kind::Fio, case.group)),
                    vs_bounce: over(find(Kind::Bounce, case.group)),
                    vs_memcpy: over(find(Kind::Memcpy, "large-buffered")),
                    vs_read_htod: over(find(Kind::ReadHtod, "large-buffered")),
                    vs_pinned_htod: over(find(Kind::PinnedHtod, "large-buffered")),
                    vs_pread: None,
                    vs_mmap: None,
                    vs_candle: None,
                    vs_numpy: None,
                    vs_read_into: None,
                }),
                None,
            ),
            Kind::ReadInto | Kind::Load => (
                Some(Ratios {
                    vs_fio: None,
                    vs_fio_1job: None,
                    vs_bounce: None,
                    vs_memcpy: over(find(Kind::Memcpy, "large-buffered")),
                    vs_read_htod: over(find(Kind::ReadHtod, "large-buffered")),
                    vs_pinned_htod: over(find(Kind::PinnedHtod, "large-buffered")),
                    vs_pread: over(find(Kind::PreadInto, case.group)),
                    vs_mmap: over(find(Kind::MmapLoad, case.group)),
                    vs_candle: over(find(Kind::CandleLoad, case.group)),
                    vs_numpy: over(find(Kind::SafetensorsNumpy, case.group)),
                    vs_read_into: if case.kind == Kind::Load { over(find(Kind::ReadInto, "read-into")) } else { None },
                }),
                None,
            ),
            // The copy ceilings compare with the ingest of the same backend
            // in its group (large-buffered).
            _ => {
                let ours = [Kind::Gpuring, Kind::ReadInto, Kind::Load].into_iter().find_map(|k| find(k, case.group));
                (None, ours.filter(|g| *g > 0.0).map(|g| gib / g))
            }
        };
        out.push(CaseReport {
            name: case.name.clone(),
            group: case.group,
            gib_per_s: gib,
            spread: spread(&runs),
            cpu_s_per_gib: median(case.samples.iter().map(Sample::cpu_per_gib).collect()),
            files_per_s: per_file.then(|| median(case.samples.iter().map(|s| s.files as f64 / s.seconds.max(1e-9)).collect())),
            iops: per_file.then(|| median(case.samples.iter().map(|s| s.reads as f64 / s.seconds.max(1e-9)).collect())),
            runs,
            ratios,
            vs_gpuring,
        });
    }
    BenchReport {
        date: utc_date(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: rustix::system::uname().release().to_string_lossy().into_owned(),
        backend: config.ingest.backend.name().to_owned(),
        dir: data.large.parent().unwrap_or(Path::new(".")).display().to_string(),
        size: config.size,
        small_files: config.small_files,
        small_size: config.small_size,
        checkpoint_bytes: data.checkpoint.bytes(),
        checkpoint_tensors: data.checkpoint.tensors.len(),
        slots: config.ingest.slots,
        slot_size: config.ingest.slot_size,
        shards: config.ingest.shards,
        read_shards: config.read_shards,
        runs: config.runs,
        fio,
        cases: out,
        scaling,
        size_section: Vec::new(),
        model: match (&config.model, &data.model) {
            (Some(dir), Some(model)) => format!("{} ({} tensors)", dir.join("model.safetensors").display(), model.tensors.len()),
            _ => "none: pass --model DIR or set GPURING_MINILM for the load-model group".into(),
        },
        python: match &data.python {
            Ok(python) => python.display().to_string(),
            Err(why) => why.clone(),
        },
    }
}

/// Today's UTC date as YYYY-MM-DD (days-from-civil inverted, proleptic Gregorian).
fn utc_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The report as a table, one line per case, then gpuring's ratios.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "gpuring bench, {}: {} CPUs, kernel {}, backend {}, {} slots of {}, {} shard(s) ({} ring(s) for read-into and load), large file {}, {} small files of {}, checkpoint {} in {} tensors, median of {} runs\n\n",
        r.date,
        r.cpus,
        r.kernel,
        r.backend,
        r.slots,
        gpuring::core::Bytes(r.slot_size as u64),
        r.shards,
        r.read_shards,
        gpuring::core::Bytes(r.size),
        r.small_files,
        gpuring::core::Bytes(r.small_size),
        gpuring::core::Bytes(r.checkpoint_bytes),
        r.checkpoint_tensors,
        r.runs
    );
    s += "| case | GiB/s | spread | CPU s/GiB | vs gpuring | files/s | IOPS |\n|---|---:|---:|---:|---:|---:|---:|\n";
    for c in &r.cases {
        let opt = |v: Option<f64>, digits: usize| v.map_or("".to_owned(), |v| format!("{v:.digits$}"));
        s += &format!(
            "| {} | {:.2} | {:.2}-{:.2} | {:.3} | {} | {} | {} |\n",
            c.name,
            c.gib_per_s,
            c.spread.min,
            c.spread.max,
            c.cpu_s_per_gib,
            c.vs_gpuring.map_or("1.00x".to_owned(), |v| format!("{v:.2}x")),
            opt(c.files_per_s, 0),
            opt(c.iops, 0)
        );
    }
    s += "\n";
    for c in r.cases.iter().filter(|c| c.ratios.is_some()) {
        let ratios = c.ratios.as_ref().expect("filtered");
        let x = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}x"));
        s += &match (ratios.vs_pread, ratios.vs_mmap) {
            (Some(pread), _) => format!("{}: {} pread() into host memory, {} memcpy", c.name, x(Some(pread)), x(ratios.vs_memcpy)),
            (_, Some(mmap)) => format!("{}: {} safetensors over mmap + copy, {} memcpy", c.name, x(Some(mmap)), x(ratios.vs_memcpy)),
            _ => format!(
                "{}: {} fio ({} job(s)), {} fio (1 job), {} bounce, {} memcpy",
                c.name,
                x(ratios.vs_fio),
                r.shards,
                x(ratios.vs_fio_1job),
                x(ratios.vs_bounce),
                x(ratios.vs_memcpy)
            ),
        };
        if ratios.vs_pinned_htod.is_some() {
            s += &format!(", {} read()+cuMemcpyHtoD, {} pinned HtoD (PCIe ceiling)", x(ratios.vs_read_htod), x(ratios.vs_pinned_htod));
        }
        s += "\n";
    }
    if let Some(why) = &r.fio.why_not {
        s += &format!("fio: not run: {why}\n");
    }
    s += "\nscaling (buffered, large file):\n\n| shards | GiB/s | spread | CPU s/GiB |\n|---:|---:|---:|---:|\n";
    for p in &r.scaling {
        s += &format!("| {} | {:.2} | {:.2}-{:.2} | {:.3} |\n", p.shards, p.gib_per_s, p.spread.min, p.spread.max, p.cpu_s_per_gib);
    }
    s += "\nsize (buffered, warm):\n\n| bytes | files | GiB/s | files/s | resident before | peak resident |\n|---:|---:|---:|---:|---:|---:|\n";
    for p in &r.size_section {
        s += &format!(
            "| {} | {} | {:.2} | {:.0} | {} | {} |\n",
            gpuring::core::Bytes(p.bytes),
            p.files,
            p.gib_per_s,
            p.files_per_s,
            gpuring::core::Bytes(p.rss_before_bytes),
            gpuring::core::Bytes(p.peak_rss_bytes)
        );
    }
    s
}
