//! The driver under injected faults (gpuring-uring's `fault-injection`
//! feature): errors at a chosen segment, short reads, `EAGAIN`, a device
//! that never answers, and consumers that are slow or stop. Whatever
//! happens, every completion that did happen is published and released
//! exactly once with the right bytes, and an error names the file, the
//! offset and the slot.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{make_file, test_dir};
use gpuring::core::io_queue::{CONSUMED, SKIPPED};
use gpuring::core::{slot_checksum, SlotGeometry, StagingMemory, Telemetry};
use gpuring::host::{HostConsumer, HostStaging};
use gpuring::uring::fault::{Fault, FaultKind};
use gpuring::uring::{Driver, DriverOptions, Event, IngestError, Source};
use rustix::io::Errno;

const SLOT: usize = 16 << 10;
const SEGMENTS: usize = 12;

/// What a run released: (offset, bytes, checksum) of checksummed segments,
/// and the offsets of segments released without a checksum (failed reads).
#[derive(Debug, Default)]
struct Released {
    checksummed: Vec<(u64, u64, u64)>,
    skipped: Vec<u64>,
}

/// The file's bytes as (offset, bytes, checksum) per slot-sized segment.
fn segments(bytes: &[u8]) -> Vec<(u64, u64, u64)> {
    bytes.chunks(SLOT).enumerate().map(|(i, c)| ((i * SLOT) as u64, c.len() as u64, slot_checksum(c))).collect()
}

/// Drive `file` through `slots` slots with the host consumer and `faults`.
fn drive(file: &std::path::Path, slots: u32, faults: &[Fault], options: DriverOptions) -> (Result<(), IngestError>, Released, Telemetry) {
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(slots, SLOT).unwrap(), slots).unwrap());
    let consumer = HostConsumer::start(staging.clone()).unwrap();
    let (result, released, telemetry) = drive_with(staging, file, faults, options);
    // A consumer fails only when told to; here it never is.
    consumer.join().unwrap();
    (result, released, telemetry)
}

fn drive_with(staging: Arc<HostStaging>, file: &std::path::Path, faults: &[Fault], options: DriverOptions) -> (Result<(), IngestError>, Released, Telemetry) {
    let mut driver = Driver::new(staging, options).unwrap();
    driver.inject_faults(faults);
    let mut released = Released::default();
    let result = driver
        .ingest(&[Source::file(file)], |e| {
            if let Event::Released { offset, bytes, result: checksum, consumed: checksummed, .. } = e {
                if checksummed {
                    released.checksummed.push((offset, bytes, checksum));
                } else {
                    released.skipped.push(offset);
                }
            }
        })
        .map(|_| ());
    driver.close_queue();
    let telemetry = *driver.telemetry();
    (result, released, telemetry)
}

fn fault(nth: u64, kind: FaultKind) -> Fault {
    Fault { nth, kind }
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Vec<(u64, u64, u64)>) {
    let dir = test_dir();
    let file = make_file(dir.path(), "f", SEGMENTS * SLOT - 100, 21);
    let want = segments(&std::fs::read(&file).unwrap());
    (dir, file, want)
}

#[test]
fn eio_at_a_chosen_segment_names_file_offset_and_slot_and_loses_nothing_before_it() {
    let (_dir, file, want) = setup();
    // One slot: completion n is segment n.
    let (result, released, t) = drive(&file, 1, &[fault(5, FaultKind::Error(Errno::IO))], DriverOptions::default());
    let e = result.unwrap_err();
    assert!(matches!(&e, IngestError::Read { path, offset, slot: 0, errno: Errno::IO } if *path == file && *offset == 5 * SLOT as u64), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&*file.to_string_lossy()) && text.contains("at byte 81920 into slot 0") && text.contains("Fix:"), "{text}");
    assert_eq!(released.checksummed, want[..5], "the five segments read before the error, each once, with their bytes");
    // The failed read is published (with its status) and released too, but
    // is no segment of the file: it is not reported as one.
    assert!(released.skipped.is_empty());
    assert_eq!((t.failed_completions, t.published, t.released, t.inflight_reads), (1, 6, 6, 0));

    // Four slots: which segment is the fifth completion is up to the
    // kernel; the error still names one the file has, in one of the slots.
    let (result, released, t) = drive(&file, 4, &[fault(4, FaultKind::Error(Errno::IO))], DriverOptions::default());
    let IngestError::Read { path, offset, slot, errno } = result.unwrap_err() else { panic!("a read error") };
    assert_eq!((path, errno), (file.clone(), Errno::IO));
    assert!(offset % SLOT as u64 == 0 && offset < (SEGMENTS * SLOT) as u64 && slot < 4, "{offset} {slot}");
    for got in &released.checksummed {
        assert!(want.contains(got), "a released segment with the wrong bytes: {got:?}");
    }
    assert!(released.skipped.is_empty());
    assert_eq!((t.published, t.released, t.inflight_reads), (t.completed_reads + 1, t.published, 0), "everything that completed was published and released");
}

