//! The position-dependent checksum every consumer computes over a slot.
//!
//! # Definition
//!
//! The bytes are read as little-endian 32-bit words; a final partial word is
//! padded with zero bytes. For the word `w` at index `j` (counted from the
//! start of the slot, wrapping at 2^32), with all arithmetic on `u32`
//! wrapping:
//!
//! ```text
//! k  = j * 0x9E3779B9
//! x  = (w ^ k) * 0x85EBCA6B;  x ^= x >> 13
//! y  = (x + k) * 0xC2B2AE35;  y ^= y >> 16
//! a += x
//! b += y
//! ```
//!
//! and the checksum of `len` bytes is `fmix64(((b as u64) << 32 | a as u64)
//! ^ len * 0x9E3779B97F4A7C15)` with MurmurHash3's 64-bit finaliser.
//!
//! # Why this shape
//!
//! Each word's contribution depends on its value *and* its index, and the
//! contributions are summed. So any GPU thread can take any words, as long
//! as it knows their index, and the partial sums ([`Lanes`]) can be reduced in
//! any order and any tree shape: per-thread, per-warp, per-block, then across
//! blocks. A block that is moved lands at other indices and contributes
//! differently; a missing, torn or stale block changes its words; a short
//! slot changes the length. Only 32-bit integer multiply, xor, shift and add
//! are needed, which every GPU shading language has.
//!
//! A file or byte range read through many slots is summarised by a
//! [`StreamDigest`], which combines each segment's checksum with the
//! segment's index.

// The constants are public so that GPU implementations can be generated
// from them (the Vulkan backend's shader prelude is) rather than copied.

/// Multiplier that turns a word index into its key (2^32 / golden ratio).
pub const INDEX_KEY: u32 = 0x9E37_79B9;
/// Multiplier of a word's first mix.
pub const MUL_A: u32 = 0x85EB_CA6B;
/// Multiplier of a word's second mix.
pub const MUL_B: u32 = 0xC2B2_AE35;
/// Multiplier of the length (and of a segment index in [`StreamDigest`]).
pub const LEN_KEY: u64 = 0x9E37_79B9_7F4A_7C15;
/// [`fmix64`]'s first multiplier.
pub const FMIX_1: u64 = 0xFF51_AFD7_ED55_8CCD;
/// [`fmix64`]'s second multiplier.
pub const FMIX_2: u64 = 0xC4CE_B9FE_1A85_EC53;

/// The two running sums of the checksum, before the length is folded in.
///
/// Lanes of disjoint parts of one slot add up (`+`, wrapping) to the lanes
/// of the whole, which is what a parallel consumer relies on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lanes {
    /// Sum of the first mix of every word.
    pub a: u32,
    /// Sum of the second mix of every word.
    pub b: u32,
}

/// Words per block of the wide loop: sixteen independent lanes, which fill
/// one AVX-512 register or two AVX2 ones when the compiler vectorises it.
const BLOCK_WORDS: usize = 16;

/// Mix word `w` whose key (its index times [`INDEX_KEY`]) is `k`.
#[inline(always)]
fn mix_keyed(w: u32, k: u32) -> (u32, u32) {
    let mut x = (w ^ k).wrapping_mul(MUL_A);
    x ^= x >> 13;
    let mut y = x.wrapping_add(k).wrapping_mul(MUL_B);
    y ^= y >> 16;
    (x, y)
}

