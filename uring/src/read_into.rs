//! Reading byte ranges of files into memory the caller owns.
//!
//! [`read_into`] takes a list of [`ReadRequest`]s (a file, a byte range of
//! it, and where in the destination the range goes) and reads them, through
//! io_uring (one ring, or several: below), straight into the caller's
//! `&mut [u8]`: the kernel copies
//! from the page cache into it (buffered), or the device writes it
//! (`O_DIRECT`), with no staging slot and no copy in between.
//!
//! Under `O_DIRECT` a range's file offset, length and destination address
//! must be aligned to the file's direct-I/O alignment. Whatever part of a
//! range is not (its unaligned head and tail, or all of it when the
//! destination address and the file offset disagree modulo the alignment)
//! is read aligned into a scratch buffer, and only the asked window is
//! copied out: those bytes are counted as `bounce` in the telemetry, and
//! the run is then not zero-bounce.
//!
//! Before anything is read, the requests are checked
//! ([`check_requests`]): a destination window past the end of the
//! destination, two windows that overlap, or a range past the end of its
//! file is an error naming the request, and nothing is written. A
//! zero-length request is allowed and does nothing (its file is not even
//! opened).
//!
//! The call returns only once the kernel has finished with every request
//! it was given, whatever went wrong: the destination is borrowed for the
//! call, and nothing writes into it after.
//!
//! With [`ReadIntoOptions::shards`] above 1 and at least 8 MiB per ring,
//! the reads are cut, in destination order, into that many parts of about
//! the same size (a range is cut at a multiple of the chunk from its
//! start, so O_DIRECT alignment holds), and each part is read through a
//! ring of its own on a thread of its own, into its own disjoint part of
//! the destination (`split_at_mut`): a buffered read is the kernel's copy,
//! done by the submitting thread, so N rings copy on N cores. Every thread
//! is joined before the call returns, an error or not.

use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gpuring_core::telemetry::Path as BytePath;
use gpuring_core::Telemetry;

use crate::buffer::HeapBuffer;
use crate::error::IngestError;
use crate::ring::Ring;
use crate::source::{OpenSource, Source};

/// One range to read: bytes `range` of the file at `path`, into the
/// destination at `dst_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The file (or block device).
    pub path: PathBuf,
    /// The bytes to read, as file offsets.
    pub range: Range<u64>,
    /// Where in the destination the first byte goes.
    pub dst_offset: u64,
    /// Which destination, in a scatter read of many
    /// ([`read_into_many`]); 0, the only one, otherwise.
    pub dst: usize,
}

impl ReadRequest {
    /// Bytes `range` of `path`, to `dst_offset` in the destination.
    pub fn new(path: impl Into<PathBuf>, range: Range<u64>, dst_offset: u64) -> Self {
        Self { path: path.into(), range, dst_offset, dst: 0 }
    }

    /// The same request into destination `dst` of a scatter read.
    pub fn to_destination(mut self, dst: usize) -> Self {
        self.dst = dst;
        self
    }

    /// Bytes asked for (0 for an empty or reversed range).
    pub fn bytes(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }

    /// Whether the request reads nothing (a reversed range is not empty:
    /// it is an error, reported with its file's size).
    pub fn is_empty(&self) -> bool {
        self.range.start == self.range.end
    }

    /// The destination window, `dst_offset .. dst_offset + len`.
    pub fn dst_range(&self) -> Range<u64> {
        self.dst_offset..self.dst_offset.saturating_add(self.bytes())
    }
}

/// How [`read_into`] reads.
#[derive(Clone, Debug)]
pub struct ReadIntoOptions {
    /// Open the files with `O_DIRECT` (the device writes the destination).
    pub direct: bool,
    /// Reads in flight at most.
    pub depth: u32,
    /// Bytes per read at most (a multiple of 4096).
    pub chunk: u32,
    /// Give up when reads are in flight and none completes for this long.
    pub read_timeout: Duration,
    /// Rings at most, each on its own thread with its own part of the
    /// destination (see the module docs); default: one per CPU this
    /// process may use ([`crate::default_shards`]).
    pub shards: u32,
}

