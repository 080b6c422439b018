use super::*;
use crate::source::dio_alignment;

use std::io::Write;

/// A file of `len` bytes of a pattern that differs at every offset.
fn pattern_file(dir: &std::path::Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let bytes: Vec<u8> = (0..len as u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed) >> 29) as u8).collect();
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
    (path, bytes)
}

/// A directory on a file system that takes O_DIRECT (the build directory;
/// tmpfs before 6.6 does not).
fn direct_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap()
}

#[test]
fn scattered_ranges_of_two_files_land_in_their_windows_and_nothing_else_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_bytes) = pattern_file(dir.path(), "a", 3 << 20, 1);
    let (b, b_bytes) = pattern_file(dir.path(), "b", 100_003, 2);
    let requests = vec![
        ReadRequest::new(&b, 17..100_003, 0),
        ReadRequest::new(&a, 0..(3 << 20), 200_000),
        ReadRequest::new(&a, 12_345..12_346, 100_000),
        ReadRequest::new("/nonexistent/empty-is-never-opened", 5..5, 0),
    ];
    let mut dst = vec![0xEEu8; 200_000 + (3 << 20) + 7];
    let options = ReadIntoOptions { chunk: 64 << 10, depth: 4, ..ReadIntoOptions::default() };
    let stats = read_into(&requests, &mut dst, &options).unwrap();
    assert_eq!(&dst[..100_003 - 17], &b_bytes[17..]);
    assert_eq!(dst[100_000], a_bytes[12_345]);
    assert_eq!(&dst[200_000..200_000 + (3 << 20)], &a_bytes[..]);
    // Untouched: between the windows and after the last.
    assert!(dst[100_003 - 17..100_000].iter().all(|&x| x == 0xEE));
    assert!(dst[100_001..200_000].iter().all(|&x| x == 0xEE));
    assert!(dst[200_000 + (3 << 20)..].iter().all(|&x| x == 0xEE));
    let want = (100_003 - 17) + (3 << 20) + 1;
    assert_eq!(stats.bytes, want);
    let verdict = stats.telemetry.validate().unwrap();
    assert!(verdict.complete && verdict.zero_bounce, "{:?}", stats.telemetry);
    assert_eq!(stats.telemetry.kernel_copy.bytes, want);
    // 64 KiB reads: the 3 MiB range alone took 48.
    assert!(stats.telemetry.submitted_reads >= 50, "{:?}", stats.telemetry);
}

#[test]
fn bad_requests_name_what_is_wrong_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = pattern_file(dir.path(), "a", 10_000, 3);
    let mut dst = vec![7u8; 8192];
    let options = ReadIntoOptions::default();
    let cases: Vec<(Vec<ReadRequest>, &str)> = vec![
        (vec![ReadRequest::new(&a, 0..5000, 4000)], "end past the destination's 8192 bytes"),
        (vec![ReadRequest::new(&a, 0..100, 0), ReadRequest::new(&a, 200..300, 50)], "requests 0 and 1 both write destination offset 50"),
        (vec![ReadRequest::new(&a, 9000..10_001, 0)], "runs past the end of the file (10000 bytes)"),
        (vec![ReadRequest::new(&a, Range { start: 20, end: 10 }, 0)], "is empty"),
        (vec![ReadRequest::new(dir.path().join("missing"), 0..1, 0)], "no such file"),
        (vec![ReadRequest::new(&a, 0..1, u64::MAX)], "end past the destination"),
    ];
    for (requests, want) in cases {
        let e = read_into(&requests, &mut dst, &options).unwrap_err().to_string();
        assert!(e.contains(want), "{e}\nwanted: {want}");
        assert!(e.contains("Fix:"), "{e}");
        assert!(dst.iter().all(|&x| x == 7), "a refused request wrote into the destination");
    }
}

#[test]
fn nothing_to_read_is_not_an_error() {
    let mut dst = [1u8; 4];
    let stats = read_into(&[], &mut dst, &ReadIntoOptions::default()).unwrap();
    assert_eq!(stats.bytes, 0);
    let stats = read_into(&[ReadRequest::new("/nonexistent", 3..3, 100)], &mut dst, &ReadIntoOptions::default()).unwrap();
    assert_eq!(stats.bytes, 0);
    assert_eq!(dst, [1u8; 4]);
}

