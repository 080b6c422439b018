//! Pending state: what each slot is doing, and the rules for changing it.
//!
//! A slot moves through four states, in this order only:
//!
//! ```text
//! Free --submit--> InFlight --complete/fail--> Completed --publish--> Published --release--> Free
//!                   ^    |
//!                   +----+ progress (a short read resubmits the rest)
//! ```
//!
//! So a slot cannot be submitted twice while in flight, cannot be published
//! twice, and cannot be reused before the consumer has released it. The table
//! stores its states in any `AsMut<[SlotState]>` (an array here, a `Vec` in
//! std crates), so it needs no allocator.

use core::fmt;

/// Where the bytes of a read come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A byte offset in a regular file (or block device).
    File {
        /// Byte offset of the slot's first byte in the file.
        offset: u64,
    },
    /// A range of logical blocks on an NVMe namespace.
    Lba {
        /// First logical block.
        slba: u64,
        /// Number of blocks (not zero-based).
        blocks: u32,
    },
}

impl Target {
    /// The offset stored in an io_queue entry: a byte offset or an LBA.
    pub fn offset(&self) -> u64 {
        match *self {
            Target::File { offset } => offset,
            Target::Lba { slba, .. } => slba,
        }
    }
}

/// How a completion's result is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// `res` is a byte count; fewer bytes than asked is a short read whose
    /// rest is submitted again; zero before the end means the source ended.
    ByteCount,
    /// `res == 0` is success and means all `expected` bytes arrived; a
    /// positive `res` is an NVMe status, a negative one an errno.
    NvmeStatus,
}

/// One slot's read: what it is for and how far it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRead {
    /// Where the bytes come from.
    pub target: Target,
    /// The caller's tag, copied to the io_queue entry (gpuring: the source index).
    pub tag: u64,
    /// How many bytes the slot should hold when the read is complete.
    pub expected: u32,
    /// How many bytes have landed so far.
    pub done: u32,
    /// How the completion's result is judged.
    pub judge: Judge,
    /// The completion status once complete: 0, a negative errno or a positive NVMe status.
    pub status: i32,
}

impl PendingRead {
    /// A new read of `expected` bytes from `target`, nothing landed yet.
    pub fn new(target: Target, tag: u64, expected: u32, judge: Judge) -> Self {
        Self { target, tag, expected, done: 0, judge, status: 0 }
    }

    /// Bytes still missing.
    pub fn remaining(&self) -> u32 {
        self.expected - self.done
    }
}

/// A slot's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing in it; may be submitted.
    #[default]
    Free,
    /// A read is in flight: the kernel or device may write the slot.
    InFlight(PendingRead),
    /// The read finished (well or not) and awaits publishing.
    Completed(PendingRead),
    /// Published to the consumer, which owns the slot until it releases it.
    Published(PendingRead),
}

/// A rule of the slot life cycle was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingError {
    /// No such slot.
    OutOfRange {
        /// The slot asked for.
        slot: u32,
        /// How many slots there are.
        slots: u32,
    },
    /// The slot is not in the state the operation needs.
    WrongState {
        /// The slot.
        slot: u32,
        /// What the operation needed.
        needed: &'static str,
        /// What the slot was.
        found: &'static str,
    },
    /// A completion reported more bytes than the read asked for.
    Overrun {
        /// The slot.
        slot: u32,
        /// Bytes reported in total.
        got: u64,
        /// Bytes expected.
        expected: u32,
    },
}

impl fmt::Display for PendingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfRange { slot, slots } => write!(f, "slot {slot} does not exist: there are {slots} slots. Fix: use a slot index below {slots}"),
            Self::WrongState { slot, needed, found } => write!(
                f,
                "slot {slot} is {found}, but this needs it {needed}. Fix: wait for the slot's completion and the consumer's release before reusing it"
            ),
            Self::Overrun { slot, got, expected } => {
                write!(f, "slot {slot} got {got} bytes for a read of {expected}. Fix: this is a driver bug; please report it")
            }
        }
    }
}

impl core::error::Error for PendingError {}

impl SlotState {
    fn name(&self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::InFlight(_) => "in flight",
            SlotState::Completed(_) => "completed and not yet published",
            SlotState::Published(_) => "published and not yet released by the consumer",
        }
    }
}

/// What a completion did to its read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All expected bytes landed; the slot is now `Completed`.
    Complete(PendingRead),
    /// Some bytes are still missing; the slot stays in flight and the rest
    /// should be submitted at `done` bytes into the slot.
    Short(PendingRead),
}

/// The state of every slot.
#[derive(Debug)]
pub struct PendingTable<S> {
    states: S,
    hint: usize,
    in_flight: u32,
    published: u32,
}