impl Default for ReadIntoOptions {
    fn default() -> Self {
        Self { direct: false, depth: 32, chunk: 4 << 20, read_timeout: crate::ring::DEVICE_TIMEOUT, shards: crate::default_shards() }
    }
}

/// Bytes each ring gets at least before a `read_into` is split over more
/// than one: a thread per ring is not worth it for a few small reads.
const MIN_SHARD_BYTES: u64 = 8 << 20;

/// What [`read_into`] did.
#[derive(Clone, Copy, Debug)]
pub struct ReadIntoStats {
    /// Every read: bytes by path (`kernel_copy` buffered, `dma` direct,
    /// `bounce` for unaligned windows under `O_DIRECT`).
    pub telemetry: Telemetry,
    /// Bytes put into the destination.
    pub bytes: u64,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// Check `requests` against destinations of `dst_lens` bytes, without
/// touching a file: every non-empty request must name a destination that
/// exists, its window must lie inside it, and no two windows of one
/// destination may overlap. Empty requests are ignored. (Ranges are
/// checked against their files once those are opened.)
pub fn check_requests(requests: &[ReadRequest], dst_lens: &[u64]) -> Result<(), IngestError> {
    let mut windows = Vec::with_capacity(requests.len());
    for (index, r) in requests.iter().enumerate() {
        if r.bytes() == 0 {
            continue;
        }
        let Some(&dst_len) = dst_lens.get(r.dst) else {
            return Err(IngestError::NoSuchDestination { index, dst: r.dst, count: dst_lens.len() });
        };
        let end = r.dst_offset.checked_add(r.bytes());
        if end.is_none_or(|end| end > dst_len) {
            return Err(IngestError::DestinationTooSmall { index, path: r.path.clone(), dst_offset: r.dst_offset, bytes: r.bytes(), dst_len });
        }
        windows.push(((r.dst, r.dst_offset), r.dst_range(), index));
    }
    windows.sort_by_key(|(at, ..)| *at);
    for pair in windows.windows(2) {
        let ((da, _), a, first) = &pair[0];
        let ((db, _), b, second) = &pair[1];
        if da == db && b.start < a.end {
            let (first, second) = ((*first).min(*second), (*first).max(*second));
            let at = b.start;
            return Err(IngestError::DestinationsOverlap { first, second, at });
        }
    }
    Ok(())
}

/// Open the files of the non-empty `requests` (each path once) for reads
/// of at most `chunk` bytes, and check every range against its file's
/// size. Returns the files and, per request, the index of its file.
fn open_files(requests: &[ReadRequest], direct: bool, chunk: u32) -> Result<(Vec<OpenSource>, Vec<usize>), IngestError> {
    let mut files: Vec<OpenSource> = Vec::new();
    let mut by_path: HashMap<&std::path::Path, usize> = HashMap::new();
    let mut which = Vec::with_capacity(requests.len());
    for r in requests {
        if r.is_empty() {
            which.push(usize::MAX);
            continue;
        }
        let index = match by_path.get(r.path.as_path()) {
            Some(&i) => i,
            None => {
                files.push(OpenSource::open(&Source::file(&r.path), direct, chunk as usize)?);
                by_path.insert(&r.path, files.len() - 1);
                files.len() - 1
            }
        };
        let size = files[index].size;
        if r.range.end > size || r.range.start > r.range.end {
            return Err(IngestError::BadRange { path: r.path.clone(), start: r.range.start, end: r.range.end, size });
        }
        which.push(index);
    }
    Ok((files, which))
}

/// Where a read's bytes go.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// Straight into the destination at this offset; `fixed`: through the
    /// registered buffer that holds it.
    Direct { buf: usize, dst: u64, fixed: bool },
    /// Into scratch buffer `scratch`; then bytes `skip .. skip + want` of it
    /// are copied to destination `buf` at `dst`.
    Scratch { scratch: usize, skip: u32, want: u32, buf: usize, dst: u64 },
}

