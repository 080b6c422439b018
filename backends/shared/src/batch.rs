//! The batched-consumer engine: the host side of every GPU consumer that
//! runs device work once per batch of published entries. gpuring's checksum
//! kernels and users' kernels, on CUDA and on ROCm, and the Vulkan shaders
//! all run through [`run_batches`]; a backend supplies only what its API
//! does ([`BatchDevice`]: queue a batch's work, say whether the device is
//! idle, turn a [`Failure`] into its error).
//!
//! The engine waits for published entries by the io_queue's sleeping
//! protocol ([`wait_for_entries`]), cuts them into batches of at most
//! [`MAX_BATCH`], counts each batch while its entries are still the
//! consumer's, and then, by [`Release`]:
//! - [`Release::Device`]: the device work itself ends with the release
//!   store of `consumer` (and wakes the producer from a host callback); the
//!   engine hands the batch over and queues the next one without waiting,
//!   since a stream keeps batches in order;
//! - [`Release::Host`]: the engine waits for the batch, fails the queue if
//!   an entry's `consumer_status` is `REJECTED` (or the device failed it),
//!   and releases the batch itself: the order users' kernels and shaders
//!   need, since they do not store `consumer`.
//!
//! Every wait for the device is bounded by [`DEVICE_TIMEOUT`]; whatever
//! happened, the engine returns only once the device is idle or the wait
//! for it timed out (then the backend must leak, not free, what the device
//! may still use: [`abandon_to_device`](crate::abandon_to_device)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gpuring_core::io_queue::{self, Consumer, IoQueue, FAILED_REJECTED, REJECTED};
use gpuring_core::SlotGeometry;

use crate::kernel::{batched_outcome, rejection};
use crate::wait::{wait_for_entries, wake_producer, Waited};

/// How long the device may take to finish what was queued.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries per batch at most: one grid dimension (CUDA's y, HIP's, and the
/// 65,535 workgroups Vulkan guarantees per dispatch dimension).
pub const MAX_BATCH: u32 = 65_535;
/// The nap between polls of a device that is still busy.
const NAP: Duration = Duration::from_micros(20);

/// One batch: the entries at positions `first .. first + count` (wrapping),
/// with the sizes a kernel is launched with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The first entry's position.
    pub first: u32,
    /// Entries in the batch, 1 to [`MAX_BATCH`].
    pub count: u32,
    /// The queue's capacity.
    pub capacity: u32,
    /// Slots in the staging.
    pub slot_count: u32,
    /// Bytes per slot (the engine refuses slots of 4 GiB or more).
    pub slot_bytes: u32,
}

impl Batch {
    /// The batch's positions, in order.
    pub fn positions(&self) -> impl Iterator<Item = u32> {
        io_queue::positions(self.first, self.count)
    }
}

/// Who stores the queue's `consumer` for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The device work does, as its last step (gpuring's `gr_finish`), and
    /// wakes the producer from a host callback queued after it.
    Device,
    /// The engine does, once the batch finished and every entry's verdict
    /// was read.
    Host,
}

/// How a batch, or the wait for the device, went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The device did not finish `what` within `seconds`.
    Timeout {
        /// What was waited for.
        what: String,
        /// The limit.
        seconds: u64,
    },
    /// The consumer failed the queue, or released other than it was handed,
    /// at `position`.
    Rejected {
        /// The entry (or the batch's first entry).
        position: u32,
        /// What was wrong.
        what: String,
    },
}

/// What a GPU API does for [`run_batches`].
pub trait BatchDevice {
    /// The backend's error.
    type Error;
    /// Queue the device work for `batch` (its entries are the consumer's
    /// until released). With [`Release::Host`] the engine waits for it
    /// before the next call; with [`Release::Device`] it does not.
    fn launch(&mut self, batch: &Batch) -> Result<(), Self::Error>;
    /// Whether everything queued has finished (`Ok(true)`) or still runs.
    fn idle(&mut self) -> Result<bool, Self::Error>;
    /// Wait until everything queued has finished (`Ok(true)`) or `timeout`
    /// has passed (`Ok(false)`). By default, [`BatchDevice::idle`] polled
    /// with short naps; an API that can block until its work is done
    /// (a Vulkan fence) does better to.
    fn wait(&mut self, timeout: Duration) -> Result<bool, Self::Error> {
        let deadline = Instant::now() + timeout;
        while !self.idle()? {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(NAP);
        }
        Ok(true)
    }
    /// The backend's error for `failure`.
    fn failure(&self, failure: Failure) -> Self::Error;
}

