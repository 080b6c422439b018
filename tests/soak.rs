//! A soak: a million slot cycles (read, publish, checksum, release, reuse)
//! through a ring of 4 slots of 4 KiB, every file verified, with the open
//! file count and resident memory the same before and after.
//!
//! `GPURING_SOAK_CYCLES=N cargo test --release --test soak -- --nocapture`
//! runs a longer one by hand (N slot cycles, rounded up to whole files).

mod common;

use common::{make_file, test_dir};
use gpuring::ingest::{self, IngestOptions};
use gpuring::uring::Source;

const SLOTS: u32 = 4;
const SLOT: usize = 4096;
/// Segments per file: 1 MiB files of 4 KiB segments.
const SEGMENTS_PER_FILE: u64 = 256;
/// Cycles per ingest call (then the next call reuses nothing but the file).
const CYCLES_PER_CALL: u64 = 64 * SEGMENTS_PER_FILE;

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_million_slot_cycles_through_a_small_ring_leak_nothing() {
    let cycles: u64 = std::env::var("GPURING_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = test_dir();
    let file = make_file(dir.path(), "f", SEGMENTS_PER_FILE as usize * SLOT, 11);
    let config = IngestOptions { slots: SLOTS, slot_size: SLOT, ..IngestOptions::default() };
    // The same file many times: each source is opened, read, verified
    // against an independent read, and closed.
    let sources = vec![Source::file(&file); (CYCLES_PER_CALL / SEGMENTS_PER_FILE) as usize];
    let call = || {
        let r = ingest::run(&sources, &config, &mut |_| {}).unwrap();
        assert!(r.complete && r.checksum.verified && r.checksum.matched, "{:?}", r.checksum);
        assert_eq!(r.telemetry.released, CYCLES_PER_CALL);
        r.telemetry.released
    };
    // One call first, so that allocator pools and thread stacks exist.
    call();
    let (files, resident) = (open_files(), resident_kib());
    let mut done = 0;
    let started = std::time::Instant::now();
    while done < cycles {
        done += call();
    }
    let (files_after, resident_after) = (open_files(), resident_kib());
    eprintln!(
        "soak: {done} slot cycles in {:.1} s; open files {files} -> {files_after}; resident {resident} -> {resident_after} KiB",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(files_after, files, "file descriptors leaked");
    // Resident memory may move by what the allocator keeps, not with the cycles.
    assert!(resident_after <= resident + 8 * 1024, "resident memory grew from {resident} to {resident_after} KiB over {done} cycles");
}