/// One read: `len` bytes of file `file` at `offset`, `done` of them in.
#[derive(Clone, Copy, Debug)]
struct Op {
    file: usize,
    offset: u64,
    len: u32,
    /// Bytes that must arrive (a scratch read may ask past the window, up
    /// to the alignment, and past the end of the file).
    need: u32,
    done: u32,
    into: Target,
}

/// A piece of a request, before it becomes reads: file bytes `start..end`
/// to destination offset `dst`, straight or through scratch.
#[derive(Clone, Copy, Debug)]
struct Piece {
    file: usize,
    start: u64,
    end: u64,
    /// Which destination, and where in it.
    buf: usize,
    dst: u64,
    scratch: bool,
}

/// Cut `r` (whose file is `file`, aligned to `align` bytes of file offset
/// and `mem_align` of memory, 0 for buffered) into pieces: under
/// `O_DIRECT`, the aligned middle goes straight into the destination when
/// its address is aligned too, the rest through scratch.
fn pieces(r: &ReadRequest, file: usize, align: u64, mem_align: u64, dst_base: usize, out: &mut Vec<Piece>) {
    let (s, e, d, buf) = (r.range.start, r.range.end, r.dst_offset, r.dst);
    if align == 0 {
        out.push(Piece { file, start: s, end: e, buf, dst: d, scratch: false });
        return;
    }
    let mid_start = s.next_multiple_of(align);
    let mid_end = e / align * align;
    if mid_start >= mid_end || !(dst_base as u64 + d + (mid_start - s)).is_multiple_of(mem_align.max(1)) {
        out.push(Piece { file, start: s, end: e, buf, dst: d, scratch: true });
        return;
    }
    if s < mid_start {
        out.push(Piece { file, start: s, end: mid_start, buf, dst: d, scratch: true });
    }
    out.push(Piece { file, start: mid_start, end: mid_end, buf, dst: d + (mid_start - s), scratch: false });
    if mid_end < e {
        out.push(Piece { file, start: mid_end, end: e, buf, dst: d + (mid_end - s), scratch: true });
    }
}

/// Read every request into `dst`, as the module documents. On an error
/// nothing more is submitted, every read in flight is waited for, and the
/// first error is returned (some windows may then be filled, others not).
pub fn read_into(requests: &[ReadRequest], dst: &mut [u8], options: &ReadIntoOptions) -> Result<ReadIntoStats, IngestError> {
    read_into_many(requests, &mut [dst], options)
}

/// Read every request into its destination, `dsts[request.dst]` (a scatter
/// read: one allocation per tensor, say), with the same checks, reads and
/// accounting as [`read_into`]. With several rings, each ring takes whole
/// destinations, about the same bytes each.
pub fn read_into_many(requests: &[ReadRequest], dsts: &mut [&mut [u8]], options: &ReadIntoOptions) -> Result<ReadIntoStats, IngestError> {
    let started = Instant::now();
    if options.chunk == 0 || !options.chunk.is_multiple_of(4096) || options.depth == 0 {
        let what = format!(
            "read_into with chunks of {} bytes and depth {}: chunks must be a non-zero multiple of 4096, depth at least 1",
            options.chunk, options.depth
        );
        return Err(IngestError::RingGeometry { what });
    }
    let lens: Vec<u64> = dsts.iter().map(|d| d.len() as u64).collect();
    check_requests(requests, &lens)?;
    let (files, which) = open_files(requests, options.direct, options.chunk)?;
    let mut plan = Vec::new();
    for (r, &file) in requests.iter().zip(&which) {
        if file == usize::MAX {
            continue;
        }
        let f = &files[file];
        pieces(r, file, f.dio_align as u64, f.dio_mem_align as u64, dsts[r.dst].as_ptr() as usize, &mut plan);
    }
    let bytes: u64 = requests.iter().map(ReadRequest::bytes).sum();
    let shards = u64::from(options.shards.max(1)).min(bytes / MIN_SHARD_BYTES).max(1) as usize;
    let telemetry = if shards == 1 {
        read_plan(&plan, &files, dsts, options, false)?
    } else if dsts.len() > 1 {
        read_scattered(plan, &files, dsts, shards, options)?
    } else {
        let dst = &mut *dsts[0];
        // Buffered: fault the windows in here, once, before the rings
        // start; faulting a fresh destination from several threads at once
        // contends in the kernel (measured: loading a 1 GiB checkpoint into
        // a new arena took 1.72-2.23 GiB/s with two rings faulting their
        // own parts, against 2.53 with one ring).
        if !options.direct {
            populate_plan(&plan, &mut [&mut *dst]);
        }
        let parts = split_plan(plan, shards, options.chunk as u64);
        // Each part's window of the destination: from its first byte to the
        // next part's (the parts follow each other in destination order).
        let mut slices = Vec::with_capacity(parts.len());
        let (mut rest, mut at) = (dst, 0usize);
        for (i, (start, _)) in parts.iter().enumerate() {
            let end = parts.get(i + 1).map_or(at + rest.len(), |next| next.0);
            let (_, tail) = rest.split_at_mut(start - at);
            let (mine, tail) = tail.split_at_mut(end - start);
            slices.push(mine);
            (rest, at) = (tail, end);
        }
        let files = &files;
        let results: Vec<Result<Telemetry, IngestError>> = std::thread::scope(|scope| {
            let threads: Vec<_> = parts
                .iter()
                .zip(slices)
                .map(|((_, part), slice)| {
                    std::thread::Builder::new()
                        .name("gpuring-read-into".into())
                        .spawn_scoped(scope, move || read_plan(part, files, &mut [slice], options, !options.direct))
                })
                .collect();
            join_rings(threads)
        });
        absorb(results)?
    };
    Ok(ReadIntoStats { telemetry, bytes, elapsed: started.elapsed() })
}

