//! The io_queue as a contract for code in other languages: a C header for
//! CUDA and HIP kernels (and C or C++ host code), and a WGSL module for
//! compute shaders, both written here from the Rust definitions in
//! [`crate::io_queue`], so they cannot drift from it.
//!
//! `gpuring header --lang c|wgsl` prints them, and copies ship with this
//! crate as `contract/gpuring_io_queue.h` and
//! `contract/gpuring_io_queue.wgsl` (a test keeps the copies equal to what
//! this module writes). gpuring's own GPU consumers are built on them: the
//! CUDA/HIP kernel's source starts with the C header, the Vulkan shader's
//! with the WGSL module.
//!
//! The contract is versioned by [`VERSION`], which is also the queue
//! header's `version` word: a change to the layout or the protocol changes
//! it.

use core::fmt::{self, Write};

use crate::io_queue::{offsets, CONSUMED, ENTRY_SIZE, FAILED_OUT_OF_STEP, FAILED_REJECTED, HEADER_SIZE, MAGIC, REJECTED, SKIPPED};

/// The contract's version: the io_queue header's `version` word.
pub const VERSION: u32 = crate::io_queue::VERSION;

/// The protocol, in words, shared by both renderings (each line is prefixed
/// with the language's comment marker).
const PROTOCOL: &str = "\
gpuring io_queue contract: the completion queue that gpuring's driver (the
producer, on the host) fills and a consumer (your kernel or shader, or host
code) drains. Generated from gpuring-core; do not edit.

Memory. One region, 64-byte aligned, that both sides see coherently (host
pages mapped into the device): a header of HEADER bytes, then `capacity`
entries of ENTRY bytes each (`capacity` is a power of two, in the header).
The entry for position p starts at HEADER + ENTRY * (p & (capacity - 1)).
Every field is little-endian and read and written whole (atomically);
64-bit fields are two 32-bit words, low word first. The slots are a second
region: `slot_count` slots of `slot_size` bytes, slot s at s * slot_size.

Positions are 32-bit counters that wrap at 2^32: compare two only through
their difference as a signed 32-bit number, (int)(a - b) > 0, and walk a
batch as first + i for i in 0 .. count, never by comparing raw values.

Producer (gpuring), for position p: write the entry's slot, status, kind,
bytes, offset and tag; then store seq = p + 1 with release; then, for the
batch, store producer = p + 1 with release.

Consumer (yours), for position p, starting at the header's `consumer`:
  1. wait until (int)(producer - p) > 0, loading producer with acquire;
  2. check seq == p + 1 (anything else breaks the protocol: reject it);
  3. if status == 0, the slot holds `bytes` valid bytes from `offset`
     (a byte offset in a file, or an NVMe LBA, see `kind`); read them;
     if status != 0 the read failed (a negative errno or an NVMe status):
     skip it;
  4. write result (yours to define; gpuring's consumers store a checksum)
     and consumer_status: CONSUMED, SKIPPED, or REJECTED;
  5. store consumer = p + 1 with release. That store hands the slot back:
     do not read it any more. One store may release many positions, but
     always in order, and `consumer` never passes `producer`.
Acquire and release span the host and the device: on CUDA and HIP, a
volatile access followed (load) or preceded (store) by
__threadfence_system(); in WGSL, atomicLoad/atomicStore on a storage buffer
with host-coherent memory, and the host reads results only after the
dispatch's fence (gpuring's Vulkan consumer stores `consumer` from the host
once the fence has signalled).

Failure: a consumer that cannot go on stores a non-zero code in
consumer_failed (FAILED_REJECTED, FAILED_OUT_OF_STEP, or one of its own)
with release and releases nothing more; the producer stops
and reports it, with the entry whose consumer_status is REJECTED.
Finished: closed == 1 (the producer publishes nothing more) and
consumer == producer.
The *_sleeping words belong to host threads; device code never writes them.
";

/// Named values the contract defines, as (name, value, what it is).
fn values() -> [(&'static str, u64, &'static str); 6] {
    [
        ("VERSION", VERSION as u64, "contract and header version"),
        ("MAGIC", MAGIC as u64, "the header's magic word"),
        ("HEADER_BYTES", HEADER_SIZE as u64, "header size"),
        ("ENTRY_BYTES", ENTRY_SIZE as u64, "entry size"),
        ("KIND_FILE", crate::io_queue::EntryKind::File as u64, "kind: offset is a byte offset in a file"),
        ("KIND_LBA", crate::io_queue::EntryKind::Lba as u64, "kind: offset is an NVMe logical block address"),
    ]
}

