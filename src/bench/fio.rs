//! fio on the bench's data: whether it runs, its job files and links, and
//! its JSON output read back into a sample.

use super::*;

pub(super) fn fio_status(config: &BenchConfig) -> FioStatus {
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
pub(super) fn fio_links(data: &Data, config: &BenchConfig, jobs: u32) -> Result<PathBuf, Error> {
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
pub(super) fn run_fio(data: &Data, group: &str, config: &BenchConfig, jobs: u32) -> Result<Sample, Error> {
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
