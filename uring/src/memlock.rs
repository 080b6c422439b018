//! What io_uring charges against RLIMIT_MEMLOCK, and rings that fit.
//!
//! A process without `CAP_IPC_LOCK` is charged, per user, for the buffers it
//! registers (`IORING_REGISTER_BUFFERS` pins them) and, on recent kernels,
//! for the ring's own memory (its SQEs and CQ ring), against RLIMIT_MEMLOCK.
//! With Debian's default limit of 8 MiB, a ring of 32 slots of 256 KiB
//! (exactly 8 MiB) is refused for its ring pages alone; 31 slots fit
//! (measured on Linux 6.18 as `nobody`, 2026-11-30). gpuring maps its slots
//! without `mlock` (the registration pins them), so nothing else counts.
//!
//! [`budget`] says what may be charged, [`need`] what a ring will be, and
//! [`fit_slots`] the most slots of a size that fit; the default ring and the
//! memlock error's suggested ring come from them.

use gpuring_core::PAGE_SIZE;

/// Bytes this process may have io_uring charge against RLIMIT_MEMLOCK:
/// `None` when nothing is charged (it holds `CAP_IPC_LOCK`) or the limit is
/// unlimited. Other processes of the same user share the allowance; their
/// use cannot be seen from here.
pub fn budget() -> Option<u64> {
    let exempt = rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(rustix::thread::CapabilitySet::IPC_LOCK));
    if exempt {
        return None;
    }
    rustix::process::getrlimit(rustix::process::Resource::Memlock).current
}

/// An upper bound of the ring memory the kernel charges for a ring of
/// `depth` requests as [`crate::Ring::new`] makes it: `entries` SQEs of 128
/// bytes, twice as many 32-byte CQEs, the SQ index array and the ring
/// header, each area rounded up to pages, and one page of margin.
pub fn ring_bytes(depth: u32) -> u64 {
    let entries = u64::from(depth.saturating_add(1)).next_power_of_two();
    let pages = |bytes: u64| bytes.div_ceil(PAGE_SIZE as u64);
    let header = 1024;
    let rings = pages(header + 2 * entries * 32 + entries * 4);
    let sqes = pages(entries * 128);
    (rings + sqes + 1) * PAGE_SIZE as u64
}

/// Bytes charged for `slots` slots of `slot_size` and their ring; `None`
/// when that does not fit in a `u64`.
pub fn need(slots: u32, slot_size: usize) -> Option<u64> {
    u64::from(slots).checked_mul(slot_size as u64)?.checked_add(ring_bytes(slots))
}

/// Bytes charged for `slots` slots of `slot_size` read by `shards` rings
/// (see [`crate::shard`]: each ring holds its share of the slots, plus a
/// wait and a cancel); one shard is [`need`]. `None` on overflow.
pub fn need_sharded(slots: u32, slot_size: usize, shards: u32) -> Option<u64> {
    if shards <= 1 {
        return need(slots, slot_size);
    }
    let per_ring = ring_bytes(slots.div_ceil(shards).saturating_add(2));
    u64::from(slots).checked_mul(slot_size as u64)?.checked_add(per_ring.checked_mul(u64::from(shards))?)
}

/// The most shards, at most `wanted`, whose rings fit `budget` beside
/// `slots` slots of `slot_size` (at least 1: one ring is what [`need`]
/// charges, and its error says what to change).
pub fn fit_shards(slots: u32, slot_size: usize, wanted: u32, budget: Option<u64>) -> u32 {
    let wanted = wanted.clamp(1, slots.max(1));
    let Some(budget) = budget else { return wanted };
    (1..=wanted).rev().find(|&n| need_sharded(slots, slot_size, n).is_some_and(|need| need <= budget)).unwrap_or(1)
}

