//! Slot geometry: one staging region split into N equal slots.
//!
//! A slot is the unit of transfer: one read (or one NVMe command) lands in
//! one slot, and the consumer releases one slot at a time. Every slot starts
//! on a page boundary because the region does and every slot's size is a
//! multiple of [`PAGE_SIZE`]; for direct I/O the size must also be a multiple
//! of the device's logical block size ([`SlotGeometry::check_block_size`]).

use core::fmt;
use core::ops::Range;

/// The page size gpuring assumes for slot alignment (x86-64 and most arm64).
pub const PAGE_SIZE: usize = 4096;

/// The staging region's shape: `slot_count` slots of `slot_size` bytes each.
///
/// Constructed only through [`SlotGeometry::new`] or
/// [`SlotGeometry::from_region`], so every value is valid: at least one
/// slot, a non-zero page-multiple slot size, and a region length that fits
/// in `usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotGeometry {
    slot_count: u32,
    slot_size: usize,
}

/// Why a slot geometry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// A region needs at least one slot.
    ZeroSlots,
    /// A slot of zero bytes can hold nothing.
    ZeroSlotSize,
    /// The region length is not `slot_count` times a whole slot size.
    UnevenRegion {
        /// The region length in bytes.
        region_len: usize,
        /// The requested number of slots.
        slot_count: u32,
    },
    /// Slots must start on page boundaries, so their size must be a page multiple.
    NotPageMultiple {
        /// The requested slot size in bytes.
        slot_size: usize,
    },
    /// Direct I/O needs slot sizes that are multiples of the logical block size.
    NotBlockMultiple {
        /// The slot size in bytes.
        slot_size: usize,
        /// The device's logical block (or direct-I/O offset) alignment in bytes.
        block_size: u32,
    },
    /// `slot_count * slot_size` does not fit in the address space.
    RegionTooLarge {
        /// The requested number of slots.
        slot_count: u32,
        /// The requested slot size in bytes.
        slot_size: usize,
    },
    /// A slot index past the last slot.
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
        /// How many slots there are.
        slot_count: u32,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSlots => write!(
                f,
                "the staging region has 0 slots. Fix: ask for at least 1 slot (for example 32)"
            ),
            Self::ZeroSlotSize => write!(
                f,
                "a slot of 0 bytes can hold nothing. Fix: use a slot size of at least {PAGE_SIZE} bytes (for example 1 MiB)"
            ),
            Self::UnevenRegion { region_len, slot_count } => write!(
                f,
                "a region of {region_len} bytes does not split into {slot_count} equal slots. Fix: make the region a multiple of the slot count, or pick a slot count that divides it"
            ),
            Self::NotPageMultiple { slot_size } => write!(
                f,
                "slot size {slot_size} is not a multiple of the {PAGE_SIZE}-byte page. Fix: round it to {} or {} bytes",
                round_down(slot_size, PAGE_SIZE).max(PAGE_SIZE),
                round_up(slot_size, PAGE_SIZE)
            ),
            Self::NotBlockMultiple { slot_size, block_size } => write!(
                f,
                "slot size {slot_size} is not a multiple of the device's {block_size}-byte direct-I/O block. Fix: use a slot size that is a multiple of {block_size}, or read without O_DIRECT"
            ),
            Self::RegionTooLarge { slot_count, slot_size } => write!(
                f,
                "{slot_count} slots of {slot_size} bytes do not fit in memory. Fix: use fewer or smaller slots"
            ),
            Self::IndexOutOfRange { index, slot_count } => write!(
                f,
                "slot {index} does not exist: there are {slot_count} slots (0..{slot_count}). Fix: use an index below {slot_count}"
            ),
        }
    }
}

impl core::error::Error for GeometryError {}

fn round_down(value: usize, to: usize) -> usize {
    value - value % to
}

fn round_up(value: usize, to: usize) -> usize {
    round_down(value, to).saturating_add(if value.is_multiple_of(to) { 0 } else { to })
}

