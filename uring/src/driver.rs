//! The ingest driver: sources in, published slots out.
//!
//! One loop, on the calling thread:
//!
//! 1. **Fill**: while a slot is free and bytes remain, cut the next
//!    slot-sized segment off the current source and queue a `READ_FIXED` of
//!    it into the slot (sources are opened lazily, in order). For an NVMe
//!    namespace the segment is one NVMe Read (`IORING_OP_URING_CMD`), at most
//!    the device's max transfer, 65536 blocks and the slot: passthrough is
//!    never split by the kernel, so the driver cuts it.
//! 2. **Submit** queued reads in one `io_uring_enter`.
//! 3. **Reap** completions without blocking. A short read queues the rest;
//!    an error, an early end of file or more bytes than the file had when
//!    opened fail the read (and the ingest, once everything in flight has
//!    landed). An NVMe Read succeeds with `res == 0`, all of it; a positive
//!    `res` is the controller's status, a negative one an errno.
//! 4. **Publish** completed slots to the io_queue in completion order, as one
//!    batch; what does not fit stays queued for the next round.
//! 5. **Take releases** from the consumer: each frees its slot and is reported
//!    to the caller with the consumer's checksum.
//!
//! When a round makes no progress the driver blocks: in `io_uring_enter`
//! when reads are in flight, else on a futex on the consumer's position.
//! If the consumer also owes releases while reads are in flight, the ring
//! itself waits for one (`IORING_OP_FUTEX_WAIT` on the queue's `consumer`
//! word, Linux 6.7, armed through the sleeping protocol so the consumer's
//! release wakes it): one `io_uring_enter` sleeps until a read or a release
//! comes, whichever is first. Kernels without the operation answer
//! `EINVAL`, and the driver then looks for releases every 200 µs instead. Memory stays
//! bounded by the slot ring whatever the input size: a source is only ever
//! read one slot-sized segment at a time, into a free slot.
//!
//! NVMe commands address the slot either through the registered buffer
//! (`IORING_URING_CMD_FIXED`, no page pinning per command) or by plain
//! address. Which one is probed, not guessed from the kernel version: the
//! first NVMe Read of a driver is sent alone, fixed, into the slot it is
//! for, and if the kernel refuses that (`EINVAL`/`EOPNOTSUPP`, as Linux 6.1
//! does for registered buffers over the device's segment limit) and the
//! plain form works, plain it is ([`DriverOptions::nvme_fixed`] forces one).
//! That probe read is not counted in the telemetry; the segment is then read
//! again, as any other.
//!
//! The driver owns the staging memory (through an `Arc`) and the ring. On
//! drop it cancels and waits for every read in flight before letting go of
//! the memory; if that wait fails it leaks the memory rather than free it
//! under the kernel.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuring_core::io_queue::{Completion, EntryKind, Producer, Released, CONSUMED};
use gpuring_core::nvme;
use gpuring_core::pending::{Judge, Progress, Target};
use gpuring_core::{MemoryKind, PendingRead, PendingTable, SlotGeometry, SlotState, StagingMemory, Telemetry};
use rustix::io::Errno;

use crate::error::IngestError;
use crate::ring::Ring;
use crate::shard::{Command, Shards};
use crate::source::{OpenSource, Source};
use crate::wait;

/// How long the driver polls for releases while also waiting for reads.
const RELEASE_POLL: Duration = Duration::from_micros(200);

/// With other shards, how many reads this thread's ring takes per round:
/// its buffered reads are copied inline, during its submit, and meanwhile
/// nothing is published, released or handed to the other shards. A bound
/// keeps that pause short; its value did not show in the bench (1, 2, 4
/// and 32 measured alike, `bench --shards 2`, two rounds, 2 CPUs).
const LOCAL_BATCH: u32 = 2;

/// How many `EAGAIN` answers in a row a read is retried before it fails.
const AGAIN_RETRIES: u8 = 8;

use crate::ring::tags;

/// How the driver reads.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Read with `O_DIRECT`: the device writes the slots (DMA).
    pub direct: bool,
    /// Give up when the consumer releases nothing for this long.
    pub release_timeout: Duration,
    /// Give up when reads are in flight and none completes for this long
    /// (a device that never answers). Default [`crate::ring::DEVICE_TIMEOUT`],
    /// longer than Linux's NVMe command timeout, whose abort comes first.
    pub read_timeout: Duration,
    /// NVMe Reads through the registered slot buffers (`Some(true)`), by
    /// plain address (`Some(false)`), or whichever the kernel accepts,
    /// probed on the first NVMe Read (`None`).
    pub nvme_fixed: Option<bool>,
    /// Rings to read with, each on its own thread with its own share of the
    /// slots (see [`crate::shard`]); 1 (the default) reads on the calling
    /// thread's ring alone. At most the slot count and [`MAX_SHARDS`].
    /// [`default_shards`] is what the command line uses.
    pub shards: u32,
    /// Rings able to carry NVMe passthrough (128-byte SQEs where the
    /// kernel has them; the default). `false` makes plain 64-byte SQEs (no
    /// measurable gain, see [`Ring::with_passthrough`]), and an NVMe source
    /// then fails with [`IngestError::Unsupported`].
    pub passthrough: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            direct: false,
            release_timeout: Duration::from_secs(60),
            read_timeout: crate::ring::DEVICE_TIMEOUT,
            nvme_fixed: None,
            shards: 1,
            passthrough: true,
        }
    }
}

/// The CPUs this process may run on (its affinity mask, as
/// `std::thread::available_parallelism` reads it), at least 1: a shard per
/// CPU lets the kernel's copies of buffered reads use them all.
pub fn default_shards() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32).min(MAX_SHARDS)
}

pub use crate::shard::MAX_SHARDS;

