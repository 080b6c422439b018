//! End-to-end ingests on the host backend, through the library.

mod common;

use common::{backends, make_file, test_dir};
use gpuring::ingest::{self, IngestOptions, IngestReport};
use gpuring::uring::{IngestError, Source};
use gpuring::Error;

const SLOT: usize = 64 << 10;

fn config(direct: bool) -> IngestOptions {
    IngestOptions { slots: 4, slot_size: SLOT, direct, ..IngestOptions::default() }
}

fn on(backend: &str, config: IngestOptions) -> IngestOptions {
    IngestOptions { backend: gpuring::ingest::Backend::from_name(backend).unwrap(), ..config }
}

fn ingest(sources: &[Source], config: &IngestOptions) -> Result<IngestReport, Error> {
    let mut progressed = 0;
    let report = ingest::run(sources, config, &mut |b| progressed += b)?;
    assert_eq!(progressed, report.bytes, "progress reports every released byte once");
    Ok(report)
}

/// Exact telemetry for one file of `size` bytes read without short reads.
fn assert_exact(r: &IngestReport, size: u64, direct: bool) {
    let t = &r.telemetry;
    let segments = size.div_ceil(SLOT as u64);
    assert!(r.checksum.verified && r.checksum.matched, "checksum mismatch for {size} bytes: {:?}", r.checksum);
    assert_eq!(r.bytes, size);
    assert_eq!((t.submitted_bytes, t.completed_bytes), (size, size));
    assert_eq!(t.short_reads, 0, "no short reads expected from a local file");
    assert_eq!((t.submitted_reads, t.completed_reads), (segments, segments));
    assert_eq!((t.failed_completions, t.inflight_reads), (0, 0));
    assert_eq!((t.published, t.released), (segments, segments));
    assert_eq!(t.bounce_bytes, 0);
    if direct {
        assert_eq!((t.dma_bytes, t.dma_reads, t.kernel_copy_bytes), (size, segments, 0));
    } else {
        assert_eq!((t.kernel_copy_bytes, t.kernel_copy_reads, t.dma_bytes), (size, segments, 0));
    }
    assert!(r.zero_bounce && r.complete);
    // DMA-only exactly when O_DIRECT; vacuously true when nothing was read.
    assert_eq!(r.dma_only, direct || size == 0, "DMA-only verdict");
}

#[test]
fn size_matrix_buffered_and_direct_on_every_backend() {
    let dir = test_dir();
    // 10 slots + 123 bytes is larger than the whole 4-slot ring.
    for (i, size) in [0, 1, 4095, 4096, SLOT - 1, SLOT, SLOT + 1, 10 * SLOT + 123].into_iter().enumerate() {
        let path = make_file(dir.path(), &format!("f{i}"), size, i as u32);
        for backend in backends() {
            for direct in [false, true] {
                let r =
                    ingest(&[Source::file(&path)], &on(backend, config(direct))).unwrap_or_else(|e| panic!("{backend}, {size} bytes, direct={direct}: {e}"));
                assert_exact(&r, size as u64, direct);
                assert_eq!(r.backend, backend);
                let memory = if backend == "host" { "locked_host" } else { "gpu_mapped_host" };
                assert_eq!(r.memory_kind, memory);
                assert_eq!(r.device.is_some(), backend != "host", "a GPU backend names its device");
            }
        }
    }
}

#[test]
fn a_file_much_larger_than_the_ring_keeps_flowing() {
    let dir = test_dir();
    let path = make_file(dir.path(), "big", 200 * 4096 + 7, 99);
    // 64 MiB through 8 slots of 64 KiB: the ring turns over 128 times.
    let huge = make_file(dir.path(), "huge", 64 << 20, 98);
    for backend in backends() {
        let cfg = on(backend, IngestOptions { slots: 2, slot_size: 4096, ..IngestOptions::default() });
        let r = ingest(&[Source::file(&path)], &cfg).unwrap();
        assert!(r.checksum.matched, "{backend}");
        assert_eq!(r.telemetry.published, 201);
        let r = ingest(&[Source::file(&huge)], &on(backend, IngestOptions { slots: 8, ..config(false) })).unwrap();
        assert_exact(&r, 64 << 20, false);
    }
}

#[test]
fn many_small_files_in_nested_directories() {
    let dir = test_dir();
    let mut total = 0;
    for i in 0..300u32 {
        let size = (i as usize * 7919) % 20_000;
        total += size as u64;
        make_file(dir.path(), &format!("d{}/e{}/f{i:03}", i % 5, i % 3), size, i);
    }
    let inputs = gpuring::inputs::collect(&[dir.path().to_owned()]).unwrap();
    assert_eq!(inputs.sources.len(), 300);
    for (backend, direct) in backends().into_iter().flat_map(|b| [(b, false), (b, true)]) {
        let r = ingest(&inputs.sources, &on(backend, config(direct))).unwrap();
        assert_eq!((r.files, r.bytes), (300, total));
        assert!(r.checksum.matched && r.checksum.files_matched == 300);
        assert_eq!(r.telemetry.failed_completions, 0);
    }
}