/// Join the rings' threads: each one's result (a ring's thread returns only
/// once its ring is drained, or aborts).
fn join_rings(threads: Vec<std::io::Result<std::thread::ScopedJoinHandle<'_, Result<Telemetry, IngestError>>>>) -> Vec<Result<Telemetry, IngestError>> {
    threads
        .into_iter()
        .map(|t| match t {
            Ok(t) => t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                Err(IngestError::Ring { op: "starting a read_into thread", errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::AGAIN) })
            }
        })
        .collect()
}

/// The rings' counters added up, or the first ring's error.
fn absorb(results: Vec<Result<Telemetry, IngestError>>) -> Result<Telemetry, IngestError> {
    let mut telemetry = Telemetry::new();
    for result in results {
        telemetry.absorb(&result?)?;
    }
    Ok(telemetry)
}

/// A scatter read on `shards` rings: each ring gets whole destinations (in
/// order, until it has about its share of the bytes) and their pieces, on
/// a thread of its own. Buffered destinations are faulted in first, as in
/// the one-destination case.
fn read_scattered(plan: Vec<Piece>, files: &[OpenSource], dsts: &mut [&mut [u8]], shards: usize, options: &ReadIntoOptions) -> Result<Telemetry, IngestError> {
    if !options.direct {
        populate_plan(&plan, dsts);
    }
    let mut per_dst = vec![0u64; dsts.len()];
    for p in &plan {
        per_dst[p.buf] += p.end - p.start;
    }
    let share = per_dst.iter().sum::<u64>().div_ceil(shards as u64).max(1);
    // Which ring each destination goes to, and its index there.
    let (mut ring_of, mut index_in) = (vec![0usize; dsts.len()], vec![0usize; dsts.len()]);
    let (mut ring, mut filled, mut counts) = (0usize, 0u64, vec![0usize; shards]);
    for (d, &bytes) in per_dst.iter().enumerate() {
        if filled >= share && ring + 1 < shards {
            (ring, filled) = (ring + 1, 0);
        }
        (ring_of[d], index_in[d]) = (ring, counts[ring]);
        counts[ring] += 1;
        filled += bytes;
    }
    let mut groups: Vec<Vec<&mut [u8]>> = (0..shards).map(|_| Vec::new()).collect();
    for (d, dst) in dsts.iter_mut().enumerate() {
        groups[ring_of[d]].push(&mut **dst);
    }
    let mut parts: Vec<Vec<Piece>> = vec![Vec::new(); shards];
    for p in plan {
        parts[ring_of[p.buf]].push(Piece { buf: index_in[p.buf], ..p });
    }
    let results = std::thread::scope(|scope| {
        let threads: Vec<_> = parts
            .iter()
            .zip(groups)
            .filter(|(part, _)| !part.is_empty())
            .map(|(part, mut group)| {
                std::thread::Builder::new()
                    .name("gpuring-read-into".into())
                    .spawn_scoped(scope, move || read_plan(part, files, &mut group, options, !options.direct))
            })
            .collect();
        join_rings(threads)
    });
    absorb(results)
}

