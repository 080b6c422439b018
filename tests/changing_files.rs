//! Files that change under the driver, and consumers that misbehave, driven
//! by a hand-written consumer that acts between publish and release.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{make_file, test_dir};
use gpuring::core::io_queue::CONSUMED;
use gpuring::core::{slot_checksum, SlotGeometry, StagingMemory};
use gpuring::host::HostStaging;
use gpuring::uring::{Driver, DriverOptions, Event, IngestError, Source};

const SLOT: usize = 64 << 10;

/// Run the driver over `source` with one slot, while a consumer thread calls
/// `on_first` once (before releasing the first entry) and then consumes
/// normally. Returns the driver's result and the released segments.
fn drive_with(source: Source, on_first: impl FnOnce() + Send + 'static, fail_consumer: bool) -> (Result<(), IngestError>, Vec<(u64, u64)>, u64) {
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(1, SLOT).unwrap(), 1).unwrap());
    let consumer = {
        let staging = staging.clone();
        std::thread::spawn(move || {
            let q = staging.queue();
            let mut c = staging.take_consumer().unwrap();
            let mut on_first = Some(on_first);
            loop {
                match c.peek(&q).unwrap() {
                    Some(e) => {
                        if let Some(f) = on_first.take() {
                            f();
                            if fail_consumer {
                                c.fail(&q, 7);
                                return;
                            }
                        }
                        // SAFETY: the consumer owns the published slot until it releases it.
                        let bytes = unsafe { std::slice::from_raw_parts(staging.slot_ptr(e.slot).as_ptr(), e.bytes as usize) };
                        c.release(&q, slot_checksum(bytes), CONSUMED);
                    }
                    None if c.finished(&q) => return,
                    None => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        })
    };
    let mut driver = Driver::new(staging, DriverOptions { release_timeout: Duration::from_secs(5), ..DriverOptions::default() }).unwrap();
    let mut released = Vec::new();
    let result = driver.ingest(&[source], |e| {
        if let Event::Released { offset, bytes, .. } = e {
            released.push((offset, bytes));
        }
    });
    let published = driver.telemetry().published;
    let released_count = driver.telemetry().released;
    assert_eq!(driver.telemetry().inflight_reads, 0, "nothing left in flight");
    if !fail_consumer {
        assert_eq!(published, released_count, "every published completion was released");
    }
    driver.close_queue();
    drop(driver);
    consumer.join().unwrap();
    (result.map(|_| ()), released, published)
}

#[test]
fn a_file_that_shrinks_while_read_is_an_error_not_a_truncation() {
    let dir = test_dir();
    let path = make_file(dir.path(), "shrinks", 16 * SLOT, 3);
    let victim = path.clone();
    let (result, released, _) =
        drive_with(Source::file(&path), move || std::fs::File::options().write(true).open(&victim).unwrap().set_len(SLOT as u64 + 1000).unwrap(), false);
    match result {
        Err(IngestError::Shrank { size, ended_at, .. }) => {
            assert_eq!(size, 16 * SLOT as u64);
            assert_eq!(ended_at, SLOT as u64 + 1000);
        }
        other => panic!("expected Shrank, got {other:?}"),
    }
    // The segment read before the change was delivered, not lost.
    assert_eq!(released[0], (0, SLOT as u64));
    let text = IngestError::Shrank { path: path.clone(), size: 1, ended_at: 0 }.to_string();
    assert!(text.contains("shrank") && text.contains("Fix:"));
}

#[test]
fn a_file_that_grows_while_read_is_an_error() {
    let dir = test_dir();
    let path = make_file(dir.path(), "grows", 4 * SLOT, 4);
    let victim = path.clone();
    let (result, released, _) = drive_with(
        Source::file(&path),
        move || {
            use std::io::Write;
            std::fs::File::options().append(true).open(&victim).unwrap().write_all(b"more").unwrap();
        },
        false,
    );
    match result {
        Err(IngestError::ChangedSize { before, after, .. }) => assert_eq!((before, after), (4 * SLOT as u64, 4 * SLOT as u64 + 4)),
        other => panic!("expected ChangedSize, got {other:?}"),
    }
    assert_eq!(released.len(), 4, "all four segments were delivered");
}

#[test]
fn a_byte_range_is_not_disturbed_by_growth_past_its_end() {
    let dir = test_dir();
    let path = make_file(dir.path(), "range", 4 * SLOT, 5);
    let victim = path.clone();
    let (result, released, _) = drive_with(
        Source::range(&path, 0..2 * SLOT as u64),
        move || std::fs::File::options().write(true).open(&victim).unwrap().set_len(8 * SLOT as u64).unwrap(),
        false,
    );
    result.unwrap();
    assert_eq!(released, [(0, SLOT as u64), (SLOT as u64, SLOT as u64)]);
}

#[test]
fn a_consumer_that_fails_stops_the_driver_promptly() {
    let dir = test_dir();
    let path = make_file(dir.path(), "c", 8 * SLOT, 6);
    let started = std::time::Instant::now();
    let (result, released, published) = drive_with(Source::file(&path), || {}, true);
    let e = result.unwrap_err();
    assert!(matches!(e, IngestError::ConsumerStalled { .. }), "{e}");
    assert!(e.to_string().contains("consumer reported that it failed"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4), "did not wait for the timeout");
    assert!(released.is_empty());
    assert_eq!(published, 1);
}
