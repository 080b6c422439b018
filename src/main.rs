//! The `gpuring` command: `ingest`, `load`, `bench`, `probe` and `header`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gpuring::ingest::{self, IngestOptions, IngestReport};
use gpuring::{core::Bytes, Error};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod bench;

#[derive(Parser)]
#[command(name = "gpuring", version, about = "Move bytes from files into GPU-visible memory through io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn size(text: &str) -> Result<usize, String> {
    gpuring::core::parse_size(text).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| format!("`{text}` is not a size (try 4096, 64K, 1M or 1G)"))
}

fn backend(text: &str) -> Result<ingest::Backend, String> {
    ingest::Backend::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = ingest::Backend::ALL.iter().map(|b| b.name()).collect();
        format!("`{text}` is not a backend (one of: {}). Fix: pass one of those", names.join(", "))
    })
}

fn cuda_mode(text: &str) -> Result<ingest::CudaMode, String> {
    ingest::CudaMode::from_name(text).ok_or_else(|| {
        let names: Vec<&str> = ingest::CudaMode::ALL.iter().map(|m| m.name()).collect();
        format!("`{text}` is not a CUDA mode (one of: {}). Fix: pass one of those", names.join(", "))
    })
}

/// The ring an ingest runs with.
#[derive(Args)]
struct RingArgs {
    /// Backend that supplies the slot memory and the consumer: host, vulkan,
    /// cuda or rocm (those compiled in).
    #[arg(long, default_value = "host", value_parser = backend)]
    backend: ingest::Backend,
    /// The GPU backend's device: an index or part of its name, as `gpuring
    /// probe` lists them (default: the first usable, GPUs before CPUs).
    #[arg(long)]
    device: Option<String>,
    /// Number of slots in the ring (fio's iodepth in the bench). Default:
    /// 32, or as many as RLIMIT_MEMLOCK allows.
    #[arg(long)]
    slots: Option<u32>,
    /// Bytes per slot, a multiple of 4096 with K, M, G suffixes (fio's block
    /// size in the bench). Default: 256K, or less where RLIMIT_MEMLOCK is
    /// too small for one slot.
    #[arg(long, value_parser = size)]
    slot_size: Option<usize>,
    /// Rings that read at once, each on its own thread with its share of
    /// the slots (load: of the destination). Default: one per CPU this
    /// process may use, less one for ingest on the host backend, whose
    /// consumer needs a CPU (at most one per slot, and as many as
    /// RLIMIT_MEMLOCK leaves room for).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=gpuring_uring::MAX_SHARDS as i64))]
    shards: Option<u32>,
    /// How the CUDA consumer runs (--backend cuda only): `batched` launches
    /// per batch of published slots, one `persistent` kernel polling the
    /// queue, or `device-copy` (batched, after the copy engine moved each
    /// slot into device memory). Default: batched.
    #[arg(long, value_parser = cuda_mode)]
    cuda_mode: Option<ingest::CudaMode>,
}

