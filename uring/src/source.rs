//! What the driver reads: regular files and block devices, whole or as a
//! byte range, and NVMe namespaces (through passthrough) as an LBA range.
//!
//! Opening checks, before any read is queued, that the path is a regular
//! file or block device this process may read (or, for NVMe, a namespace's
//! character device, see [`crate::nvme`]), and for `O_DIRECT` that the file system
//! supports it and what alignment it needs (`statx` with `STATX_DIOALIGN`).
//! Special files are refused without blocking: the path is opened with
//! `O_NONBLOCK` (so a FIFO does not hang the open), checked with `fstat`,
//! and only then switched to blocking reads.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use gpuring_core::nvme::{Namespace, NvmeError};
use gpuring_core::telemetry::Path as BytePath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::error::IngestError;

/// `TMPFS_MAGIC`: tmpfs and shmem. Their O_DIRECT reads are page-cache copies.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `RAMFS_MAGIC`.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// File systems whose files the kernel generates as they are read, by
/// `statfs` magic: their sizes say nothing of their content.
const GENERATED_FS: [(i64, &str); 10] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x6265_6570, "configfs"),
    (0x0027_e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpffs"),
    (0xde5e_81e4, "efivarfs"),
];

/// The generated-file file system (`procfs`, `sysfs`, ...) that holds the
/// open file `fd`, if it is one of those.
fn generated_fs(fd: &OwnedFd) -> Option<&'static str> {
    #[allow(clippy::unnecessary_cast)] // f_type is i64 here but not on every architecture
    let fs_type = rustix::fs::fstatfs(fd).ok()?.f_type as i64;
    GENERATED_FS.iter().find(|(magic, _)| *magic == fs_type).map(|(_, name)| *name)
}

/// Refuse `path` when it is a file the kernel generates as it is read
/// (`/proc`, `/sys`, ...), with the error an ingest would give.
/// For callers that judge sizes before ingesting (a file there reports 0
/// bytes, or a page, whatever it holds). Paths that cannot be opened pass:
/// the ingest reports those.
pub fn refuse_generated(path: &Path) -> Result<(), IngestError> {
    let Ok(fd) = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty()) else { return Ok(()) };
    match generated_fs(&fd) {
        Some(fs) => Err(IngestError::Generated { path: path.to_owned(), fs }),
        None => Ok(()),
    }
}

/// How a source is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceKind {
    /// A regular file or block device, with `READ_FIXED` (buffered or `O_DIRECT`).
    #[default]
    File,
    /// An NVMe namespace's character device, with NVMe Read commands
    /// through `IORING_OP_URING_CMD`: the device writes the slots.
    Nvme,
}

/// One thing to ingest: a file, a byte range of it, or an LBA range of an
/// NVMe namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file or device.
    pub path: PathBuf,
    /// The range to read, in bytes for a file and in logical blocks for an
    /// NVMe namespace; `None` reads all of it.
    pub range: Option<Range<u64>>,
    /// How it is read.
    pub kind: SourceKind,
}

impl Source {
    /// The whole file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), range: None, kind: SourceKind::File }
    }

    /// Bytes `range` of the file at `path`.
    pub fn range(path: impl Into<PathBuf>, range: Range<u64>) -> Self {
        Self { path: path.into(), range: Some(range), kind: SourceKind::File }
    }

    /// Logical blocks `blocks` of the NVMe namespace whose character device
    /// is `path` (`None`: the whole namespace).
    pub fn nvme(path: impl Into<PathBuf>, blocks: Option<Range<u64>>) -> Self {
        Self { path: path.into(), range: blocks, kind: SourceKind::Nvme }
    }
}