/// Cut `plan` into `parts` parts of about the same bytes, in destination
/// order: (the part's first destination offset, its pieces with offsets
/// from there). A straight piece is cut at a multiple of `chunk` from its
/// start (so its reads stay aligned); a scratch piece is never cut.
fn split_plan(mut plan: Vec<Piece>, parts: usize, chunk: u64) -> Vec<(usize, Vec<Piece>)> {
    /// End the part being filled: its pieces, with offsets from its first.
    fn close(out: &mut Vec<(usize, Vec<Piece>)>, current: &mut Vec<Piece>, filled: &mut u64) {
        if let Some(first) = current.first() {
            let base = first.dst;
            let pieces = current.drain(..).map(|p| Piece { dst: p.dst - base, ..p }).collect();
            out.push((base as usize, pieces));
        }
        *filled = 0;
    }
    plan.sort_by_key(|p| p.dst);
    let total: u64 = plan.iter().map(|p| p.end - p.start).sum();
    let per = total.div_ceil(parts as u64).max(1);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut filled = 0u64;
    for mut piece in plan {
        loop {
            let len = piece.end - piece.start;
            let room = per.saturating_sub(filled);
            if len <= room || piece.scratch || out.len() + 1 == parts {
                filled += len;
                current.push(piece);
                if filled >= per && out.len() + 1 < parts {
                    close(&mut out, &mut current, &mut filled);
                }
                break;
            }
            let mut cut = room / chunk * chunk;
            if cut == 0 && current.is_empty() {
                // A part smaller than a chunk: take one chunk anyway.
                cut = chunk;
            }
            if cut >= len {
                filled += len;
                current.push(piece);
                close(&mut out, &mut current, &mut filled);
                break;
            }
            if cut > 0 {
                current.push(Piece { end: piece.start + cut, ..piece });
                piece = Piece { start: piece.start + cut, dst: piece.dst + cut, ..piece };
            }
            close(&mut out, &mut current, &mut filled);
        }
    }
    close(&mut out, &mut current, &mut filled);
    out
}

/// Read `plan` into `dst` through one ring, as the module documents
/// (`populated`: the windows were faulted in already); the ring is drained
/// before this returns, whatever happened.
fn read_plan(plan: &[Piece], files: &[OpenSource], dsts: &mut [&mut [u8]], options: &ReadIntoOptions, populated: bool) -> Result<Telemetry, IngestError> {
    let mut ring = Ring::with_passthrough(options.depth, false)?;
    // O_DIRECT reads pin their target pages one read at a time unless
    // they are registered (one destination only: a scatter read's many
    // are read by address); buffered reads only copy into them.
    let fixed = options.direct && dsts.len() == 1 && plan.iter().any(|p| !p.scratch) && register(&mut ring, dsts[0]);
    if !fixed && !populated {
        populate_plan(plan, dsts);
    }
    let base = dsts.first().map_or(0, |d| d.as_ptr() as usize / gpuring_core::PAGE_SIZE * gpuring_core::PAGE_SIZE);
    let mut job = Job {
        fixed: fixed.then_some(base),
        ring: &mut ring,
        files,
        dsts,
        telemetry: Telemetry::new(),
        ops: Vec::new(),
        free_ops: Vec::new(),
        scratch: Vec::new(),
        free_scratch: Vec::new(),
        chunk: options.chunk,
    };
    let result = job.run(plan, options);
    let telemetry = job.telemetry;
    // Whatever happened, the kernel must be done with the destination before
    // it is handed back.
    drain(&mut ring);
    result.map(|()| telemetry)
}

