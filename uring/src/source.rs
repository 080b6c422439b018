//! What the driver reads: regular files, whole or as a byte range.
//!
//! Opening checks, before any read is queued, that the path is a regular
//! file this process may read, and for `O_DIRECT` that the file system
//! supports it and what alignment it needs (`statx` with `STATX_DIOALIGN`).
//! Special files are refused without blocking: the path is opened with
//! `O_NONBLOCK` (so a FIFO does not hang the open), checked with `fstat`,
//! and only then switched to blocking reads.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use gpuring_core::telemetry::Path as BytePath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use crate::error::IngestError;

/// `TMPFS_MAGIC`: tmpfs and shmem. Their O_DIRECT reads are page-cache copies.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// `RAMFS_MAGIC`.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// One thing to ingest: a file, or a byte range of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// The byte range to read; `None` reads the whole file.
    pub range: Option<Range<u64>>,
}

impl Source {
    /// The whole file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), range: None }
    }

    /// Bytes `range` of the file at `path`.
    pub fn range(path: impl Into<PathBuf>, range: Range<u64>) -> Self {
        Self { path: path.into(), range: Some(range) }
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
    /// How bytes from this file reach the slot.
    pub path_kind: BytePath,
}

fn describe(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
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

impl OpenSource {
    /// Open `source` for buffered or direct reads into slots of `slot_size`
    /// bytes starting at page-aligned addresses.
    pub fn open(source: &Source, direct: bool, slot_size: usize) -> Result<Self, IngestError> {
        let path = &source.path;
        let fd =
            rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty()).map_err(|e| open_error(path, e))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| open_error(path, e))?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::RegularFile {
            return Err(IngestError::NotRegular { path: path.clone(), kind: describe(file_type) });
        }
        let mut flags = OFlags::RDONLY;
        if direct {
            flags |= OFlags::DIRECT;
        }
        rustix::fs::fcntl_setfl(&fd, flags).map_err(|errno| match errno {
            Errno::INVAL => IngestError::DirectUnsupported { path: path.clone() },
            errno => IngestError::Open { path: path.clone(), errno },
        })?;
        let size = stat.st_size as u64;
        let (start, end) = match &source.range {
            Some(r) => {
                if r.start >= r.end || r.end > size {
                    return Err(IngestError::BadRange { path: path.clone(), start: r.start, end: r.end, size });
                }
                (r.start, r.end)
            }
            None => (0, size),
        };
        let mut dio_align = 0;
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
            dio_align = offset_align;
            // tmpfs accepts O_DIRECT but serves it from the page cache: honest
            // accounting calls that a kernel copy, not DMA.
            #[allow(clippy::unnecessary_cast)] // f_type is i64 here but not on every architecture
            let fs_type = rustix::fs::fstatfs(&fd).map(|s| s.f_type as i64).unwrap_or(0);
            if fs_type != TMPFS_MAGIC && fs_type != RAMFS_MAGIC {
                path_kind = BytePath::Dma;
            }
        }
        Ok(Self { fd, path: path.clone(), size, start, end, whole: source.range.is_none(), dio_align, path_kind })
    }

    /// The file's current size.
    pub fn current_size(&self) -> Result<u64, IngestError> {
        rustix::fs::fstat(&self.fd).map(|s| s.st_size as u64).map_err(|errno| IngestError::Open { path: self.path.clone(), errno })
    }
}
