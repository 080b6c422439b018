//! Telemetry: what was asked for, what arrived, and how it got there.
//!
//! Every completed byte is counted against exactly one path:
//!
//! - `dma`: the device wrote the slot (O_DIRECT, NVMe passthrough);
//! - `kernel_copy`: the kernel copied from the page cache into the slot
//!   (a buffered read);
//! - `bounce`: userspace copied into the slot (only an explicit
//!   compatibility path may do this).
//!
//! [`Telemetry::validate`] checks that the counters of a finished run add up
//! and states whether it was zero-bounce and, separately, DMA-only. Counters
//! never wrap: an update that would overflow is an error and changes nothing.

use core::fmt;

/// How a read's bytes reached the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The device wrote the slot directly.
    Dma,
    /// The kernel copied from the page cache into the slot.
    KernelCopy,
    /// A userspace copy put the bytes in the slot.
    Bounce,
}

impl Path {
    /// The path's name as used in reports (`dma`, `kernel_copy`, `bounce`).
    pub fn name(self) -> &'static str {
        match self {
            Path::Dma => "dma",
            Path::KernelCopy => "kernel_copy",
            Path::Bounce => "bounce",
        }
    }
}

/// Bytes and completed reads along one path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Bytes that arrived along this path.
    pub bytes: u64,
    /// Completions that delivered them.
    pub reads: u64,
}

/// Counters of one run. All fields are totals since the start of the run,
/// except `inflight_reads`, which is the current number of reads in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// Bytes asked for (each byte once, however many reads it took).
    pub submitted_bytes: u64,
    /// Reads submitted, including the resubmitted rest of short reads.
    pub submitted_reads: u64,
    /// Bytes that arrived in slots.
    pub completed_bytes: u64,
    /// Successful completions.
    pub completed_reads: u64,
    /// Completions that reported an error.
    pub failed_completions: u64,
    /// Completions that delivered fewer bytes than asked.
    pub short_reads: u64,
    /// Reads in flight now.
    pub inflight_reads: u64,
    /// Entries published to the io_queue.
    pub published: u64,
    /// Entries the consumer released.
    pub released: u64,
    /// Bytes the device wrote.
    pub dma: PathCounters,
    /// Bytes the kernel copied from the page cache.
    pub kernel_copy: PathCounters,
    /// Bytes copied in userspace.
    pub bounce: PathCounters,
}

/// A telemetry update or check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TelemetryError {
    /// A counter would have wrapped.
    Overflow {
        /// The counter's name.
        counter: &'static str,
    },
    /// A completion or release arrived with nothing outstanding.
    Underflow {
        /// The counter's name.
        counter: &'static str,
    },
    /// Validation found reads still in flight.
    StillInFlight {
        /// How many.
        reads: u64,
    },
    /// The per-path byte counters do not add up to the completed bytes.
    PathsDisagree {
        /// Completed bytes.
        completed: u64,
        /// Sum of the per-path bytes.
        by_path: u64,
    },
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Overflow { counter } => write!(
                f,
                "telemetry counter {counter} would overflow. Fix: start a new run (and a new Telemetry) before 2^64 is reached"
            ),
            Self::Underflow { counter } => write!(
                f,
                "telemetry counter {counter} would go below zero: a completion or release was counted that was never submitted. Fix: this is a driver bug; please report it"
            ),
            Self::StillInFlight { reads } => write!(
                f,
                "the run is not finished: {reads} reads are still in flight. Fix: reap every completion before validating"
            ),
            Self::PathsDisagree { completed, by_path } => write!(
                f,
                "{completed} bytes completed but the dma, kernel_copy and bounce counters add up to {by_path}. Fix: this is a driver bug; please report it"
            ),
        }
    }
}

impl core::error::Error for TelemetryError {}

/// The verdict of a finished, consistent run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// No byte was copied in userspace.
    pub zero_bounce: bool,
    /// Every byte was written by the device (no page-cache or userspace copy);
    /// vacuously true for a run that read no bytes.
    pub dma_only: bool,
    /// Every submitted byte arrived and no completion failed.
    pub complete: bool,
}

fn add(counter: &mut u64, by: u64, name: &'static str) -> Result<(), TelemetryError> {
    *counter = counter.checked_add(by).ok_or(TelemetryError::Overflow { counter: name })?;
    Ok(())
}

fn sub(counter: &mut u64, by: u64, name: &'static str) -> Result<(), TelemetryError> {
    *counter = counter.checked_sub(by).ok_or(TelemetryError::Underflow { counter: name })?;
    Ok(())
}

impl Telemetry {
    /// All counters zero.
    pub const fn new() -> Self {
        Self {
            submitted_bytes: 0,
            submitted_reads: 0,
            completed_bytes: 0,
            completed_reads: 0,
            failed_completions: 0,
            short_reads: 0,
            inflight_reads: 0,
            published: 0,
            released: 0,
            dma: PathCounters { bytes: 0, reads: 0 },
            kernel_copy: PathCounters { bytes: 0, reads: 0 },
            bounce: PathCounters { bytes: 0, reads: 0 },
        }
    }