/// Byte offsets of the header's fields: (name, offset, bits).
const HEADER_FIELDS: [(&str, usize, u32); 10] = [
    ("MAGIC", offsets::HEADER_MAGIC, 32),
    ("VERSION", offsets::HEADER_VERSION, 32),
    ("CAPACITY", offsets::HEADER_CAPACITY, 32),
    ("ENTRY_SIZE", offsets::HEADER_ENTRY_SIZE, 32),
    ("CLOSED", offsets::HEADER_CLOSED, 32),
    ("PRODUCER", offsets::HEADER_PRODUCER, 32),
    ("CONSUMER_SLEEPING", offsets::HEADER_CONSUMER_SLEEPING, 32),
    ("CONSUMER", offsets::HEADER_CONSUMER, 32),
    ("PRODUCER_SLEEPING", offsets::HEADER_PRODUCER_SLEEPING, 32),
    ("CONSUMER_FAILED", offsets::HEADER_CONSUMER_FAILED, 32),
];

/// Byte offsets of an entry's fields: (name, offset, bits).
const ENTRY_FIELDS: [(&str, usize, u32); 9] = [
    ("SEQ", offsets::ENTRY_SEQ, 32),
    ("SLOT", offsets::ENTRY_SLOT, 32),
    ("STATUS", offsets::ENTRY_STATUS, 32),
    ("KIND", offsets::ENTRY_KIND, 32),
    ("BYTES", offsets::ENTRY_BYTES, 64),
    ("OFFSET", offsets::ENTRY_OFFSET, 64),
    ("TAG", offsets::ENTRY_TAG, 64),
    ("RESULT", offsets::ENTRY_RESULT, 64),
    ("CONSUMER_STATUS", offsets::ENTRY_CONSUMER_STATUS, 32),
];

const STATUSES: [(&str, u32, &str); 5] = [
    ("CONSUMED", CONSUMED, "consumer_status: the slot was consumed"),
    ("SKIPPED", SKIPPED, "consumer_status: the read had failed, the slot was not read"),
    ("REJECTED", REJECTED, "consumer_status: the entry broke the protocol (the consumer failed)"),
    ("FAILED_REJECTED", FAILED_REJECTED, "consumer_failed: an entry was rejected (any non-zero code fails the queue)"),
    ("FAILED_OUT_OF_STEP", FAILED_OUT_OF_STEP, "consumer_failed: a batch did not start at the header's consumer"),
];

/// A value as the renderings write it: the magic word in hex, the rest in decimal.
struct Number(&'static str, u64);

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "MAGIC" | "FAILED_REJECTED" | "FAILED_OUT_OF_STEP" => write!(f, "{:#x}", self.1),
            _ => write!(f, "{}", self.1),
        }
    }
}

/// The protocol text with the sizes filled in, each line after the
/// language's comment `marker`.
fn write_protocol(w: &mut dyn Write, marker: &str) -> fmt::Result {
    for line in PROTOCOL.lines() {
        match line {
            "" => writeln!(w, "{marker}")?,
            line => writeln!(w, "{marker} {}", ProtocolLine(line))?,
        }
    }
    Ok(())
}

struct ProtocolLine(&'static str);

impl fmt::Display for ProtocolLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let (word, value) = match (rest.find("HEADER"), rest.find("ENTRY")) {
                (Some(h), Some(e)) if e < h => (e, ENTRY_SIZE),
                (Some(h), _) => (h, HEADER_SIZE),
                (None, Some(e)) => (e, ENTRY_SIZE),
                (None, None) => return f.write_str(rest),
            };
            let name = if value == HEADER_SIZE { "HEADER" } else { "ENTRY" };
            f.write_str(&rest[..word])?;
            write!(f, "{value}")?;
            rest = &rest[word + name.len()..];
        }
        Ok(())
    }
}

/// Write the C header (for CUDA, HIP, C and C++): the protocol as a
/// comment, then `GPURING_*` constants: sizes, byte offsets of every field
/// (`GPURING_H_*` in the header, `GPURING_E_*` in an entry), the
/// consumer statuses, and `GPURING_ENTRY_OFFSET(position, capacity)`.
pub fn write_c_header(w: &mut dyn Write) -> fmt::Result {
    writeln!(w, "/*")?;
    write_protocol(w, " *")?;
    writeln!(w, " */")?;
    writeln!(w, "#ifndef GPURING_IO_QUEUE_H\n#define GPURING_IO_QUEUE_H\n")?;
    for (name, value, what) in values() {
        let value = Number(name, value);
        writeln!(w, "/* {what} */\n#define GPURING_{name} {value}u")?;
    }
    writeln!(w, "\n/* Byte offsets in the header. */")?;
    for (name, offset, bits) in HEADER_FIELDS {
        writeln!(w, "#define GPURING_H_{name} {offset}u /* u{bits} */")?;
    }
    writeln!(w, "\n/* Byte offsets in an entry. */")?;
    for (name, offset, bits) in ENTRY_FIELDS {
        writeln!(
            w,
            "#define GPURING_E_{name} {offset}u /* {} */",
            if bits == 64 {
                "u64"
            } else if name == "STATUS" {
                "i32"
            } else {
                "u32"
            }
        )?;
    }
    writeln!(w)?;
    for (name, value, what) in STATUSES {
        let value = Number(name, value as u64);
        writeln!(w, "/* {what} */\n#define GPURING_{name} {value}u")?;
    }
    writeln!(
        w,
        "\n/* Byte offset of the entry for `position` in a queue of `capacity` entries. */\n#define GPURING_ENTRY_OFFSET(position, capacity) \\\n    (GPURING_HEADER_BYTES + (unsigned long long)((position) & ((capacity) - 1u)) * GPURING_ENTRY_BYTES)"
    )?;
    writeln!(w, "\n#endif /* GPURING_IO_QUEUE_H */")
}

