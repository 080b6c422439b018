//! NVMe Read commands for io_uring passthrough (`IORING_OP_URING_CMD`).
//!
//! [`NvmeUringCmd`] is the Linux `struct nvme_uring_cmd` from
//! `include/uapi/linux/nvme_ioctl.h`, field names kept verbatim, its size
//! and every field offset asserted at compile time. [`read_command`] builds
//! an NVMe Read (opcode 0x02) for a range of logical blocks, rejecting block
//! counts the command cannot express or the device cannot transfer in one
//! command (never truncating them). [`NvmeStatus`] decodes the positive
//! `res` the kernel returns when the controller reports an error.
//!
//! A namespace's geometry comes from the device: [`identify_command`] builds
//! the Identify admin command (sent through `NVME_IOCTL_ADMIN_CMD`, whose
//! `struct nvme_passthru_cmd` has the same 72-byte layout, `rsvd2` being its
//! `result`), [`IdentifyNamespace::parse`] reads the size and the formatted
//! block size out of its 4096-byte answer, and [`mdts_bytes`] the controller's
//! largest transfer.

use core::fmt;
use core::mem::{offset_of, size_of};

/// The NVMe I/O command set's Read opcode.
pub const NVME_CMD_READ: u8 = 0x02;

/// `_IOWR('N', 0x80, struct nvme_uring_cmd)`: the `cmd_op` of an I/O command.
pub const NVME_URING_CMD_IO: u32 = ioc(3, b'N', 0x80, size_of::<NvmeUringCmd>() as u32);

/// `_IO('N', 0x40)`: asks a namespace's character device for its namespace id.
pub const NVME_IOCTL_ID: u32 = ioc(0, b'N', 0x40, 0);

/// `_IOWR('N', 0x41, struct nvme_passthru_cmd)`: a synchronous admin command.
pub const NVME_IOCTL_ADMIN_CMD: u32 = ioc(3, b'N', 0x41, size_of::<NvmeUringCmd>() as u32);

/// The admin command set's Identify opcode.
pub const NVME_ADMIN_IDENTIFY: u8 = 0x06;

/// Identify's CNS value for the namespace data structure.
pub const CNS_NAMESPACE: u8 = 0x00;

/// Identify's CNS value for the controller data structure.
pub const CNS_CONTROLLER: u8 = 0x01;

/// Bytes of every Identify data structure.
pub const IDENTIFY_BYTES: usize = 4096;

/// The memory page size MDTS is counted in when the controller's CAP.MPSMIN
/// cannot be read (it lives in the controller's registers, out of a user
/// program's reach); 4 KiB is every controller's usual minimum.
pub const MDTS_UNIT_BYTES: u32 = 4096;

/// The largest block count one Read can carry (NLB is 16 bits, zero-based).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;

/// Linux's `_IOC(dir, type, nr, size)` on x86-64 and arm64.
const fn ioc(dir: u32, ty: u8, nr: u8, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((ty as u32) << 8) | nr as u32
}

/// `struct nvme_uring_cmd`: what follows the SQE header in a 128-byte SQE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeUringCmd {
    /// Command opcode.
    pub opcode: u8,
    /// Command flags.
    pub flags: u8,
    /// Reserved.
    pub rsvd1: u16,
    /// Namespace id.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata buffer address.
    pub metadata: u64,
    /// Data buffer address.
    pub addr: u64,
    /// Metadata buffer length.
    pub metadata_len: u32,
    /// Data buffer length.
    pub data_len: u32,
    /// Command dword 10 (Read: starting LBA, low 32 bits).
    pub cdw10: u32,
    /// Command dword 11 (Read: starting LBA, high 32 bits).
    pub cdw11: u32,
    /// Command dword 12 (Read: zero-based block count in bits 0..16).
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
    /// Timeout in milliseconds (0: the driver's default).
    pub timeout_ms: u32,
    /// Reserved.
    pub rsvd2: u32,
}

