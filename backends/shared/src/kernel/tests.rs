//! The consumer kernel's own source, run on the CPU: compiled by the host
//! C++ compiler with `cpu_shim.h` standing in for the GPU built-ins, and
//! driven through the real io_queue protocol. This checks the kernel's
//! logic (checksums against gpuring-core's, chunking, tails, skips,
//! rejections, the batch release and the persistent release order) on
//! machines without a GPU, for the CUDA and the ROCm backends alike. The
//! run-time compilers are tested in those crates (NVRTC, hiprtc); the code
//! on a real device and its ordering only on hardware (`cargo xtask hwtest
//! --require cuda`, `--require rocm`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use gpuring_core::checksum::slot_checksum;
use gpuring_core::io_queue::{Completion, EntryKind, IoQueue, Producer, CONSUMED, FAILED_OUT_OF_STEP, FAILED_REJECTED, REJECTED, SKIPPED};

use super::{batched_outcome, chunks_per_slot, rejection, source, Dialect, CHUNK_WORDS};

/// The C entry points the tests call, around the kernels.
const LAUNCHER: &str = r#"
extern "C" void gr_cpu_batch(u8* queue, const u8* slots, u32* scratch, u32 first, u32 count, u32 capacity, u32 slot_count, u32 slot_bytes, u32 chunks) {
    gr_launch(dim3{chunks, count, 1}, GR_THREADS, false, [&] { gr_partial(queue, slots, scratch, first, capacity, slot_count, slot_bytes, CHUNK_WORDS); });
    gr_launch(dim3{1, 1, 1}, GR_THREADS, false, [&] { gr_finish(queue, scratch, first, count, capacity, slot_count, slot_bytes); });
}
extern "C" void gr_cpu_persistent(u8* queue, const u8* slots, u32* control, u32* done, u32* abort_flag, u32 workers, u32 capacity, u32 slot_count, u32 slot_bytes) {
    gr_launch(dim3{workers + 1, 1, 1}, GR_THREADS, true, [&] { gr_persistent(queue, slots, control, done, abort_flag, capacity, slot_count, slot_bytes); });
}
"#;

type Batch = unsafe extern "C" fn(*mut u8, *const u8, *mut u32, u32, u32, u32, u32, u32, u32);
type Persistent = unsafe extern "C" fn(*mut u8, *const u8, *mut u32, *mut u32, *mut u32, u32, u32, u32, u32);

/// The kernel built as a shared library for the CPU, once per test binary;
/// `None` (with the reason printed) when there is no C++ compiler, which
/// fails under CI=true, where the test command installs one.
fn library() -> Option<&'static libloading::Library> {
    static LIB: OnceLock<Option<libloading::Library>> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir: PathBuf = tempfile::Builder::new().prefix("gpuring-kernel-cpu").tempdir().unwrap().keep();
        let text = format!("#include \"cpu_shim.h\"\n{}\n#define CHUNK_WORDS {CHUNK_WORDS}u\n{LAUNCHER}", source(Dialect::Cuda));
        std::fs::write(dir.join("kernel.cpp"), text).unwrap();
        std::fs::write(dir.join("cpu_shim.h"), include_str!("cpu_shim.h")).unwrap();
        let out = dir.join("libkernel.so");
        let built = Command::new("g++")
            .args(["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unused-function", "-o"])
            .arg(&out)
            .arg(dir.join("kernel.cpp"))
            .output();
        match built {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("g++ could not compile consumer.cu with the CPU shim:\n{}", String::from_utf8_lossy(&o.stderr)),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but g++ cannot run ({e}); the test command installs it"),
            Err(e) => {
                eprintln!("skipping the CPU run of the GPU consumer kernel: g++ cannot run ({e}); install g++");
                return None;
            }
        }
        // SAFETY: the library was just built from the kernel source and the shim; its initialisers are C++ statics.
        Some(unsafe { libloading::Library::new(&out) }.expect("loading the CPU build of the kernel"))
    })
    .as_ref()
}