#[inline(always)]
fn word_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl Lanes {
    /// The lanes of `bytes`, whose first byte is word number `first_word` of
    /// the slot. Every part but the slot's last must be a whole number of
    /// words; a trailing partial word is zero-padded.
    ///
    /// The body runs in blocks of sixteen words with one running sum per
    /// lane and column, a shape the compiler turns into vector code (the
    /// sums are wrapping additions, so the order does not matter). It is
    /// `inline(always)` so that a caller compiled for wider vectors (a
    /// `#[target_feature]` function, see `gpuring-host`) gets them.
    #[inline(always)]
    pub fn over(bytes: &[u8], first_word: u32) -> Lanes {
        const STEP: u32 = (BLOCK_WORDS as u32).wrapping_mul(INDEX_KEY);
        let mut keys = [0u32; BLOCK_WORDS];
        for (l, k) in keys.iter_mut().enumerate() {
            *k = first_word.wrapping_add(l as u32).wrapping_mul(INDEX_KEY);
        }
        let mut sum_a = [0u32; BLOCK_WORDS];
        let mut sum_b = [0u32; BLOCK_WORDS];
        let mut blocks = bytes.chunks_exact(BLOCK_WORDS * 4);
        for block in &mut blocks {
            for l in 0..BLOCK_WORDS {
                let (x, y) = mix_keyed(word_at(block, 4 * l), keys[l]);
                sum_a[l] = sum_a[l].wrapping_add(x);
                sum_b[l] = sum_b[l].wrapping_add(y);
                keys[l] = keys[l].wrapping_add(STEP);
            }
        }
        let mut a = sum_a.iter().fold(0u32, |s, v| s.wrapping_add(*v));
        let mut b = sum_b.iter().fold(0u32, |s, v| s.wrapping_add(*v));
        // The tail: fewer than sixteen words, the last maybe partial.
        let rest = blocks.remainder();
        let mut k = keys[0];
        let mut words = rest.chunks_exact(4);
        for word in &mut words {
            let (x, y) = mix_keyed(word_at(word, 0), k);
            a = a.wrapping_add(x);
            b = b.wrapping_add(y);
            k = k.wrapping_add(INDEX_KEY);
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 4];
            last[..tail.len()].copy_from_slice(tail);
            let (x, y) = mix_keyed(u32::from_le_bytes(last), k);
            a = a.wrapping_add(x);
            b = b.wrapping_add(y);
        }
        Lanes { a, b }
    }

    /// Fold in the total length (in bytes) and finish.
    #[inline]
    pub fn finish(self, len: u64) -> u64 {
        fmix64(((self.b as u64) << 32 | self.a as u64) ^ len.wrapping_mul(LEN_KEY))
    }
}

impl core::ops::Add for Lanes {
    type Output = Lanes;

    /// The lanes of two disjoint parts together.
    #[inline]
    fn add(self, other: Lanes) -> Lanes {
        Lanes { a: self.a.wrapping_add(other.a), b: self.b.wrapping_add(other.b) }
    }
}

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(FMIX_1);
    h ^= h >> 33;
    h = h.wrapping_mul(FMIX_2);
    h ^= h >> 33;
    h
}

/// The checksum of one slot's bytes.
pub fn slot_checksum(bytes: &[u8]) -> u64 {
    Lanes::over(bytes, 0).finish(bytes.len() as u64)
}

/// A digest of a byte stream read in fixed-size segments (one slot each).
///
/// It combines each segment's [`slot_checksum`] with the segment's index, so
/// segments can be added in any order (completions arrive out of order) but
/// a segment attributed to the wrong position changes the digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamDigest {
    sum: u64,
    segments: u64,
    bytes: u64,
}

impl StreamDigest {
    /// An empty stream.
    pub const fn new() -> Self {
        Self { sum: 0, segments: 0, bytes: 0 }
    }