const _: () = {
    assert!(size_of::<NvmeUringCmd>() == 72);
    assert!(core::mem::align_of::<NvmeUringCmd>() == 8);
    assert!(offset_of!(NvmeUringCmd, opcode) == 0);
    assert!(offset_of!(NvmeUringCmd, flags) == 1);
    assert!(offset_of!(NvmeUringCmd, rsvd1) == 2);
    assert!(offset_of!(NvmeUringCmd, nsid) == 4);
    assert!(offset_of!(NvmeUringCmd, cdw2) == 8);
    assert!(offset_of!(NvmeUringCmd, cdw3) == 12);
    assert!(offset_of!(NvmeUringCmd, metadata) == 16);
    assert!(offset_of!(NvmeUringCmd, addr) == 24);
    assert!(offset_of!(NvmeUringCmd, metadata_len) == 32);
    assert!(offset_of!(NvmeUringCmd, data_len) == 36);
    assert!(offset_of!(NvmeUringCmd, cdw10) == 40);
    assert!(offset_of!(NvmeUringCmd, cdw11) == 44);
    assert!(offset_of!(NvmeUringCmd, cdw12) == 48);
    assert!(offset_of!(NvmeUringCmd, cdw13) == 52);
    assert!(offset_of!(NvmeUringCmd, cdw14) == 56);
    assert!(offset_of!(NvmeUringCmd, cdw15) == 60);
    assert!(offset_of!(NvmeUringCmd, timeout_ms) == 64);
    assert!(offset_of!(NvmeUringCmd, rsvd2) == 68);
    // Measured on the project's kernels (shared/PLATFORM.md).
    assert!(NVME_URING_CMD_IO == 0xC048_4E80);
    assert!(NVME_IOCTL_ID == 0x4E40);
    assert!(NVME_IOCTL_ADMIN_CMD == 0xC048_4E41);
};

impl NvmeUringCmd {
    /// The command as the kernel reads it: native-endian fields at their
    /// offsets, ready to be copied into a 128-byte SQE's command area.
    pub fn to_bytes(&self) -> [u8; 72] {
        let mut out = [0u8; 72];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(Self, opcode), &[self.opcode]);
        put(offset_of!(Self, flags), &[self.flags]);
        put(offset_of!(Self, rsvd1), &self.rsvd1.to_ne_bytes());
        put(offset_of!(Self, nsid), &self.nsid.to_ne_bytes());
        put(offset_of!(Self, cdw2), &self.cdw2.to_ne_bytes());
        put(offset_of!(Self, cdw3), &self.cdw3.to_ne_bytes());
        put(offset_of!(Self, metadata), &self.metadata.to_ne_bytes());
        put(offset_of!(Self, addr), &self.addr.to_ne_bytes());
        put(offset_of!(Self, metadata_len), &self.metadata_len.to_ne_bytes());
        put(offset_of!(Self, data_len), &self.data_len.to_ne_bytes());
        put(offset_of!(Self, cdw10), &self.cdw10.to_ne_bytes());
        put(offset_of!(Self, cdw11), &self.cdw11.to_ne_bytes());
        put(offset_of!(Self, cdw12), &self.cdw12.to_ne_bytes());
        put(offset_of!(Self, cdw13), &self.cdw13.to_ne_bytes());
        put(offset_of!(Self, cdw14), &self.cdw14.to_ne_bytes());
        put(offset_of!(Self, cdw15), &self.cdw15.to_ne_bytes());
        put(offset_of!(Self, timeout_ms), &self.timeout_ms.to_ne_bytes());
        put(offset_of!(Self, rsvd2), &self.rsvd2.to_ne_bytes());
        out
    }
}

/// A namespace as the device describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub lba_size: u32,
    /// Capacity in logical blocks.
    pub capacity_blocks: u64,
    /// Largest transfer of one command, in bytes.
    pub max_transfer_bytes: u32,
}