/// An opened source, ready to be read.
#[derive(Debug)]
pub(crate) struct OpenSource {
    pub fd: OwnedFd,
    pub path: PathBuf,
    /// The file's size when opened.
    pub size: u64,
    /// The bytes to read.
    pub start: u64,
    pub end: u64,
    /// Whether the whole file is read (then a size change is an error).
    pub whole: bool,
    /// The direct-I/O offset alignment (0 for buffered reads).
    pub dio_align: u32,
    /// The direct-I/O memory alignment (0 for buffered reads).
    pub dio_mem_align: u32,
    /// How bytes from this file reach the slot.
    pub path_kind: BytePath,
    /// Bytes per segment (one slot's worth): the slot size for a file.
    pub segment_bytes: u32,
    /// The namespace, for an NVMe source (then `start` and `end` are bytes
    /// on the namespace, multiples of its block size).
    pub namespace: Option<Namespace>,
}

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`, a block device's size in bytes.
const BLKGETSIZE64: u32 = 0x8008_1272;

/// The size of an open regular file or block device.
fn size_of(fd: &OwnedFd, file_type: FileType, st_size: i64) -> Result<u64, Errno> {
    if file_type != FileType::BlockDevice {
        return Ok(st_size as u64);
    }
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at `size` for the duration of the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(size)
}

/// What a file is, for error messages ("is a FIFO").
pub(crate) fn describe(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "of an unknown file type",
    }
}

fn open_error(path: &Path, errno: Errno) -> IngestError {
    match errno {
        Errno::NOENT | Errno::NOTDIR => IngestError::NotFound { path: path.to_owned() },
        Errno::ACCESS | Errno::PERM => IngestError::PermissionDenied { path: path.to_owned() },
        errno => IngestError::Open { path: path.to_owned(), errno },
    }
}

/// The direct-I/O offset and memory alignment of an open file, from
/// `statx(STATX_DIOALIGN)`; `None` where the kernel does not say, `Some((0, _))`
/// where the file does not support direct I/O.
pub fn dio_alignment(fd: &OwnedFd) -> Option<(u32, u32)> {
    let stx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if stx.stx_mask & StatxFlags::DIOALIGN.bits() == 0 {
        return None;
    }
    Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align))
}

/// Whether an `O_DIRECT` read of block device `rdev` is the device writing
/// the buffer. Devices made of memory (`ram*`, `zram*`, `pmem*`) copy with
/// the CPU, and so does a loop device without direct I/O (through its
/// backing file's page cache): those count as kernel copies.
fn block_device_dmas(rdev: u64) -> bool {
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev)));
    let Some(name) = std::fs::canonicalize(&sys).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())) else {
        return true;
    };
    if name.starts_with("loop") {
        return std::fs::read_to_string(sys.join("loop/dio")).is_ok_and(|d| d.trim() == "1");
    }
    !["ram", "zram", "pmem"].iter().any(|p| name.starts_with(p))
}

impl OpenSource {
    /// Open `source` for buffered or direct reads into slots of `slot_size`
    /// bytes starting at page-aligned addresses (NVMe sources ignore `direct`:
    /// passthrough is always the device writing the slot).
    pub fn open(source: &Source, direct: bool, slot_size: usize) -> Result<Self, IngestError> {
        if source.kind == SourceKind::Nvme {
            return Self::open_nvme(source, slot_size);
        }
        let path = &source.path;
        let fd =
            rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty()).map_err(|e| open_error(path, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| open_error(path, e))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile && file_type != FileType::BlockDevice {
            return Err(IngestError::NotRegular { path: path.clone(), kind: describe(file_type) });
        }
        // Every generated file system (the list above) is a virtual one,
        // whose files carry an anonymous device number (major 0); a file on
        // a block device's file system cannot be one, and is spared the
        // `fstatfs` (a sixth of the system calls per small file).
        if rustix::fs::major(stat.st_dev) == 0 {
            if let Some(fs) = generated_fs(&fd) {
                return Err(IngestError::Generated { path: path.clone(), fs });
            }
        }
        let mut flags = OFlags::RDONLY;
        if direct {
            flags |= OFlags::DIRECT;
        }
        rustix::fs::fcntl_setfl(&fd, flags).map_err(|errno| match errno {
            Errno::INVAL => IngestError::DirectUnsupported { path: path.clone() },
            errno => IngestError::Open { path: path.clone(), errno },
        })?;
        let size = size_of(&fd, file_type, stat.st_size).map_err(|errno| IngestError::Open { path: path.clone(), errno })?;
        let (start, end) = match &source.range {
            Some(r) => {
                if r.start >= r.end || r.end > size {
                    return Err(IngestError::BadRange { path: path.clone(), start: r.start, end: r.end, size });
                }
                (r.start, r.end)
            }
            None => (0, size),
        };
        let (mut dio_align, mut dio_mem_align) = (0, 0);
        let mut path_kind = BytePath::KernelCopy;
        if direct {
            // Without STATX_DIOALIGN (kernels before 6.1) assume the common
            // worst case: 4096-byte logical blocks.
            let (offset_align, mem_align) = dio_alignment(&fd).unwrap_or((4096, 4096));
            if offset_align == 0 {
                return Err(IngestError::DirectUnsupported { path: path.clone() });
            }
            let unaligned = |what, value: u64, align: u32| IngestError::DirectUnaligned { path: path.clone(), what, value, align };
            if mem_align as usize > gpuring_core::PAGE_SIZE {
                return Err(unaligned("slot address alignment", gpuring_core::PAGE_SIZE as u64, mem_align));
            }
            if !slot_size.is_multiple_of(offset_align as usize) {
                return Err(unaligned("slot size", slot_size as u64, offset_align));
            }
            if start % offset_align as u64 != 0 {
                return Err(unaligned("range start", start, offset_align));
            }
            (dio_align, dio_mem_align) = (offset_align, mem_align);
            // tmpfs accepts O_DIRECT but serves it from the page cache: honest
            // accounting calls that a kernel copy, not DMA.
            if file_type == FileType::BlockDevice {
                if block_device_dmas(stat.st_rdev) {
                    path_kind = BytePath::Dma;
                }
            } else {
                #[allow(clippy::unnecessary_cast)] // f_type is i64 here but not on every architecture
                let fs_type = rustix::fs::fstatfs(&fd).map(|s| s.f_type as i64).unwrap_or(0);
                if fs_type != TMPFS_MAGIC && fs_type != RAMFS_MAGIC {
                    path_kind = BytePath::Dma;
                }
            }
        }
        let segment_bytes = u32::try_from(slot_size).map_err(|_| IngestError::RingGeometry {
            what: format!("a slot of {slot_size} bytes is larger than one read can fill (4 GiB - 1). Fix: use slots of at most 1 GiB"),
        })?;
        Ok(Self {
            fd,
            path: path.clone(),
            size,
            start,
            end,
            whole: source.range.is_none(),
            dio_align,
            dio_mem_align,
            path_kind,
            segment_bytes,
            namespace: None,
        })
    }

    /// Open an NVMe namespace and check the LBA range against it.
    fn open_nvme(source: &Source, slot_size: usize) -> Result<Self, IngestError> {
        let dev = crate::nvme::NvmeDevice::open(&source.path)?;
        let ns = dev.namespace;
        let range_error = |error| IngestError::NvmeRange { path: source.path.clone(), error };
        let blocks = source.range.clone().unwrap_or(0..ns.capacity_blocks);
        if blocks.start >= blocks.end {
            return Err(range_error(NvmeError::ZeroBlocks));
        }
        if blocks.end > ns.capacity_blocks {
            return Err(range_error(NvmeError::PastEnd { slba: blocks.start, blocks: blocks.end - blocks.start, capacity_blocks: ns.capacity_blocks }));
        }
        let segment_bytes = gpuring_core::nvme::segment_bytes(&ns, slot_size);
        if segment_bytes == 0 {
            return Err(range_error(NvmeError::BufferTooSmall { needed: ns.lba_size as u64, len: slot_size as u32 }));
        }
        let lba = ns.lba_size as u64;
        Ok(Self {
            fd: dev.fd,
            path: dev.path,
            size: ns.capacity_blocks * lba,
            start: blocks.start * lba,
            end: blocks.end * lba,
            whole: false,
            dio_align: 0,
            dio_mem_align: 0,
            path_kind: BytePath::Dma,
            segment_bytes,
            namespace: Some(ns),
        })
    }

    /// The file's current size.
    pub fn current_size(&self) -> Result<u64, IngestError> {
        let stat = rustix::fs::fstat(&self.fd).map_err(|errno| IngestError::Open { path: self.path.clone(), errno })?;
        size_of(&self.fd, FileType::from_raw_mode(stat.st_mode), stat.st_size).map_err(|errno| IngestError::Open { path: self.path.clone(), errno })
    }
}