#[test]
fn direct_reads_go_straight_in_where_aligned_and_through_scratch_where_not() {
    let dir = direct_dir();
    let len = (1 << 20) + 777;
    let (a, bytes) = pattern_file(dir.path(), "a", len, 4);
    let options = ReadIntoOptions { direct: true, chunk: 128 << 10, depth: 8, ..ReadIntoOptions::default() };
    // A page-aligned destination: a Vec of u64 pages' worth, then bytes.
    let mut backing = vec![0u8; (3 << 20) + 8192];
    let base = backing.as_ptr().align_offset(4096);
    let dst = &mut backing[base..base + (3 << 20)];
    let align = dio_alignment(&std::fs::File::open(&a).unwrap().into()).map_or(4096, |(o, _)| o as u64);
    let second_head = 1000u64.next_multiple_of(align) - 1000;
    let second_tail = 300_000 - 300_000 / align * align;
    // The second request's aligned middle starts at a page of the destination.
    let second_at = (2 << 20) + 4096 - second_head;
    let requests = vec![
        // Aligned start, unaligned end (the file's end): straight, then a tail.
        ReadRequest::new(&a, 0..len as u64, 0),
        // Unaligned start and end, aligned destination after the head.
        ReadRequest::new(&a, 1000..300_000, second_at),
        // Destination and file offset disagree modulo the alignment: all scratch.
        ReadRequest::new(&a, 8192..20_000, (1 << 20) + 8192 + 3),
    ];
    let r = match read_into(&requests, dst, &options) {
        Err(IngestError::DirectUnsupported { .. }) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but the build directory's file system refuses O_DIRECT");
            eprintln!("skipped: the build directory's file system refuses O_DIRECT");
            return;
        }
        r => r.unwrap(),
    };
    assert_eq!(&dst[..len], &bytes[..]);
    assert_eq!(&dst[second_at as usize..second_at as usize + 299_000], &bytes[1000..300_000]);
    assert_eq!(&dst[(1 << 20) + 8195..(1 << 20) + 8195 + 11_808], &bytes[8192..20_000]);
    let t = r.telemetry;
    assert!(t.validate().unwrap().complete, "{t:?}");
    // Scratch: the first request's 777-byte tail, the second's head and
    // tail, all of the third.
    assert_eq!(t.bounce.bytes, (len as u64 % align) + second_head + second_tail + 11_808, "{t:?}");
    assert_eq!(t.dma.bytes + t.kernel_copy.bytes + t.bounce.bytes, r.bytes);
}

#[test]
fn a_plan_is_split_in_destination_order_at_chunk_multiples_and_loses_nothing() {
    let piece = |start, end, dst, scratch| Piece { file: 0, start, end, buf: 0, dst, scratch };
    // Out of destination order on purpose; one scratch piece in the middle.
    let plan = vec![piece(0, 10 << 20, 50 << 20, false), piece(4096, 9000, 0, true), piece(8192, (20 << 20) + 8192, 8192, false)];
    let parts = split_plan(plan.clone(), 3, 1 << 20);
    assert_eq!(parts.len(), 3);
    let mut back: Vec<Piece> = Vec::new();
    let mut last_base = None;
    for (base, pieces) in &parts {
        assert!(!pieces.is_empty());
        assert!(last_base.is_none_or(|b| b < *base), "parts follow each other in the destination");
        last_base = Some(*base);
        for p in pieces {
            back.push(Piece { dst: p.dst + *base as u64, ..*p });
        }
    }
    // Glue the cut pieces back together: the same bytes to the same places.
    back.sort_by_key(|p| p.dst);
    let mut glued: Vec<Piece> = Vec::new();
    for p in back {
        match glued.last_mut() {
            Some(q) if q.end == p.start && q.dst + (q.end - q.start) == p.dst && q.scratch == p.scratch => q.end = p.end,
            _ => glued.push(p),
        }
    }
    let mut want = plan.clone();
    want.sort_by_key(|p| p.dst);
    assert_eq!(
        glued.iter().map(|p| (p.start, p.end, p.dst, p.scratch)).collect::<Vec<_>>(),
        want.iter().map(|p| (p.start, p.end, p.dst, p.scratch)).collect::<Vec<_>>()
    );
    // Cuts fall at a multiple of the chunk from the piece's start.
    for (base, pieces) in &parts {
        for p in pieces.iter().filter(|p| !p.scratch) {
            let dst = p.dst + *base as u64;
            let whole = plan.iter().find(|w| w.dst <= dst && dst < w.dst + (w.end - w.start)).unwrap();
            assert_eq!((p.start - whole.start) % (1 << 20), 0, "{p:?}");
        }
    }
    // Never more parts than asked, even with tiny plans.
    assert_eq!(split_plan(vec![piece(0, 10, 0, false)], 4, 4096).len(), 1);
}

