//! `read_into` on every backend that runs here: scattered, unaligned and
//! many-slot requests land in their windows of the user's buffer, byte for
//! byte, and bad requests are refused before anything is read.

mod common;

use common::{make_file, test_dir};
use gpuring::read_into::{self, ReadOptions, ReadRequest};
use gpuring::HostBuffer;

/// Requests over two files: one spanning many slots, unaligned heads and
/// tails, a one-byte request, a zero-length one on a missing file, and
/// windows out of file order. Returns them and the destination's length.
/// The long one goes to a 4096-aligned offset, so that in a page-aligned
/// destination O_DIRECT writes its aligned middle straight in.
fn requests(a: &std::path::Path, b: &std::path::Path) -> (Vec<ReadRequest>, u64) {
    let reqs = vec![
        ReadRequest::new(b, 4097..200_001, 3),
        ReadRequest::new(a, 0..(5 << 20) + 17, 303_104),
        ReadRequest::new(a, 1_000_001..1_000_002, 250_000),
        ReadRequest::new("/nonexistent/zero-length-is-never-opened", 0..0, 0),
        ReadRequest::new(a, 8192..16_384, 260_000),
    ];
    (reqs, 303_104 + (5 << 20) + 17 + 11)
}

/// Run `read` with the test requests on both paths (buffered, O_DIRECT) and
/// check every window, and that the bytes between windows stay as they were.
fn check(backend: &str, mut read: impl FnMut(&[ReadRequest], u64, bool) -> (read_into::ReadIntoReport, Vec<u8>)) {
    let dir = test_dir();
    let a = make_file(dir.path(), "a", (5 << 20) + 17, 1);
    let b = make_file(dir.path(), "b", 200_001, 2);
    let (reqs, dst_len) = requests(&a, &b);
    for direct in [false, true] {
        let (report, dst) = read(&reqs, dst_len, direct);
        let matched = read_into::verify(&reqs, |r| Ok(dst[r.dst_range().start as usize..r.dst_range().end as usize].to_vec())).unwrap();
        assert!(matched.iter().all(|&m| m), "{backend} direct={direct}: {matched:?}");
        let asked: u64 = reqs.iter().map(ReadRequest::bytes).sum();
        assert_eq!(report.bytes, asked, "{backend}");
        // Outside the windows: the fill byte.
        let mut covered = vec![false; dst_len as usize];
        for r in &reqs {
            covered[r.dst_range().start as usize..r.dst_range().end as usize].iter_mut().for_each(|c| *c = true);
        }
        assert!(dst.iter().zip(&covered).all(|(&x, &c)| c || x == 0xA5), "{backend} direct={direct}: a byte outside every window changed");
        assert_eq!(report.telemetry.failed_completions, 0);
        if backend != "host" {
            assert_eq!(report.device_copy_bytes, asked, "{backend}: every byte by the copy engine");
            assert!(report.zero_bounce, "{backend}: no CPU copy on a GPU path");
        } else if !direct {
            assert!(report.zero_bounce && report.telemetry.kernel_copy_bytes == asked, "{report:?}");
        } else {
            // Unaligned heads and tails went through scratch, counted.
            assert!(report.telemetry.bounce_bytes > 0 && report.telemetry.bounce_bytes < asked, "{report:?}");
        }
    }
}

#[test]
fn host_read_into_fills_every_window_and_nothing_else() {
    check("host", |reqs, len, direct| {
        // A page-aligned destination, so that O_DIRECT can write the aligned
        // middles of the ranges straight in.
        let mut dst = HostBuffer::new(len as usize).unwrap();
        dst.fill(0xA5);
        let options = ReadOptions { direct, slot_size: 256 << 10, ..ReadOptions::default() };
        let report = read_into::host(reqs, &mut dst, &options).unwrap();
        (report, dst.to_vec())
    });
}