/// The most slots of `slot_size`, at most `max`, whose [`need`] fits in
/// `budget`; `None` when not even one does.
pub fn fit_slots(slot_size: usize, max: u32, budget: u64) -> Option<u32> {
    // `need` grows with the slot count, so the first fit from the top is the most.
    let mut slots = max.min(u32::try_from(budget / slot_size.max(1) as u64).unwrap_or(u32::MAX));
    while slots > 0 {
        if need(slots, slot_size).is_some_and(|n| n <= budget) {
            return Some(slots);
        }
        slots -= 1;
    }
    None
}

/// A ring that fits `budget`, as close to `slots` slots of `slot_size` as
/// it can: fewer slots of that size, else one slot halved until it fits (a
/// page at least). `None` when not even one page-sized slot fits.
pub fn fitting_ring(slots: u32, slot_size: usize, budget: u64) -> Option<(u32, usize)> {
    let mut size = slot_size.max(PAGE_SIZE);
    loop {
        if let Some(n) = fit_slots(size, slots.max(1), budget) {
            return Some((n, size));
        }
        if size <= PAGE_SIZE {
            return None;
        }
        size = (size / 2).next_multiple_of(PAGE_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_rings_are_judged_as_the_kernel_did() {
        // As `nobody` with 8 MiB on Linux 6.18: 31 x 256 KiB and 63 x 128 KiB
        // registered, 32 x 256 KiB, 8 x 1 MiB and 2040 x 4 KiB did not.
        let limit = 8 << 20;
        for (slots, size, fits) in
            [(31, 256 << 10, true), (63, 128 << 10, true), (4, 1 << 20, true), (32, 256 << 10, false), (8, 1 << 20, false), (2040, 4096, false)]
        {
            assert_eq!(need(slots, size).unwrap() <= limit, fits, "{slots} x {size}");
        }
        assert_eq!(fit_slots(256 << 10, 32, limit), Some(31));
        assert_eq!(fit_slots(1 << 20, 4, limit), Some(4));
    }

    #[test]
    fn fitting_shrinks_the_count_then_the_size() {
        assert_eq!(fitting_ring(32, 256 << 10, u64::MAX), Some((32, 256 << 10)));
        assert_eq!(fitting_ring(32, 256 << 10, 8 << 20), Some((31, 256 << 10)));
        // 64 KiB: one 256 KiB slot does not fit, one of 32 KiB does.
        let (n, size) = fitting_ring(32, 256 << 10, 64 << 10).unwrap();
        assert_eq!(n, 1);
        assert!(need(n, size).unwrap() <= 64 << 10 && need(1, size * 2).unwrap() > 64 << 10, "{size}");
        assert_eq!(fitting_ring(32, 256 << 10, 4096), None);
        assert_eq!(fit_slots(4096, 0, u64::MAX), None);
    }

    #[test]
    fn shards_are_charged_a_ring_each_and_cut_to_fit() {
        assert_eq!(need_sharded(31, 256 << 10, 1), need(31, 256 << 10));
        let two = need_sharded(30, 256 << 10, 2).unwrap();
        assert_eq!(two, 30 * (256 << 10) + 2 * ring_bytes(17));
        assert_eq!(fit_shards(32, 256 << 10, 4, None), 4);
        assert_eq!(fit_shards(2, 256 << 10, 16, None), 2, "never more shards than slots");
        // 31 slots of 256 KiB leave 256 KiB of 8 MiB: room for 21 small rings
        // of three pages, not for one per slot.
        let n = fit_shards(31, 256 << 10, 64, Some(8 << 20));
        assert_eq!(n, 21);
        assert!(need_sharded(31, 256 << 10, n).unwrap() <= 8 << 20 && need_sharded(31, 256 << 10, n + 1).unwrap() > 8 << 20);
        assert_eq!(fit_shards(32, 256 << 10, 4, Some(1 << 20)), 1, "nothing fits: one ring, whose error says why");
    }

    #[test]
    fn sizes_that_overflow_are_refused_not_wrapped() {
        assert_eq!(need(u32::MAX, usize::MAX), None);
        assert!(ring_bytes(u32::MAX) > 0);
    }
}