    /// Add segment number `index` (counted from the stream's start), `len`
    /// bytes long, whose slot checksum is `checksum`.
    pub fn add_segment(&mut self, index: u64, checksum: u64, len: u64) {
        let keyed = fmix64(checksum ^ index.wrapping_add(1).wrapping_mul(LEN_KEY));
        self.sum = self.sum.wrapping_add(keyed);
        self.segments = self.segments.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len);
    }

    /// How many segments were added.
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// How many bytes the added segments hold.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest value.
    pub fn finish(&self) -> u64 {
        fmix64(self.sum ^ fmix64(self.bytes ^ self.segments.rotate_left(32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
    }

    /// The reference, written as plainly as the definition in the module docs.
    fn reference(bytes: &[u8]) -> u64 {
        let (mut a, mut b) = (0u32, 0u32);
        for (j, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            let w = u32::from_le_bytes(w);
            let k = (j as u32).wrapping_mul(0x9E3779B9);
            let mut x = (w ^ k).wrapping_mul(0x85EBCA6B);
            x ^= x >> 13;
            let mut y = x.wrapping_add(k).wrapping_mul(0xC2B2AE35);
            y ^= y >> 16;
            a = a.wrapping_add(x);
            b = b.wrapping_add(y);
        }
        fmix64(((b as u64) << 32 | a as u64) ^ (bytes.len() as u64).wrapping_mul(0x9E3779B97F4A7C15))
    }

    /// Frozen test vectors: GPU consumers are checked against these.
    #[test]
    fn test_vectors() {
        let vectors: [(&[u8], u64); 5] = [
            (b"", 0x0000000000000000),
            (b"a", 0x4CB8708A14712DD0),
            (b"gpuring", 0x8FA08EC8A6C7D556),
            (&[0u8; 4096], 0x1BD9955405FB4DCE),
            (&[0xFFu8; 8], 0xD7930DEE0F8524B2),
        ];
        for (input, want) in vectors {
            let got = slot_checksum(input);
            assert_eq!(got, reference(input), "definition and implementation differ");
            assert_eq!(got, want, "vector {:?}: got {got:#018X}", &input[..input.len().min(8)]);
        }
        // A slot-sized vector: 1 MiB natively, where Miri (about a million
        // times slower) checks the same code on the small vectors above.
        if !cfg!(miri) {
            assert_eq!(slot_checksum(&pattern(1 << 20)), 0xA3703335AF3AE6E5);
        }
    }

    #[test]
    fn position_dependent() {
        let data = pattern(4 * 4096);
        let base = slot_checksum(&data);
        // Swap two 4 KiB blocks: same bytes, other positions.
        let mut moved = data.clone();
        moved[..4096].copy_from_slice(&data[4096..8192]);
        moved[4096..8192].copy_from_slice(&data[..4096]);
        assert_ne!(slot_checksum(&moved), base);
        // A missing block (short slot).
        assert_ne!(slot_checksum(&data[..3 * 4096]), base);
        // A torn block: half of block 2 stale (zeros).
        let mut torn = data.clone();
        torn[2 * 4096 + 2048..3 * 4096].fill(0);
        assert_ne!(slot_checksum(&torn), base);
        // Trailing zeros are not the same as a shorter slot.
        assert_ne!(slot_checksum(&[1, 0]), slot_checksum(&[1]));
    }

    proptest! {
        // Under Miri each case costs seconds: a few cases check for UB there,
        // the native run covers the input space.
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 256 }))]

        #[test]
        fn lanes_split_anywhere_on_a_word_and_add_up(data in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..500) {
            let cut = (cut * 4).min(data.len() / 4 * 4);
            let whole = Lanes::over(&data, 0);
            let parts = Lanes::over(&data[..cut], 0) + Lanes::over(&data[cut..], (cut / 4) as u32);
            prop_assert_eq!(whole, parts);
            prop_assert_eq!(whole.finish(data.len() as u64), reference(&data));
        }

        #[test]
        fn single_bit_flip_changes_checksum(data in proptest::collection::vec(any::<u8>(), 1..600), bit in any::<usize>()) {
            let mut flipped = data.clone();
            let bit = bit % (data.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert_ne!(slot_checksum(&data), slot_checksum(&flipped));
        }
    }

    #[test]
    fn stream_digest_is_order_free_but_position_bound() {
        let segs = [(0u64, 11u64, 4096u64), (1, 22, 4096), (2, 33, 100)];
        let mut fwd = StreamDigest::new();
        let mut back = StreamDigest::new();
        for s in segs {
            fwd.add_segment(s.0, s.1, s.2);
        }
        for s in segs.iter().rev() {
            back.add_segment(s.0, s.1, s.2);
        }
        assert_eq!(fwd.finish(), back.finish());
        assert_eq!((fwd.segments(), fwd.bytes()), (3, 8292));
        let mut swapped = StreamDigest::new();
        swapped.add_segment(0, 22, 4096);
        swapped.add_segment(1, 11, 4096);
        swapped.add_segment(2, 33, 100);
        assert_ne!(fwd.finish(), swapped.finish());
        let mut missing = StreamDigest::new();
        missing.add_segment(0, 11, 4096);
        missing.add_segment(2, 33, 100);
        assert_ne!(fwd.finish(), missing.finish());
        assert_ne!(StreamDigest::new().finish(), fwd.finish());
    }
}
