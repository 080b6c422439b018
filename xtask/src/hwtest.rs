//! `cargo xtask hwtest`: prove each compiled backend on this machine's
//! hardware and write a report under `target/hwtest/` (or `--out DIR`).
//!
//! With `--gpuring PATH` it needs no cargo and no source tree: the device
//! kit (`cargo xtask device-kit`) carries this task's binary and a
//! prebuilt `gpuring` to a GPU machine that has no Rust toolchain.
//!
//! The runner knows no backend by name. It asks the `gpuring` binary which
//! backends it was built with (`probe --json`), and runs the same suite on
//! each: ingests of generated files with verification (buffered, O_DIRECT,
//! many small files), a passthrough ingest of up to 1 GiB of every NVMe
//! namespace (`/dev/ngXnY`) the probe found usable, the consumer's other
//! modes where the probe lists some (`modes`), then the bench in short
//! form. A backend that plugs
//! into the facade's `BACKENDS` gets its rows with no change here. A backend
//! that cannot run here (no device, no driver) is skipped with the reason
//! the binary gave, unless `--require` names it: then it is a failure, and
//! so is a required backend this binary was not built with.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

struct Options {
    require: Vec<String>,
    json: bool,
    /// A prebuilt `gpuring` (for a machine without a Rust toolchain).
    binary: Option<PathBuf>,
    /// Where the data and the report go.
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { require: Vec::new(), json: false, binary: None, out: PathBuf::from("target/hwtest") };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--require" => o.require.push(it.next().context("--require needs a backend name")?.clone()),
            "--json" => o.json = true,
            "--gpuring" => o.binary = Some(it.next().context("--gpuring needs a path")?.into()),
            "--out" => o.out = it.next().context("--out needs a directory")?.into(),
            other => bail!("unknown hwtest argument {other:?} (use --require BACKEND, --json, --gpuring PATH, --out DIR)"),
        }
    }
    Ok(o)
}

/// One line of the report.
struct Row {
    backend: String,
    path: &'static str,
    status: &'static str,
    detail: String,
    gib_per_s: Option<f64>,
}

impl Row {
    fn new(backend: &str, path: &'static str, status: &'static str, detail: impl Into<String>, gib_per_s: Option<f64>) -> Self {
        Self { backend: backend.into(), path, status, detail: detail.into(), gib_per_s }
    }
}