/// [`populate`] every piece's window of `dst` (in bounds: `check_requests`
/// put every window inside the destination, and a part's pieces inside its
/// part).
fn populate_plan(plan: &[Piece], dsts: &mut [&mut [u8]]) {
    for p in plan {
        populate(&mut dsts[p.buf][p.dst as usize..(p.dst + (p.end - p.start)) as usize]);
    }
}

/// Register `dst` (its whole pages, in buffers of at most 1 GiB) as the
/// ring's fixed buffers, so the O_DIRECT reads go in by `READ_FIXED`:
/// io_uring pins (and faults in) the pages once, not once per read. Only
/// where RLIMIT_MEMLOCK allows it (unlimited, or room for twice `dst`):
/// elsewhere, and where the kernel refuses (memory it cannot pin), `false`,
/// and the reads go by address.
fn register(ring: &mut Ring, dst: &mut [u8]) -> bool {
    let page = gpuring_core::PAGE_SIZE;
    let start = dst.as_ptr() as usize / page * page;
    let end = (dst.as_ptr() as usize + dst.len()).next_multiple_of(page);
    let span = (end - start) as u64;
    if crate::memlock::budget().is_some_and(|b| b / 2 < span) || span.div_ceil(crate::ring::MAX_BUFFER_BYTES as u64) > crate::ring::MAX_BUFFERS as u64 {
        return false;
    }
    let buffers: Vec<(*mut u8, usize)> =
        (start..end).step_by(crate::ring::MAX_BUFFER_BYTES).map(|at| (at as *mut u8, (end - at).min(crate::ring::MAX_BUFFER_BYTES))).collect();
    // The pages hold `dst`, borrowed mutably for the whole `read_into`
    // call, which drops the ring (and so the registration) before it
    // returns; the kernel writes only where a read is sent, inside `dst`.
    // SAFETY: per the lines above.
    unsafe { ring.register_buffers(&buffers) }.is_ok()
}

/// Fault in a window's pages before the reads, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14; contents unchanged), unless they
/// look present already. A read into a page not yet present cannot complete
/// inline: io_uring hands it to a worker thread, and a fresh buffer of 1 GiB
/// then reads at a third of the speed (measured: `gpuring bench`, 0.64
/// against 2.26 GiB/s for `pread()`). Populating costs a walk of every page
/// even when all are there (a warm 1 GiB read ran 13-15% slower with it:
/// 4.47 against 5.04-5.28 GiB/s), so
/// eight pages spread over the window are asked first (`mincore`), and a
/// window whose eight are all present is taken as present. Best effort:
/// an older kernel refuses, and the reads fault as before.
fn populate(dst: &mut [u8]) {
    if dst.is_empty() {
        return;
    }
    let page = gpuring_core::PAGE_SIZE;
    let start = dst.as_ptr() as usize / page * page;
    let end = (dst.as_ptr() as usize + dst.len()).next_multiple_of(page);
    let pages = (end - start) / page;
    let present = (0..8).map(|i| start + (pages - 1) * i / 7 * page).all(|at| {
        let mut resident = 0u8;
        // One page of `dst`'s mapping and a one-byte vector for its answer.
        // SAFETY: `at` is page-aligned inside the pages that hold `dst`.
        let rc = unsafe { libc::mincore(at as *mut libc::c_void, page, &mut resident) };
        rc == 0 && resident & 1 == 1
    });
    if present {
        return;
    }
    // The pages hold `dst` (borrowed mutably, so mapped and writable); the
    // advice only makes them present and writable, and changes no byte.
    // SAFETY: per the line above; the range covers whole pages of `dst`.
    let _ = unsafe { rustix::mm::madvise(start as *mut std::ffi::c_void, end - start, rustix::mm::Advice::LinuxPopulateWrite) };
}