/// Why an NVMe Read could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeError {
    /// A read of zero blocks.
    ZeroBlocks,
    /// More blocks than one command's 16-bit count can carry.
    TooManyBlocks {
        /// Blocks asked for.
        blocks: u32,
    },
    /// More bytes than the device transfers in one command.
    OverMaxTransfer {
        /// Bytes asked for.
        bytes: u64,
        /// The device's limit.
        max_transfer_bytes: u32,
    },
    /// The range runs past the end of the namespace.
    PastEnd {
        /// First block asked for.
        slba: u64,
        /// Blocks asked for.
        blocks: u64,
        /// The namespace's capacity in blocks.
        capacity_blocks: u64,
    },
    /// The data buffer is smaller than the blocks asked for.
    BufferTooSmall {
        /// Bytes the blocks need.
        needed: u64,
        /// Bytes the buffer holds.
        len: u32,
    },
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroBlocks => write!(f, "an NVMe read of 0 blocks reads nothing. Fix: ask for at least 1 block"),
            Self::TooManyBlocks { blocks } => write!(
                f,
                "{blocks} blocks do not fit one NVMe Read (at most {MAX_BLOCKS_PER_COMMAND}). Fix: split the range into commands of at most {MAX_BLOCKS_PER_COMMAND} blocks"
            ),
            Self::OverMaxTransfer { bytes, max_transfer_bytes } => write!(
                f,
                "an NVMe read of {bytes} bytes exceeds the device's max transfer of {max_transfer_bytes} bytes. Fix: split the range into commands of at most {max_transfer_bytes} bytes"
            ),
            Self::PastEnd { slba, blocks, capacity_blocks } => write!(
                f,
                "blocks {slba}..{} run past the end of the namespace ({capacity_blocks} blocks). Fix: keep the range below block {capacity_blocks}",
                slba.saturating_add(blocks)
            ),
            Self::BufferTooSmall { needed, len } => write!(
                f,
                "the read needs {needed} bytes but its buffer holds {len}. Fix: read fewer blocks per slot or use larger slots"
            ),
        }
    }
}

impl core::error::Error for NvmeError {}

/// An NVMe Read of `blocks` blocks from `slba` into `buf_len` bytes at `addr`.
pub fn read_command(ns: &Namespace, slba: u64, blocks: u32, addr: u64, buf_len: u32) -> Result<NvmeUringCmd, NvmeError> {
    if blocks == 0 {
        return Err(NvmeError::ZeroBlocks);
    }
    if blocks > MAX_BLOCKS_PER_COMMAND {
        return Err(NvmeError::TooManyBlocks { blocks });
    }
    let bytes = blocks as u64 * ns.lba_size as u64;
    if bytes > ns.max_transfer_bytes as u64 {
        return Err(NvmeError::OverMaxTransfer { bytes, max_transfer_bytes: ns.max_transfer_bytes });
    }
    let end = slba.checked_add(blocks as u64);
    if end.is_none_or(|end| end > ns.capacity_blocks) {
        return Err(NvmeError::PastEnd { slba, blocks: blocks as u64, capacity_blocks: ns.capacity_blocks });
    }
    if bytes > buf_len as u64 {
        return Err(NvmeError::BufferTooSmall { needed: bytes, len: buf_len });
    }
    Ok(NvmeUringCmd {
        opcode: NVME_CMD_READ,
        nsid: ns.nsid,
        addr,
        data_len: bytes as u32,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: (blocks - 1) & 0xFFFF,
        ..NvmeUringCmd::default()
    })
}

/// An Identify admin command for data structure `cns` of namespace `nsid`
/// (0 for the controller), answered into the 4096 bytes at `addr`.
pub fn identify_command(cns: u8, nsid: u32, addr: u64) -> NvmeUringCmd {
    NvmeUringCmd { opcode: NVME_ADMIN_IDENTIFY, nsid, addr, data_len: IDENTIFY_BYTES as u32, cdw10: cns as u32, ..NvmeUringCmd::default() }
}

/// What the Identify Namespace data structure says about reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size (NSZE) in logical blocks.
    pub size_blocks: u64,
    /// The formatted logical block size in bytes.
    pub lba_size: u32,
    /// Metadata bytes per block of the formatted LBA format (0: none).
    pub metadata_bytes: u16,
}

/// Why an Identify answer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyError {
    /// Fewer than 4096 bytes.
    Short {
        /// Bytes given.
        len: usize,
    },
    /// The formatted LBA format index is past the formats the namespace lists.
    BadFormatIndex {
        /// The index in FLBAS.
        index: u8,
        /// Formats listed (NLBAF + 1).
        formats: u8,
    },
    /// The block size exponent is outside 2^9..2^16.
    BadBlockSize {
        /// LBADS.
        lbads: u8,
    },
    /// Metadata is interleaved with the data (extended LBAs), so a read of
    /// N blocks would not be N times the block size of data.
    ExtendedMetadata {
        /// Metadata bytes per block.
        metadata_bytes: u16,
    },
    /// The namespace has no blocks (it is inactive or not attached).
    Empty,
}

