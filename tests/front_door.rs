//! The front door: each journey from the crate root, as a user writes it,
//! and what it must never do (hang on a failed run, print a `Debug` form).

mod common;

use std::time::{Duration, Instant};

use common::{make_file, pattern, test_dir};
use gpuring::consume::{self, ConsumeOptions};
use gpuring::{IngestOptions, Source};

/// A `main` returning `Result<(), gpuring::Error>` (the byte_histogram
/// example) prints the message with its fix for a missing file, not the
/// variant's fields.
#[test]
fn a_main_returning_gpuring_error_prints_the_message_and_its_fix() {
    let example = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/byte_histogram");
    assert!(example.exists(), "cargo test builds the examples: {}", example.display());
    let out = std::process::Command::new(&example).arg("/nonexistent/weights.bin").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/weights.bin") && stderr.contains("Fix:"), "{stderr}");
    assert!(!stderr.contains("NotFound {") && !stderr.contains("Ingest("), "the Debug form leaked: {stderr}");
}

#[test]
fn ingest_from_the_root_verifies_its_files() {
    let dir = test_dir();
    let file = make_file(dir.path(), "a", (3 << 20) + 5, 4);
    let report = gpuring::ingest(&[Source::file(&file)], &IngestOptions::default()).unwrap();
    assert!(report.checksum.matched && report.zero_bounce && report.complete, "{report:?}");
    assert_eq!(report.bytes, (3 << 20) + 5);
}

/// The consumer's run ends with an error, not a hang, when the driver
/// fails (a missing file after a good one), and the consumer saw the good
/// file's bytes before.
#[test]
fn a_consumer_run_whose_driver_fails_ends_with_the_error() {
    let dir = test_dir();
    let good = make_file(dir.path(), "good", 1 << 20, 5);
    let sources = [Source::file(&good), Source::file(dir.path().join("missing"))];
    let started = Instant::now();
    let e = consume::host(&sources, &ConsumeOptions::default(), 0u64, |n, _, bytes| {
        *n += bytes.len() as u64;
        0
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing") && e.contains("Fix:"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_host_consumer_sees_every_byte_once() {
    let dir = test_dir();
    let files: Vec<_> = (0..3).map(|i| make_file(dir.path(), &format!("f{i}"), 700_001 * (i + 1), i as u32)).collect();
    let sources: Vec<Source> = files.iter().map(Source::file).collect();
    let options = ConsumeOptions { slots: 4, slot_size: 64 << 10, shards: 2, ..ConsumeOptions::default() };
    let run = consume::host(&sources, &options, [0u64; 256], |h, _, bytes| {
        bytes.iter().for_each(|&b| h[b as usize] += 1);
        0
    })
    .unwrap();
    let mut want = [0u64; 256];
    for (i, _) in files.iter().enumerate() {
        pattern(700_001 * (i + 1), i as u32).iter().for_each(|&b| want[b as usize] += 1);
    }
    assert_eq!(run.output, want);
    assert_eq!(run.stats.telemetry.completed_bytes, want.iter().sum::<u64>());
}