/// Wait until no request of `ring` is in flight, however long it takes: the
/// memory they write is the caller's, borrowed only for the call. A ring
/// that cannot even be waited on leaves no sound way out: abort.
fn drain(ring: &mut Ring) {
    while ring.in_flight() > 0 {
        match ring.cancel_all() {
            Ok(()) => {}
            Err(IngestError::DeviceStalled { what, seconds }) => {
                eprintln!("gpuring: read_into: still waiting after {seconds} s for {what}: the kernel has not finished writing the destination");
            }
            Err(e) => {
                eprintln!("gpuring: read_into: cannot wait for the reads in flight ({e}); aborting rather than return memory the kernel may still write");
                std::process::abort();
            }
        }
    }
}

/// One `read_into` call's state.
struct Job<'a, 'b> {
    /// The page-aligned start of the one destination when it is registered
    /// (fixed buffer `k` starts `k` GiB after it).
    fixed: Option<usize>,
    ring: &'a mut Ring,
    files: &'a [OpenSource],
    /// The destinations, by `Piece::buf`.
    dsts: &'a mut [&'b mut [u8]],
    telemetry: Telemetry,
    /// Reads by `user_data`; `None` once finished.
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    /// Scratch buffers of `chunk` bytes, page-aligned, made as needed.
    scratch: Vec<HeapBuffer>,
    free_scratch: Vec<usize>,
    chunk: u32,
}

impl Job<'_, '_> {
    fn run(&mut self, plan: &[Piece], options: &ReadIntoOptions) -> Result<(), IngestError> {
        let mut next = 0usize;
        let mut at = plan.first().map_or(0, |p| p.start);
        let mut in_flight = 0u32;
        let mut last = Instant::now();
        loop {
            while in_flight < options.depth && next < plan.len() {
                let piece = plan[next];
                let op = self.cut(piece, at);
                at += op_window(&op);
                if at >= piece.end {
                    next += 1;
                    at = plan.get(next).map_or(0, |p| p.start);
                }
                let window = op_window(&op);
                self.telemetry.on_submit(window)?;
                self.push(op)?;
                in_flight += 1;
            }
            if in_flight == 0 {
                return Ok(());
            }
            self.ring.submit()?;
            if !self.ring.wait_until(last + options.read_timeout)? {
                let what = format!("{in_flight} read(s) into the destination");
                return Err(IngestError::DeviceStalled { what, seconds: options.read_timeout.as_secs() });
            }
            let mut done = Vec::new();
            self.ring.reap(|user_data, res| done.push((user_data as usize, res)));
            if !done.is_empty() {
                last = Instant::now();
            }
            for (id, res) in done {
                if !self.complete(id, res)? {
                    continue;
                }
                in_flight -= 1;
            }
        }
    }

    /// The next read of `piece`, starting at file offset `at`.
    fn cut(&mut self, piece: Piece, at: u64) -> Op {
        let chunk = self.chunk as u64;
        if !piece.scratch {
            let mut len = (piece.end - at).min(chunk);
            let mut fixed = false;
            if let Some(base) = self.fixed {
                // A fixed read stays inside one registered buffer: cut at the
                // boundary (a multiple of 4096 bytes, which keeps O_DIRECT's
                // alignment), or read by address the one piece too close to it.
                let addr = self.dsts[piece.buf].as_ptr() as usize + (piece.dst + (at - piece.start)) as usize - base;
                let to_boundary = ((addr / crate::ring::MAX_BUFFER_BYTES + 1) * crate::ring::MAX_BUFFER_BYTES - addr) as u64;
                if to_boundary >= len {
                    fixed = true;
                } else if to_boundary >= 4096 {
                    (len, fixed) = (to_boundary / 4096 * 4096, true);
                }
            }
            let len = len as u32;
            let into = Target::Direct { buf: piece.buf, dst: piece.dst + (at - piece.start), fixed };
            return Op { file: piece.file, offset: at, len, need: len, done: 0, into };
        }
        let align = (self.files[piece.file].dio_align as u64).max(1);
        let read_start = at / align * align;
        let skip = at - read_start;
        let want = (piece.end - at).min(chunk - skip);
        let len = (skip + want).next_multiple_of(align).min(chunk) as u32;
        let scratch = self.take_scratch();
        let into = Target::Scratch { scratch, skip: skip as u32, want: want as u32, buf: piece.buf, dst: piece.dst + (at - piece.start) };
        Op { file: piece.file, offset: read_start, len, need: (skip + want) as u32, done: 0, into }
    }