/// Write the WGSL module: the protocol as comments, then `GPURING_*`
/// constants in 32-bit words (bind the queue as `array<atomic<u32>>`):
/// `GPURING_H_*` word indices in the header, `GPURING_E_*` word offsets in
/// an entry (64-bit fields: the low word), the statuses, and
/// `gpuring_entry_word(position, capacity, field)`.
pub fn write_wgsl(w: &mut dyn Write) -> fmt::Result {
    write_protocol(w, "//")?;
    writeln!(w, "//\n// Bind the queue as a storage buffer of `array<atomic<u32>>`: the offsets\n// below are in 32-bit words; a 64-bit field is two words, low word first.\n")?;
    for (name, value, what) in values() {
        let (name, value) = match name {
            "HEADER_BYTES" => ("HEADER_WORDS", value / 4),
            "ENTRY_BYTES" => ("ENTRY_WORDS", value / 4),
            other => (other, value),
        };
        let value = Number(name, value);
        writeln!(w, "// {what}\nconst GPURING_{name}: u32 = {value}u;")?;
    }
    writeln!(w, "\n// Word indices in the header.")?;
    for (name, offset, _) in HEADER_FIELDS {
        writeln!(w, "const GPURING_H_{name}: u32 = {}u;", offset / 4)?;
    }
    writeln!(w, "\n// Word offsets in an entry.")?;
    for (name, offset, bits) in ENTRY_FIELDS {
        writeln!(w, "const GPURING_E_{name}: u32 = {}u;{}", offset / 4, if bits == 64 { " // low word; the high word follows" } else { "" })?;
    }
    writeln!(w)?;
    for (name, value, what) in STATUSES {
        let value = Number(name, value as u64);
        writeln!(w, "// {what}\nconst GPURING_{name}: u32 = {value}u;")?;
    }
    writeln!(
        w,
        "\n// The word index of `field` (a GPURING_E_* offset) in the entry for\n// `position` in a queue of `capacity` entries.\nfn gpuring_entry_word(position: u32, capacity: u32, field: u32) -> u32 {{\n    return GPURING_HEADER_WORDS + (position & (capacity - 1u)) * GPURING_ENTRY_WORDS + field;\n}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;

    fn c() -> String {
        let mut s = String::new();
        write_c_header(&mut s).unwrap();
        s
    }

    fn wgsl() -> String {
        let mut s = String::new();
        write_wgsl(&mut s).unwrap();
        s
    }

    #[test]
    fn the_shipped_copies_are_what_the_definitions_write() {
        // Regenerate with `cargo run -- header --lang c > core/contract/gpuring_io_queue.h`
        // (and `--lang wgsl`) after a change to the io_queue.
        assert_eq!(include_str!("../contract/gpuring_io_queue.h"), c(), "core/contract/gpuring_io_queue.h is stale");
        assert_eq!(include_str!("../contract/gpuring_io_queue.wgsl"), wgsl(), "core/contract/gpuring_io_queue.wgsl is stale");
    }

    #[test]
    fn the_renderings_carry_the_layout() {
        let c = c();
        for want in [
            "#define GPURING_VERSION 1u",
            "#define GPURING_HEADER_BYTES 192u",
            "#define GPURING_MAGIC 0x51524750u",
            "#define GPURING_H_PRODUCER 64u",
            "#define GPURING_H_CONSUMER 128u",
            "#define GPURING_E_RESULT 40u /* u64 */",
            "#define GPURING_E_STATUS 8u /* i32 */",
            "#define GPURING_REJECTED 2u",
            "#define GPURING_FAILED_REJECTED 0x47520001u",
            "192 bytes",
        ] {
            assert!(c.contains(want), "{want} missing from the C header");
        }
        let w = wgsl();
        for want in
            ["const GPURING_HEADER_WORDS: u32 = 48u;", "const GPURING_H_CONSUMER: u32 = 32u;", "const GPURING_E_RESULT: u32 = 10u;", "fn gpuring_entry_word("]
        {
            assert!(w.contains(want), "{want} missing from the WGSL module");
        }
    }
}
