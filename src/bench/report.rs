//! The report: medians, spreads and ratios of every case, and the table the
//! command prints.

use super::*;

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Slowest and fastest of `runs`.
pub(super) fn spread(runs: &[f64]) -> Spread {
    Spread { min: runs.iter().copied().fold(f64::INFINITY, f64::min), max: runs.iter().copied().fold(0.0, f64::max) }
}

pub(super) fn report(config: &BenchConfig, data: &Data, fio: FioStatus, cases: &[Case], scaling: Vec<ScalingPoint>) -> BenchReport {
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
                    ..Ratios::default()
                }),
                None,
            ),
            Kind::ReadInto | Kind::Load => (
                Some(Ratios {
                    vs_memcpy: over(find(Kind::Memcpy, "large-buffered")),
                    vs_read_htod: over(find(Kind::ReadHtod, "large-buffered")),
                    vs_pinned_htod: over(find(Kind::PinnedHtod, "large-buffered")),
                    vs_pread: over(find(Kind::PreadInto, case.group)),
                    vs_mmap: over(find(Kind::MmapLoad, case.group)),
                    vs_candle: over(find(Kind::CandleLoad, case.group)),
                    vs_numpy: over(find(Kind::SafetensorsNumpy, case.group)),
                    vs_read_into: if case.kind == Kind::Load { over(find(Kind::ReadInto, "read-into")) } else { None },
                    ..Ratios::default()
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
pub(super) fn utc_date() -> String {
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
