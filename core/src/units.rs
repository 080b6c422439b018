//! Byte sizes as people write and read them.

use core::fmt;

/// Displays a byte count as people read it: `4096 bytes` stays exact below
/// 1 KiB, then `4 KiB`, `256 MiB`, `1.5 GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} bytes", self.0)
        } else if value == (value as u64) as f64 {
            write!(f, "{} {}", value as u64, UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// Parse a size such as `4096`, `64K`, `4M`, `4MiB`, `1G` (binary units,
/// case-insensitive, optional `i`/`iB`/`B` suffix). `None` if malformed or
/// too large.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().ok()?;
    let (letter, suffix) = match unit.trim().as_bytes().split_first() {
        None => (b'B', &[][..]),
        Some((&letter, suffix)) => (letter.to_ascii_uppercase(), suffix),
    };
    let shift = match letter {
        b'B' if suffix.is_empty() => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        _ => return None,
    };
    let suffix_ok = [&b""[..], b"B", b"i", b"iB"].iter().any(|s| suffix.eq_ignore_ascii_case(s));
    if !suffix_ok {
        return None;
    }
    value.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn displays() {
        assert_eq!(Bytes(0).to_string(), "0 bytes");
        assert_eq!(Bytes(1023).to_string(), "1023 bytes");
        assert_eq!(Bytes(4096).to_string(), "4 KiB");
        assert_eq!(Bytes(256 << 20).to_string(), "256 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn parses() {
        for (text, want) in [
            ("4096", 4096),
            ("64K", 65536),
            ("4M", 4 << 20),
            ("4MiB", 4 << 20),
            ("4mb", 4 << 20),
            ("1G", 1 << 30),
            ("1gi", 1 << 30),
            ("10B", 10),
            (" 2T ", 2 << 40),
        ] {
            assert_eq!(parse_size(text), Some(want), "{text}");
        }
        for bad in ["", "M", "4X", "4MX", "-1", "99999999999T", "4 M B"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