impl<S: AsRef<[SlotState]> + AsMut<[SlotState]>> PendingTable<S> {
    /// A table over `states`, all of which must be `Free`.
    pub fn new(mut states: S) -> Self {
        states.as_mut().fill(SlotState::Free);
        Self { states, hint: 0, in_flight: 0, published: 0 }
    }

    /// Number of slots.
    pub fn len(&self) -> u32 {
        self.states.as_ref().len() as u32
    }

    /// True when the table has no slots.
    pub fn is_empty(&self) -> bool {
        self.states.as_ref().is_empty()
    }

    /// Reads in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Slots published and not yet released.
    pub fn published(&self) -> u32 {
        self.published
    }

    /// The state of `slot`.
    pub fn state(&self, slot: u32) -> Result<&SlotState, PendingError> {
        let slots = self.len();
        self.states.as_ref().get(slot as usize).ok_or(PendingError::OutOfRange { slot, slots })
    }

    fn state_mut(&mut self, slot: u32) -> Result<&mut SlotState, PendingError> {
        let slots = self.len();
        self.states.as_mut().get_mut(slot as usize).ok_or(PendingError::OutOfRange { slot, slots })
    }

    /// True when every slot is free.
    pub fn all_free(&self) -> bool {
        self.states.as_ref().iter().all(|s| matches!(s, SlotState::Free))
    }

    /// A free slot, if any, searching round-robin so slots are used evenly.
    pub fn find_free(&mut self) -> Option<u32> {
        self.find_free_where(|_| true)
    }

    /// A free slot that `accept` takes, searching round-robin as
    /// [`PendingTable::find_free`] does (a driver with several rings uses
    /// it to skip the slots of one of them).
    pub fn find_free_where(&mut self, accept: impl Fn(u32) -> bool) -> Option<u32> {
        let n = self.states.as_ref().len();
        for step in 0..n {
            let i = (self.hint + step) % n;
            if matches!(self.states.as_ref()[i], SlotState::Free) && accept(i as u32) {
                self.hint = (i + 1) % n;
                return Some(i as u32);
            }
        }
        None
    }

    /// Put `read` in flight in `slot`, which must be free.
    pub fn submit(&mut self, slot: u32, read: PendingRead) -> Result<(), PendingError> {
        let state = self.state_mut(slot)?;
        match state {
            SlotState::Free => {
                *state = SlotState::InFlight(read);
                self.in_flight += 1;
                Ok(())
            }
            other => Err(PendingError::WrongState { slot, needed: "free", found: other.name() }),
        }
    }

    fn in_flight_read(&mut self, slot: u32) -> Result<&mut PendingRead, PendingError> {
        match self.state_mut(slot)? {
            SlotState::InFlight(read) => Ok(read),
            other => {
                let found = other.name();
                Err(PendingError::WrongState { slot, needed: "in flight", found })
            }
        }
    }

    /// Record a successful completion that delivered `bytes` bytes.
    ///
    /// For [`Judge::NvmeStatus`] reads a success delivers everything.
    pub fn progress(&mut self, slot: u32, bytes: u32) -> Result<Progress, PendingError> {
        let read = self.in_flight_read(slot)?;
        let got = read.done as u64 + bytes as u64;
        if got > read.expected as u64 {
            return Err(PendingError::Overrun { slot, got, expected: read.expected });
        }
        read.done = match read.judge {
            Judge::ByteCount => got as u32,
            Judge::NvmeStatus => read.expected,
        };
        let read = *read;
        if read.done < read.expected {
            return Ok(Progress::Short(read));
        }
        self.finish(slot, read)?;
        Ok(Progress::Complete(read))
    }

    /// Record a failed completion: the slot holds `read.done` valid bytes and
    /// `status` says why (a negative errno or a positive NVMe status).
    pub fn fail(&mut self, slot: u32, status: i32) -> Result<PendingRead, PendingError> {
        let read = self.in_flight_read(slot)?;
        read.status = status;
        let read = *read;
        self.finish(slot, read)?;
        Ok(read)
    }

    fn finish(&mut self, slot: u32, read: PendingRead) -> Result<(), PendingError> {
        *self.state_mut(slot)? = SlotState::Completed(read);
        self.in_flight -= 1;
        Ok(())
    }

    /// Mark a completed slot as published to the consumer.
    pub fn publish(&mut self, slot: u32) -> Result<PendingRead, PendingError> {
        let state = self.state_mut(slot)?;
        match *state {
            SlotState::Completed(read) => {
                *state = SlotState::Published(read);
                self.published += 1;
                Ok(read)
            }
            ref other => Err(PendingError::WrongState { slot, needed: "completed", found: other.name() }),
        }
    }

