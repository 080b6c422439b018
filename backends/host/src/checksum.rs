//! The core checksum, compiled for the widest vector unit this CPU has.
//!
//! [`gpuring_core::checksum::Lanes::over`] is written so the compiler can
//! vectorise it, but a `no_std` crate built for baseline x86-64 only gets
//! SSE2, which has no 32-bit vector multiply. Here the same code is
//! instantiated inside `#[target_feature]` functions for AVX-512 and AVX2 and
//! picked at run time; the result is bit-for-bit the core's.

use gpuring_core::checksum::Lanes;

/// The instruction set [`lanes`] runs on this CPU.
pub fn flavour() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    "portable"
}

/// [`Lanes::over`] on the widest vectors available.
#[inline]
pub fn lanes(bytes: &[u8], first_word: u32) -> Lanes {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked on the line above.
            return unsafe { lanes_avx512(bytes, first_word) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked on the line above.
            return unsafe { lanes_avx2(bytes, first_word) };
        }
    }
    Lanes::over(bytes, first_word)
}

/// The checksum of one slot's bytes; equal to [`gpuring_core::slot_checksum`].
#[inline]
pub fn slot_checksum(bytes: &[u8]) -> u64 {
    lanes(bytes, 0).finish(bytes.len() as u64)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn lanes_avx512(bytes: &[u8], first_word: u32) -> Lanes {
    Lanes::over(bytes, first_word)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_avx2(bytes: &[u8], first_word: u32) -> Lanes {
    Lanes::over(bytes, first_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flavour_equals_the_core() {
        let data: Vec<u8> = (0..(1 << 16) + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for (start, end, first) in [(0, data.len(), 0), (0, 4, 0), (64, 64 + 65 * 4, 16), (8, data.len() - 3, 2)] {
            let part = &data[start..end];
            let want = Lanes::over(part, first);
            assert_eq!(lanes(part, first), want, "{} on {start}..{end}", flavour());
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 is present.
                    assert_eq!(unsafe { lanes_avx2(part, first) }, want);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F is present.
                    assert_eq!(unsafe { lanes_avx512(part, first) }, want);
                }
            }
        }
        assert_eq!(slot_checksum(&data), gpuring_core::slot_checksum(&data));
    }
}