impl SlotGeometry {
    /// `slot_count` slots of `slot_size` bytes each.
    pub fn new(slot_count: u32, slot_size: usize) -> Result<Self, GeometryError> {
        if slot_count == 0 {
            return Err(GeometryError::ZeroSlots);
        }
        if slot_size == 0 {
            return Err(GeometryError::ZeroSlotSize);
        }
        if !slot_size.is_multiple_of(PAGE_SIZE) {
            return Err(GeometryError::NotPageMultiple { slot_size });
        }
        if slot_size.checked_mul(slot_count as usize).is_none() {
            return Err(GeometryError::RegionTooLarge { slot_count, slot_size });
        }
        Ok(Self { slot_count, slot_size })
    }

    /// Split a region of `region_len` bytes into `slot_count` equal slots.
    pub fn from_region(region_len: usize, slot_count: u32) -> Result<Self, GeometryError> {
        if slot_count == 0 {
            return Err(GeometryError::ZeroSlots);
        }
        if !region_len.is_multiple_of(slot_count as usize) {
            return Err(GeometryError::UnevenRegion { region_len, slot_count });
        }
        Self::new(slot_count, region_len / slot_count as usize)
    }

    /// Check that this geometry suits direct I/O with `block_size`-byte blocks.
    pub fn check_block_size(&self, block_size: u32) -> Result<(), GeometryError> {
        if block_size == 0 || !self.slot_size.is_multiple_of(block_size as usize) {
            return Err(GeometryError::NotBlockMultiple { slot_size: self.slot_size, block_size });
        }
        Ok(())
    }

    /// How many slots the region holds.
    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// The size of every slot in bytes.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// The whole region's length in bytes.
    pub fn region_len(&self) -> usize {
        // Cannot overflow: checked in `new`.
        self.slot_size * self.slot_count as usize
    }

    /// The byte range of slot `index` within the region.
    pub fn slot_range(&self, index: u32) -> Result<Range<usize>, GeometryError> {
        if index >= self.slot_count {
            return Err(GeometryError::IndexOutOfRange { index, slot_count: self.slot_count });
        }
        let start = index as usize * self.slot_size;
        Ok(start..start + self.slot_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn splits_a_region_into_equal_page_aligned_slots() {
        let g = SlotGeometry::from_region(256 << 20, 64).unwrap();
        assert_eq!(g.slot_count(), 64);
        assert_eq!(g.slot_size(), 4 << 20);
        assert_eq!(g.region_len(), 256 << 20);
        assert_eq!(g.slot_range(0).unwrap(), 0..4 << 20);
        assert_eq!(g.slot_range(63).unwrap(), (252 << 20)..(256 << 20));
    }

    #[test]
    fn rejects_bad_shapes_with_a_fix() {
        let cases = [
            (SlotGeometry::new(0, 4096), GeometryError::ZeroSlots),
            (SlotGeometry::new(4, 0), GeometryError::ZeroSlotSize),
            (SlotGeometry::from_region(10 * 4096 + 1, 10), GeometryError::UnevenRegion { region_len: 40961, slot_count: 10 }),
            (SlotGeometry::new(4, 4097), GeometryError::NotPageMultiple { slot_size: 4097 }),
            (SlotGeometry::new(u32::MAX, usize::MAX - 4095), GeometryError::RegionTooLarge { slot_count: u32::MAX, slot_size: usize::MAX - 4095 }),
        ];
        for (got, want) in cases {
            assert_eq!(got, Err(want));
            let text = want.to_string();
            assert!(text.contains("Fix:"), "{text}");
        }
        assert!(GeometryError::NotPageMultiple { slot_size: 5000 }.to_string().contains("4096 or 8192"));
    }

    #[test]
    fn slot_index_out_of_range_is_an_error() {
        let g = SlotGeometry::new(3, 4096).unwrap();
        let err = g.slot_range(3).unwrap_err();
        assert_eq!(err, GeometryError::IndexOutOfRange { index: 3, slot_count: 3 });
        assert!(err.to_string().contains("below 3"));
    }

    #[test]
    fn direct_io_needs_block_multiples() {
        let g = SlotGeometry::new(2, 4096).unwrap();
        assert!(g.check_block_size(512).is_ok());
        assert!(g.check_block_size(4096).is_ok());
        let err = g.check_block_size(8192).unwrap_err();
        assert!(err.to_string().contains("multiple of 8192"));
        assert!(g.check_block_size(0).is_err());
    }
}