/// Zeroed, page-aligned memory, as the backend's mapped host pages are.
struct Pages {
    ptr: *mut u8,
    layout: Layout,
}

impl Pages {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(4096), 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn raw(&self) -> *mut u8 {
        self.ptr
    }

    fn words(&self) -> *mut u32 {
        self.ptr.cast()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

// SAFETY: plain memory; the tests share it with the kernel's threads as the
// backend shares mapped pages with the device.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

/// A queue and slots filled with random bytes, slot size `slot_bytes`.
struct Setup {
    queue: Pages,
    slots: Pages,
    capacity: u32,
    slot_count: u32,
    slot_bytes: u32,
}

impl Setup {
    fn new(capacity: u32, slot_count: u32, slot_bytes: u32) -> Self {
        let queue = Pages::new(IoQueue::bytes_for(capacity));
        // SAFETY: fresh, zeroed, aligned memory of the right size that outlives every view.
        unsafe { IoQueue::init_raw(queue.ptr, queue.layout.size(), capacity) }.unwrap();
        let mut slots = Pages::new(slot_count as usize * slot_bytes as usize);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for b in slots.bytes_mut().iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        Self { queue, slots, capacity, slot_count, slot_bytes }
    }

    fn q(&self) -> IoQueue<'_> {
        // SAFETY: initialised in `new` with this capacity.
        unsafe { IoQueue::view(self.queue.ptr, self.capacity) }
    }

    fn expected(&self, slot: u32, len: u64) -> u64 {
        let start = slot as usize * self.slot_bytes as usize;
        slot_checksum(&self.slots.bytes()[start..start + len as usize])
    }

    fn batch(&self, scratch: &Pages, first: u32, count: u32) {
        let lib = library().expect("checked by the caller");
        // SAFETY: the symbol has this signature (LAUNCHER above).
        let f = unsafe { lib.get::<Batch>(b"gr_cpu_batch") }.unwrap();
        // SAFETY: every pointer covers what the kernels index with these sizes.
        unsafe {
            f(self.queue.ptr, self.slots.ptr, scratch.words(), first, count, self.capacity, self.slot_count, self.slot_bytes, chunks_per_slot(self.slot_bytes))
        };
    }
}

fn completion(slot: u32, status: i32, bytes: u64) -> Completion {
    Completion { slot, status, kind: EntryKind::File, bytes, offset: 0, tag: 7 }
}

#[test]
fn batched_kernels_match_the_core_checksum() {
    if library().is_none() {
        return;
    }
    let slot_bytes = 192 << 10;
    assert_eq!(chunks_per_slot(slot_bytes), 3, "three blocks per slot, so chunk sums are combined");
    let s = Setup::new(16, 12, slot_bytes);
    let scratch = Pages::new(16 * 2 * 4);
    let q = s.q();
    // SAFETY: each setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    // Lengths at every edge: empty, partial words, one page, a chunk and a
    // bit, a whole slot; one failed read, which is skipped.
    let lens: [(u64, i32); 12] =
        [(0, 0), (1, 0), (3, 0), (5, 0), (4096, 0), (65_536, 0), (65_537, 0), (131_071, 0), (slot_bytes as u64, 0), (100, -5), (65_540, 0), (17, 0)];
    for (round, first) in [(0, 0u32), (1, 12)] {
        for (i, (len, status)) in lens.iter().enumerate() {
            let slot = ((i + round * 5) % 12) as u32;
            producer.publish(&q, &completion(slot, *status, *len)).unwrap();
        }
        s.batch(&scratch, first, 12);
        assert_eq!(q.consumer_failed(), 0);
        assert_eq!(q.header().consumer(), first + 12, "the batch is released at once");
        let geometry = gpuring_core::SlotGeometry::new(s.slot_count, s.slot_bytes as usize).unwrap();
        assert_eq!(batched_outcome(&q, geometry, first + 12, false), Ok(()));
        let short = batched_outcome(&q, geometry, first + 13, false).unwrap_err();
        assert_eq!(short, (first + 12, format!("the kernels released up to {}, not {}", first + 12, first + 13)));
        assert_eq!(batched_outcome(&q, geometry, first + 13, true), Ok(()), "a consumer stopped early may leave entries");
        let mut seen = 0;
        producer
            .poll_released(&q, |r| {
                let c = r.completion;
                if c.status == 0 {
                    assert_eq!(r.consumer_status, CONSUMED, "position {}", r.position);
                    assert_eq!(r.result, s.expected(c.slot, c.bytes), "position {} ({} bytes in slot {})", r.position, c.bytes, c.slot);
                } else {
                    assert_eq!((r.consumer_status, r.result), (SKIPPED, 0));
                }
                seen += 1;
            })
            .unwrap();
        assert_eq!(seen, 12);
        // The second round wraps around the queue and reuses the scratch,
        // which gr_finish must have reset.
        assert!(scratch.bytes().iter().all(|b| *b == 0), "scratch reset after round {round}");
    }
}

#[test]
fn batched_kernels_reject_bad_entries_and_releases_out_of_step() {
    if library().is_none() {
        return;
    }
    let s = Setup::new(4, 2, 4096);
    let scratch = Pages::new(4 * 2 * 4);
    let q = s.q();
    // SAFETY: each setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    producer.publish(&q, &completion(0, 0, 10)).unwrap();
    producer.publish(&q, &completion(5, 0, 10)).unwrap();
    s.batch(&scratch, 0, 2);
    assert_eq!(q.consumer_failed(), FAILED_REJECTED);
    assert_eq!(q.header().consumer(), 0, "nothing released once an entry is rejected");
    assert_eq!(q.entry(1).consumer_status(), REJECTED);
    let geometry = gpuring_core::SlotGeometry::new(2, 4096).unwrap();
    assert_eq!(rejection(&q, geometry, 2), (1, "slot 5 with 10 bytes, but there are 2 slots of 4096 bytes".to_owned()), "the host's account of it");
    assert_eq!(batched_outcome(&q, geometry, 2, false), Err(rejection(&q, geometry, 2)));

    let s = Setup::new(4, 2, 4096);
    let q = s.q();
    // SAFETY: each setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    producer.publish(&q, &completion(0, 0, 4097)).unwrap();
    s.batch(&scratch, 0, 1);
    assert_eq!(q.consumer_failed(), FAILED_REJECTED, "more bytes than a slot");

    let s = Setup::new(4, 2, 4096);
    let q = s.q();
    // SAFETY: each setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    producer.publish(&q, &completion(0, 0, 10)).unwrap();
    producer.publish(&q, &completion(1, 0, 10)).unwrap();
    s.batch(&scratch, 1, 1);
    assert_eq!(q.consumer_failed(), FAILED_OUT_OF_STEP, "a batch that does not start at `consumer`");
    assert_eq!(rejection(&q, geometry, 2).1, "the queue's consumer position was 0, not the batch's first entry");
}

/// Run the persistent kernel with `workers` worker blocks on a thread while
/// this thread publishes `lens` (slot, bytes) through a small queue, then
/// closes it; return what was released.
/// What a persistent run released (completion, result, consumer status),
/// `consumer_failed`, and the kernel's counters (skipped entries,
/// checksummed bytes).
type PersistentRun = (Vec<(Completion, u64, u32)>, u32, (u32, u64));

fn persistent_run(s: &Setup, workers: u32, items: &[(u32, i32, u64)]) -> PersistentRun {
    let (mut control, mut done) = (Pages::new(4), Pages::new(s.capacity as usize * 4));
    let abort = Pages::new(4);
    let q = s.q();
    // As the CUDA backend starts it: claims from the queue's consumer
    // position, and every done mark at that position.
    let start = q.header().consumer();
    control.bytes_mut()[..4].copy_from_slice(&start.to_ne_bytes());
    for mark in done.bytes_mut().chunks_exact_mut(4) {
        mark.copy_from_slice(&start.to_ne_bytes());
    }
    let mut released = Vec::new();
    std::thread::scope(|scope| {
        let kernel = scope.spawn(|| {
            let lib = library().unwrap();
            // SAFETY: the symbol has this signature (LAUNCHER above).
            let f = unsafe { lib.get::<Persistent>(b"gr_cpu_persistent") }.unwrap();
            // SAFETY: every pointer covers what the kernel indexes with these sizes.
            unsafe { f(s.queue.raw(), s.slots.raw(), control.words(), done.words(), abort.words(), workers, s.capacity, s.slot_count, s.slot_bytes) };
        });
        // SAFETY: the setup's queue has this one producer.
        let mut producer = unsafe { Producer::attach(&q) };
        let mut take = |producer: &mut Producer| producer.poll_released(&q, |r| released.push((r.completion, r.result, r.consumer_status))).unwrap();
        for &(slot, status, bytes) in items {
            while producer.outstanding() == q.capacity() {
                if q.consumer_failed() != 0 {
                    break;
                }
                take(&mut producer);
                std::thread::yield_now();
            }
            if q.consumer_failed() != 0 {
                break;
            }
            producer.publish(&q, &completion(slot, status, bytes)).unwrap();
        }
        producer.close(&q);
        kernel.join().unwrap();
        take(&mut producer);
    });
    let words = control.bytes();
    let counters = (u32::from_ne_bytes(words[4..8].try_into().unwrap()), u64::from_ne_bytes(words[8..16].try_into().unwrap()));
    (released, q.consumer_failed(), counters)
}

#[test]
fn persistent_kernel_consumes_a_stream_in_order() {
    if library().is_none() {
        return;
    }
    let s = Setup::new(8, 8, 8192);
    // Slots are reused as a producer would: slot i % 8 for item i.
    let items: Vec<(u32, i32, u64)> = (0..64u32).map(|i| (i % 8, if i == 9 { -11 } else { 0 }, (i as u64 * 1237) % 8193)).collect();
    let (released, failed, (skipped, bytes)) = persistent_run(&s, 3, &items);
    assert_eq!(failed, 0);
    assert_eq!(skipped, 1);
    assert_eq!(bytes, items.iter().filter(|i| i.1 == 0).map(|i| i.2).sum::<u64>(), "the kernel counts what it checksummed");
    assert_eq!(released.len(), items.len(), "every entry released once the queue is closed");
    for (i, (c, result, status)) in released.iter().enumerate() {
        assert_eq!((c.slot, c.bytes), (items[i].0, items[i].2), "released in publication order");
        if c.status == 0 {
            assert_eq!((*status, *result), (CONSUMED, s.expected(c.slot, c.bytes)), "item {i}");
        } else {
            assert_eq!(*status, SKIPPED);
        }
    }
}

#[test]
fn kernels_and_the_hosts_account_cross_the_wrap_at_2_pow_32() {
    if library().is_none() {
        return;
    }
    // Batched: a batch of 12 whose positions run from 2^32 - 5 past the wrap.
    let slot_bytes = 8192;
    let s = Setup::new(16, 12, slot_bytes);
    let scratch = Pages::new(16 * 2 * 4);
    let q = s.q();
    let first = u32::MAX - 4;
    q.start_at(first).unwrap();
    // SAFETY: the setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    let lens: Vec<u64> = (0..12u64).map(|i| (i * 1999) % (slot_bytes as u64 + 1)).collect();
    for (i, len) in lens.iter().enumerate() {
        producer.publish(&q, &completion(i as u32, 0, *len)).unwrap();
    }
    s.batch(&scratch, first, 12);
    assert_eq!(q.consumer_failed(), 0);
    assert_eq!(q.header().consumer(), first.wrapping_add(12), "released past the wrap");
    let geometry = gpuring_core::SlotGeometry::new(s.slot_count, s.slot_bytes as usize).unwrap();
    assert_eq!(batched_outcome(&q, geometry, first.wrapping_add(12), false), Ok(()));
    let mut seen = Vec::new();
    producer.poll_released(&q, |r| seen.push((r.position, r.consumer_status, r.result, r.completion))).unwrap();
    assert_eq!(seen.len(), 12);
    for (i, (position, status, result, c)) in seen.into_iter().enumerate() {
        assert_eq!(position, first.wrapping_add(i as u32));
        assert_eq!((status, result), (CONSUMED, s.expected(c.slot, c.bytes)), "position {position}");
    }

    // The host's account of a rejection past the wrap finds the entry.
    let s = Setup::new(8, 2, 4096);
    let q = s.q();
    let first = u32::MAX - 1;
    q.start_at(first).unwrap();
    // SAFETY: the setup's queue has this one producer.
    let mut producer = unsafe { Producer::attach(&q) };
    for slot in [0, 1, 0, 7] {
        producer.publish(&q, &completion(slot, 0, 10)).unwrap();
    }
    s.batch(&scratch, first, 4);
    assert_eq!(q.consumer_failed(), FAILED_REJECTED);
    let geometry = gpuring_core::SlotGeometry::new(2, 4096).unwrap();
    assert_eq!(rejection(&q, geometry, first.wrapping_add(4)), (1, "slot 7 with 10 bytes, but there are 2 slots of 4096 bytes".to_owned()));

    // Persistent: a stream of 40 entries through a queue of 8 from 2^32 - 3.
    let s = Setup::new(8, 8, 8192);
    s.q().start_at(u32::MAX - 2).unwrap();
    let items: Vec<(u32, i32, u64)> = (0..40u32).map(|i| (i % 8, 0, (i as u64 * 733) % 8193)).collect();
    let (released, failed, (skipped, bytes)) = persistent_run(&s, 3, &items);
    assert_eq!((failed, skipped), (0, 0));
    assert_eq!(bytes, items.iter().map(|i| i.2).sum::<u64>());
    assert_eq!(released.len(), items.len());
    for (i, (c, result, status)) in released.iter().enumerate() {
        assert_eq!((c.slot, c.bytes), (items[i].0, items[i].2), "in order");
        assert_eq!((*status, *result), (CONSUMED, s.expected(c.slot, c.bytes)), "item {i}");
    }
}

#[test]
fn persistent_kernel_stops_on_a_rejected_entry_and_on_abort() {
    if library().is_none() {
        return;
    }
    let s = Setup::new(4, 4, 4096);
    let items = [(0, 0, 100), (1, 0, 100), (9, 0, 100), (2, 0, 100)];
    let (released, failed, _) = persistent_run(&s, 2, &items);
    assert_eq!(failed, FAILED_REJECTED);
    assert_eq!(released.len(), 2, "the entries before the rejected one are released, no more");

    // Nothing published, queue never closed: only the abort flag ends it.
    let s = Setup::new(4, 4, 4096);
    let (control, done, abort) = (Pages::new(4), Pages::new(16), Pages::new(4));
    std::thread::scope(|scope| {
        let kernel = scope.spawn(|| {
            let lib = library().unwrap();
            // SAFETY: as in `persistent_run`.
            let f = unsafe { lib.get::<Persistent>(b"gr_cpu_persistent") }.unwrap();
            // SAFETY: as in `persistent_run`.
            unsafe { f(s.queue.raw(), s.slots.raw(), control.words(), done.words(), abort.words(), 2, s.capacity, s.slot_count, s.slot_bytes) };
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!kernel.is_finished(), "the kernel waits for entries");
        // SAFETY: the word is the kernel's abort flag; it reads it with volatile loads.
        unsafe { std::ptr::write_volatile(abort.words(), 1) };
        kernel.join().unwrap();
    });
}