/// O_DIRECT into a `HostBuffer` at 4096-aligned file offsets and
/// destination offsets: the device writes every byte (DMA, no scratch).
/// The same requests into a `Vec` one byte past a page boundary bounce,
/// and the report says so.
#[test]
fn direct_reads_into_a_host_buffer_are_all_dma_and_into_an_unaligned_vec_all_bounce() {
    let dir = test_dir();
    let a = make_file(dir.path(), "a", 3 << 20, 7);
    let reqs = [ReadRequest::new(&a, 4096..(1 << 20), 8192), ReadRequest::new(&a, 2 << 20..3 << 20, 2 << 20)];
    let asked: u64 = reqs.iter().map(ReadRequest::bytes).sum();
    let options = ReadOptions { direct: true, ..ReadOptions::default() };
    let mut buffer = HostBuffer::new(3 << 20).unwrap();
    let report = read_into::host(&reqs, &mut buffer, &options).unwrap();
    let t = &report.telemetry;
    assert_eq!((t.dma_bytes, t.bounce_bytes, t.kernel_copy_bytes), (asked, 0, 0), "{report:?}");
    assert!(report.zero_bounce && report.dma_only, "{report:?}");
    let matched = read_into::verify(&reqs, |r| Ok(buffer[r.dst_range().start as usize..r.dst_range().end as usize].to_vec())).unwrap();
    assert!(matched.iter().all(|&m| m));

    let mut backing = vec![0u8; (3 << 20) + 8192];
    let at = backing.as_ptr().align_offset(4096) + 1;
    let report = read_into::host(&reqs, &mut backing[at..at + (3 << 20)], &options).unwrap();
    assert_eq!(report.telemetry.bounce_bytes, asked, "{report:?}");
    assert!(!report.zero_bounce, "{report:?}");
}

#[cfg(feature = "vulkan")]
#[test]
fn vulkan_read_into_copies_every_window_into_a_device_buffer() {
    if !common::backends().contains(&"vulkan") {
        return;
    }
    let ctx = std::sync::Arc::new(gpuring::vulkan::Context::new(None).unwrap());
    check("vulkan", |reqs, len, direct| {
        let mut dst = gpuring::vulkan::DeviceBuffer::new(&ctx, len).unwrap();
        // Fill it first, so bytes outside the windows are known.
        let fill = vec![0xA5u8; len as usize];
        let fill_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(fill_file.path(), &fill).unwrap();
        let options = ReadOptions { direct: false, slots: 4, slot_size: 1 << 20, shards: 2 };
        read_into::vulkan(&[ReadRequest::new(fill_file.path(), 0..len, 0)], &mut dst, &options).unwrap();
        // Small slots: the 5 MiB request crosses many, and batches wrap the ring.
        let options = ReadOptions { direct, slots: 4, slot_size: 256 << 10, shards: 3 };
        let report = read_into::vulkan(reqs, &mut dst, &options).unwrap();
        assert_eq!(report.backend, "vulkan");
        (report, dst.read(0, len).unwrap())
    });
}

#[test]
fn bad_requests_are_refused_before_anything_is_read() {
    let dir = test_dir();
    let a = make_file(dir.path(), "a", 10_000, 3);
    let cases = [
        (vec![ReadRequest::new(&a, 0..6000, 4000)], "end past the destination's 8192 bytes"),
        (vec![ReadRequest::new(&a, 0..100, 0), ReadRequest::new(&a, 200..300, 99)], "requests 0 and 1 both write destination offset 99"),
        (vec![ReadRequest::new(&a, 9000..10_001, 0)], "runs past the end of the file (10000 bytes)"),
    ];
    for (reqs, want) in &cases {
        let mut dst = vec![1u8; 8192];
        let e = read_into::host(reqs, &mut dst, &ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("Fix:"), "host: {e}");
        assert!(dst.iter().all(|&x| x == 1));
        #[cfg(feature = "vulkan")]
        if common::backends().contains(&"vulkan") {
            let ctx = std::sync::Arc::new(gpuring::vulkan::Context::new(None).unwrap());
            let mut buffer = gpuring::vulkan::DeviceBuffer::new(&ctx, 8192).unwrap();
            let e = read_into::vulkan(reqs, &mut buffer, &ReadOptions { direct: false, slots: 2, slot_size: 4096, shards: 1 }).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("Fix:"), "vulkan: {e}");
        }
    }
}