#[test]
fn several_rings_fill_their_own_parts_of_the_destination() {
    for direct in [false, true] {
        let dir = direct_dir();
        let (a, a_bytes) = pattern_file(dir.path(), "a", 20 << 20, 5);
        let (b, b_bytes) = pattern_file(dir.path(), "b", (9 << 20) + 123, 6);
        let requests =
            vec![ReadRequest::new(&a, 4096..(20 << 20), 8192), ReadRequest::new(&b, 0..(9 << 20) + 123, (21 << 20) + 4096), ReadRequest::new(&a, 77..5000, 4)];
        let len = (31 << 20) + 8192;
        let mut dst = HeapBuffer::new(len, 0xEE);
        let options = ReadIntoOptions { direct, chunk: 1 << 20, depth: 4, shards: 3, ..ReadIntoOptions::default() };
        let stats = read_into(&requests, dst.as_mut_slice(), &options).unwrap_or_else(|e| panic!("direct={direct}: {e}"));
        let dst = dst.as_slice();
        assert_eq!(&dst[8192..8192 + (20 << 20) - 4096], &a_bytes[4096..]);
        assert_eq!(&dst[(21 << 20) + 4096..(21 << 20) + 4096 + (9 << 20) + 123], &b_bytes[..]);
        assert_eq!(&dst[4..4 + 5000 - 77], &a_bytes[77..5000]);
        let outside = [0..4, 4 + 5000 - 77..8192, 8192 + (20 << 20) - 4096..(21 << 20) + 4096, (21 << 20) + 4096 + (9 << 20) + 123..len];
        for r in outside {
            assert!(dst[r.clone()].iter().all(|&x| x == 0xEE), "direct={direct}: bytes outside the windows were written in {r:?}");
        }
        let want = ((20 << 20) - 4096) + (9 << 20) + 123 + (5000 - 77);
        assert_eq!(stats.bytes, want as u64);
        let verdict = stats.telemetry.validate().unwrap();
        assert!(verdict.complete, "direct={direct}: {:?}", stats.telemetry);
        let t = stats.telemetry;
        assert_eq!(t.kernel_copy.bytes + t.dma.bytes + t.bounce.bytes, want as u64, "every byte counted once over the rings");
    }
}

/// A scatter read: each request into its own destination, many
/// destinations over two rings (the multi-ring split by destination) and
/// over one, buffered and O_DIRECT; every destination gets exactly its
/// windows, and a request naming a destination that was not given, or two
/// windows of one destination that overlap, are refused before any read.
#[test]
fn scatter_reads_fill_each_destination_with_its_own_requests() {
    let dir = direct_dir();
    let (a, a_bytes) = pattern_file(dir.path(), "a", 24 << 20, 5);
    // 40 destinations of uneven sizes, each filled from its own range of `a`
    // at an offset inside it, so bytes around each window must stay.
    let sizes: Vec<usize> = (0..40).map(|i| ((i * 7919) % 900_000) + 4096 * (i % 3) + 1).collect();
    let mut at = 0u64;
    let mut requests = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let offset = (i as u64 * 13) % 4096;
        let len = (size as u64 - offset).min(a_bytes.len() as u64 - at);
        requests.push(ReadRequest::new(&a, at..at + len, offset).to_destination(i));
        at += len;
    }
    for (shards, direct) in [(1, false), (2, false), (2, true), (3, true)] {
        let mut dsts: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xEE; n]).collect();
        let mut views: Vec<&mut [u8]> = dsts.iter_mut().map(|d| d.as_mut_slice()).collect();
        let options = ReadIntoOptions { chunk: 256 << 10, depth: 8, shards, direct, ..ReadIntoOptions::default() };
        let stats = read_into_many(&requests, &mut views, &options).unwrap();
        assert_eq!(stats.bytes, at, "shards {shards} direct {direct}");
        for (r, d) in requests.iter().zip(&dsts) {
            let w = r.dst_range();
            assert_eq!(
                &d[w.start as usize..w.end as usize],
                &a_bytes[r.range.start as usize..r.range.end as usize],
                "destination {} ({shards}, {direct})",
                r.dst
            );
            assert!(d[..w.start as usize].iter().chain(&d[w.end as usize..]).all(|&x| x == 0xEE), "destination {}: a byte outside its window", r.dst);
        }
        assert!(stats.telemetry.validate().unwrap().complete);
    }
    let mut one = vec![0u8; 100];
    let mut two = vec![0u8; 100];
    let options = ReadIntoOptions::default();
    let missing = [ReadRequest::new(&a, 0..10, 0).to_destination(2)];
    let e = read_into_many(&missing, &mut [&mut one, &mut two], &options).unwrap_err().to_string();
    assert!(e.contains("names destination 2, but 2 destination(s) were given") && e.contains("Fix:"), "{e}");
    // The same offsets in two destinations are fine; twice in one are not.
    let same = [ReadRequest::new(&a, 0..10, 0), ReadRequest::new(&a, 10..20, 0).to_destination(1)];
    read_into_many(&same, &mut [&mut one, &mut two], &options).unwrap();
    assert_eq!((&one[..10], &two[..10]), (&a_bytes[..10], &a_bytes[10..20]));
    let overlap = [ReadRequest::new(&a, 0..10, 0).to_destination(1), ReadRequest::new(&a, 10..20, 5).to_destination(1)];
    let e = read_into_many(&overlap, &mut [&mut one, &mut two], &options).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
}