#[test]
fn byte_ranges() {
    let dir = test_dir();
    let path = make_file(dir.path(), "r", 5 * SLOT, 5);
    for backend in backends() {
        for (range, direct) in [(100..SLOT as u64 * 3 + 5, false), (4096..SLOT as u64 * 2, true), (8192..5 * SLOT as u64 - 3, true)] {
            let len = range.end - range.start;
            let r = ingest(&[Source::range(&path, range.clone())], &on(backend, config(direct))).unwrap();
            assert!(r.checksum.matched, "{backend} {range:?}");
            assert_eq!((r.bytes, r.telemetry.submitted_bytes), (len, len));
        }
    }
    let err = |range, direct| ingest(&[Source::range(&path, range)], &config(direct)).unwrap_err().to_string();
    let e = err(100..8192, true);
    assert!(e.contains("range start 100 is not a multiple of the") && e.contains("Fix:"), "{e}");
    let e = err(10..10, false);
    assert!(e.contains("is empty") && e.contains("Fix:"), "{e}");
    let e = err(0..5 * SLOT as u64 + 1, false);
    assert!(e.contains("runs past the end of the file (327680 bytes)"), "{e}");
}

#[test]
fn bad_inputs_name_the_problem_and_a_fix() {
    let dir = test_dir();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
    let sock_path = dir.path().join("sock");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let cases: [(Source, &str); 7] = [
        (Source::file(dir.path().join("missing")), "no such file or directory"),
        (Source::file(&fifo), "is a FIFO"),
        (Source::file(&sock_path), "cannot open: No such device or address"),
        (Source::file("/dev/null"), "is a character device"),
        (Source::file(dir.path()), "is a directory"),
        // Files the kernel makes up as they are read: size 0, or a page.
        (Source::file("/proc/self/status"), "is a file of procfs"),
        (Source::file("/sys/kernel/mm/transparent_hugepage/enabled"), "is a file of sysfs"),
    ];
    for (source, want) in cases {
        let e = ingest(std::slice::from_ref(&source), &config(false)).unwrap_err().to_string();
        // A socket cannot even be opened (ENXIO); the error says so with its path.
        assert!(e.contains(want), "{}: {e}", source.path.display());
        assert!(e.contains("Fix:"), "{e}");
        assert!(e.contains(&*source.path.to_string_lossy()), "names the path: {e}");
    }
}

#[test]
fn a_failed_source_does_not_lose_the_completions_before_it() {
    use gpuring::core::SlotGeometry;
    use gpuring::host::{HostConsumer, HostStaging};
    use gpuring::uring::{Driver, DriverOptions, Event};
    use std::sync::Arc;

    let dir = test_dir();
    let good = make_file(dir.path(), "good", 3 * SLOT, 1);
    let empty = make_file(dir.path(), "empty", 0, 0);
    let sources = [Source::file(&good), Source::file(&empty), Source::file(dir.path().join("missing"))];
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(4, SLOT).unwrap(), 4).unwrap());
    let consumer = HostConsumer::start(staging.clone()).unwrap();
    let mut driver = Driver::new(staging, DriverOptions::default()).unwrap();
    let (mut released, mut done) = (Vec::new(), Vec::new());
    let e = driver
        .ingest(&sources, |event| match event {
            Event::Released { source, offset, bytes, consumed: checksummed, .. } => released.push((source, offset, bytes, checksummed)),
            Event::SourceDone { source, bytes } => done.push((source, bytes)),
        })
        .unwrap_err();
    assert!(matches!(e, IngestError::NotFound { .. }), "{e}");
    let s = SLOT as u64;
    released.sort();
    assert_eq!(released, [(0, 0, s, true), (0, s, s, true), (0, 2 * s, s, true)], "every segment read before the error was delivered");
    done.sort();
    assert_eq!(done, [(0, 3 * s), (1, 0)], "both finished sources, the empty one included, were reported");
    let t = *driver.telemetry();
    assert_eq!((t.published, t.released, t.inflight_reads), (3, 3, 0));
    driver.close_queue();
    drop(driver);
    assert_eq!(consumer.join().unwrap().bytes, 3 * s);
}

