//! The driver with several shards (rings on threads of their own): every
//! segment of every source published and released exactly once with its
//! bytes, whatever the shard count, the slot count and the mix of sources;
//! the same guarantees as one ring under faults and an abandoned ingest
//! (`tests/ingest.rs` drives two shards from the consumer's own thread).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{backends, make_file, test_dir};
use gpuring::core::{slot_checksum, SlotGeometry};
use gpuring::host::{HostConsumer, HostStaging};
use gpuring::ingest::{self, Backend, IngestOptions};
use gpuring::uring::fault::{Fault, FaultKind};
use gpuring::uring::{Driver, DriverOptions, Event, IngestError, Source};
use rustix::io::Errno;

const SLOT: usize = 16 << 10;

/// (source, segment) -> (offset, bytes, checksum) of what `path[range]` holds.
fn expected(sources: &[Source]) -> BTreeMap<(usize, u64), (u64, u64, u64)> {
    let mut want = BTreeMap::new();
    for (i, s) in sources.iter().enumerate() {
        let bytes = std::fs::read(&s.path).unwrap();
        let (start, end) = s.range.clone().map_or((0, bytes.len() as u64), |r| (r.start, r.end));
        for (n, chunk) in bytes[start as usize..end as usize].chunks(SLOT).enumerate() {
            want.insert((i, n as u64), (start + (n * SLOT) as u64, chunk.len() as u64, slot_checksum(chunk)));
        }
    }
    want
}

fn staging(slots: u32) -> Arc<HostStaging> {
    Arc::new(HostStaging::new(SlotGeometry::new(slots, SLOT).unwrap(), slots.next_power_of_two()).unwrap())
}

#[test]
fn every_shard_count_delivers_every_segment_once() {
    let dir = test_dir();
    let mut sources = vec![Source::file(make_file(dir.path(), "big", 150 * SLOT + 77, 1))];
    for i in 0..40 {
        sources.push(Source::file(make_file(dir.path(), &format!("small{i}"), (i * 997) % (3 * SLOT), i as u32 + 2)));
    }
    let ranged = make_file(dir.path(), "ranged", 20 * SLOT, 50);
    sources.push(Source::range(&ranged, 4096 + 13..17 * SLOT as u64 + 5));
    let want = expected(&sources);
    for (slots, shards) in [(8, 1), (8, 2), (8, 3), (8, 8), (5, 4), (3, 16), (32, 5)] {
        let staging = staging(slots);
        let consumer = HostConsumer::start(staging.clone()).unwrap();
        let mut driver = Driver::new(staging, DriverOptions { shards, ..DriverOptions::default() }).unwrap();
        assert_eq!(driver.shards(), shards.min(slots), "at most one shard per slot");
        let mut got = BTreeMap::new();
        let mut done = BTreeMap::new();
        let stats = driver
            .ingest(&sources, |e| match e {
                Event::Released { source, segment, offset, bytes, result: checksum, consumed: checksummed } => {
                    assert!(checksummed);
                    let again = got.insert((source, segment), (offset, bytes, checksum));
                    assert!(again.is_none(), "{slots} slots, {shards} shards: segment {segment} of source {source} released twice");
                }
                Event::SourceDone { source, bytes } => assert!(done.insert(source, bytes).is_none(), "source {source} done twice"),
            })
            .unwrap_or_else(|e| panic!("{slots} slots, {shards} shards: {e}"));
        driver.close_queue();
        consumer.join().unwrap();
        assert!(got == want, "{slots} slots, {shards} shards: the released segments differ from the files");
        assert_eq!(done.len(), sources.len(), "every source done once, empty ones too");
        let t = stats.telemetry;
        assert_eq!((t.published, t.released, t.inflight_reads, t.failed_completions), (want.len() as u64, want.len() as u64, 0, 0));
    }
}

#[test]
fn the_whole_ingest_is_the_same_on_every_shard_count_and_backend() {
    let dir = test_dir();
    let big = make_file(dir.path(), "big", 3 << 20, 7);
    let mut sources = vec![Source::file(&big)];
    for i in 0..30 {
        sources.push(Source::file(make_file(dir.path(), &format!("s{i}"), 5000 + i * 301, i as u32)));
    }
    for backend in backends() {
        let mut digests = Vec::new();
        for shards in [1, 2, 4] {
            for direct in [false, true] {
                let config =
                    IngestOptions { backend: Backend::from_name(backend).unwrap(), slots: 8, slot_size: 64 << 10, shards, direct, ..IngestOptions::default() };
                let r = ingest::run(&sources, &config, &mut |_| {}).unwrap_or_else(|e| panic!("{backend}, {shards} shards, direct={direct}: {e}"));
                assert!(r.checksum.verified && r.checksum.matched && r.complete, "{backend}, {shards} shards, direct={direct}: {:?}", r.checksum);
                assert_eq!(r.shards, shards);
                assert_eq!(r.telemetry.published, r.telemetry.released);
                digests.push(r.checksum.digest);
            }
        }
        digests.dedup();
        assert_eq!(digests.len(), 1, "{backend}: one digest whatever the shards and the cache path");
    }
}

/// What a faulty run ended with: the result, the released (offset,
/// checksum) pairs in order, short reads, reads still in flight.
type Outcome = (Result<(), IngestError>, Vec<(u64, u64)>, u64, u64);

