//! The bounce path: `pread()` into a heap buffer, then a copy into a slot.
//!
//! This is what programs do today without gpuring, kept here so that
//! `gpuring bench` can compare against it on the same bytes, the same slot
//! memory and the same consumer, and as a fallback where io_uring is
//! refused. It produces into the io_queue exactly as the [`Driver`] does
//! (same entries, same [`Event`]s, same size-change checks), but every
//! byte crosses a userspace buffer first, so the telemetry counts it on the
//! `bounce` path and `zero_bounce` is false.
//!
//! One thread does the reads and the copies in turn; the consumer runs
//! elsewhere, as with the driver. One difference from the driver: a failed
//! `pread()` is not published (no bytes reached a slot, and the slot goes
//! straight back to the free list); the error is returned after every
//! segment already published has been released.
//!
//! [`Driver`]: crate::Driver

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use gpuring_core::io_queue::{Completion, EntryKind, Producer, Released, CONSUMED};
use gpuring_core::{Path, StagingMemory, Telemetry};
use rustix::io::Errno;

use crate::buffer::HeapBuffer;
use crate::driver::{DriverOptions, Event, IngestStats};
use crate::error::IngestError;
use crate::source::{OpenSource, Source};
use crate::wait;

/// How long one futex sleep waits for a release at most.
const RELEASE_POLL: Duration = Duration::from_millis(1);

/// What is known about a published segment until it is released.
#[derive(Clone, Copy)]
struct Segment {
    source: usize,
    index: u64,
}

/// Producer-side bookkeeping of one bounce ingest.
struct State<'q, F> {
    q: gpuring_core::io_queue::IoQueue<'q>,
    producer: Producer,
    telemetry: Telemetry,
    free: Vec<u32>,
    /// What each slot holds while published.
    segments: Vec<Segment>,
    /// Per source: segments published and not yet released.
    outstanding: Vec<u32>,
    /// Per source: bytes to report once its last segment is released
    /// (`None` while it is still being read).
    done_bytes: Vec<Option<u64>>,
    /// Reused buffer for the releases of one poll.
    released: Vec<Released>,
    last_release: Instant,
    release_timeout: Duration,
    on_event: F,
}

impl<F: FnMut(Event)> State<'_, F> {
    /// Take the consumer's releases; with `block`, wait for one when there
    /// are none.
    fn reap(&mut self, block: bool) -> Result<(), IngestError> {
        let mut events = std::mem::take(&mut self.released);
        events.clear();
        self.producer.poll_released(&self.q, |r| events.push(r))?;
        for r in &events {
            self.free.push(r.completion.slot);
            let seg = self.segments[r.completion.slot as usize];
            (self.on_event)(Event::Released {
                source: seg.source,
                segment: seg.index,
                offset: r.completion.offset,
                bytes: r.completion.bytes,
                result: r.result,
                consumed: r.consumer_status == CONSUMED,
            });
            self.outstanding[seg.source] -= 1;
            if self.outstanding[seg.source] == 0 {
                if let Some(bytes) = self.done_bytes[seg.source].take() {
                    (self.on_event)(Event::SourceDone { source: seg.source, bytes });
                }
            }
        }
        let n = events.len() as u64;
        self.released = events;
        if n > 0 {
            self.telemetry.on_release(n)?;
            self.last_release = Instant::now();
            return Ok(());
        }
        if !block {
            return Ok(());
        }
        let outstanding = self.producer.outstanding();
        if self.q.consumer_failed() != 0 {
            return Err(IngestError::ConsumerStalled { outstanding, why: "the consumer reported that it failed".into() });
        }
        if self.last_release.elapsed() > self.release_timeout {
            return Err(IngestError::ConsumerStalled { outstanding, why: format!("nothing was released for {:?}", self.release_timeout) });
        }
        if self.producer.prepare_sleep(&self.q) {
            wait::sleep_on(wait::consumer_word(&self.q), self.producer.released_position(), RELEASE_POLL);
            self.producer.end_sleep(&self.q);
        }
        Ok(())
    }

    /// Read and publish every segment of source `idx`; returns its bytes.
    fn source(&mut self, staging: &impl StagingMemory, idx: usize, file: &OpenSource, heap: &mut HeapBuffer) -> Result<u64, IngestError> {
        let slot_size = staging.geometry().slot_size();
        let mut offset = file.start;
        let mut index = 0u64;
        while offset < file.end {
            let len = (file.end - offset).min(slot_size as u64) as usize;
            let slot = loop {
                if let Some(slot) = self.free.pop() {
                    break slot;
                }
                self.reap(true)?;
            };
            self.telemetry.on_submit(len as u64)?;
            // O_DIRECT lengths must be block multiples; the file ends where it ends.
            let want = if file.dio_align > 0 { len.next_multiple_of(file.dio_align as usize) } else { len };
            let failure = match pread_full(file, &mut heap.as_mut_slice()[..want], offset) {
                Err(errno) => Some(IngestError::Read { path: file.path.clone(), offset, slot, errno }),
                Ok(got) if got < len => Some(IngestError::Shrank { path: file.path.clone(), size: file.size, ended_at: offset + got as u64 }),
                Ok(got) if got > len && file.whole && offset + len as u64 == file.size => {
                    let after = file.current_size().unwrap_or(offset + got as u64);
                    Some(IngestError::ChangedSize { path: file.path.clone(), before: file.size, after })
                }
                Ok(_) => None,
            };
            if let Some(e) = failure {
                self.telemetry.on_failure()?;
                self.free.push(slot);
                return Err(e);
            }
            // SAFETY: `slot` came off the free list, so no one else touches
            // it until the entry published below hands it to the consumer;
            // `len <= slot_size`.
            let dst = unsafe { std::slice::from_raw_parts_mut(staging.slot_ptr(slot).as_ptr(), len) };
            dst.copy_from_slice(&heap.as_mut_slice()[..len]);
            self.telemetry.on_complete(Path::Bounce, len as u64, false)?;
            self.segments[slot as usize] = Segment { source: idx, index };
            self.outstanding[idx] += 1;
            let completion = Completion { slot, status: 0, kind: EntryKind::File, bytes: len as u64, offset, tag: idx as u64 };
            // The queue has at least as many entries as there are slots.
            self.producer.publish(&self.q, &completion)?;
            self.telemetry.on_publish(1)?;
            if self.q.consumer_needs_wake() {
                wait::wake(wait::producer_word(&self.q));
            }
            offset += len as u64;
            index += 1;
            self.reap(false)?;
        }
        if file.whole {
            let after = file.current_size()?;
            if after != file.size {
                return Err(IngestError::ChangedSize { path: file.path.clone(), before: file.size, after });
            }
        }
        Ok(file.end - file.start)
    }
}