#[derive(Subcommand)]
enum Command {
    /// Read files (directories: every regular file under them) into the slots,
    /// hand each slot to the backend's consumer, and verify its checksums.
    Ingest {
        #[command(flatten)]
        ring: RingArgs,
        /// Read with O_DIRECT: the device writes the slots.
        #[arg(long)]
        direct: bool,
        /// Read with pread() into a heap buffer and copy into the slots, the
        /// way programs do without gpuring (for comparison; not zero-bounce).
        #[arg(long)]
        bounce: bool,
        /// Skip the independent reference read (the consumer still checksums).
        #[arg(long)]
        no_verify: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Also read an NVMe namespace through passthrough: its character
        /// device, /dev/ngXnY (`gpuring probe` lists them). Verified against
        /// an O_DIRECT read of its block device.
        #[arg(long, value_name = "DEV")]
        nvme: Option<PathBuf>,
        /// First logical block to read from --nvme.
        #[arg(long, requires = "nvme", default_value_t = 0)]
        lba: u64,
        /// Logical blocks to read from --nvme (default: through the end of
        /// the namespace, so --nvme alone reads all of it).
        #[arg(long, requires = "nvme")]
        blocks: Option<u64>,
        /// How NVMe Reads address the slots: through the registered buffers
        /// (fixed), by plain address (plain), or whichever the kernel takes (auto).
        #[arg(long, requires = "nvme", default_value = "auto", value_parser = ["auto", "fixed", "plain"])]
        nvme_buffers: String,
        /// Put the slots in this PCI device's peer memory (P2PDMA), e.g. an
        /// NVMe controller's memory buffer: its address, as `gpuring probe`
        /// lists it (0000:03:00.0). With --direct or --nvme the disk writes
        /// into that device's memory, no host RAM in between. Host backend only.
        #[arg(long, value_name = "PCI")]
        peer_memory: Option<String>,
        /// Files or directories.
        #[arg(required_unless_present = "nvme")]
        paths: Vec<PathBuf>,
    },
    /// Load safetensors checkpoints (files, or a sharded checkpoint's
    /// model.safetensors.index.json) into one buffer of the backend's
    /// device, every tensor read with read_into, and verify each against the
    /// file.
    Load {
        #[command(flatten)]
        ring: RingArgs,
        /// Read with O_DIRECT.
        #[arg(long)]
        direct: bool,
        /// Skip the comparison of every tensor with an independent read.
        #[arg(long)]
        no_verify: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Load only tensors whose name matches this glob (`*`, `?`,
        /// `[..]`); repeat for several.
        #[arg(long = "select", value_name = "GLOB")]
        select: Vec<String>,
        /// Load only this rank's part of each tensor (with --world), as
        /// torch.chunk cuts it.
        #[arg(long, requires = "world")]
        rank: Option<usize>,
        /// Ranks in all (with --rank).
        #[arg(long, requires = "rank")]
        world: Option<usize>,
        /// The dimension --rank and --world cut.
        #[arg(long, default_value_t = 0, requires = "rank")]
        dim: usize,
        /// Safetensors files, or index files (*.index.json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Measure gpuring against fio, the read()+copy bounce path and memcpy,
    /// on the same bytes, in one run (makes its own data under --dir).
    Bench {
        /// Print one JSON object on stdout (progress goes to stderr).
        #[arg(long)]
        json: bool,
        /// Where to make the data (not tmpfs: the direct cases need O_DIRECT).
        #[arg(long, default_value_os_t = std::env::temp_dir().join("gpuring-bench"))]
        dir: PathBuf,
        /// Size of the large file.
        #[arg(long, default_value = "1G", value_parser = size)]
        size: usize,
        /// Number of small files.
        #[arg(long, default_value_t = 2048)]
        small_files: u32,
        /// Size of each small file.
        #[arg(long, default_value = "64K", value_parser = size)]
        small_size: usize,
        /// About the size of the load cases' checkpoint (300 tensors).
        #[arg(long, default_value = "1G", value_parser = size)]
        checkpoint_size: usize,
        /// Runs of every case (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// The gpuring and bounce cases' ring; fio's block size and depth follow it.
        #[command(flatten)]
        ring: RingArgs,
        /// Leave fio's cases out even when fio is installed.
        #[arg(long)]
        no_fio: bool,
        /// The size section's largest input: ingests of 1 MiB, 16 MiB, ...
        /// up to this (ranges of one file of this size).
        #[arg(long, default_value = "4G", value_parser = size)]
        size_max: usize,
        /// The size section's most files: ingests of 10, 100, ... up to
        /// this many files of 4 KiB.
        #[arg(long, default_value_t = 100_000)]
        files_max: u32,
        /// A real model's directory (holding model.safetensors) for a
        /// second group of load cases. Default: $GPURING_MINILM, where the
        /// test command puts all-MiniLM-L6-v2.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Print the io_queue contract your own consumer follows: a C header
    /// (CUDA, HIP, C, C++) or a WGSL module, generated from gpuring-core.
    Header {
        /// The language.
        #[arg(long, value_enum)]
        lang: Lang,
    },
    /// Report what this machine can do, with reasons.
    Probe {
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Slots of the ring to check RLIMIT_MEMLOCK against (default: the
        /// default ring's).
        #[arg(long)]
        slots: Option<u32>,
        /// Slot size of the ring to check RLIMIT_MEMLOCK against (default:
        /// the default ring's).
        #[arg(long, value_parser = size)]
        slot_size: Option<usize>,
        /// Directory whose file system is checked for direct I/O.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// A language the io_queue contract is written in.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Lang {
    /// A C header, for CUDA and HIP kernels and C or C++ host code.
    C,
    /// A WGSL module, for compute shaders.
    Wgsl,
}

/// Write to stdout. A reader that went away (`gpuring ... | head -1`) ends
/// the process quietly with status 141, as SIGPIPE ends `cat`, instead of a
/// panic; any other write error is reported.
fn out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("gpuring: error: writing to stdout: {e}");
        std::process::exit(2);
    }
}

/// `println!` through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => { out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`out`].
macro_rules! outp {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpuring: error: {}", in_the_commands_words(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// The library's words for its options, and the command's flags for them:
/// the library's errors name no flag, the command's do.
const FLAGS: &[(&str, &str)] = &[
    ("`cuda_mode` applies to the cuda (with ingest) backend", "--cuda-mode applies to --backend cuda with ingest"),
    ("`cuda_mode` applies to the cuda backend", "--cuda-mode applies to --backend cuda"),
    ("`peer_memory` applies to the host (without the bounce path) backend", "--peer-memory applies to --backend host (without --bounce)"),
    ("host with the bounce path", "host with --bounce"),
    ("leave `cuda_mode` out", "leave out --cuda-mode"),
    ("leave `peer_memory` out", "leave out --peer-memory"),
    ("or use the cuda (with ingest) backend", "or use --backend cuda with ingest"),
    ("or use the cuda backend", "or use --backend cuda"),
    ("or use the host (without the bounce path) backend", "or use --backend host (without --bounce)"),
    ("use the host backend", "use --backend host"),
    ("leave the device out", "leave out --device"),
    ("Fix: choose a device by an index", "Fix: pass --device with an index"),
    ("pick another device (`gpuring probe` lists them)", "pick another device with --device (see `gpuring probe`)"),
    ("fewer or smaller slots", "fewer --slots or a smaller --slot-size"),
    ("without O_DIRECT", "without --direct"),
    ("or use smaller slots", "or use a smaller --slot-size"),
    ("or use the batched consumer mode", "or use --cuda-mode batched"),
    ("the batched mode needs none", "--cuda-mode batched needs none"),
    ("skip verification (verify: false)", "pass --no-verify"),
    ("not the bounce path", "without --bounce"),
    ("(NVMe namespaces are NVMe sources, not files)", "(NVMe namespaces go with --nvme)"),
    ("files are file sources, not NVMe ones", "files go without --nvme"),
    ("(nvme_fixed None), or read by address (Some(false))", "(leave --nvme-buffers at auto), or read by address (--nvme-buffers plain)"),
];

/// `message` with the library's words for options replaced by the
/// command's flags, and a ring it suggests (`N slots of SIZE`) as the flags
/// that ask for it.
fn in_the_commands_words(message: &str) -> String {
    let mut text = message.to_owned();
    for (library, command) in FLAGS {
        text = text.replace(library, command);
    }
    const FITS: &str = "a ring that fits: ";
    if let Some(at) = text.find(FITS) {
        let rest = &text[at + FITS.len()..];
        let mut words = rest.split(' ');
        if let (Some(n), Some("slots"), Some("of"), Some(size)) = (words.next(), words.next(), words.next(), words.next()) {
            let said = format!("{n} slots of {size}");
            let flags = format!("--slots {n} --slot-size {size}");
            text = format!("{}{FITS}{}", &text[..at], rest.replacen(&said, &flags, 1));
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest {
            ring: RingArgs { backend, device, slots, slot_size, shards, cuda_mode },
            direct,
            bounce,
            no_verify,
            json,
            nvme,
            lba,
            blocks,
            nvme_buffers,
            peer_memory,
            paths,
        } => {
            let nvme_fixed = match nvme_buffers.as_str() {
                "fixed" => Some(true),
                "plain" => Some(false),
                _ => None,
            };
            let (slots, slot_size) = ingest::default_ring(slots, slot_size);
            let config = IngestOptions {
                backend,
                device,
                slots,
                slot_size,
                shards: shards.unwrap_or_else(|| ingest::default_shards(backend.consumer_runs(), slots, slot_size)),
                direct,
                bounce,
                verify: !no_verify,
                nvme_fixed,
                cuda_mode,
                peer_memory,
                ..IngestOptions::default()
            };
            let mut inputs = gpuring::inputs::collect(&paths)?;
            if let Some(dev) = nvme {
                inputs.sources.push(gpuring::inputs::nvme_source(dev, lba, blocks)?);
            }
            let total = total_bytes(&inputs.sources);
            if !inputs.sources.is_empty() && total == Some(0) {
                // A file of /proc or /sys reports 0 bytes whatever it holds:
                // say what it is rather than that it is empty (the driver
                // refuses one among others itself, when it opens it).
                for source in inputs.sources.iter().filter(|s| s.kind == gpuring::uring::SourceKind::File) {
                    gpuring::uring::source::refuse_generated(&source.path).map_err(Error::from)?;
                }
                return Err(Error::NothingToIngest { why: "every input file is empty (0 bytes)".into() }.into());
            }
            if inputs.sources.is_empty() {
                return Err(Error::NothingToIngest { why: "the directories hold no regular files".into() }.into());
            }
            let bar = progress_bar(total.unwrap_or(0));
            let report = ingest::run(&inputs.sources, &config, &mut |bytes| bar.inc(bytes))?;
            bar.finish_and_clear();
            if json {
                let mut value = serde_json::to_value(&report).context("encoding the report")?;
                value["skipped"] = inputs.skipped.iter().map(|p| p.display().to_string()).collect();
                outln!("{value}");
            } else {
                print_report(&report, inputs.skipped.len());
            }
            let ok = report.complete && (!report.checksum.verified || report.checksum.matched);
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Load { ring: RingArgs { backend, device, slots, slot_size, shards, cuda_mode }, direct, no_verify, json, select, rank, world, dim, paths } => {
            if cuda_mode.is_some() {
                return Err(Error::OptionNotForBackend { option: "cuda_mode", backend: "load".into(), needs: "cuda (with ingest)" }.into());
            }
            let (slots, slot_size) = ingest::default_ring(slots, slot_size);
            let checkpoint = gpuring::load::Checkpoint::open(&paths)?;
            let options = gpuring::read_into::ReadOptions {
                direct,
                slots,
                slot_size,
                shards: shards.unwrap_or_else(|| ingest::default_shards(gpuring::backend::ConsumerRuns::Elsewhere, slots, slot_size)),
            };
            let part = rank.zip(world).map(|(rank, world)| gpuring::load::Part { rank, world, dim });
            let mut load_options = gpuring::LoadOptions { read: options.clone(), verify: !no_verify, part, ..Default::default() };
            if !select.is_empty() {
                load_options = load_options.select_glob(&select.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
            let plan = checkpoint.plan(&load_options)?;
            let target = gpuring::read_into::Target { backend, device, slots: options };
            let report = gpuring::load::report(&plan, &target, !no_verify)?;
            if json {
                outln!("{}", serde_json::to_string(&report).context("encoding the report")?);
            } else {
                for t in &report.tensors {
                    let verdict = if !report.checksum.verified {
                        "unverified"
                    } else if t.matched {
                        "match"
                    } else {
                        "MISMATCH"
                    };
                    outln!("{:<40} {:<5} {:<20} {:>12} {verdict}", t.info.name, t.info.dtype, format!("{:?}", t.info.shape), t.info.bytes);
                }
                outln!(
                    "{} tensors from {} file(s), {} in {:.3} s: {:.2} GiB/s on {}; checksum {}",
                    report.tensors.len(),
                    report.files,
                    Bytes(report.bytes),
                    report.seconds,
                    report.gib_per_s,
                    report.backend,
                    if !report.checksum.verified {
                        "not verified"
                    } else if report.checksum.matched {
                        "match"
                    } else {
                        "MISMATCH"
                    }
                );
            }
            let ok = !report.checksum.verified || report.checksum.matched;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Bench {
            json,
            dir,
            size,
            small_files,
            small_size,
            checkpoint_size,
            runs,
            ring: RingArgs { backend, device, slots, slot_size, shards, cuda_mode },
            no_fio,
            size_max,
            files_max,
            model,
        } => {
            let (slots, slot_size) = ingest::default_ring(slots, slot_size);
            let config = bench::BenchConfig {
                dir,
                size: size as u64,
                small_files,
                small_size: small_size as u64,
                checkpoint_size: checkpoint_size as u64,
                runs: runs.max(1),
                ingest: IngestOptions {
                    backend,
                    device,
                    slots,
                    slot_size,
                    shards: shards.unwrap_or_else(|| ingest::default_shards(backend.consumer_runs(), slots, slot_size)),
                    verify: false,
                    cuda_mode,
                    ..IngestOptions::default()
                },
                fio: !no_fio,
                read_shards: shards.unwrap_or_else(|| ingest::default_shards(gpuring::backend::ConsumerRuns::Elsewhere, slots, slot_size)),
                size_max: size_max as u64,
                files_max: files_max.max(1),
                model: model.or_else(|| std::env::var_os("GPURING_MINILM").map(PathBuf::from)),
            };
            let report = bench::run(&config, &mut |line| eprintln!("{line}"))?;
            if json {
                outln!("{}", serde_json::to_string(&report).context("encoding the report")?);
            } else {
                outp!("{}", bench::table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Header { lang } => {
            let mut text = String::new();
            match lang {
                Lang::C => gpuring::core::contract::write_c_header(&mut text),
                Lang::Wgsl => gpuring::core::contract::write_wgsl(&mut text),
            }
            .context("writing the contract")?;
            outp!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { json, slots, slot_size, dir } => {
            let (slots, slot_size) = ingest::default_ring(slots, slot_size);
            let report = gpuring::probe::report(slots, slot_size, &dir);
            if json {
                outln!("{}", serde_json::to_string(&report).context("encoding the report")?);
            } else {
                for c in &report.checks {
                    outln!("{:<9} {:<20} {:<3} {}", c.group, c.name, if c.ok { "yes" } else { "no" }, c.detail);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sum of the sizes (for the progress bar and the empty-input check);
/// `None` when a path cannot be inspected (the ingest then reports why).
/// An NVMe range's bytes are not known before the device is asked: 1.
fn total_bytes(sources: &[gpuring::uring::Source]) -> Option<u64> {
    sources.iter().map(|s| std::fs::metadata(&s.path).ok().map(|m| if m.is_file() { s.range.as_ref().map_or(m.len(), |r| r.end - r.start) } else { 1 })).sum()
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn print_report(r: &IngestReport, skipped: usize) {
    let t = &r.telemetry;
    outln!(
        "ingested {} file{}, {} in {:.3} s: {:.2} GiB/s (backend {}, {} slots of {}, {})",
        r.files,
        if r.files == 1 { "" } else { "s" },
        Bytes(r.bytes),
        r.seconds,
        r.gib_per_s,
        r.backend,
        r.slots,
        Bytes(r.slot_size as u64),
        match (r.direct, r.bounce) {
            (false, false) => "buffered",
            (true, false) => "O_DIRECT",
            (false, true) => "buffered pread + copy",
            (true, true) => "O_DIRECT pread + copy",
        }
    );
    outln!(
        "telemetry: {} reads submitted, {} completed, {} failed, {} short; {} published, {} released",
        t.submitted_reads,
        t.completed_reads,
        t.failed_completions,
        t.short_reads,
        t.published,
        t.released
    );
    outln!("paths: dma {}, kernel_copy {}, bounce {}", Bytes(t.dma_bytes), Bytes(t.kernel_copy_bytes), Bytes(t.bounce_bytes));
    outln!("zero-bounce: {}; DMA-only: {}", yes(r.zero_bounce), yes(r.dma_only));
    if let Some(mode) = r.consumer_mode {
        outln!("consumer: {mode} mode; the copy engine moved {} into device memory", Bytes(r.device_copy_bytes));
    }
    if !r.slots_registered && !r.bounce {
        outln!("slots: not registered with io_uring (the kernel refuses peer memory as fixed buffers); read by address");
    }
    if let Some(fixed) = r.nvme_fixed_buffers {
        outln!("nvme: reads {}", if fixed { "into the registered slot buffers" } else { "by plain address (this kernel refused fixed buffers)" });
    }
    let c = &r.checksum;
    if c.verified {
        outln!("checksum: {} ({} of {} files match; digest {})", if c.matched { "match" } else { "MISMATCH" }, c.files_matched, r.files, c.digest);
        for path in &c.mismatched {
            outln!("  mismatch: {path}");
        }
    } else {
        outln!("checksum: not verified (--no-verify); consumer digest {}", c.digest);
    }
    if skipped > 0 {
        outln!("skipped {skipped} entries that are not regular files (see --json)");
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