#[test]
fn slot_geometry_errors() {
    let dir = test_dir();
    let path = make_file(dir.path(), "g", 10, 1);
    // Sizes whose arithmetic would overflow (the queue's power of two, the
    // region, a read's length) are errors, never a panic or a wrap.
    let huge: [(u32, usize, &str); 5] = [
        (0, SLOT, "0 slots"),
        (4, 0, "0 bytes"),
        (4, 5000, "not a multiple of the 4096-byte page"),
        (u32::MAX, 4096, "exceed io_uring's 16384 registered buffers"),
        (2, usize::MAX - 4095, "do not fit in memory"),
    ];
    for (slots, slot_size, want) in huge {
        let cfg = IngestOptions { slots, slot_size, ..IngestOptions::default() };
        let e = ingest(&[Source::file(&path)], &cfg).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("Fix:"), "{e}");
    }
    // A backend this build was compiled without (none, with every feature).
    if let Some(missing) = gpuring::ingest::Backend::ALL.into_iter().find(|b| !b.compiled()) {
        let cfg = IngestOptions { backend: missing, ..IngestOptions::default() };
        let e = ingest(&[Source::file(&path)], &cfg).unwrap_err().to_string();
        assert!(e.contains(&format!("backend `{missing}` is not compiled into this gpuring")) && e.contains("Fix: use the host backend"), "{e}");
    }
}

#[test]
fn bounce_path_delivers_the_same_bytes_and_counts_every_copy() {
    let dir = test_dir();
    for (i, size) in [1, SLOT, 10 * SLOT + 123].into_iter().enumerate() {
        let path = make_file(dir.path(), &format!("b{i}"), size, 40 + i as u32);
        for (backend, direct) in backends().into_iter().flat_map(|b| [(b, false), (b, true)]) {
            let r = ingest(&[Source::file(&path)], &on(backend, IngestOptions { bounce: true, ..config(direct) })).unwrap();
            let t = &r.telemetry;
            let segments = (size as u64).div_ceil(SLOT as u64);
            assert!(r.checksum.matched, "{size} bytes, direct {direct}: {:?}", r.checksum);
            assert_eq!((t.bounce_bytes, t.bounce_reads), (size as u64, segments));
            assert_eq!((t.kernel_copy_bytes, t.dma_bytes), (0, 0), "nothing reached the slots without a userspace copy");
            assert_eq!((t.published, t.released), (segments, segments));
            assert!(!r.zero_bounce && !r.dma_only && r.complete && r.bounce);
        }
    }
    // Bad inputs get the same errors as on the io_uring path.
    let missing = dir.path().join("missing");
    let e = ingest(&[Source::file(&missing)], &IngestOptions { bounce: true, ..config(false) }).unwrap_err();
    assert!(matches!(e, Error::Ingest(IngestError::NotFound { .. })), "{e}");
}

#[test]
fn one_driver_and_one_consumer_per_staging_region() {
    use gpuring::core::{QueueError, SlotGeometry, StagingMemory};
    use gpuring::host::{HostConsumer, HostError, HostStaging};
    use gpuring::uring::{Driver, DriverOptions};
    use std::sync::Arc;
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(2, SLOT).unwrap(), 2).unwrap());
    let consumer = HostConsumer::start(staging.clone()).unwrap();
    // A second consumer could release a slot the first still reads.
    let second = HostConsumer::start(staging.clone()).unwrap_err();
    assert!(matches!(second, HostError::Queue(QueueError::EndTaken { end: "consumer" })), "{second}");
    assert!(staging.take_consumer().is_err());
    let mut driver = Driver::new(staging.clone(), DriverOptions::default()).unwrap();
    // A second producer would publish over entries the consumer reads.
    let again = Driver::new(staging.clone(), DriverOptions::default()).unwrap_err();
    assert!(matches!(again, IngestError::Queue(QueueError::EndTaken { end: "producer" })), "{again}");
    assert!(again.to_string().contains("Fix: give each staging region one driver and one consumer"), "{again}");
    assert!(gpuring::uring::bounce::ingest(&*staging, &[], &DriverOptions::default(), |_| {}).is_err());
    // The first pair still works.
    let dir = test_dir();
    let path = make_file(dir.path(), "f", 3 * SLOT + 5, 4);
    driver.ingest(&[Source::file(&path)], |_| {}).unwrap();
    driver.close_queue();
    assert_eq!(consumer.join().unwrap().bytes, 3 * SLOT as u64 + 5);
}