    fn take_scratch(&mut self) -> usize {
        if let Some(i) = self.free_scratch.pop() {
            return i;
        }
        self.scratch.push(HeapBuffer::new(self.chunk as usize, 0));
        self.scratch.len() - 1
    }

    /// Queue `op` (new, or the rest of a short read).
    fn push(&mut self, op: Op) -> Result<(), IngestError> {
        let id = match self.free_ops.pop() {
            Some(id) => id,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        let buf = match op.into {
            // In bounds: `check_requests` put every window inside `dst`.
            Target::Direct { buf, dst, .. } => self.dsts[buf][dst as usize + op.done as usize..].as_mut_ptr(),
            Target::Scratch { scratch, .. } => self.scratch[scratch].as_mut_slice()[op.done as usize..].as_mut_ptr(),
        };
        self.ops[id] = Some(op);
        let len = op.len - op.done;
        // The target is `len` bytes of the destination (checked in bounds
        // above, and borrowed mutably by this job) or of a scratch buffer
        // this job owns and hands to one read at a time; `read_into` drains
        // the ring before either goes; the file stays open as long.
        // SAFETY: per the lines above.
        let fd = self.files[op.file].fd.as_fd();
        let offset = op.offset + op.done as u64;
        match (self.fixed, op.into) {
            (Some(base), Target::Direct { fixed: true, .. }) => {
                let index = ((buf as usize - base) / crate::ring::MAX_BUFFER_BYTES) as u16;
                // As above; `buf .. buf + len` lies inside registered buffer
                // `index` (`cut` keeps a read inside one).
                // SAFETY: per the comments above.
                unsafe { self.ring.push_read_fixed(fd, buf, len, offset, index, id as u64) }
            }
            // SAFETY: as above.
            _ => unsafe { self.ring.push_read(fd, buf, len, offset, id as u64) },
        }
    }

    /// Handle read `id`'s completion: whether the read is finished (else the
    /// rest was queued again).
    fn complete(&mut self, id: usize, res: i32) -> Result<bool, IngestError> {
        let mut op = self.ops[id].take().expect("a completion for a read in flight");
        self.free_ops.push(id);
        let file = &self.files[op.file];
        if res < 0 {
            self.telemetry.on_failure()?;
            let errno = rustix::io::Errno::from_raw_os_error(-res);
            return Err(IngestError::ReadInto { path: file.path.clone(), offset: op.offset + op.done as u64, errno });
        }
        let got = res as u32;
        op.done += got;
        let path = match op.into {
            Target::Direct { .. } => file.path_kind,
            Target::Scratch { .. } => BytePath::Bounce,
        };
        if op.done < op.need {
            if got == 0 {
                self.telemetry.on_failure()?;
                return Err(IngestError::Shrank { path: file.path.clone(), size: file.size, ended_at: op.offset + op.done as u64 });
            }
            // A short read: count what came, queue the rest.
            let counted = if matches!(op.into, Target::Direct { .. }) { got as u64 } else { 0 };
            self.telemetry.on_complete(path, counted, true)?;
            self.telemetry.on_submit(0)?;
            self.push(op)?;
            return Ok(false);
        }
        match op.into {
            Target::Direct { .. } => {
                self.telemetry.on_complete(path, got as u64, false)?;
            }
            Target::Scratch { scratch, skip, want, buf, dst } => {
                let from = &self.scratch[scratch].as_slice()[skip as usize..(skip + want) as usize];
                self.dsts[buf][dst as usize..dst as usize + want as usize].copy_from_slice(from);
                self.free_scratch.push(scratch);
                self.telemetry.on_complete(path, want as u64, false)?;
            }
        }
        Ok(true)
    }
}

/// Bytes of the destination `op` fills.
fn op_window(op: &Op) -> u64 {
    match op.into {
        Target::Direct { .. } => op.len as u64,
        Target::Scratch { want, .. } => want as u64,
    }
}

#[cfg(test)]
mod tests;