/// Where reads go: the driver's own ring (shard 0) and, with more shards,
/// rings on threads of their own (see [`crate::shard`]).
#[derive(Debug)]
struct Reads {
    ring: Ring,
    /// Shards 1 and up.
    shards: Option<Shards>,
    /// Shards in all, this thread's ring included.
    count: u32,
    /// A wait on the shards' bell is queued in `ring` (and its sleeping flag set).
    bell_armed: bool,
    /// With other shards, faults are injected here, over every shard's
    /// completions in the order this thread takes them.
    #[cfg(feature = "fault-injection")]
    faults: crate::fault::Faults,
}

impl Reads {
    /// The shard of `slot`, and its fixed buffer there.
    fn place(&self, slot: u32) -> (u32, u16) {
        (slot % self.count, (slot / self.count) as u16)
    }

    fn submit(&mut self) -> Result<(), IngestError> {
        // The other shards first: this ring's buffered reads are copied
        // inline, during its submit, and theirs can run meanwhile.
        if let Some(shards) = &mut self.shards {
            shards.submit()?;
        }
        self.ring.submit()
    }

    /// Every completion, the ring's own waits included.
    fn reap(&mut self, mut f: impl FnMut(u64, i32)) {
        #[cfg(feature = "fault-injection")]
        let (faults, sharded) = (&mut self.faults, self.shards.is_some());
        #[cfg(feature = "fault-injection")]
        let mut f = |user_data, res| {
            let res = if sharded && user_data < tags::INTERNAL { faults.apply(user_data, res) } else { Some(res) };
            if let Some(res) = res {
                f(user_data, res);
            }
        };
        self.ring.reap(&mut f);
        if let Some(shards) = &mut self.shards {
            shards.reap(f);
        }
    }

    /// Reads the other shards have in flight.
    fn elsewhere(&self) -> u32 {
        self.shards.as_ref().map_or(0, Shards::in_flight)
    }

    fn cancel_all(&mut self) -> Result<(), IngestError> {
        let here = self.ring.cancel_all();
        if std::mem::take(&mut self.bell_armed) {
            // Cancelled with the rest.
            self.shards.as_ref().map(Shards::end_sleep);
        }
        let there = self.shards.as_mut().map_or(Ok(()), Shards::cancel_all);
        // Completions a stall held back: their requests ended.
        #[cfg(feature = "fault-injection")]
        self.faults.release_held().for_each(drop);
        here.and(there)
    }
}

/// What arming a futex wait in the ring found.
enum Armed {
    /// The wait is in the ring.
    Yes,
    /// What it would wait for is there already.
    Ready,
    /// The kernel has no futex wait in io_uring: look every 200 µs.
    Unsupported,
}

/// What the driver reports while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The consumer released a segment it had been given.
    Released {
        /// Index of the source in the `ingest` call.
        source: usize,
        /// Segment number within the source (its offset from the range start
        /// divided by the source's segment size: the slot size for a file).
        segment: u64,
        /// Byte offset in the file or namespace.
        offset: u64,
        /// Bytes in the segment.
        bytes: u64,
        /// The consumer's result for the slot: gpuring's consumers give the
        /// slot's checksum; a consumer of yours gives what it returned.
        result: u64,
        /// False when the consumer skipped the slot (a failed read).
        consumed: bool,
    },
    /// Every segment of a source has been read and released, and a whole
    /// file still has the size it was opened with. Sent for empty sources
    /// too, and never for a source one of whose own reads failed.
    SourceDone {
        /// Index of the source.
        source: usize,
        /// Bytes read from it.
        bytes: u64,
    },
}

/// The outcome of one `ingest` call.
#[derive(Clone, Copy, Debug)]
pub struct IngestStats {
    /// Counters since the driver was created.
    pub telemetry: Telemetry,
    /// Wall time of the call.
    pub elapsed: Duration,
}

/// Per-source state while it is being read.
#[derive(Debug)]
struct Active {
    file: OpenSource,
    /// Where the next segment starts.
    next: u64,
    /// Segments handed out and not yet released.
    outstanding: u32,
    /// A read of this source failed.
    failed: bool,
}

/// State of one `ingest` call.
struct Run<'s> {
    sources: &'s [Source],
    next_source: usize,
    /// Per shard (a *lane*), the source it is reading, while that source
    /// has bytes not yet handed out.
    current: Vec<Option<usize>>,
    active: BTreeMap<usize, Active>,
    completed: VecDeque<u32>,
    /// Sources finished since the caller was last told: (index, bytes).
    done: Vec<(usize, u64)>,
    failure: Option<IngestError>,
}

impl Run<'_> {
    fn fail(&mut self, e: IngestError) {
        self.failure.get_or_insert(e);
    }

    fn exhausted(&self) -> bool {
        self.failure.is_some() || (self.current.iter().all(Option::is_none) && self.next_source == self.sources.len())
    }

    /// `idx` has no bytes left to hand out: no lane reads it any more.
    fn handed_out(&mut self, idx: usize) {
        for lane in self.current.iter_mut().filter(|c| **c == Some(idx)) {
            *lane = None;
        }
    }
}

/// Streams sources through the staging memory's slots with io_uring.
pub struct Driver<S: StagingMemory> {
    /// Dropped before `staging`: a ring drains, shards are joined.
    reads: Reads,
    staging: Arc<S>,
    geometry: SlotGeometry,
    pending: PendingTable<Vec<SlotState>>,
    producer: Producer,
    telemetry: Telemetry,
    options: DriverOptions,
    cqes: Vec<(u64, i32)>,
    batch: Vec<Completion>,
    releases: Vec<Released>,
    broken: bool,
    /// Whether NVMe Reads use fixed buffers, once known.
    nvme_fixed: Option<bool>,
    /// Whether the slots are registered with io_uring (fixed buffers); not
    /// for a device's peer memory, which the kernel refuses to register:
    /// then reads go by address.
    registered: bool,
    /// Per slot: `EAGAIN` answers in a row to its read (retried up to [`AGAIN_RETRIES`]).
    again: Vec<u8>,
    /// Whether the ring can wait for a release (`IORING_OP_FUTEX_WAIT` on
    /// the queue's `consumer` word), once known: then one `io_uring_enter`
    /// waits for a read or a release, whichever comes first.
    futex_wait: Option<bool>,
    /// A release wait is in the ring (and the producer's sleeping flag set).
    release_armed: bool,
}