    /// Apply `update` to a copy and keep it only if every step succeeded,
    /// so a failed update changes nothing.
    fn transaction(&mut self, update: impl FnOnce(&mut Self) -> Result<(), TelemetryError>) -> Result<(), TelemetryError> {
        let mut next = *self;
        update(&mut next)?;
        *self = next;
        Ok(())
    }

    /// A read was submitted asking for `new_bytes` bytes not asked for before
    /// (0 for the resubmitted rest of a short read).
    pub fn on_submit(&mut self, new_bytes: u64) -> Result<(), TelemetryError> {
        self.transaction(|t| {
            add(&mut t.submitted_bytes, new_bytes, "submitted_bytes")?;
            add(&mut t.submitted_reads, 1, "submitted_reads")?;
            add(&mut t.inflight_reads, 1, "inflight_reads")
        })
    }

    /// A read completed successfully, delivering `bytes` along `path`;
    /// `short` when that was fewer bytes than the read asked for.
    pub fn on_complete(&mut self, path: Path, bytes: u64, short: bool) -> Result<(), TelemetryError> {
        self.transaction(|t| {
            sub(&mut t.inflight_reads, 1, "inflight_reads")?;
            add(&mut t.completed_reads, 1, "completed_reads")?;
            add(&mut t.completed_bytes, bytes, "completed_bytes")?;
            add(&mut t.short_reads, short as u64, "short_reads")?;
            let (counters, name) = match path {
                Path::Dma => (&mut t.dma, "dma_bytes"),
                Path::KernelCopy => (&mut t.kernel_copy, "kernel_copy_bytes"),
                Path::Bounce => (&mut t.bounce, "bounce_bytes"),
            };
            add(&mut counters.bytes, bytes, name)?;
            add(&mut counters.reads, 1, name)
        })
    }

    /// A read completed with an error.
    pub fn on_failure(&mut self) -> Result<(), TelemetryError> {
        self.transaction(|t| {
            sub(&mut t.inflight_reads, 1, "inflight_reads")?;
            add(&mut t.failed_completions, 1, "failed_completions")
        })
    }

    /// `count` entries were published to the io_queue.
    pub fn on_publish(&mut self, count: u64) -> Result<(), TelemetryError> {
        add(&mut self.published, count, "published")
    }

    /// The consumer released `count` entries.
    pub fn on_release(&mut self, count: u64) -> Result<(), TelemetryError> {
        self.transaction(|t| {
            add(&mut t.released, count, "released")?;
            if t.released > t.published {
                return Err(TelemetryError::Underflow { counter: "published" });
            }
            Ok(())
        })
    }

    /// Add every counter of `other` (another ring's run over the same
    /// job, say) to these, or change nothing if one would overflow.
    pub fn absorb(&mut self, other: &Telemetry) -> Result<(), TelemetryError> {
        self.transaction(|t| {
            add(&mut t.submitted_bytes, other.submitted_bytes, "submitted_bytes")?;
            add(&mut t.submitted_reads, other.submitted_reads, "submitted_reads")?;
            add(&mut t.completed_bytes, other.completed_bytes, "completed_bytes")?;
            add(&mut t.completed_reads, other.completed_reads, "completed_reads")?;
            add(&mut t.failed_completions, other.failed_completions, "failed_completions")?;
            add(&mut t.short_reads, other.short_reads, "short_reads")?;
            add(&mut t.inflight_reads, other.inflight_reads, "inflight_reads")?;
            add(&mut t.published, other.published, "published")?;
            add(&mut t.released, other.released, "released")?;
            for (mine, theirs, name) in [
                (&mut t.dma, other.dma, "dma_bytes"),
                (&mut t.kernel_copy, other.kernel_copy, "kernel_copy_bytes"),
                (&mut t.bounce, other.bounce, "bounce_bytes"),
            ] {
                add(&mut mine.bytes, theirs.bytes, name)?;
                add(&mut mine.reads, theirs.reads, name)?;
            }
            Ok(())
        })
    }

    /// The counters of one path.
    pub fn path(&self, path: Path) -> PathCounters {
        match path {
            Path::Dma => self.dma,
            Path::KernelCopy => self.kernel_copy,
            Path::Bounce => self.bounce,
        }
    }