    /// The consumer released `slot`: it becomes free.
    pub fn release(&mut self, slot: u32) -> Result<PendingRead, PendingError> {
        let state = self.state_mut(slot)?;
        match *state {
            SlotState::Published(read) => {
                *state = SlotState::Free;
                self.published -= 1;
                Ok(read)
            }
            ref other => Err(PendingError::WrongState { slot, needed: "published", found: other.name() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_free_where_skips_what_it_is_told_and_stays_round_robin() {
        let mut t = PendingTable::new([SlotState::Free; 4]);
        let odd = |slot: u32| slot % 2 == 1;
        assert_eq!(t.find_free_where(odd), Some(1));
        assert_eq!(t.find_free_where(odd), Some(3));
        assert_eq!(t.find_free_where(odd), Some(1), "wraps around");
        t.submit(1, PendingRead::new(Target::File { offset: 0 }, 0, 8, Judge::ByteCount)).unwrap();
        t.submit(3, PendingRead::new(Target::File { offset: 8 }, 0, 8, Judge::ByteCount)).unwrap();
        assert_eq!(t.find_free_where(odd), None, "every accepted slot is taken");
        assert!(matches!(t.find_free(), Some(0 | 2)));
    }
    extern crate std;
    use std::string::ToString;

    fn read(expected: u32) -> PendingRead {
        PendingRead::new(Target::File { offset: 8192 }, 7, expected, Judge::ByteCount)
    }

    #[test]
    fn full_life_cycle_with_a_short_read() {
        let mut t = PendingTable::new([SlotState::Free; 2]);
        let slot = t.find_free().unwrap();
        t.submit(slot, read(4096)).unwrap();
        assert_eq!(t.in_flight(), 1);
        match t.progress(slot, 1000).unwrap() {
            Progress::Short(r) => assert_eq!((r.done, r.remaining()), (1000, 3096)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.progress(slot, 3096).unwrap(), Progress::Complete(r) if r.done == 4096));
        assert_eq!(t.in_flight(), 0);
        t.publish(slot).unwrap();
        assert_eq!(t.published(), 1);
        assert!(!t.all_free());
        let r = t.release(slot).unwrap();
        assert_eq!((r.tag, r.target.offset()), (7, 8192));
        assert!(t.all_free());
    }

    #[test]
    fn no_double_submit_no_reuse_before_release_no_double_publish() {
        let mut t = PendingTable::new([SlotState::Free; 1]);
        t.submit(0, read(10)).unwrap();
        let err = t.submit(0, read(10)).unwrap_err();
        assert!(err.to_string().contains("slot 0 is in flight"), "{err}");
        t.progress(0, 10).unwrap();
        assert!(t.submit(0, read(10)).is_err());
        t.publish(0).unwrap();
        assert!(matches!(t.publish(0), Err(PendingError::WrongState { found: "published and not yet released by the consumer", .. })));
        let err = t.submit(0, read(10)).unwrap_err();
        assert!(err.to_string().contains("Fix:"));
        assert_eq!(t.find_free(), None);
        t.release(0).unwrap();
        assert!(t.release(0).is_err());
        assert_eq!(t.find_free(), Some(0));
    }

    #[test]
    fn out_of_range_and_overrun() {
        let mut t = PendingTable::new([SlotState::Free; 2]);
        assert_eq!(t.submit(2, read(1)), Err(PendingError::OutOfRange { slot: 2, slots: 2 }));
        assert!(t.state(5).is_err());
        t.submit(1, read(100)).unwrap();
        assert!(matches!(t.progress(1, 101), Err(PendingError::Overrun { got: 101, .. })));
        assert!(t.progress(0, 1).is_err());
    }

    #[test]
    fn failure_keeps_status_and_frees_through_publish() {
        let mut t = PendingTable::new([SlotState::Free; 1]);
        t.submit(0, read(100)).unwrap();
        t.progress(0, 40).unwrap();
        let r = t.fail(0, -5).unwrap();
        assert_eq!((r.done, r.status), (40, -5));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.publish(0).unwrap().status, -5);
        t.release(0).unwrap();
    }

    #[test]
    fn nvme_success_delivers_everything() {
        let mut t = PendingTable::new([SlotState::Free; 1]);
        let r = PendingRead::new(Target::Lba { slba: 3, blocks: 8 }, 0, 4096, Judge::NvmeStatus);
        t.submit(0, r).unwrap();
        assert!(matches!(t.progress(0, 0).unwrap(), Progress::Complete(r) if r.done == 4096));
    }

    #[test]
    fn find_free_is_round_robin() {
        let mut t = PendingTable::new([SlotState::Free; 3]);
        assert_eq!(t.find_free(), Some(0));
        assert_eq!(t.find_free(), Some(1));
        t.submit(2, read(1)).unwrap();
        assert_eq!(t.find_free(), Some(0));
    }
}