impl<S: StagingMemory> std::fmt::Debug for Driver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("reads", &self.reads).field("geometry", &self.geometry).field("telemetry", &self.telemetry).finish()
    }
}

impl<S: StagingMemory> Driver<S> {
    /// A driver over `staging`: it takes the io_queue's producer end (a
    /// second driver on one staging region is [`IngestError::Queue`] with
    /// `EndTaken`) and registers every slot with io_uring.
    pub fn new(staging: Arc<S>, options: DriverOptions) -> Result<Self, IngestError> {
        let geometry = staging.geometry();
        // The queue's one producer: a second driver on this staging is an error.
        let producer = staging.take_producer()?;
        let buffers: Vec<_> = (0..geometry.slot_count()).map(|i| (staging.slot_ptr(i).as_ptr(), geometry.slot_size())).collect();
        // A device's peer memory: the kernel pins registered buffers without
        // FOLL_PCI_P2PDMA and refuses such pages (EFAULT), but reads by
        // address may still reach them.
        let peer_refused = |e: &IngestError| matches!(e, IngestError::Ring { errno: Errno::FAULT, .. }) && staging.kind() == MemoryKind::DevicePeer;
        let count = options.shards.clamp(1, geometry.slot_count().min(MAX_SHARDS));
        // Shard 0's slots, a release wait, a bell wait.
        let mine: Vec<_> = buffers.iter().copied().step_by(count as usize).collect();
        let mut ring = Ring::with_passthrough(mine.len() as u32 + 2, options.passthrough)?;
        // SAFETY: the slots are valid for the life of `staging`, which this
        // driver keeps alive until after the ring is dropped (and leaks it if
        // the ring cannot be drained).
        let registered = match unsafe { ring.register_buffers(&mine) } {
            Ok(()) => true,
            Err(e) if peer_refused(&e) => false,
            Err(e) => return Err(e),
        };
        let shards = if count > 1 {
            // SAFETY: as for the ring: the shards are joined, or their reads
            // cancelled and drained, before the driver lets go of `staging`.
            Some(unsafe { Shards::start(&buffers, count, registered, options.passthrough) }?)
        } else {
            None
        };
        let reads = Reads {
            ring,
            shards,
            count,
            bell_armed: false,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        };
        let mut nvme_fixed = options.nvme_fixed;
        if !registered {
            if nvme_fixed == Some(true) {
                let what = "NVMe Reads into registered slots were asked for, but the kernel refuses to register peer memory (EFAULT). Fix: let the kernel decide whether NVMe Reads use the registered slots (nvme_fixed None), or read by address (Some(false))".into();
                return Err(IngestError::RingGeometry { what });
            }
            nvme_fixed = Some(false);
        }
        Ok(Self {
            registered,
            reads,
            staging,
            geometry,
            pending: PendingTable::new(vec![SlotState::Free; geometry.slot_count() as usize]),
            producer,
            telemetry: Telemetry::new(),
            nvme_fixed,
            options,
            cqes: Vec::new(),
            batch: Vec::new(),
            releases: Vec::new(),
            broken: false,
            again: vec![0; geometry.slot_count() as usize],
            futex_wait: None,
            release_armed: false,
        })
    }

    /// Counters since the driver was created.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Inject `faults` into the completions of this driver's ring (tests;
    /// see [`crate::fault`]).
    #[cfg(feature = "fault-injection")]
    pub fn inject_faults(&mut self, faults: &[crate::fault::Fault]) {
        match self.reads.shards {
            Some(_) => self.reads.faults.arm(faults),
            None => self.reads.ring.inject(faults),
        }
    }

    /// How many rings read (shards), this thread's included.
    pub fn shards(&self) -> u32 {
        self.reads.count
    }

    /// The staging memory.
    pub fn staging(&self) -> &Arc<S> {
        &self.staging
    }