#[test]
fn short_reads_are_finished_not_reported() {
    let (_dir, file, want) = setup();
    let faults =
        [fault(0, FaultKind::Short(1)), fault(3, FaultKind::Short(4096)), fault(4, FaultKind::Short(100)), fault(9, FaultKind::Short(SLOT as u32 - 1))];
    let (result, released, t) = drive(&file, 2, &faults, DriverOptions::default());
    result.unwrap();
    let mut got = released.checksummed;
    got.sort();
    assert_eq!(got, want);
    assert_eq!(t.short_reads, 4);
    assert_eq!((t.completed_bytes, t.failed_completions), ((SEGMENTS * SLOT - 100) as u64, 0));
}

#[test]
fn eagain_is_retried_then_becomes_an_error_naming_the_read() {
    let (_dir, file, want) = setup();
    // Twice in a row on one read, once on another: retried.
    let faults = [fault(2, FaultKind::Again), fault(3, FaultKind::Again), fault(7, FaultKind::Again)];
    let (result, released, t) = drive(&file, 1, &faults, DriverOptions::default());
    result.unwrap();
    assert_eq!(released.checksummed, want);
    assert_eq!(t.failed_completions, 0);
    // A device that says EAGAIN forever: the read fails after a few retries.
    let forever: Vec<Fault> = (2..40).map(|n| fault(n, FaultKind::Again)).collect();
    let (result, released, _) = drive(&file, 1, &forever, DriverOptions::default());
    let e = result.unwrap_err();
    assert!(matches!(&e, IngestError::Read { offset, slot: 0, errno: Errno::AGAIN, .. } if *offset == 2 * SLOT as u64), "{e:?}");
    assert_eq!(released.checksummed, want[..2]);
}

#[test]
fn a_read_that_never_completes_is_an_error_in_bounded_time() {
    let (_dir, file, want) = setup();
    let options = DriverOptions { read_timeout: Duration::from_millis(300), ..DriverOptions::default() };
    let started = Instant::now();
    let (result, released, t) = drive(&file, 1, &[fault(4, FaultKind::Stall)], options);
    let e = result.unwrap_err();
    assert!(matches!(&e, IngestError::DeviceStalled { .. }), "{e:?}");
    assert!(e.to_string().contains("1 read(s) in flight: nothing completed in 0 s") && e.to_string().contains("Fix:"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(released.checksummed, want[..4], "what completed before the stall is released");
    assert_eq!(t.inflight_reads, 1, "the stalled read never completed");
}

/// A consumer that sleeps `delay` before each release, and stops for good
/// (without failing) after `stop_after` entries.
fn slow_consumer(staging: Arc<HostStaging>, delay: Duration, stop_after: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let q = staging.queue();
        let mut c = staging.take_consumer().unwrap();
        let mut done = 0;
        loop {
            match c.peek(&q).unwrap() {
                Some(_) if done == stop_after => {
                    // Stalled: hold the entry until the producer gives up.
                    while !q.is_closed() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    return done;
                }
                Some(e) => {
                    std::thread::sleep(delay);
                    let result = if e.status == 0 {
                        // SAFETY: the consumer owns a published slot until it releases it.
                        let bytes = unsafe { std::slice::from_raw_parts(staging.slot_ptr(e.slot).as_ptr(), e.bytes as usize) };
                        (slot_checksum(bytes), CONSUMED)
                    } else {
                        (0, SKIPPED)
                    };
                    c.release(&q, result.0, result.1);
                    done += 1;
                }
                None if c.finished(&q) => return done,
                None => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    })
}

#[test]
fn slow_and_stalled_consumers() {
    let (_dir, file, want) = setup();
    // Slow: every entry waits 20 ms; the driver waits with it.
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(2, SLOT).unwrap(), 2).unwrap());
    let consumer = slow_consumer(staging.clone(), Duration::from_millis(20), usize::MAX);
    let (result, released, _) = drive_with(staging, &file, &[], DriverOptions::default());
    assert_eq!(consumer.join().unwrap(), SEGMENTS);
    result.unwrap();
    let mut got = released.checksummed;
    got.sort();
    assert_eq!(got, want);

    // Stalled after 3 entries: the driver gives up after its release
    // timeout, having reported exactly the 3 released segments.
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(2, SLOT).unwrap(), 2).unwrap());
    let consumer = slow_consumer(staging.clone(), Duration::ZERO, 3);
    let options = DriverOptions { release_timeout: Duration::from_millis(300), ..DriverOptions::default() };
    let (result, released, t) = drive_with(staging, &file, &[], options);
    assert_eq!(consumer.join().unwrap(), 3);
    let e = result.unwrap_err();
    assert!(matches!(&e, IngestError::ConsumerStalled { outstanding: 2, .. }), "{e:?}");
    assert_eq!(released.checksummed, want[..3]);
    assert_eq!((t.released, t.published), (3, 5));
}