    /// Check a finished run and say whether it was zero-bounce and DMA-only.
    pub fn validate(&self) -> Result<Verdict, TelemetryError> {
        if self.inflight_reads != 0 {
            return Err(TelemetryError::StillInFlight { reads: self.inflight_reads });
        }
        let by_path = self
            .dma
            .bytes
            .checked_add(self.kernel_copy.bytes)
            .and_then(|s| s.checked_add(self.bounce.bytes))
            .ok_or(TelemetryError::Overflow { counter: "bytes by path" })?;
        if by_path != self.completed_bytes {
            return Err(TelemetryError::PathsDisagree { completed: self.completed_bytes, by_path });
        }
        Ok(Verdict {
            zero_bounce: self.bounce.bytes == 0,
            dma_only: self.bounce.bytes == 0 && self.kernel_copy.bytes == 0,
            complete: self.failed_completions == 0 && self.completed_bytes == self.submitted_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_adds_every_counter_or_nothing() {
        let mut a = Telemetry::new();
        a.on_submit(10).unwrap();
        a.on_complete(Path::KernelCopy, 10, false).unwrap();
        let mut b = Telemetry::new();
        b.on_submit(7).unwrap();
        b.on_complete(Path::Dma, 4, true).unwrap();
        b.on_submit(0).unwrap();
        b.on_failure().unwrap();
        a.absorb(&b).unwrap();
        assert_eq!((a.submitted_bytes, a.submitted_reads, a.completed_bytes, a.completed_reads), (17, 3, 14, 2));
        assert_eq!((a.short_reads, a.failed_completions, a.inflight_reads), (1, 1, 0));
        assert_eq!((a.kernel_copy.bytes, a.dma.bytes, a.dma.reads, a.bounce.reads), (10, 4, 1, 0));
        let before = a;
        let mut huge = Telemetry::new();
        huge.kernel_copy.bytes = u64::MAX;
        assert!(a.absorb(&huge).is_err());
        assert_eq!(a, before, "a failed absorb changes nothing");
    }
    extern crate std;
    use std::string::ToString;

    #[test]
    fn counts_a_run_with_a_short_read() {
        let mut t = Telemetry::new();
        t.on_submit(8192).unwrap();
        t.on_complete(Path::KernelCopy, 5000, true).unwrap();
        t.on_submit(0).unwrap();
        t.on_complete(Path::KernelCopy, 3192, false).unwrap();
        t.on_publish(1).unwrap();
        t.on_release(1).unwrap();
        assert_eq!((t.submitted_bytes, t.submitted_reads, t.completed_bytes, t.completed_reads), (8192, 2, 8192, 2));
        assert_eq!((t.short_reads, t.inflight_reads), (1, 0));
        assert_eq!(t.path(Path::KernelCopy), PathCounters { bytes: 8192, reads: 2 });
        let v = t.validate().unwrap();
        assert_eq!(v, Verdict { zero_bounce: true, dma_only: false, complete: true });
    }

    #[test]
    fn verdicts_by_path() {
        let mut dma = Telemetry::new();
        dma.on_submit(4096).unwrap();
        dma.on_complete(Path::Dma, 4096, false).unwrap();
        assert_eq!(dma.validate().unwrap(), Verdict { zero_bounce: true, dma_only: true, complete: true });

        let mut bounce = dma;
        bounce.on_submit(10).unwrap();
        bounce.on_complete(Path::Bounce, 10, false).unwrap();
        assert_eq!(bounce.validate().unwrap(), Verdict { zero_bounce: false, dma_only: false, complete: true });

        let mut failed = dma;
        failed.on_submit(10).unwrap();
        failed.on_failure().unwrap();
        assert_eq!(failed.validate().unwrap(), Verdict { zero_bounce: true, dma_only: true, complete: false });
    }

    #[test]
    fn unfinished_and_inconsistent_runs_do_not_validate() {
        let mut t = Telemetry::new();
        t.on_submit(1).unwrap();
        let err = t.validate().unwrap_err();
        assert_eq!(err, TelemetryError::StillInFlight { reads: 1 });
        assert!(err.to_string().contains("Fix:"));
        let mut bad = Telemetry::new();
        bad.completed_bytes = 5;
        assert_eq!(bad.validate(), Err(TelemetryError::PathsDisagree { completed: 5, by_path: 0 }));
    }

    #[test]
    fn counters_never_wrap_and_failed_updates_change_nothing() {
        let mut t = Telemetry::new();
        t.submitted_bytes = u64::MAX - 1;
        let before = t;
        let err = t.on_submit(2).unwrap_err();
        assert_eq!(err, TelemetryError::Overflow { counter: "submitted_bytes" });
        assert!(err.to_string().contains("overflow"));
        assert_eq!(t, before);

        let mut t = Telemetry::new();
        t.on_submit(1).unwrap();
        t.dma.bytes = u64::MAX;
        let before = t;
        assert_eq!(t.on_complete(Path::Dma, 1, false), Err(TelemetryError::Overflow { counter: "dma_bytes" }));
        assert_eq!(t, before);

        let mut idle = Telemetry::new();
        assert_eq!(idle.on_failure(), Err(TelemetryError::Underflow { counter: "inflight_reads" }));
        assert_eq!(idle.on_release(1), Err(TelemetryError::Underflow { counter: "published" }));
        assert_eq!(idle, Telemetry::new());
    }
}