    /// Whether the slots are registered with io_uring as fixed buffers
    /// (`false`: a device's peer memory, which the kernel refuses to
    /// register; reads then go to the slots by address).
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Whether NVMe Reads used the registered slot buffers (`None`: no NVMe
    /// Read was sent yet, and none was forced).
    pub fn nvme_fixed(&self) -> Option<bool> {
        self.nvme_fixed
    }

    /// Read every source through the slots, calling `on_event` as the
    /// consumer releases segments. Returns when every byte was read,
    /// published and released, or, after an error, when everything in
    /// flight has landed and been released: the first error is returned and
    /// no completion that happened is lost. It blocks (without spinning)
    /// while nothing can move; [`Driver::begin`] is the same work in steps
    /// the caller drives.
    pub fn ingest(&mut self, sources: &[Source], mut on_event: impl FnMut(Event)) -> Result<IngestStats, IngestError> {
        let mut job = self.begin(sources)?;
        loop {
            match job.poll(&mut on_event)? {
                Poll::Done(stats) => return Ok(stats),
                Poll::Moved => {}
                Poll::Idle => job.wait()?,
            }
        }
    }

    /// Start reading `sources`, to be driven by the caller: each
    /// [`Ingest::poll`] submits what it can, reaps completions, publishes
    /// them and takes the consumer's releases, and returns without
    /// blocking. A program that is its own consumer (one thread, polling
    /// the driver and draining the io_queue in turns) cannot stall itself
    /// this way, as it would inside [`Driver::ingest`].
    pub fn begin<'d, 's>(&'d mut self, sources: &'s [Source]) -> Result<Ingest<'d, 's, S>, IngestError> {
        if self.broken {
            return Err(IngestError::ConsumerStalled {
                outstanding: self.producer.outstanding(),
                why: "an earlier ingest on this driver was abandoned".into(),
            });
        }
        let now = Instant::now();
        let run = Run {
            sources,
            next_source: 0,
            current: vec![None; self.reads.count as usize],
            active: BTreeMap::new(),
            completed: VecDeque::new(),
            done: Vec::new(),
            failure: None,
        };
        Ok(Ingest { driver: self, run, started: now, last_release: now, last_completion: now, finished: false })
    }

    /// One step of an ingest: whether anything moved, or the outcome.
    fn step(&mut self, run: &mut Run<'_>, on_event: &mut impl FnMut(Event)) -> Result<Step, IngestError> {
        let filled = self.fill(run)?;
        self.reads.submit()?;
        let reaped = self.reap(run)?;
        let published = self.publish(run)?;
        let released = self.take_releases(run, on_event)?;
        let done = run.exhausted() && run.completed.is_empty() && self.pending.all_free();
        Ok(Step { moved: filled || reaped + published + released > 0, reaped: reaped > 0, released: released > 0, done })
    }

    /// Announce to the consumer that nothing more will be published.
    pub fn close_queue(&self) {
        let q = self.staging.queue();
        self.producer.close(&q);
        wait::wake(wait::producer_word(&q));
    }

    /// Hand out the next segment for a slot of shard `lane`: (source
    /// index, offset, length). Each lane reads a source of its own, the
    /// next one in order when its own is handed out, so that sources (on
    /// different devices, say) are read at once by different shards; once
    /// no source is left to start, a lane helps another lane's source, so
    /// that a large file is spread over every shard.
    fn next_segment(&mut self, run: &mut Run<'_>, lane: usize) -> Result<Option<(usize, u64, u32)>, IngestError> {
        loop {
            let idx = match run.current[lane] {
                Some(idx) => idx,
                None if run.next_source < run.sources.len() => {
                    let idx = run.next_source;
                    run.next_source += 1;
                    let file = OpenSource::open(&run.sources[idx], self.options.direct, self.geometry.slot_size())?;
                    if file.namespace.is_some() && !self.options.passthrough {
                        let what = format!(
                            "{} is an NVMe namespace, but this driver's rings were made without passthrough. Fix: leave DriverOptions::passthrough at its default (true)",
                            file.path.display()
                        );
                        return Err(IngestError::Unsupported { what });
                    }
                    let next = file.start;
                    run.active.insert(idx, Active { file, next, outstanding: 0, failed: false });
                    run.current[lane] = Some(idx);
                    idx
                }
                None => match run.current.iter().flatten().next() {
                    Some(&idx) => idx,
                    None => return Ok(None),
                },
            };
            let a = run.active.get_mut(&idx).expect("current source is active");
            if a.next < a.file.end {
                let len = (a.file.end - a.next).min(a.file.segment_bytes as u64) as u32;
                let offset = a.next;
                a.next += len as u64;
                a.outstanding += 1;
                if a.next == a.file.end {
                    run.handed_out(idx);
                }
                return Ok(Some((idx, offset, len)));
            }
            // An empty source (or range): nothing to read, done now.
            run.handed_out(idx);
            self.finish_source(run, idx);
        }
    }

    /// Queue reads into free slots. Source errors end the run (after draining).
    fn fill(&mut self, run: &mut Run<'_>) -> Result<bool, IngestError> {
        let mut any = false;
        let mut local = 0;
        while run.failure.is_none() {
            let Some(slot) = self.free_slot(local < LOCAL_BATCH) else { break };
            let lane = self.reads.place(slot).0;
            local += u32::from(lane == 0);
            let segment = match self.next_segment(run, lane as usize) {
                Ok(Some(segment)) => segment,
                Ok(None) => break,
                Err(e) => {
                    run.fail(e);
                    break;
                }
            };
            let (idx, offset, len) = segment;
            let read = match run.active[&idx].file.namespace {
                Some(ns) => {
                    let target = Target::Lba { slba: offset / ns.lba_size as u64, blocks: len / ns.lba_size };
                    PendingRead::new(target, idx as u64, len, Judge::NvmeStatus)
                }
                None => PendingRead::new(Target::File { offset }, idx as u64, len, Judge::ByteCount),
            };
            if let Target::Lba { slba, blocks } = read.target {
                if self.nvme_fixed.is_none() {
                    match self.probe_fixed(&run.active[&idx].file, slot, slba) {
                        Ok(fixed) => self.nvme_fixed = Some(fixed),
                        Err(e) => {
                            run.fail(e);
                            break;
                        }
                    }
                }
                self.pending.submit(slot, read)?;
                self.telemetry.on_submit(len as u64)?;
                self.push_nvme_read(&run.active[&idx].file, slot, slba, blocks)?;
            } else {
                self.pending.submit(slot, read)?;
                self.telemetry.on_submit(len as u64)?;
                self.push_read(&run.active[&idx].file, slot, offset, 0, len)?;
            }
            any = true;
        }
        Ok(any)
    }

    /// A free slot, round-robin; with other shards, one of this thread's
    /// own only while `local` (see [`LOCAL_BATCH`]).
    fn free_slot(&mut self, local: bool) -> Option<u32> {
        let reads = &self.reads;
        self.pending.find_free_where(|slot| reads.shards.is_none() || local || reads.place(slot).0 != 0)
    }

    /// Queue an NVMe Read of `blocks` blocks from `slba` into `slot`.
    fn push_nvme_read(&mut self, file: &OpenSource, slot: u32, slba: u64, blocks: u32) -> Result<(), IngestError> {
        let fixed = self.nvme_fixed.unwrap_or(true);
        self.push_nvme(file, slot, slba, blocks, fixed, slot as u64)
    }

    fn push_nvme(&mut self, file: &OpenSource, slot: u32, slba: u64, blocks: u32, fixed: bool, user_data: u64) -> Result<(), IngestError> {
        let ns = file.namespace.as_ref().expect("an NVMe source has a namespace");
        let buf = self.staging.slot_ptr(slot).as_ptr();
        let cmd = nvme::read_command(ns, slba, blocks, buf as u64, self.geometry.slot_size() as u32)
            .map_err(|error| IngestError::NvmeRange { path: file.path.clone(), error })?;
        // As for push_read: the slot is this request's alone until its
        // completion is reaped, the device's fd stays open while its source
        // has outstanding segments, and the ring drains before the memory
        // goes. `read_command` checked that the blocks fit the slot.
        let fd = std::os::fd::AsFd::as_fd(&file.fd);
        let (shard, index) = self.reads.place(slot);
        let fixed = fixed.then_some(index);
        // SAFETY: per the lines above; the slot is registered buffer `index`
        // of its shard's ring.
        unsafe {
            match &mut self.reads.shards {
                Some(shards) if shard > 0 => {
                    let (fd, op, cmd) = (fd.as_raw_fd(), nvme::NVME_URING_CMD_IO, cmd.to_bytes());
                    shards.push(shard, Command::UringCmd { fd, op, cmd, fixed, user_data });
                    Ok(())
                }
                _ => self.reads.ring.push_uring_cmd(fd, nvme::NVME_URING_CMD_IO, &cmd.to_bytes(), fixed, user_data),
            }
        }
    }

    /// Find out whether this kernel takes NVMe Reads into registered
    /// buffers: read one block at `slba` into the free `slot`, fixed, then
    /// plain if the fixed form is refused. Other completions that arrive
    /// meanwhile are kept for the next reap.
    fn probe_fixed(&mut self, file: &OpenSource, slot: u32, slba: u64) -> Result<bool, IngestError> {
        let mut last = 0;
        for fixed in [true, false] {
            self.push_nvme(file, slot, slba, 1, fixed, tags::PROBE)?;
            self.reads.submit()?;
            let mut res = None;
            let deadline = Instant::now() + self.options.read_timeout;
            while res.is_none() {
                if !self.wait_for_reads(deadline, false)? {
                    let what = format!("{}: the one-block NVMe Read that probes fixed buffers", file.path.display());
                    return Err(IngestError::DeviceStalled { what, seconds: self.options.read_timeout.as_secs() });
                }
                let cqes = &mut self.cqes;
                self.reads.reap(|user_data, r| if user_data == tags::PROBE { res = Some(r) } else { cqes.push((user_data, r)) });
            }
            last = res.expect("the loop ends with the probe's completion");
            if last == 0 {
                return Ok(fixed);
            }
            let refused = last == -Errno::INVAL.raw_os_error() || last == -Errno::OPNOTSUPP.raw_os_error();
            if !refused {
                break;
            }
        }
        Err(IngestError::nvme_read(file.path.clone(), slba, 1, slot, last))
    }

    /// Queue a read of `len` bytes at file `offset` into `slot`, `done` bytes in.
    fn push_read(&mut self, file: &OpenSource, slot: u32, offset: u64, done: u32, len: u32) -> Result<(), IngestError> {
        // O_DIRECT lengths must be block multiples; the kernel stops at end of file.
        let submit_len = if file.dio_align > 0 { len.next_multiple_of(file.dio_align) } else { len };
        // The read must stay inside the slot: `done` is a block multiple under
        // O_DIRECT and the slot size is one, so this holds; checked because
        // the kernel would otherwise write into the next slot.
        assert!(done as usize + submit_len as usize <= self.geometry.slot_size(), "read past the end of slot {slot}");
        // Nothing else touches the slot while it is in flight in the pending
        // table; the fd stays open while its source has outstanding segments;
        // the ring drains before the driver (and the staging memory) drops.
        let (shard, index) = self.reads.place(slot);
        let fixed = self.registered.then_some(index);
        // SAFETY: per the lines above; when registered, the slot is
        // registered buffer `index` of its shard's ring.
        unsafe {
            let buf = self.staging.slot_ptr(slot).as_ptr().add(done as usize);
            let fd = std::os::fd::AsFd::as_fd(&file.fd);
            let at = offset + done as u64;
            match (&mut self.reads.shards, fixed) {
                (Some(shards), _) if shard > 0 => {
                    shards.push(shard, Command::Read { fd: fd.as_raw_fd(), buf: buf as usize, len: submit_len, offset: at, fixed, user_data: slot as u64 });
                    Ok(())
                }
                (_, Some(index)) => self.reads.ring.push_read_fixed(fd, buf, submit_len, at, index, slot as u64),
                (_, None) => self.reads.ring.push_read(fd, buf, submit_len, at, slot as u64),
            }
        }
    }

    fn reap(&mut self, run: &mut Run<'_>) -> Result<u32, IngestError> {
        // `cqes` may already hold completions the fixed-buffer probe set aside.
        let mut cqes = std::mem::take(&mut self.cqes);
        self.reads.reap(|user_data, res| cqes.push((user_data, res)));
        let mut reads = 0;
        let result = cqes.drain(..).try_for_each(|(user_data, res)| {
            if user_data == tags::RELEASE {
                self.release_woken(res);
                return Ok(());
            }
            if user_data == tags::BELL {
                self.bell_woken(res);
                return Ok(());
            }
            reads += 1;
            self.complete(run, user_data as u32, res)
        });
        self.cqes = cqes;
        result.map(|()| reads)
    }

    /// Judge one completion.
    fn complete(&mut self, run: &mut Run<'_>, slot: u32, res: i32) -> Result<(), IngestError> {
        let read = match self.pending.state(slot)? {
            SlotState::InFlight(read) => *read,
            other => unreachable!("completion for slot {slot} in state {other:?}"),
        };
        let file = &run.active[&(read.tag as usize)].file;
        if let Target::Lba { slba, blocks } = read.target {
            if res != 0 {
                // The status is published as is: positive NVMe, negative errno.
                let error = IngestError::nvme_read(file.path.clone(), slba, blocks, slot, res);
                return self.fail_read(run, slot, read.tag, res, error);
            }
            self.telemetry.on_complete(file.path_kind, read.expected as u64, false)?;
            self.pending.progress(slot, read.expected)?;
            run.completed.push_back(slot);
            return Ok(());
        }
        let (size, path_kind, dio_align) = (file.size, file.path_kind, file.dio_align);
        let path = || file.path.clone();
        let at = read.target.offset() + read.done as u64;
        let remaining = read.remaining();
        let again = &mut self.again[slot as usize];
        if res == -Errno::AGAIN.raw_os_error() && *again < AGAIN_RETRIES {
            // A busy device: read the same bytes again. The read ended with
            // nothing, which telemetry counts as a short read of 0 bytes.
            *again += 1;
            self.telemetry.on_complete(path_kind, 0, true)?;
            self.telemetry.on_submit(0)?;
            let file = &run.active[&(read.tag as usize)].file;
            return self.push_read(file, slot, read.target.offset(), read.done, remaining);
        }
        *again = 0;
        let failure = if res < 0 {
            Some((res, IngestError::Read { path: path(), offset: at, slot, errno: Errno::from_raw_os_error(-res) }))
        } else if res == 0 {
            Some((-Errno::NODATA.raw_os_error(), IngestError::Shrank { path: path(), size, ended_at: at }))
        } else if res as u32 > remaining && file.end == file.size {
            // Reading to the end of the file and getting more: it grew.
            let after = file.current_size().unwrap_or(at + res as u64);
            Some((-Errno::FBIG.raw_os_error(), IngestError::ChangedSize { path: path(), before: size, after }))
        } else {
            None
        };
        if let Some((status, error)) = failure {
            return self.fail_read(run, slot, read.tag, status, error);
        }
        // An O_DIRECT read of a range that ends off a block boundary reads
        // on to the block's end; only the bytes asked for count.
        let bytes = (res as u32).min(remaining);
        self.telemetry.on_complete(path_kind, bytes as u64, bytes < remaining)?;
        match self.pending.progress(slot, bytes)? {
            Progress::Complete(_) => run.completed.push_back(slot),
            Progress::Short(read) if dio_align > 0 && read.done % dio_align != 0 => {
                // A direct read only stops off a block boundary at end of file.
                self.pending.fail(slot, -Errno::NODATA.raw_os_error())?;
                run.completed.push_back(slot);
                let a = run.active.get_mut(&(read.tag as usize)).expect("source of an in-flight read is active");
                a.failed = true;
                let path = a.file.path.clone();
                run.fail(IngestError::Shrank { path, size, ended_at: read.target.offset() + read.done as u64 });
            }
            Progress::Short(read) => {
                self.telemetry.on_submit(0)?;
                let file = &run.active[&(read.tag as usize)].file;
                self.push_read(file, slot, read.target.offset(), read.done, read.remaining())?;
            }
        }
        Ok(())
    }

    /// A read of source `tag` into `slot` failed: its slot is published
    /// with `status`, its source marked failed, and the run fails (after
    /// everything in flight has landed).
    fn fail_read(&mut self, run: &mut Run<'_>, slot: u32, tag: u64, status: i32, error: IngestError) -> Result<(), IngestError> {
        run.active.get_mut(&(tag as usize)).expect("source of an in-flight read is active").failed = true;
        self.telemetry.on_failure()?;
        self.pending.fail(slot, status)?;
        run.completed.push_back(slot);
        run.fail(error);
        Ok(())
    }

    /// Publish completed slots, in completion order, as one batch.
    fn publish(&mut self, run: &mut Run<'_>) -> Result<u32, IngestError> {
        if run.completed.is_empty() {
            return Ok(0);
        }
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        batch.extend(run.completed.iter().map(|&slot| match self.pending.state(slot) {
            Ok(SlotState::Completed(read)) => {
                let kind = match read.target {
                    Target::File { .. } => EntryKind::File,
                    Target::Lba { .. } => EntryKind::Lba,
                };
                Completion { slot, status: read.status, kind, bytes: read.done as u64, offset: read.target.offset(), tag: read.tag }
            }
            other => unreachable!("slot {slot} queued for publishing in state {other:?}"),
        }));
        let q = self.staging.queue();
        let n = self.producer.publish_batch(&q, &batch);
        self.batch = batch;
        for slot in run.completed.drain(..n) {
            self.pending.publish(slot)?;
        }
        self.telemetry.on_publish(n as u64)?;
        if n > 0 && q.consumer_needs_wake() {
            wait::wake(wait::producer_word(&q));
        }
        Ok(n as u32)
    }

    /// Take the consumer's releases: free their slots and report them.
    fn take_releases(&mut self, run: &mut Run<'_>, on_event: &mut impl FnMut(Event)) -> Result<u32, IngestError> {
        let q = self.staging.queue();
        let mut released = std::mem::take(&mut self.releases);
        released.clear();
        let result = match self.producer.poll_released(&q, |r| released.push(r)) {
            Ok(n) => released.iter().try_for_each(|r| self.release(run, r, on_event)).map(|()| n),
            Err(e) => Err(e.into()),
        };
        self.releases = released;
        for (source, bytes) in run.done.drain(..) {
            on_event(Event::SourceDone { source, bytes });
        }
        result
    }

    /// One released entry: free its slot and report it.
    fn release(&mut self, run: &mut Run<'_>, r: &Released, on_event: &mut impl FnMut(Event)) -> Result<(), IngestError> {
        let read = self.pending.release(r.completion.slot)?;
        self.telemetry.on_release(1)?;
        let idx = read.tag as usize;
        let a = run.active.get_mut(&idx).expect("released segment's source is active");
        a.outstanding -= 1;
        if read.status == 0 {
            let offset = match (read.target, a.file.namespace) {
                (Target::Lba { slba, .. }, Some(ns)) => slba * ns.lba_size as u64,
                (target, _) => target.offset(),
            };
            on_event(Event::Released {
                source: idx,
                segment: (offset - a.file.start) / a.file.segment_bytes as u64,
                offset,
                bytes: read.done as u64,
                result: r.result,
                consumed: r.consumer_status == CONSUMED,
            });
        }
        if a.outstanding == 0 && a.next == a.file.end && !run.current.contains(&Some(idx)) {
            self.finish_source(run, idx);
        }
        Ok(())
    }

    /// A source is fully read and released: check its size did not change,
    /// and report it done unless one of its own reads failed.
    fn finish_source(&mut self, run: &mut Run<'_>, idx: usize) {
        let Some(a) = run.active.remove(&idx) else { return };
        if a.failed {
            return;
        }
        let file = a.file;
        // A byte range may grow or shrink outside itself; a whole file may not.
        let changed = match file.whole.then(|| file.current_size()) {
            Some(Ok(after)) if after != file.size => Some(IngestError::ChangedSize { path: file.path, before: file.size, after }),
            Some(Err(e)) => Some(e),
            _ => None,
        };
        match changed {
            Some(e) => run.fail(e),
            // Done is this source's own verdict, whatever happened to others.
            None => run.done.push((idx, file.end - file.start)),
        }
    }

    /// A futex wait in the ring ended with `res`: learn from it whether the
    /// kernel has the operation.
    fn futex_wait_ended(&mut self, res: i32) {
        let unsupported = [Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS].iter().any(|e| res == -e.raw_os_error());
        if unsupported {
            self.futex_wait = Some(false);
        } else if self.futex_wait.is_none() {
            self.futex_wait = Some(true);
        }
    }

    /// The release wait ended: woken (0), the word had moved (`EAGAIN`),
    /// interrupted or cancelled; or the kernel has no such operation.
    fn release_woken(&mut self, res: i32) {
        self.release_armed = false;
        self.producer.end_sleep(&self.staging.queue());
        self.futex_wait_ended(res);
    }

    /// The wait on the shards' bell ended, as [`Driver::release_woken`].
    fn bell_woken(&mut self, res: i32) {
        self.reads.bell_armed = false;
        if let Some(shards) = &self.reads.shards {
            shards.end_sleep();
        }
        self.futex_wait_ended(res);
    }

    /// Have the ring wait for the next release too (once per sleep): the
    /// sleeping protocol's flag asks the consumer to wake the `consumer`
    /// word, and the futex wait in the ring completes on that wake.
    fn arm_release_wait(&mut self) -> Result<Armed, IngestError> {
        if self.release_armed {
            return Ok(Armed::Yes);
        }
        if self.futex_wait == Some(false) {
            return Ok(Armed::Unsupported);
        }
        let q = self.staging.queue();
        if !self.producer.prepare_sleep(&q) {
            self.producer.end_sleep(&q);
            return Ok(Armed::Ready);
        }
        // The word is the staging's, which this driver keeps alive until
        // the ring has drained (and leaks otherwise).
        // SAFETY: per the line above.
        unsafe { self.reads.ring.push_futex_wait(wait::consumer_word(&q), self.producer.released_position(), tags::RELEASE)? };
        self.release_armed = true;
        Ok(Armed::Yes)
    }

    /// Have the ring wait for the other shards' completions too, on their
    /// bell (once per sleep), as [`Driver::arm_release_wait`] does for releases.
    fn arm_bell_wait(&mut self) -> Result<Armed, IngestError> {
        let Some(shards) = &self.reads.shards else { return Ok(Armed::Unsupported) };
        if self.reads.bell_armed {
            return Ok(Armed::Yes);
        }
        if self.futex_wait == Some(false) {
            return Ok(Armed::Unsupported);
        }
        let seen = shards.prepare_sleep();
        if shards.has_completions() {
            shards.end_sleep();
            return Ok(Armed::Ready);
        }
        // The bell lives as long as the shards, which are dropped after
        // the ring (field order) and cancel their own reads.
        // SAFETY: the ring is drained (cancel_all) before `Reads` drops,
        // and the shards' outbox, holding the bell, is dropped after it.
        unsafe { self.reads.ring.push_futex_wait(shards.bell(), seen, tags::BELL)? };
        self.reads.bell_armed = true;
        Ok(Armed::Yes)
    }

    /// Wait, until `deadline` at most, for reads to complete: this ring's
    /// or, through the bell, the other shards'; and when `releases`, for a
    /// release too. `Ok(false)` once the deadline has passed.
    fn wait_for_reads(&mut self, deadline: Instant, releases: bool) -> Result<bool, IngestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.reads.submit()?;
            return Ok(false);
        }
        let mut timeout = left;
        let mut arms = Vec::with_capacity(2);
        if releases {
            arms.push(self.arm_release_wait()?);
        }
        if self.reads.elsewhere() > 0 {
            arms.push(self.arm_bell_wait()?);
        }
        for armed in arms {
            match armed {
                Armed::Yes => {}
                Armed::Ready => timeout = Duration::ZERO,
                Armed::Unsupported => timeout = timeout.min(RELEASE_POLL),
            }
        }
        self.reads.submit()?;
        if !timeout.is_zero() {
            self.reads.ring.wait(Some(timeout))?;
        }
        Ok(true)
    }

    /// Nothing moved: wait for a completion or a release, but not past the
    /// read timeout since the `last_completion`.
    fn block(&mut self, last_release: &mut Instant, last_completion: Instant) -> Result<(), IngestError> {
        let q = self.staging.queue();
        if self.producer.outstanding() > 0 && q.consumer_failed() != 0 {
            return Err(IngestError::ConsumerStalled { outstanding: self.producer.outstanding(), why: "the consumer reported that it failed".into() });
        }
        if self.pending.in_flight() > 0 {
            let deadline = last_completion + self.options.read_timeout;
            // With entries published, wait for a release too.
            if !self.wait_for_reads(deadline, self.pending.published() > 0)? {
                let what = format!("{} read(s) in flight", self.pending.in_flight());
                return Err(IngestError::DeviceStalled { what, seconds: self.options.read_timeout.as_secs() });
            }
            return Ok(());
        }
        if self.producer.outstanding() == 0 {
            return Ok(());
        }
        if last_release.elapsed() > self.options.release_timeout {
            return Err(IngestError::ConsumerStalled {
                outstanding: self.producer.outstanding(),
                why: format!("nothing was released for {:?}", self.options.release_timeout),
            });
        }
        if self.producer.prepare_sleep(&q) {
            wait::sleep_on(wait::consumer_word(&q), self.producer.released_position(), RELEASE_POLL);
            // A release wait in the ring still needs the flag (the consumer
            // wakes the word only while it is set); its completion clears it.
            if !self.release_armed {
                self.producer.end_sleep(&q);
            }
        }
        Ok(())
    }
}