/// What [`run_batches`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes of the entries whose read succeeded.
    pub bytes: u64,
    /// Entries whose read had failed (`status != 0`).
    pub skipped: u64,
    /// Batches launched.
    pub batches: u64,
}

/// Wait until `device` is idle, at most [`DEVICE_TIMEOUT`]; `what` names
/// the work in the timeout's error.
pub fn wait_idle<D: BatchDevice>(device: &mut D, what: &str) -> Result<(), D::Error> {
    match device.wait(DEVICE_TIMEOUT)? {
        true => Ok(()),
        false => Err(device.failure(Failure::Timeout { what: what.to_owned(), seconds: DEVICE_TIMEOUT.as_secs() })),
    }
}

/// Consume the queue in batches on `device` until the producer closed it
/// and everything was released, `stop` is set, or something fails; return
/// only once the device is idle (or the wait for it timed out: then the
/// error is [`Failure::Timeout`]'s). On an error, the caller's consumer
/// thread fails the queue ([`spawn_consumer`](crate::spawn_consumer)).
pub fn run_batches<D: BatchDevice>(
    q: &IoQueue<'_>,
    geometry: SlotGeometry,
    consumer: &mut Consumer,
    stop: &AtomicBool,
    release: Release,
    device: &mut D,
) -> Result<BatchStats, D::Error> {
    let Ok(slot_bytes) = u32::try_from(geometry.slot_size()) else {
        let what = format!("a slot of {} bytes: the kernels index slots with 32 bits", geometry.slot_size());
        return Err(device.failure(Failure::Rejected { position: consumer.position(), what }));
    };
    let mut stats = BatchStats::default();
    let mut device_failed = false;
    let queued = queue_batches(q, geometry, slot_bytes, consumer, stop, release, device, &mut stats, &mut device_failed);
    // Whatever happened, nothing may still run on the device when the
    // staging can be freed (after a failed wait, the caller leaks it instead
    // of waiting twice).
    let finished = if device_failed { Ok(()) } else { wait_idle(device, "the queued batches") };
    queued?;
    finished?;
    if release == Release::Device {
        let outcome = batched_outcome(q, geometry, consumer.position(), stop.load(Ordering::Acquire));
        outcome.map_err(|(position, what)| device.failure(Failure::Rejected { position, what }))?;
        wake_producer(q);
    }
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
fn queue_batches<D: BatchDevice>(
    q: &IoQueue<'_>,
    geometry: SlotGeometry,
    slot_bytes: u32,
    consumer: &mut Consumer,
    stop: &AtomicBool,
    release: Release,
    device: &mut D,
    stats: &mut BatchStats,
    device_failed: &mut bool,
) -> Result<(), D::Error> {
    while let Waited::Ready(available) = wait_for_entries(q, consumer, stop) {
        if q.consumer_failed() != 0 {
            break;
        }
        let batch =
            Batch { first: consumer.position(), count: available.min(MAX_BATCH), capacity: q.capacity(), slot_count: geometry.slot_count(), slot_bytes };
        // Count while the entries are still ours: once released, the
        // producer may reuse them.
        for position in batch.positions() {
            let e = q.entry(position);
            stats.entries += 1;
            match e.status() {
                0 => stats.bytes += e.bytes(),
                _ => stats.skipped += 1,
            }
        }
        device.launch(&batch)?;
        stats.batches += 1;
        match release {
            Release::Device => consumer.hand_over(batch.count),
            Release::Host => release_from_host(q, geometry, consumer, device, &batch, device_failed)?,
        }
    }
    Ok(())
}

/// Wait for `batch`, read its verdicts, and release it (or fail the queue).
fn release_from_host<D: BatchDevice>(
    q: &IoQueue<'_>,
    geometry: SlotGeometry,
    consumer: &mut Consumer,
    device: &mut D,
    batch: &Batch,
    device_failed: &mut bool,
) -> Result<(), D::Error> {
    if let Err(e) = wait_idle(device, "a batch") {
        *device_failed = true;
        return Err(e);
    }
    let end = batch.first.wrapping_add(batch.count);
    if q.consumer_failed() == 0 && batch.positions().any(|p| q.entry(p).consumer_status() == REJECTED) {
        consumer.fail(q, FAILED_REJECTED);
    }
    if q.consumer_failed() != 0 {
        let (position, what) = rejection(q, geometry, end);
        return Err(device.failure(Failure::Rejected { position, what }));
    }
    // `consumer` is this thread's to store; nothing else may have moved it.
    let at = q.header().consumer();
    if at != batch.first {
        let what = format!("the queue's consumer position moved to {at} during the batch");
        return Err(device.failure(Failure::Rejected { position: batch.first, what }));
    }
    let released = consumer.release_batch(q, batch.count);
    released.map_err(|e| device.failure(Failure::Rejected { position: batch.first, what: e.to_string() }))?;
    wake_producer(q);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::sync::atomic::AtomicU32;

    use gpuring_core::io_queue::{offsets, Completion, Ends, EntryKind, CONSUMED, ENTRY_SIZE, FAILED_REJECTED, HEADER_SIZE, SKIPPED};

    use super::*;

    /// A queue in zeroed, 64-byte-aligned memory, as a device would see it.
    struct Region {
        ptr: *mut u8,
        layout: Layout,
    }

    impl Region {
        fn new(capacity: u32) -> (Self, IoQueue<'static>) {
            let layout = Layout::from_size_align(IoQueue::bytes_for(capacity), 64).unwrap();
            // SAFETY: a non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            // SAFETY: `ptr` holds `layout.size()` bytes until `Region` drops,
            // which the tests do only after the queue's last use; every access
            // (the fake devices' included) is atomic.
            let q = unsafe { IoQueue::init_raw(ptr, layout.size(), capacity) }.unwrap();
            (Self { ptr, layout }, q)
        }

        /// The queue word at byte offset `at`, as a device stores it.
        fn word(&self, at: usize) -> &AtomicU32 {
            // SAFETY: in bounds and 4-byte aligned (every offset the tests pass).
            unsafe { &*self.ptr.add(at).cast::<AtomicU32>() }
        }

        /// Mark the entry at `position` as a device does.
        fn mark(&self, capacity: u32, position: u32, status: u32) {
            let entry = entry_at(position, capacity);
            self.word(entry + offsets::ENTRY_CONSUMER_STATUS).store(status, Ordering::Release);
        }
    }

    /// Byte offset of the entry for `position`.
    fn entry_at(position: u32, capacity: u32) -> usize {
        HEADER_SIZE + (position & (capacity - 1)) as usize * ENTRY_SIZE
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr, self.layout) };
        }
    }

    fn completion(slot: u32, status: i32, bytes: u64) -> Completion {
        Completion { slot, status, kind: EntryKind::File, bytes, offset: 0, tag: 0 }
    }

    /// Runs each batch at once: marks every entry (CONSUMED, SKIPPED for a
    /// failed read, REJECTED for `reject`), and for `Release::Device` stores
    /// `consumer` as gpuring's `gr_finish` does.
    struct Fake<'a> {
        region: &'a Region,
        release: Release,
        reject: Option<u32>,
        idle_fails: bool,
        batches: Vec<Batch>,
    }

    impl BatchDevice for Fake<'_> {
        type Error = Failure;

        fn launch(&mut self, batch: &Batch) -> Result<(), Failure> {
            let q_capacity = batch.capacity;
            for position in batch.positions() {
                let status_word = self.region.word(entry_at(position, q_capacity) + offsets::ENTRY_STATUS).load(Ordering::Acquire);
                let verdict = if Some(position) == self.reject {
                    REJECTED
                } else if status_word != 0 {
                    SKIPPED
                } else {
                    CONSUMED
                };
                self.region.mark(q_capacity, position, verdict);
            }
            if self.release == Release::Device {
                self.region.word(offsets::HEADER_CONSUMER).store(batch.first.wrapping_add(batch.count), Ordering::Release);
            }
            self.batches.push(*batch);
            Ok(())
        }

        fn idle(&mut self) -> Result<bool, Failure> {
            match self.idle_fails {
                true => Err(Failure::Rejected { position: 0, what: "the device fell off the bus".into() }),
                false => Ok(true),
            }
        }

        fn failure(&self, failure: Failure) -> Failure {
            failure
        }
    }

    /// Publish `total` entries (every seventh a failed read) from another
    /// thread, starting near the wrap of positions, and consume them.
    fn consume_all(release: Release) {
        const CAPACITY: u32 = 8;
        let (region, q) = Region::new(CAPACITY);
        let start = u32::MAX - 3;
        q.start_at(start).unwrap();
        let ends = Ends::new();
        let (mut producer, mut consumer) = (ends.take_producer(&q).unwrap(), ends.take_consumer(&q).unwrap());
        let geometry = SlotGeometry::new(CAPACITY, 4096).unwrap();
        let total = 40u32;
        let stop = AtomicBool::new(false);
        let mut fake = Fake { region: &region, release, reject: None, idle_fails: false, batches: Vec::new() };
        let stats = std::thread::scope(|s| {
            s.spawn(|| {
                let mut sent = 0;
                while sent < total {
                    producer.poll_released(&q, |_| {}).unwrap();
                    let room = (CAPACITY - producer.outstanding()).min(total - sent).min(3);
                    let batch: Vec<Completion> =
                        (sent..sent + room).map(|i| completion(i % CAPACITY, if i % 7 == 6 { -5 } else { 0 }, 100 + i as u64)).collect();
                    sent += producer.publish_batch(&q, &batch) as u32;
                    std::thread::yield_now();
                }
                while producer.outstanding() > 0 {
                    producer.poll_released(&q, |_| {}).unwrap();
                    std::thread::yield_now();
                }
                producer.close(&q);
            });
            run_batches(&q, geometry, &mut consumer, &stop, release, &mut fake).unwrap()
        });
        let failed = (0..total).filter(|i| i % 7 == 6).count() as u64;
        let bytes: u64 = (0..total).filter(|i| i % 7 != 6).map(|i| 100 + i as u64).sum();
        assert_eq!(stats, BatchStats { entries: total as u64, bytes, skipped: failed, batches: fake.batches.len() as u64 });
        assert_eq!(q.header().consumer(), start.wrapping_add(total), "every entry released, across the wrap");
        assert_eq!(q.consumer_failed(), 0);
        // Batches follow each other, each within the queue's capacity.
        for pair in fake.batches.windows(2) {
            assert_eq!(pair[1].first, pair[0].first.wrapping_add(pair[0].count));
        }
        assert!(fake.batches.iter().all(|b| b.count >= 1 && b.count <= CAPACITY && b.slot_bytes == 4096 && b.slot_count == CAPACITY));
    }

    #[test]
    fn host_release_consumes_everything_in_order_across_the_wrap() {
        consume_all(Release::Host);
    }

    #[test]
    fn device_release_consumes_everything_in_order_across_the_wrap() {
        consume_all(Release::Device);
    }

    #[test]
    fn a_rejected_entry_fails_the_queue_and_releases_nothing_of_its_batch() {
        let (region, q) = Region::new(8);
        let ends = Ends::new();
        let (mut producer, mut consumer) = (ends.take_producer(&q).unwrap(), ends.take_consumer(&q).unwrap());
        assert_eq!(producer.publish_batch(&q, &[completion(0, 0, 10), completion(1, 0, 10), completion(2, 0, 10)]), 3);
        producer.close(&q);
        let mut fake = Fake { region: &region, release: Release::Host, reject: Some(1), idle_fails: false, batches: Vec::new() };
        let e = run_batches(&q, SlotGeometry::new(8, 4096).unwrap(), &mut consumer, &AtomicBool::new(false), Release::Host, &mut fake).unwrap_err();
        assert_eq!(e, Failure::Rejected { position: 1, what: "the consumer marked it rejected (slot 1, 10 bytes)".into() });
        assert_eq!(q.consumer_failed(), FAILED_REJECTED);
        assert_eq!(q.header().consumer(), 0, "nothing of the batch was released");
    }

    #[test]
    fn a_device_error_ends_the_run_with_it() {
        let (region, q) = Region::new(8);
        let ends = Ends::new();
        let (mut producer, mut consumer) = (ends.take_producer(&q).unwrap(), ends.take_consumer(&q).unwrap());
        assert_eq!(producer.publish_batch(&q, &[completion(0, 0, 10)]), 1);
        producer.close(&q);
        let mut fake = Fake { region: &region, release: Release::Host, reject: None, idle_fails: true, batches: Vec::new() };
        let e = run_batches(&q, SlotGeometry::new(8, 4096).unwrap(), &mut consumer, &AtomicBool::new(false), Release::Host, &mut fake).unwrap_err();
        assert_eq!(e, Failure::Rejected { position: 0, what: "the device fell off the bus".into() });
        assert_eq!(fake.batches.len(), 1, "the engine did not wait a second time after the failed wait");
        assert_eq!(q.header().consumer(), 0);
    }

    #[test]
    fn a_stop_ends_the_run_without_consuming() {
        let (region, q) = Region::new(8);
        let ends = Ends::new();
        let (mut producer, mut consumer) = (ends.take_producer(&q).unwrap(), ends.take_consumer(&q).unwrap());
        assert_eq!(producer.publish_batch(&q, &[completion(0, 0, 10)]), 1);
        let mut fake = Fake { region: &region, release: Release::Device, reject: None, idle_fails: false, batches: Vec::new() };
        let stats = run_batches(&q, SlotGeometry::new(8, 4096).unwrap(), &mut consumer, &AtomicBool::new(true), Release::Device, &mut fake).unwrap();
        assert_eq!(stats, BatchStats::default());
        assert!(fake.batches.is_empty());
    }
}
