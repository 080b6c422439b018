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
use gpuring_uring::buffer::HeapBuffer;
use gpuring_uring::Source;

mod cases;
mod data;
mod fio;
mod report;
mod sections;

use cases::*;
use data::*;
use fio::*;
use report::*;
use sections::*;

pub use report::table;

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
    /// Rings of the read-into and load cases (`gpuring::backend::default_shards`).
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
#[derive(Clone, Copy, Debug, Default, Serialize)]
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

fn io_error<'p>(path: &'p Path, op: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |error| Error::Io { path: path.to_owned(), op, error }
}