/// What one step of an ingest did.
struct Step {
    /// A read was submitted or completed, or an entry published or released.
    moved: bool,
    /// A read completed.
    reaped: bool,
    /// The consumer released something.
    released: bool,
    /// Every source was read, published and released.
    done: bool,
}

/// What one [`Ingest::poll`] did.
#[derive(Debug)]
pub enum Poll {
    /// Something moved (a read submitted or completed, an entry published
    /// or released): poll again.
    Moved,
    /// Nothing could move now: reads are in flight or the consumer holds
    /// every slot. Poll again later (after consuming, if this thread is the
    /// consumer), or [`Ingest::wait`].
    Idle,
    /// Every source was read, published and released.
    Done(IngestStats),
}

/// An ingest the caller drives: from [`Driver::begin`]. Dropped before it
/// is done, it cancels the reads in flight and leaves the driver refusing
/// further use, as an ingest that failed does.
pub struct Ingest<'d, 's, S: StagingMemory> {
    driver: &'d mut Driver<S>,
    run: Run<'s>,
    started: Instant,
    last_release: Instant,
    last_completion: Instant,
    finished: bool,
}

impl<S: StagingMemory> std::fmt::Debug for Ingest<'_, '_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("sources", &self.run.sources.len()).field("finished", &self.finished).finish()
    }
}