/// Read `sources` through `staging`'s slots by `pread()` and copy, calling
/// `on_event` as the consumer releases segments. It takes the io_queue's
/// producer end (once per staging region); close the queue afterwards
/// (`IoQueue::close`) so the consumer stops. After an error,
/// every segment already published is still released and reported before
/// the error is returned.
pub fn ingest<S: StagingMemory>(staging: &S, sources: &[Source], options: &DriverOptions, on_event: impl FnMut(Event)) -> Result<IngestStats, IngestError> {
    let started = Instant::now();
    let geometry = staging.geometry();
    let q = staging.queue();
    let mut state = State {
        producer: staging.take_producer()?,
        q,
        telemetry: Telemetry::new(),
        free: (0..geometry.slot_count()).rev().collect(),
        segments: vec![Segment { source: 0, index: 0 }; geometry.slot_count() as usize],
        outstanding: vec![0; sources.len()],
        done_bytes: vec![None; sources.len()],
        released: Vec::new(),
        last_release: Instant::now(),
        release_timeout: options.release_timeout,
        on_event,
    };
    let mut heap = HeapBuffer::new(geometry.slot_size(), 0);
    let mut failure = None;
    for (idx, source) in sources.iter().enumerate() {
        if source.kind == crate::SourceKind::Nvme {
            let what = format!(
                "{}: NVMe passthrough has no bounce path (the device writes the slot). Fix: read NVMe namespaces through io_uring, not the bounce path",
                source.path.display()
            );
            failure = Some(IngestError::Unsupported { what });
            break;
        }
        let read = OpenSource::open(source, options.direct, geometry.slot_size()).and_then(|file| state.source(staging, idx, &file, &mut heap));
        match read {
            Ok(bytes) if state.outstanding[idx] == 0 => (state.on_event)(Event::SourceDone { source: idx, bytes }),
            Ok(bytes) => state.done_bytes[idx] = Some(bytes),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // Every published segment is released before returning, error or not.
    while state.producer.outstanding() > 0 {
        state.reap(true)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(IngestStats { telemetry: state.telemetry, elapsed: started.elapsed() }),
    }
}

/// `pread` until `buf` is full or the file ends.
fn pread_full(file: &OpenSource, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(file.fd.as_fd(), &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        // O_DIRECT stops short only at end of file.
        if file.dio_align > 0 && got % file.dio_align as usize != 0 {
            break;
        }
    }
    Ok(got)
}
