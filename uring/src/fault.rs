//! Faults injected into a ring's completions, for tests (Cargo feature
//! `fault-injection`; nothing here is compiled without it).
//!
//! A [`Fault`] rewrites the completion of the `nth` request the ring
//! completes (counted from 0 over the ring's life, the ring's own cancel
//! requests excluded): it turns it into an error, shortens it, makes it
//! `EAGAIN`, or holds it back as a device that never answers would. The
//! request itself ran for real, so the bytes in the buffer are the file's:
//! a shortened read's rest is read again by the driver, and a held one is
//! handed out as cancelled when the ring cancels everything.

use rustix::io::Errno;

/// What happens to one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The request fails with this errno (`EIO`, say).
    Error(Errno),
    /// The request completes with at most this many bytes.
    Short(u32),
    /// The request fails with `EAGAIN`, as a busy device may answer.
    Again,
    /// The completion never arrives (until the ring cancels everything).
    Stall,
}

/// A fault at the `nth` completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which completion, from 0.
    pub nth: u64,
    /// What happens to it.
    pub kind: FaultKind,
}

/// The faults still to come, and completions held back.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    plan: Vec<Fault>,
    seen: u64,
    held: Vec<u64>,
}

impl Faults {
    pub(crate) fn arm(&mut self, plan: &[Fault]) {
        self.plan.extend_from_slice(plan);
    }

    /// Rewrite one completion: `Some(res)` to deliver, `None` to hold it.
    pub(crate) fn apply(&mut self, user_data: u64, res: i32) -> Option<i32> {
        let nth = self.seen;
        self.seen += 1;
        let Some(i) = self.plan.iter().position(|f| f.nth == nth) else { return Some(res) };
        Some(match self.plan.swap_remove(i).kind {
            FaultKind::Error(errno) => -errno.raw_os_error(),
            FaultKind::Short(n) if res > 0 => res.min(n as i32),
            FaultKind::Short(_) => res,
            FaultKind::Again => -Errno::AGAIN.raw_os_error(),
            FaultKind::Stall => {
                self.held.push(user_data);
                return None;
            }
        })
    }

    /// The held completions, as cancelled.
    pub(crate) fn release_held(&mut self) -> impl Iterator<Item = (u64, i32)> + '_ {
        self.held.drain(..).map(|user_data| (user_data, -Errno::CANCELED.raw_os_error()))
    }

    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}