/// Drive `file` with `faults` over `slots` slots and `shards` shards.
fn faulty(file: &std::path::Path, slots: u32, shards: u32, faults: &[Fault], options: DriverOptions) -> Outcome {
    let staging = staging(slots);
    let consumer = HostConsumer::start(staging.clone()).unwrap();
    let mut driver = Driver::new(staging, DriverOptions { shards, ..options }).unwrap();
    assert_eq!(driver.shards(), shards);
    driver.inject_faults(faults);
    let mut released = Vec::new();
    let result = driver
        .ingest(&[Source::file(file)], |e| {
            if let Event::Released { offset, result: checksum, consumed: true, .. } = e {
                released.push((offset, checksum));
            }
        })
        .map(|_| ());
    driver.close_queue();
    consumer.join().unwrap();
    let t = *driver.telemetry();
    assert_eq!(t.published, t.released, "everything published was released");
    released.sort();
    (result, released, t.short_reads, t.inflight_reads)
}

#[test]
fn faults_on_sharded_rings_end_as_on_one() {
    let dir = test_dir();
    let file = make_file(dir.path(), "f", 24 * SLOT - 100, 9);
    let bytes = std::fs::read(&file).unwrap();
    let want: Vec<(u64, u64)> = bytes.chunks(SLOT).enumerate().map(|(i, c)| ((i * SLOT) as u64, slot_checksum(c))).collect();
    let fault = |nth, kind| Fault { nth, kind };

    // Short reads are finished, EAGAIN is retried: every byte arrives once.
    let faults = [fault(0, FaultKind::Short(1)), fault(5, FaultKind::Short(4096)), fault(7, FaultKind::Again), fault(11, FaultKind::Again)];
    let (result, released, short, _) = faulty(&file, 6, 3, &faults, DriverOptions::default());
    result.unwrap();
    assert_eq!(released, want);
    assert_eq!(short, 4, "two short reads and two EAGAINs (a read of nothing)");

    // An error names the file, an offset it has and a slot; what completed is released with its bytes.
    let (result, released, _, _) = faulty(&file, 6, 2, &[fault(9, FaultKind::Error(Errno::IO))], DriverOptions::default());
    let IngestError::Read { path, offset, slot, errno: Errno::IO } = result.unwrap_err() else { panic!("a read error") };
    assert!(path == file && offset % SLOT as u64 == 0 && offset < bytes.len() as u64 && slot < 6, "{offset} {slot}");
    assert!(released.iter().all(|r| want.contains(r)), "a released segment with the wrong bytes");

    // A read that never completes, on another thread's ring: an error in
    // bounded time, and the stalled read is still counted in flight.
    let options = DriverOptions { read_timeout: Duration::from_millis(300), ..DriverOptions::default() };
    let started = std::time::Instant::now();
    let (result, released, _, in_flight) = faulty(&file, 4, 4, &[fault(6, FaultKind::Stall)], options);
    assert!(matches!(result, Err(IngestError::DeviceStalled { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(in_flight, 1);
    assert!(released.iter().all(|r| want.contains(r)));
}

#[test]
fn an_abandoned_sharded_ingest_cancels_its_reads_and_the_driver_refuses_more() {
    let dir = test_dir();
    let file = make_file(dir.path(), "f", 64 * SLOT, 3);
    let sources = [Source::file(&file)];
    for direct in [false, true] {
        let staging = staging(8);
        // No consumer: the driver fills every slot, and what it publishes stays.
        let mut driver = Driver::new(staging.clone(), DriverOptions { shards: 4, direct, ..DriverOptions::default() }).unwrap();
        let mut job = driver.begin(&sources).unwrap();
        for _ in 0..3 {
            job.poll(|_| {}).unwrap();
        }
        drop(job);
        assert!(driver.begin(&sources).is_err(), "an abandoned ingest leaves the driver unusable");
        drop(driver);
        // The staging outlives the driver here; its slots are no longer
        // anyone's: the kernel finished with them before the drop returned.
        assert_eq!(Arc::strong_count(&staging), 1, "direct={direct}: the driver let go of the memory (it leaks it only when a ring cannot drain)");
    }
}

#[test]
fn each_shard_starts_a_source_of_its_own_so_two_devices_are_read_at_once() {
    let dir = test_dir();
    let a = make_file(dir.path(), "a", 20 * SLOT, 1);
    let b = make_file(dir.path(), "b", 20 * SLOT, 2);
    let sources = [Source::file(&a), Source::file(&b)];
    for (shards, interleaved) in [(1, false), (2, true)] {
        let staging = staging(4);
        let consumer = HostConsumer::start(staging.clone()).unwrap();
        let mut driver = Driver::new(staging, DriverOptions { shards, ..DriverOptions::default() }).unwrap();
        let mut order = Vec::new();
        driver
            .ingest(&sources, |e| {
                if let Event::Released { source, .. } = e {
                    order.push(source);
                }
            })
            .unwrap();
        driver.close_queue();
        consumer.join().unwrap();
        assert_eq!(order.len(), 40);
        // One shard reads the sources one after the other; with two, the
        // second source starts on the second shard while the first is read.
        let first_of_b = order.iter().position(|&s| s == 1).unwrap();
        let last_of_a = order.iter().rposition(|&s| s == 0).unwrap();
        assert_eq!(first_of_b < last_of_a, interleaved, "{shards} shard(s): release order {order:?}");
    }
}