impl fmt::Display for IdentifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Short { len } => write!(f, "an Identify answer of {len} bytes is shorter than {IDENTIFY_BYTES}"),
            Self::BadFormatIndex { index, formats } => write!(f, "the formatted LBA format {index} is not among the {formats} the namespace lists"),
            Self::BadBlockSize { lbads } => write!(f, "a logical block size of 2^{lbads} bytes is outside 512 B..64 KiB"),
            Self::ExtendedMetadata { metadata_bytes } => write!(
                f,
                "the namespace is formatted with {metadata_bytes} bytes of metadata interleaved with each block, which gpuring does not read. Fix: format it without extended metadata (nvme format --ms=0)"
            ),
            Self::Empty => write!(f, "the namespace has no blocks (inactive or not attached). Fix: attach it, or pick another namespace"),
        }
    }
}

impl core::error::Error for IdentifyError {}

fn le_u64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

impl IdentifyNamespace {
    /// Parse an Identify Namespace (CNS 0) answer: NSZE at byte 0, NLBAF at
    /// 25, FLBAS at 26, the LBA formats from byte 128 (4 bytes each: MS in
    /// bits 0..16, LBADS in bits 16..24). All fields are little-endian.
    pub fn parse(data: &[u8]) -> Result<Self, IdentifyError> {
        if data.len() < IDENTIFY_BYTES {
            return Err(IdentifyError::Short { len: data.len() });
        }
        let size_blocks = le_u64(data, 0);
        let formats = data[25].saturating_add(1);
        let flbas = data[26];
        // FLBAS bits 0..4 are the index's low bits; bits 5..7 its high bits
        // when more than 16 formats exist.
        let mut index = flbas & 0x0F;
        if formats > 16 {
            index |= ((flbas >> 5) & 0x3) << 4;
        }
        if index >= formats {
            return Err(IdentifyError::BadFormatIndex { index, formats });
        }
        let at = 128 + 4 * index as usize;
        let metadata_bytes = u16::from_le_bytes([data[at], data[at + 1]]);
        let lbads = data[at + 2];
        if !(9..=16).contains(&lbads) {
            return Err(IdentifyError::BadBlockSize { lbads });
        }
        if metadata_bytes != 0 && flbas & 0x10 != 0 {
            return Err(IdentifyError::ExtendedMetadata { metadata_bytes });
        }
        if size_blocks == 0 {
            return Err(IdentifyError::Empty);
        }
        Ok(Self { size_blocks, lba_size: 1 << lbads, metadata_bytes })
    }
}

/// The controller's Maximum Data Transfer Size in bytes, from an Identify
/// Controller (CNS 1) answer (MDTS at byte 77, a power of two in units of
/// [`MDTS_UNIT_BYTES`]); `None` when the controller sets no limit (MDTS 0) or
/// the answer is short.
pub fn mdts_bytes(identify_controller: &[u8]) -> Option<u32> {
    let mdts = *identify_controller.get(77)?;
    if mdts == 0 || identify_controller.len() < IDENTIFY_BYTES {
        return None;
    }
    let bytes = (MDTS_UNIT_BYTES as u64).checked_shl(mdts as u32).unwrap_or(u64::MAX);
    Some(bytes.min(u32::MAX as u64) as u32)
}

/// Bytes of one NVMe segment (one Read command into one slot) of `ns` with
/// slots of `slot_size` bytes: the largest multiple of the block size that
/// fits the slot, the device's max transfer and one command's 65536 blocks.
/// Zero when not even one block fits.
pub fn segment_bytes(ns: &Namespace, slot_size: usize) -> u32 {
    let lba = ns.lba_size as u64;
    let limit = (slot_size as u64).min(ns.max_transfer_bytes as u64).min(MAX_BLOCKS_PER_COMMAND as u64 * lba);
    (limit / lba * lba) as u32
}

/// An NVMe completion status as the kernel reports it in a positive `res`:
/// status code in bits 0..8, status code type in bits 8..11, More in bit 13,
/// Do Not Retry in bit 14. Kept as the raw value so unknown codes survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct NvmeStatus(pub u32);