/// Run `gpuring args...`; Ok(JSON) on success, Err(the error line) otherwise.
fn gpuring(binary: &Path, args: &[&str]) -> Result<std::result::Result<Value, String>> {
    let out = Command::new(binary).args(args).output().with_context(|| format!("running {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str::<Value>(stdout.trim());
    match (out.status.success(), value) {
        (true, Ok(v)) => Ok(Ok(v)),
        (true, Err(e)) => Ok(Err(format!("unreadable JSON: {e}"))),
        // Exit 1: the ingest ran but a verdict failed; the JSON says which.
        (false, Ok(v)) => Ok(Ok(v)),
        (false, Err(_)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Ok(Err(stderr.lines().last().unwrap_or("no output").trim_start_matches("gpuring: error: ").to_owned()))
        }
    }
}

fn write_file(path: &Path, len: usize, seed: u64) -> Result<()> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &[String], cargo: impl Fn() -> Command) -> Result<()> {
    let o = parse(args)?;
    let out_dir = o.out.clone();
    let data = out_dir.join("data");
    std::fs::create_dir_all(data.join("small")).with_context(|| format!("creating {}", out_dir.display()))?;
    let binary = match &o.binary {
        Some(b) => b.clone(),
        None => {
            // Backend names are the facade's feature names.
            let features: Vec<&str> = o.require.iter().map(String::as_str).filter(|b| *b != "host").collect();
            let mut build = cargo();
            build.args(["build", "--release", "--bin", "gpuring"]);
            if !features.is_empty() {
                build.arg("--features").arg(features.join(","));
            }
            println!("$ {build:?}");
            if !build.status().context("running cargo build")?.success() {
                bail!("building gpuring failed");
            }
            PathBuf::from("target/release/gpuring")
        }
    };
    let mut rows = Vec::new();
    let probe = match gpuring(&binary, &["probe", "--json", "--dir", data.to_str().context("UTF-8 path")?])? {
        Ok(v) => v,
        Err(e) => bail!("gpuring probe failed: {e}"),
    };
    let failed_checks: Vec<String> = probe["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] == false)
        .map(|c| format!("{}/{}", c["group"].as_str().unwrap_or(""), c["name"].as_str().unwrap_or("")))
        .collect();
    rows.push(Row::new(
        "-",
        "probe",
        "pass",
        format!("not usable here: {}", if failed_checks.is_empty() { "nothing".into() } else { failed_checks.join(", ") }),
        None,
    ));
    let compiled: Vec<String> = probe["backends"].as_array().into_iter().flatten().filter_map(|b| b.as_str().map(str::to_owned)).collect();
    for required in &o.require {
        if !compiled.contains(required) {
            rows.push(Row::new(
                required,
                "build",
                "fail",
                format!("required but not compiled in (compiled: {}); build with --features {required}", compiled.join(", ")),
                None,
            ));
        }
    }

    // The files every backend reads: odd sizes, one larger than the ring.
    let large = data.join("large.bin");
    write_file(&large, (48 << 20) + 12_345, 1)?;
    let aligned = data.join("aligned.bin");
    write_file(&aligned, 16 << 20, 2)?;
    for i in 0..64 {
        write_file(&data.join("small").join(format!("f{i:02}")), 1000 + i * 997, 10 + i as u64)?;
    }
    let (large, aligned, small) = (large.to_str().context("UTF-8 path")?, aligned.to_str().context("UTF-8 path")?, data.join("small"));
    let small = small.to_str().context("UTF-8 path")?;

    // NVMe namespaces whose passthrough the probe found working: up to 1 GiB of each.
    let nvme: Vec<(String, u64)> = probe["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["group"] == "nvme" && c["ok"] == true)
        .filter_map(|c| {
            let name = c["name"].as_str()?;
            let block = PathBuf::from("/sys/block").join(format!("nvme{}", name.strip_prefix("ng")?));
            let read = |f: &str| std::fs::read_to_string(block.join(f)).ok()?.trim().parse::<u64>().ok();
            let lba = read("queue/logical_block_size")?;
            // sysfs counts `size` in 512-byte sectors whatever the block size.
            let blocks = (read("size")? * 512 / lba).min((1 << 30) / lba);
            Some((format!("/dev/{name}"), blocks))
        })
        .collect();
    if nvme.is_empty() {
        rows.push(Row::new(
            "-",
            "nvme",
            "skipped",
            "no usable NVMe namespace (/dev/ngXnY) here; `cargo xtask nvme-vm` tests passthrough on an emulated one",
            None,
        ));
    }

    for backend in &compiled {
        let required = o.require.contains(backend);
        let suites: [(&'static str, Vec<&str>, bool); 3] =
            [("buffered", vec![large, aligned], false), ("direct", vec!["--direct", aligned, large], true), ("small-files", vec![small], false)];
        let mut usable = true;
        for (path, files, direct) in suites {
            if !usable {
                rows.push(Row::new(backend, path, "skipped", "the backend could not start (see above)", None));
                continue;
            }
            let mut args = vec!["ingest", "--json", "--backend", backend];
            args.extend(files);
            let row = match gpuring(&binary, &args)? {
                Ok(v) => {
                    let verdicts = [
                        ("complete", v["complete"] == true),
                        ("checksum match", v["checksum"]["match"] == true),
                        ("zero-bounce", v["zero_bounce"] == true),
                        ("DMA-only", !direct || v["dma_only"] == true),
                    ];
                    let missed: Vec<&str> = verdicts.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
                    let gib = v["gib_per_s"].as_f64();
                    let detail = format!("{} files, {} bytes, memory {}", v["files"], v["bytes"], v["memory_kind"].as_str().unwrap_or("?"));
                    if missed.is_empty() {
                        Row::new(backend, path, "pass", detail, gib)
                    } else {
                        Row::new(backend, path, "fail", format!("{detail}; failed: {}", missed.join(", ")), gib)
                    }
                }
                Err(why) => {
                    // An error before any suite passed means the backend cannot
                    // run here (no device, no driver): a skip unless required.
                    // After one passed, it is a failure of this suite.
                    let cannot_start = path == "buffered";
                    usable = !cannot_start;
                    Row::new(backend, path, if required || !cannot_start { "fail" } else { "skipped" }, why, None)
                }
            };
            rows.push(row);
        }
        if !usable {
            rows.push(Row::new(backend, "bench", "skipped", "the backend could not start (see above)", None));
            continue;
        }
        // The consumer's other modes (the first is the default, run above):
        // the large file, buffered and O_DIRECT.
        let modes: Vec<&str> = probe["modes"][backend.as_str()].as_array().into_iter().flatten().filter_map(Value::as_str).skip(1).collect();
        let option = format!("--{backend}-mode");
        for mode in modes {
            for direct in [false, true] {
                let mut args = vec!["ingest", "--json", "--backend", backend, &option, mode];
                if direct {
                    args.push("--direct");
                }
                args.extend([aligned, large]);
                let row = match gpuring(&binary, &args)? {
                    Ok(v) => {
                        let ok = v["complete"] == true && v["checksum"]["match"] == true && v["zero_bounce"] == true && (!direct || v["dma_only"] == true);
                        let detail = format!(
                            "{mode}{}: {} bytes, checksum match {}, device copy {} bytes",
                            if direct { ", O_DIRECT" } else { "" },
                            v["bytes"],
                            v["checksum"]["match"],
                            v["device_copy_bytes"]
                        );
                        Row::new(backend, "mode", if ok { "pass" } else { "fail" }, detail, v["gib_per_s"].as_f64())
                    }
                    Err(why) => Row::new(backend, "mode", "fail", format!("{mode}: {why}"), None),
                };
                rows.push(row);
            }
        }
        for (dev, blocks) in &nvme {
            let blocks = blocks.to_string();
            let row = match gpuring(&binary, &["ingest", "--json", "--backend", backend, "--nvme", dev, "--blocks", &blocks])? {
                Ok(v) => {
                    let ok = v["complete"] == true && v["checksum"]["match"] == true && v["dma_only"] == true;
                    let fixed = v["nvme_fixed_buffers"].as_bool().map_or("?", |f| if f { "fixed" } else { "plain" });
                    let detail = format!("{dev}: {} bytes, {fixed} buffers, checksum match {}, DMA-only {}", v["bytes"], v["checksum"]["match"], v["dma_only"]);
                    Row::new(backend, "nvme", if ok { "pass" } else { "fail" }, detail, v["gib_per_s"].as_f64())
                }
                Err(why) => Row::new(backend, "nvme", "fail", format!("{dev}: {why}"), None),
            };
            rows.push(row);
        }
        let bench_dir = out_dir.join("bench");
        let bench_args = [
            "bench",
            "--json",
            "--backend",
            backend,
            "--dir",
            bench_dir.to_str().context("UTF-8 path")?,
            "--size",
            "256M",
            "--small-files",
            "256",
            "--checkpoint-size",
            "64M",
            "--size-max",
            "64M",
            "--files-max",
            "1000",
            "--runs",
            "1",
        ];
        match gpuring(&binary, &bench_args)? {
            Ok(v) => {
                for case in v["cases"].as_array().into_iter().flatten() {
                    let name = case["name"].as_str().unwrap_or("?");
                    let ratios = &case["ratios"];
                    let detail = if ratios.is_object() {
                        let x = |k: &str| ratios[k].as_f64().map_or("n/a".to_owned(), |r| format!("{r:.2}x"));
                        let mut d = if ratios["vs_pread"].is_number() {
                            format!("{} pread() into host memory, {} memcpy", x("vs_pread"), x("vs_memcpy"))
                        } else if ratios["vs_mmap"].is_number() {
                            format!("{} safetensors over mmap + copy, {} memcpy", x("vs_mmap"), x("vs_memcpy"))
                        } else {
                            format!(
                                "{} fio ({} jobs), {} fio (1 job), {} bounce, {} memcpy",
                                x("vs_fio"),
                                v["shards"],
                                x("vs_fio_1job"),
                                x("vs_bounce"),
                                x("vs_memcpy")
                            )
                        };
                        if ratios["vs_pinned_htod"].is_number() {
                            d += &format!(", {} read()+HtoD, {} pinned HtoD", x("vs_read_htod"), x("vs_pinned_htod"));
                        }
                        d
                    } else {
                        format!("{:.2}x gpuring", case["vs_gpuring"].as_f64().unwrap_or(0.0))
                    };
                    rows.push(Row {
                        backend: backend.clone(),
                        path: "bench",
                        status: "pass",
                        detail: format!("{name}: {detail}"),
                        gib_per_s: case["gib_per_s"].as_f64(),
                    });
                }
            }
            Err(why) => rows.push(Row::new(backend, "bench", "fail", why, None)),
        }
    }
    report(&out_dir, &rows, &probe, o.json)?;
    let failed = rows.iter().filter(|r| r.status == "fail").count();
    if failed > 0 {
        bail!("hwtest: {failed} row(s) failed; see {}", out_dir.join("report.md").display());
    }
    Ok(())
}

fn report(out_dir: &Path, rows: &[Row], probe: &Value, json_out: bool) -> Result<()> {
    let mut md = String::from("# gpuring hwtest\n\n| backend | path | result | GiB/s | detail |\n|---|---|---|---:|---|\n");
    for r in rows {
        let gib = r.gib_per_s.map_or(String::new(), |g| format!("{g:.2}"));
        md += &format!("| {} | {} | {} | {} | {} |\n", r.backend, r.path, r.status, gib, r.detail.replace('|', "/"));
    }
    let value = json!({
        "rows": rows.iter().map(|r| json!({"backend": r.backend, "path": r.path, "status": r.status, "detail": r.detail, "gib_per_s": r.gib_per_s})).collect::<Vec<_>>(),
        "probe": probe,
    });
    std::fs::write(out_dir.join("report.md"), &md).context("writing report.md")?;
    std::fs::write(out_dir.join("report.json"), serde_json::to_string_pretty(&value)?).context("writing report.json")?;
    if json_out {
        println!("{value}");
    } else {
        print!("{md}");
        println!("\nwritten: {}, {}", out_dir.join("report.md").display(), out_dir.join("report.json").display());
    }
    Ok(())
}
