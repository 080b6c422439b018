//! Copying published slots into a buffer the user owns: where each entry's
//! bytes go.
//!
//! `read_into` on a GPU backend reads the requests' byte ranges through the
//! slots as sources (a source's index is the entries' `tag`; the requests
//! of one file that touch or overlap share one source), and the backend's
//! copy consumer moves each published slot's windows into the destination
//! with the GPU's copy engine. A source may start before its first request
//! (an `O_DIRECT` read starts aligned) and span several:
//! [`CopyPlan::regions`] clips every entry to each request's window it
//! overlaps, so only the asked bytes are copied, each to its place.

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

/// The windows one source (one read range of one file) fills, sorted by
/// start; several requests of one file that touch or overlap are read as one
/// source, so an entry may fill several windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceWindows {
    windows: Vec<CopyWindow>,
    /// The longest window, which bounds how far back a search must look.
    longest: u64,
}

impl SourceWindows {
    /// The windows, in any order (they are sorted here).
    pub fn new(mut windows: Vec<CopyWindow>) -> Self {
        windows.sort_by_key(|w| w.start);
        let longest = windows.iter().map(|w| w.end - w.start).max().unwrap_or(0);
        Self { windows, longest }
    }

    /// The windows, sorted by start.
    pub fn windows(&self) -> &[CopyWindow] {
        &self.windows
    }

    /// The windows that bytes `from..to` of the file overlap.
    fn overlapping(&self, from: u64, to: u64) -> impl Iterator<Item = &CopyWindow> {
        let first = self.windows.partition_point(|w| w.start.saturating_add(self.longest) <= from);
        let last = self.windows.partition_point(|w| w.start < to);
        self.windows[first..last.max(first)].iter().filter(move |w| w.end > from)
    }
}

/// Every source's windows, by source index (the entries' `tag`), and the
/// destination's length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyPlan {
    /// By source index.
    pub sources: Vec<SourceWindows>,
    /// The destination's length in bytes.
    pub dst_len: u64,
}

impl CopyPlan {
    /// Put the copies for entry `c` of slots of `slot_size` bytes into `out`
    /// (cleared first): one per window the entry's bytes overlap, none for
    /// a failed read. `Err` for an entry that names no source, a slot or
    /// length out of range, an NVMe entry, or a window past the destination
    /// (a producer bug: nothing is copied).
    pub fn regions(&self, c: &Completion, slot_count: u32, slot_size: u64, out: &mut Vec<Region>) -> Result<(), String> {
        out.clear();
        if c.status != 0 || c.bytes == 0 {
            return Ok(());
        }
        let source = usize::try_from(c.tag).ok().and_then(|i| self.sources.get(i)).ok_or_else(|| format!("entry tag {} names no source", c.tag))?;
        if c.kind != EntryKind::File {
            return Err(format!("entry for slot {} holds blocks of an NVMe namespace: read_into reads files", c.slot));
        }
        if c.slot >= slot_count || c.bytes > slot_size {
            return Err(format!("entry for slot {} with {} bytes: outside {slot_count} slots of {slot_size} bytes", c.slot, c.bytes));
        }
        let (start, end) = (c.offset, c.offset.saturating_add(c.bytes));
        for w in source.overlapping(start, end) {
            let (from, to) = (start.max(w.start), end.min(w.end));
            let region = Region { slot_offset: c.slot as u64 * slot_size + (from - start), dst: w.dst + (from - w.start), len: to - from };
            if region.dst.checked_add(region.len).is_none_or(|end| end > self.dst_len) {
                out.clear();
                return Err(format!("a copy of {} bytes to offset {} runs past the destination's {} bytes", region.len, region.dst, self.dst_len));
            }
            out.push(region);
        }
        Ok(())
    }

    /// Bytes the plan copies in all.
    pub fn bytes(&self) -> u64 {
        self.sources.iter().flat_map(|s| s.windows()).map(|w| w.end - w.start).sum()
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

    fn regions(plan: &CopyPlan, c: Completion) -> Result<Vec<Region>, String> {
        let mut out = Vec::new();
        plan.regions(&c, 4, 8192, &mut out).map(|()| out)
    }

    #[test]
    fn entries_are_clipped_to_their_windows() {
        // Source 0: bytes 5000..20000 to offset 100 (an aligned read starts
        // at 4096). Source 1: two requests of one file read as one source,
        // bytes 0..10 to offset 0 and 10..30 to offset 20000, and a third
        // overlapping them, 5..15 to offset 30000.
        let s0 = SourceWindows::new(vec![CopyWindow { start: 5000, end: 20_000, dst: 100 }]);
        let s1 = SourceWindows::new(vec![
            CopyWindow { start: 10, end: 30, dst: 20_000 },
            CopyWindow { start: 0, end: 10, dst: 0 },
            CopyWindow { start: 5, end: 15, dst: 30_000 },
        ]);
        let plan = CopyPlan { sources: vec![s0, s1], dst_len: 30_010 };
        assert_eq!(regions(&plan, entry(0, 3, 4096, 8192)), Ok(vec![Region { slot_offset: 3 * 8192 + 904, dst: 100, len: 7288 }]));
        assert_eq!(regions(&plan, entry(0, 0, 12_288, 8192)), Ok(vec![Region { slot_offset: 0, dst: 100 + 7288, len: 7712 }]));
        assert_eq!(
            regions(&plan, entry(1, 1, 0, 30)),
            Ok(vec![
                Region { slot_offset: 8192, dst: 0, len: 10 },
                Region { slot_offset: 8192 + 5, dst: 30_000, len: 10 },
                Region { slot_offset: 8192 + 10, dst: 20_000, len: 20 },
            ])
        );
        // A later entry of the same source: only what it holds.
        assert_eq!(
            regions(&plan, entry(1, 2, 12, 8)),
            Ok(vec![Region { slot_offset: 2 * 8192, dst: 30_007, len: 3 }, Region { slot_offset: 2 * 8192, dst: 20_002, len: 8 }])
        );
        assert_eq!(plan.bytes(), 15_000 + 10 + 20 + 10);
        // A failed read, and bytes past every window: nothing.
        let mut failed = entry(0, 3, 4096, 8192);
        failed.status = -5;
        assert_eq!(regions(&plan, failed), Ok(vec![]));
        assert_eq!(regions(&plan, entry(0, 1, 20_480, 100)), Ok(vec![]));
        // Producer bugs are errors, not copies.
        assert!(regions(&plan, entry(2, 1, 0, 10)).unwrap_err().contains("names no source"));
        assert!(regions(&plan, entry(0, 4, 4096, 10)).unwrap_err().contains("outside 4 slots"));
        let small = CopyPlan { sources: plan.sources.clone(), dst_len: 50 };
        assert!(regions(&small, entry(0, 0, 5000, 100)).unwrap_err().contains("past the destination"));
    }
}