impl<S: StagingMemory> Ingest<'_, '_, S> {
    /// Move the ingest on without blocking, calling `on_event` for each
    /// segment the consumer released since the last poll. After an error,
    /// or once done, it does nothing more (a later poll says so).
    pub fn poll(&mut self, mut on_event: impl FnMut(Event)) -> Result<Poll, IngestError> {
        if self.finished {
            return Err(IngestError::ConsumerStalled { outstanding: self.driver.producer.outstanding(), why: "this ingest has finished already".into() });
        }
        let step = match self.driver.step(&mut self.run, &mut on_event) {
            Ok(step) => step,
            Err(e) => return Err(self.abandon(e)),
        };
        let now = Instant::now();
        if step.reaped {
            self.last_completion = now;
        }
        if step.released {
            self.last_release = now;
        }
        if step.done {
            self.finished = true;
            return match self.run.failure.take() {
                Some(e) => Err(e),
                None => Ok(Poll::Done(IngestStats { telemetry: self.driver.telemetry, elapsed: self.started.elapsed() })),
            };
        }
        Ok(if step.moved { Poll::Moved } else { Poll::Idle })
    }

    /// Block, without spinning, until a read completes or the consumer
    /// releases something (or a short poll interval passes), within the
    /// driver's read and release timeouts. For a caller that has nothing
    /// else to do after [`Poll::Idle`]; never call it from the consumer's
    /// own thread while it holds published entries.
    pub fn wait(&mut self) -> Result<(), IngestError> {
        let last_completion = self.last_completion;
        match self.driver.block(&mut self.last_release, last_completion) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.abandon(e)),
        }
    }

    /// An internal or consumer failure: stop the kernel from writing into
    /// slots this ingest no longer tracks, and refuse further use.
    fn abandon(&mut self, e: IngestError) -> IngestError {
        self.finished = true;
        self.driver.broken = true;
        let _ = self.driver.reads.cancel_all();
        // The release wait, if any, was cancelled with the reads.
        if std::mem::take(&mut self.driver.release_armed) {
            self.driver.producer.end_sleep(&self.driver.staging.queue());
        }
        e
    }
}

impl<S: StagingMemory> Drop for Ingest<'_, '_, S> {
    fn drop(&mut self) {
        if !self.finished {
            self.abandon(IngestError::ConsumerStalled { outstanding: 0, why: "the ingest was dropped before it was done".into() });
        }
    }
}

impl<S: StagingMemory> Drop for Driver<S> {
    fn drop(&mut self) {
        let drained = self.reads.cancel_all().is_ok();
        self.close_queue();
        if !drained {
            // The kernel may still write into the slots: never free them.
            std::mem::forget(Arc::clone(&self.staging));
        }
    }
}
