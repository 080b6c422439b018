//! The bench's two sections after the cases: scaling by shard count, and
//! sizes (inputs from 1 MiB up, files from 10 up) with peak memory.

use super::*;

/// Shard counts to measure: 1, 2, 4, ... below `cpus`, and `cpus`.
pub(super) fn shard_counts(cpus: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = std::iter::successors(Some(1u32), |n| n.checked_mul(2)).take_while(|&n| n < cpus).collect();
    counts.push(cpus.max(1));
    counts
}

/// The buffered large-file ingest with each shard count, interleaved.
pub(super) fn scaling_section(data: &Data, config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Vec<ScalingPoint>, Error> {
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
pub(super) fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reset the high-water mark to the current resident memory (Linux 4.0).
pub(super) fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Ingests of 1 MiB to `size_max` bytes (ranges of one file of that size)
/// and of 10 to `files_max` files of 4 KiB, warm, with peak memory.
pub(super) fn size_section(config: &BenchConfig, say: &mut dyn FnMut(&str)) -> Result<Vec<SizePoint>, Error> {
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
