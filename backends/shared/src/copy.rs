//! Copying published slots into a buffer the user owns: where each entry's
//! bytes go.
//!
//! `read_into` on a GPU backend reads each request's byte range through the
//! slots as one source (its index is the entries' `tag`), and the backend's
//! copy consumer moves each published slot's window into the destination
//! with the GPU's copy engine. A source may start before its request (an
//! `O_DIRECT` read starts aligned): [`CopyPlan::region`] clips every entry
//! to its request's window, so only the asked bytes are copied.

use gpuring_core::io_queue::{Completion, EntryKind};

/// One request: file bytes `start..end` go to destination offset `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyWindow {
    /// First file byte asked for.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Where `start` goes in the destination.
    pub dst: u64,
}

/// One copy: `len` bytes from `slot_offset` in the slot region (slot index
/// times slot size, plus the skip into the slot) to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Byte offset in the slot region.
    pub slot_offset: u64,
    /// Byte offset in the destination.
    pub dst: u64,
    /// Bytes to copy.
    pub len: u64,
}

/// Every request's window, by source index, and the destination's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyPlan {
    /// By source index (the entries' `tag`).
    pub windows: Vec<CopyWindow>,
    /// The destination's length in bytes.
    pub dst_len: u64,
}

impl CopyPlan {
    /// The copy for entry `c` of slots of `slot_size` bytes, or why there is
    /// none: `Ok(None)` for a failed read or an entry outside its window,
    /// `Err` for an entry that names no request, a slot or length out of
    /// range, or a window past the destination (a producer bug: nothing is
    /// copied).
    pub fn region(&self, c: &Completion, slot_count: u32, slot_size: u64) -> Result<Option<Region>, String> {
        if c.status != 0 || c.bytes == 0 {
            return Ok(None);
        }
        let w = usize::try_from(c.tag).ok().and_then(|i| self.windows.get(i)).ok_or_else(|| format!("entry tag {} names no request", c.tag))?;
        if c.kind != EntryKind::File {
            return Err(format!("entry for slot {} holds blocks of an NVMe namespace: read_into reads files", c.slot));
        }
        if c.slot >= slot_count || c.bytes > slot_size {
            return Err(format!("entry for slot {} with {} bytes: outside {slot_count} slots of {slot_size} bytes", c.slot, c.bytes));
        }
        let from = c.offset.max(w.start);
        let to = c.offset.saturating_add(c.bytes).min(w.end);
        if from >= to {
            return Ok(None);
        }
        let region = Region { slot_offset: c.slot as u64 * slot_size + (from - c.offset), dst: w.dst + (from - w.start), len: to - from };
        if region.dst.checked_add(region.len).is_none_or(|end| end > self.dst_len) {
            return Err(format!("a copy of {} bytes to offset {} runs past the destination's {} bytes", region.len, region.dst, self.dst_len));
        }
        Ok(Some(region))
    }

    /// Bytes the plan copies in all.
    pub fn bytes(&self) -> u64 {
        self.windows.iter().map(|w| w.end - w.start).sum()
    }
}

/// What a copy consumer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries released.
    pub entries: u64,
    /// Bytes the copy engine moved into the destination.
    pub bytes: u64,
    /// Copy commands queued.
    pub copies: u64,
    /// Batches (one submission each).
    pub batches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u64, slot: u32, offset: u64, bytes: u64) -> Completion {
        Completion { slot, status: 0, kind: EntryKind::File, bytes, offset, tag }
    }

    #[test]
    fn entries_are_clipped_to_their_window() {
        // Request 0 asks for bytes 5000..20000 to offset 100; the aligned
        // read starts at 4096. Request 1, bytes 0..10 to offset 0.
        let plan = CopyPlan { windows: vec![CopyWindow { start: 5000, end: 20_000, dst: 100 }, CopyWindow { start: 0, end: 10, dst: 0 }], dst_len: 15_100 };
        let slot = 8192;
        assert_eq!(plan.region(&entry(0, 3, 4096, 8192), 4, slot), Ok(Some(Region { slot_offset: 3 * 8192 + 904, dst: 100, len: 7288 })));
        assert_eq!(plan.region(&entry(0, 0, 12_288, 8192), 4, slot), Ok(Some(Region { slot_offset: 0, dst: 100 + 7288, len: 7712 })));
        assert_eq!(plan.region(&entry(1, 1, 0, 10), 4, slot), Ok(Some(Region { slot_offset: 8192, dst: 0, len: 10 })));
        assert_eq!(plan.bytes(), 15_010);
        // A failed read, and bytes past the window: nothing.
        let mut failed = entry(0, 3, 4096, 8192);
        failed.status = -5;
        assert_eq!(plan.region(&failed, 4, slot), Ok(None));
        assert_eq!(plan.region(&entry(0, 1, 20_480, 100), 4, slot), Ok(None));
        // Producer bugs are errors, not copies.
        assert!(plan.region(&entry(2, 1, 0, 10), 4, slot).unwrap_err().contains("names no request"));
        assert!(plan.region(&entry(0, 4, 4096, 10), 4, slot).unwrap_err().contains("outside 4 slots"));
        let small = CopyPlan { windows: plan.windows.clone(), dst_len: 50 };
        assert!(small.region(&entry(0, 0, 5000, 100), 4, slot).unwrap_err().contains("past the destination"));
    }
}