#[test]
fn a_closure_consumer_sees_every_slot_once_and_its_results_reach_the_driver() {
    use gpuring::core::io_queue::Completion;
    use gpuring::core::SlotGeometry;
    use gpuring::host::{HostConsumer, HostStaging};
    use gpuring::uring::{Driver, DriverOptions, Event};
    use std::sync::Arc;
    let dir = test_dir();
    let path = make_file(dir.path(), "f", 5 * SLOT + 17, 8);
    let bytes = std::fs::read(&path).unwrap();
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(3, SLOT).unwrap(), 4).unwrap());
    // State: (offset, length) of every slot seen; result: the slot's byte sum.
    let consumer = HostConsumer::with(staging.clone(), Vec::new(), |seen: &mut Vec<(u64, usize)>, c: &Completion, slot: &[u8]| {
        seen.push((c.offset, slot.len()));
        slot.iter().map(|&b| b as u64).sum()
    })
    .unwrap();
    let mut driver = Driver::new(staging, DriverOptions::default()).unwrap();
    let mut results = Vec::new();
    driver
        .ingest(&[Source::file(&path)], |e| {
            if let Event::Released { offset, result: checksum, .. } = e {
                results.push((offset, checksum));
            }
        })
        .unwrap();
    driver.close_queue();
    let (stats, mut seen) = consumer.finish().unwrap();
    seen.sort();
    results.sort();
    let want: Vec<(u64, usize)> = bytes.chunks(SLOT).enumerate().map(|(i, c)| ((i * SLOT) as u64, c.len())).collect();
    assert_eq!(seen, want, "every slot once, with its bytes");
    let sums: Vec<(u64, u64)> = bytes.chunks(SLOT).enumerate().map(|(i, c)| ((i * SLOT) as u64, c.iter().map(|&b| b as u64).sum())).collect();
    assert_eq!(results, sums, "the closure's results are what the driver reports");
    assert_eq!((stats.entries, stats.bytes), (6, bytes.len() as u64));
}

#[test]
fn one_thread_drives_the_ring_and_consumes_it_in_turns() {
    // One ring, then two shards (the second ring on a thread of its own).
    for shards in [1, 2] {
        one_thread_drives_and_consumes(shards);
    }
}

fn one_thread_drives_and_consumes(shards: u32) {
    use gpuring::core::io_queue::CONSUMED;
    use gpuring::core::{slot_checksum, SlotGeometry, StagingMemory};
    use gpuring::host::HostStaging;
    use gpuring::uring::{Driver, DriverOptions, Event, Poll};
    use std::sync::Arc;
    let dir = test_dir();
    let path = make_file(dir.path(), "f", 20 * SLOT + 3, 12);
    let bytes = std::fs::read(&path).unwrap();
    // Two slots for twenty segments: the driver must wait for releases,
    // which only this same thread makes.
    let staging = Arc::new(HostStaging::new(SlotGeometry::new(2, SLOT).unwrap(), 2).unwrap());
    let mut consumer = staging.take_consumer().unwrap();
    let q = staging.queue();
    let mut driver = Driver::new(staging.clone(), DriverOptions { shards, ..DriverOptions::default() }).unwrap();
    assert_eq!(driver.shards(), shards);
    let sources = [Source::file(&path)];
    let mut job = driver.begin(&sources).unwrap();
    let mut released = Vec::new();
    let (mut polls, mut idle) = (0, 0);
    let stats = loop {
        polls += 1;
        assert!(polls < 1_000_000, "the ingest does not finish");
        match job.poll(|e| {
            if let Event::Released { offset, result: checksum, .. } = e {
                released.push((offset, checksum));
            }
        }) {
            Ok(Poll::Done(stats)) => break stats,
            Ok(Poll::Moved) => {}
            Ok(Poll::Idle) => idle += 1,
            Err(e) => panic!("{e}"),
        }
        // This thread is the consumer too: release whatever is published.
        while let Some(entry) = consumer.peek(&q).unwrap() {
            // SAFETY: the slot is the consumer's from publish to release.
            let slot = unsafe { std::slice::from_raw_parts(staging.slot_ptr(entry.slot).as_ptr(), entry.bytes as usize) };
            consumer.release(&q, slot_checksum(slot), CONSUMED);
        }
    };
    drop(job);
    released.sort();
    let want: Vec<(u64, u64)> = bytes.chunks(SLOT).enumerate().map(|(i, c)| ((i * SLOT) as u64, slot_checksum(c))).collect();
    assert_eq!(released, want);
    assert_eq!(stats.telemetry.released, 21);
    // Twenty segments through two slots: the driver went on only because
    // this thread released between polls.
    assert!(polls >= 10, "{polls} polls ({idle} idle)");
    // Polling a finished ingest says so; dropping an unfinished one cancels
    // and leaves the driver refusing further use.
    let mut job = driver.begin(&sources).unwrap();
    assert!(matches!(job.poll(|_| {}), Ok(Poll::Moved)));
    drop(job);
    assert!(driver.begin(&sources).is_err(), "an abandoned ingest leaves the driver unusable");
}