impl NvmeStatus {
    /// Status code type (0 generic, 1 command specific, 2 media and data integrity, 3 path).
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Status code within its type.
    pub fn sc(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Do Not Retry: the same command will fail again.
    pub fn dnr(self) -> bool {
        self.0 & 0x4000 != 0
    }

    /// A short name for well-known codes.
    pub fn name(self) -> Option<&'static str> {
        Some(match (self.sct(), self.sc()) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x0B) => "invalid namespace or format",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (2, 0x81) => "unrecovered read error",
            (2, 0x85) => "compare failure",
            (2, 0x86) => "access denied",
            _ => return None,
        })
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NVMe status {:#06x} (type {}, code {:#04x}", self.0, self.sct(), self.sc())?;
        if let Some(name) = self.name() {
            write!(f, ": {name}")?;
        }
        if self.dnr() {
            write!(f, ", do not retry")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    const NS: Namespace = Namespace { nsid: 1, lba_size: 512, capacity_blocks: 1 << 40, max_transfer_bytes: 512 << 10 };

    #[test]
    fn encodes_a_read() {
        let slba = 0x1_2345_6789u64;
        let cmd = read_command(&NS, slba, 8, 0xDEAD_B000, 4096).unwrap();
        assert_eq!((cmd.opcode, cmd.nsid, cmd.data_len, cmd.addr), (0x02, 1, 4096, 0xDEAD_B000));
        assert_eq!((cmd.cdw10, cmd.cdw11, cmd.cdw12), (0x2345_6789, 0x1, 7));
        let bytes = cmd.to_bytes();
        assert_eq!(bytes[0], 0x02);
        assert_eq!(&bytes[4..8], &1u32.to_ne_bytes());
        assert_eq!(&bytes[24..32], &0xDEAD_B000u64.to_ne_bytes());
        assert_eq!(&bytes[36..40], &4096u32.to_ne_bytes());
        assert_eq!(&bytes[40..44], &0x2345_6789u32.to_ne_bytes());
        assert_eq!(&bytes[44..48], &1u32.to_ne_bytes());
        assert_eq!(&bytes[48..52], &7u32.to_ne_bytes());
        assert!(bytes[52..].iter().all(|&b| b == 0));
    }

    #[test]
    fn block_count_limits_reject_rather_than_truncate() {
        let big = Namespace { max_transfer_bytes: u32::MAX, ..NS };
        let cmd = read_command(&big, 0, 65536, 0, u32::MAX).unwrap();
        assert_eq!(cmd.cdw12, 0xFFFF);
        assert_eq!(read_command(&big, 0, 65537, 0, u32::MAX), Err(NvmeError::TooManyBlocks { blocks: 65537 }));
        assert_eq!(read_command(&NS, 0, 0, 0, 4096), Err(NvmeError::ZeroBlocks));
        let err = read_command(&NS, 0, 1025, 0, u32::MAX).unwrap_err();
        assert_eq!(err, NvmeError::OverMaxTransfer { bytes: 1025 * 512, max_transfer_bytes: 512 << 10 });
        assert!(err.to_string().contains("Fix: split"));
        assert!(read_command(&NS, 0, 1024, 0, u32::MAX).is_ok());
    }

    #[test]
    fn range_past_end_and_small_buffer() {
        let small = Namespace { capacity_blocks: 100, ..NS };
        assert!(read_command(&small, 92, 8, 0, 4096).is_ok());
        let err = read_command(&small, 93, 8, 0, 4096).unwrap_err();
        assert_eq!(err, NvmeError::PastEnd { slba: 93, blocks: 8, capacity_blocks: 100 });
        assert!(err.to_string().contains("93..101"));
        assert!(read_command(&small, u64::MAX, 1, 0, 4096).is_err());
        assert_eq!(read_command(&NS, 0, 8, 0, 2048), Err(NvmeError::BufferTooSmall { needed: 4096, len: 2048 }));
    }

    fn identify_ns(nsze: u64, nlbaf: u8, flbas: u8, formats: &[(u16, u8)]) -> [u8; IDENTIFY_BYTES] {
        let mut d = [0u8; IDENTIFY_BYTES];
        d[0..8].copy_from_slice(&nsze.to_le_bytes());
        d[25] = nlbaf;
        d[26] = flbas;
        for (i, &(ms, lbads)) in formats.iter().enumerate() {
            d[128 + 4 * i..130 + 4 * i].copy_from_slice(&ms.to_le_bytes());
            d[130 + 4 * i] = lbads;
        }
        d
    }

    #[test]
    fn parses_identify_namespace() {
        let d = identify_ns(131072, 1, 1, &[(0, 9), (0, 12)]);
        assert_eq!(IdentifyNamespace::parse(&d), Ok(IdentifyNamespace { size_blocks: 131072, lba_size: 4096, metadata_bytes: 0 }));
        let d = identify_ns(8, 0, 0, &[(8, 9)]);
        assert_eq!(IdentifyNamespace::parse(&d).unwrap().metadata_bytes, 8);
        // More than 16 formats: FLBAS bits 5..7 carry the index's high bits.
        let mut formats = [(0u16, 9u8); 20];
        formats[17] = (0, 13);
        let d = identify_ns(8, 19, 0x21, &formats);
        assert_eq!(IdentifyNamespace::parse(&d).unwrap().lba_size, 8192);
        assert_eq!(IdentifyNamespace::parse(&d[..100]), Err(IdentifyError::Short { len: 100 }));
        assert_eq!(IdentifyNamespace::parse(&identify_ns(8, 0, 1, &[(0, 9)])), Err(IdentifyError::BadFormatIndex { index: 1, formats: 1 }));
        assert_eq!(IdentifyNamespace::parse(&identify_ns(8, 0, 0, &[(0, 8)])), Err(IdentifyError::BadBlockSize { lbads: 8 }));
        let err = IdentifyNamespace::parse(&identify_ns(8, 0, 0x10, &[(8, 9)])).unwrap_err();
        assert_eq!(err, IdentifyError::ExtendedMetadata { metadata_bytes: 8 });
        assert!(err.to_string().contains("Fix:"));
        assert_eq!(IdentifyNamespace::parse(&identify_ns(0, 0, 0, &[(0, 9)])), Err(IdentifyError::Empty));
    }

    #[test]
    fn identify_command_and_mdts() {
        let cmd = identify_command(CNS_NAMESPACE, 3, 0x1000);
        assert_eq!((cmd.opcode, cmd.nsid, cmd.addr, cmd.data_len, cmd.cdw10), (0x06, 3, 0x1000, 4096, 0));
        assert_eq!(identify_command(CNS_CONTROLLER, 0, 0).cdw10, 1);
        let mut ctrl = [0u8; IDENTIFY_BYTES];
        assert_eq!(mdts_bytes(&ctrl), None);
        ctrl[77] = 7;
        assert_eq!(mdts_bytes(&ctrl), Some(512 << 10));
        assert_eq!(mdts_bytes(&ctrl[..78]), None);
        ctrl[77] = 20;
        assert_eq!(mdts_bytes(&ctrl), Some(u32::MAX));
        ctrl[77] = 255;
        assert_eq!(mdts_bytes(&ctrl), Some(u32::MAX));
    }

    #[test]
    fn segments_respect_slot_transfer_and_block_count() {
        assert_eq!(segment_bytes(&NS, 256 << 10), 256 << 10);
        assert_eq!(segment_bytes(&NS, 1 << 20), 512 << 10);
        assert_eq!(segment_bytes(&Namespace { lba_size: 4096, ..NS }, 6144), 4096);
        assert_eq!(segment_bytes(&Namespace { lba_size: 4096, ..NS }, 2048), 0);
        let huge = Namespace { max_transfer_bytes: u32::MAX, ..NS };
        assert_eq!(segment_bytes(&huge, 1 << 30), 65536 * 512);
        // A max transfer that is not a block multiple rounds down.
        assert_eq!(segment_bytes(&Namespace { lba_size: 4096, max_transfer_bytes: 10000, ..NS }, 1 << 20), 8192);
    }

    #[test]
    fn decodes_status() {
        let s = NvmeStatus(0x4281);
        assert_eq!((s.sct(), s.sc(), s.dnr()), (2, 0x81, true));
        assert_eq!(s.to_string(), "NVMe status 0x4281 (type 2, code 0x81: unrecovered read error, do not retry)");
        assert_eq!(NvmeStatus(0x0080).name(), Some("LBA out of range"));
        assert_eq!(NvmeStatus(0x07FF).name(), None);
        assert!(NvmeStatus(0x07FF).to_string().contains("type 7, code 0xff"));
    }
}
