//! The ingest driver's errors: each names what failed and how to fix it.

use std::fmt;
use std::path::PathBuf;

use gpuring_core::io_queue::QueueError;
use gpuring_core::nvme::{NvmeError, NvmeStatus};
use gpuring_core::{Bytes, GeometryError, PendingError, TelemetryError};
use rustix::io::Errno;

/// Why an ingest (or its setup) failed.
#[derive(Debug)]
pub enum IngestError {
    /// The path does not exist.
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The process may not read the path.
    PermissionDenied {
        /// The path.
        path: PathBuf,
    },
    /// The path is not a regular file (or block device).
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a FIFO", "a socket", ...).
        kind: &'static str,
    },
    /// A file the kernel generates as it is read (procfs, sysfs, ...): its
    /// size is not known ahead, and two reads may differ.
    Generated {
        /// The path.
        path: PathBuf,
        /// The file system ("procfs", "sysfs", ...).
        fs: &'static str,
    },
    /// Opening or inspecting the path failed otherwise.
    Open {
        /// The path.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
    /// The file system refuses O_DIRECT for this file.
    DirectUnsupported {
        /// The path.
        path: PathBuf,
    },
    /// Something is not aligned as O_DIRECT requires.
    DirectUnaligned {
        /// The path.
        path: PathBuf,
        /// What is misaligned.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The alignment required.
        align: u32,
    },
    /// A byte range that is empty or runs past the end of the file.
    BadRange {
        /// The path.
        path: PathBuf,
        /// The range start.
        start: u64,
        /// The range end.
        end: u64,
        /// The file size.
        size: u64,
    },
    /// A read failed.
    Read {
        /// The path.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The slot it was reading into.
        slot: u32,
        /// The errno.
        errno: Errno,
    },
    /// A read into a caller's buffer ([`crate::read_into()`]) failed.
    ReadInto {
        /// The path.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The errno.
        errno: Errno,
    },
    /// A request's destination window runs past the end of the destination.
    DestinationTooSmall {
        /// The request's index.
        index: usize,
        /// Its file.
        path: PathBuf,
        /// Where its window starts.
        dst_offset: u64,
        /// Its length.
        bytes: u64,
        /// The destination's length.
        dst_len: u64,
    },
    /// A request names a destination a scatter read was not given.
    NoSuchDestination {
        /// The request's index.
        index: usize,
        /// The destination it names.
        dst: usize,
        /// Destinations given.
        count: usize,
    },
    /// Two requests' destination windows overlap.
    DestinationsOverlap {
        /// The lower request index.
        first: usize,
        /// The higher one.
        second: usize,
        /// A destination offset both write.
        at: u64,
    },
    /// The file ended before the size it had when it was opened.
    Shrank {
        /// The path.
        path: PathBuf,
        /// Size when opened.
        size: u64,
        /// Where the data ended.
        ended_at: u64,
    },
    /// The file's size changed while it was read.
    ChangedSize {
        /// The path.
        path: PathBuf,
        /// Size when opened.
        before: u64,
        /// Size afterwards.
        after: u64,
    },
    /// An NVMe source that is not a character device.
    NotNvmeChar {
        /// The path.
        path: PathBuf,
        /// What it is instead ("a block device", "a regular file", ...).
        kind: &'static str,
        /// The namespace's character device, when the path names its block device.
        hint: Option<PathBuf>,
    },
    /// A character device that is not an NVMe namespace.
    NotNvme {
        /// The path.
        path: PathBuf,
    },
    /// Asking an NVMe device something failed.
    Nvme {
        /// The device.
        path: PathBuf,
        /// What was asked, or what is wrong with the answer.
        what: String,
        /// The errno.
        errno: Errno,
    },
    /// The NVMe controller failed an admin command.
    NvmeFailed {
        /// The device.
        path: PathBuf,
        /// The command.
        what: String,
        /// The controller's status.
        status: NvmeStatus,
    },
    /// An LBA range the namespace cannot serve (empty, or past its end).
    NvmeRange {
        /// The device.
        path: PathBuf,
        /// Why.
        error: NvmeError,
    },
    /// An NVMe Read failed: the controller's status (positive `res`).
    NvmeRead {
        /// The device.
        path: PathBuf,
        /// First block of the read.
        slba: u64,
        /// Blocks in the read.
        blocks: u32,
        /// The slot it was reading into.
        slot: u32,
        /// The controller's status.
        status: NvmeStatus,
    },
    /// An NVMe Read failed in the kernel (negative `res`).
    NvmeReadErrno {
        /// The device.
        path: PathBuf,
        /// First block of the read.
        slba: u64,
        /// Blocks in the read.
        blocks: u32,
        /// The slot it was reading into.
        slot: u32,
        /// The errno.
        errno: Errno,
    },
    /// What was asked cannot be done this way.
    Unsupported {
        /// What, and the fix.
        what: String,
    },
    /// Registering the slots would exceed RLIMIT_MEMLOCK.
    MemlockLimit {
        /// Slots to register.
        slots: u32,
        /// Bytes per slot.
        slot_size: usize,
        /// Bytes to register.
        requested: u64,
        /// Ring memory charged besides (see [`crate::memlock::ring_bytes`]).
        ring: u64,
        /// The soft limit (`None`: unlimited).
        limit: Option<u64>,
    },
    /// The slot geometry does not suit io_uring's fixed buffers.
    RingGeometry {
        /// What is wrong.
        what: String,
    },
    /// The io_uring instance failed.
    Ring {
        /// What was being done.
        op: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// The consumer stopped releasing slots.
    ConsumerStalled {
        /// Entries awaiting release.
        outstanding: u32,
        /// Why the driver gave up.
        why: String,
    },
    /// Requests were in flight and none completed in time: a device (or
    /// file system) that does not answer.
    DeviceStalled {
        /// What was waited for.
        what: String,
        /// Seconds waited.
        seconds: u64,
    },
    /// Bad slot geometry.
    Geometry(GeometryError),
    /// An io_queue protocol error.
    Queue(QueueError),
    /// A slot life-cycle rule was broken.
    Pending(PendingError),
    /// A telemetry counter failed.
    Telemetry(TelemetryError),
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { path } => write!(f, "{}: no such file or directory. Fix: check the path", path.display()),
            Self::PermissionDenied { path } => write!(
                f,
                "{}: permission denied. Fix: make it readable by this user (chmod or chown), or run gpuring as a user that may read it",
                path.display()
            ),
            Self::NotRegular { path, kind } => write!(
                f,
                "{}: is {kind}, not a regular file or block device. Fix: pass regular files or directories of them (NVMe namespaces are NVMe sources, not files)",
                path.display()
            ),
            Self::Generated { path, fs } => write!(
                f,
                "{}: is a file of {fs}, which the kernel generates as it is read: its size is not known ahead (it reports 0 or a page) and two reads may differ, so it can be neither streamed by size nor verified. Fix: copy it to a regular file first (cp {} /tmp/) and ingest the copy",
                path.display(),
                path.display()
            ),
            Self::Open { path, errno } => write!(f, "{}: cannot open: {errno}. Fix: check the path and its file system", path.display()),
            Self::DirectUnsupported { path } => write!(
                f,
                "{}: its file system does not support O_DIRECT. Fix: read it without O_DIRECT, or put it on a file system that does (ext4, xfs, btrfs)",
                path.display()
            ),
            Self::DirectUnaligned { path, what, value, align } => write!(
                f,
                "{}: {what} {value} is not a multiple of the {align}-byte direct-I/O alignment. Fix: make it a multiple of {align}, or read without O_DIRECT",
                path.display()
            ),
            Self::BadRange { path, start, end, size } if start >= end => write!(
                f,
                "{}: the byte range {start}..{end} is empty. Fix: give a range whose end is past its start (the file has {size} bytes)",
                path.display()
            ),
            Self::BadRange { path, start, end, size } => write!(
                f,
                "{}: the byte range {start}..{end} runs past the end of the file ({size} bytes). Fix: keep the range within 0..{size}",
                path.display()
            ),
            Self::Read { path, offset, slot, errno } => write!(
                f,
                "{}: read at byte {offset} into slot {slot} failed: {errno}. Fix: check the device and file system (dmesg), then retry",
                path.display()
            ),
            Self::ReadInto { path, offset, errno } => write!(
                f,
                "{}: read at byte {offset} into the destination failed: {errno}. Fix: check the device and file system (dmesg), then retry",
                path.display()
            ),
            Self::DestinationTooSmall { index, path, dst_offset, bytes, dst_len } => write!(
                f,
                "request {index} ({}): its {bytes} bytes at destination offset {dst_offset} end past the destination's {dst_len} bytes. Fix: give a larger destination, or a smaller offset",
                path.display()
            ),
            Self::NoSuchDestination { index, dst, count } => write!(
                f,
                "request {index} names destination {dst}, but {count} destination(s) were given. Fix: give each request the index of a destination in the list"
            ),
            Self::DestinationsOverlap { first, second, at } => write!(
                f,
                "requests {first} and {second} both write destination offset {at}: their destination windows overlap. Fix: give each request its own window"
            ),
            Self::Shrank { path, size, ended_at } => write!(
                f,
                "{}: the file shrank while it was read: it had {size} bytes when opened but ended at byte {ended_at}. Fix: do not modify files while gpuring reads them (copy or snapshot them first)",
                path.display()
            ),
            Self::ChangedSize { path, before, after } => write!(
                f,
                "{}: the file changed size while it was read, from {before} to {after} bytes. Fix: do not modify files while gpuring reads them (copy or snapshot them first)",
                path.display()
            ),
            Self::NotNvmeChar { path, kind, hint } => {
                write!(f, "{}: is {kind}, but NVMe passthrough needs a namespace's character device. Fix: ", path.display())?;
                match hint {
                    Some(hint) => write!(f, "pass {} instead", hint.display()),
                    None => write!(f, "pass /dev/ngXnY (`gpuring probe` lists them); files are file sources, not NVMe ones"),
                }
            }
            Self::NotNvme { path } => write!(
                f,
                "{}: is a character device but not an NVMe namespace (it refuses NVME_IOCTL_ID). Fix: pass /dev/ngXnY (`gpuring probe` lists them)",
                path.display()
            ),
            Self::Nvme { path, what, errno } => write!(
                f,
                "{}: {what} failed: {errno}. Fix: check that the nvme driver is loaded and this user may read the device (`gpuring probe`)",
                path.display()
            ),
            Self::NvmeFailed { path, what, status } => {
                write!(f, "{}: {what} failed with {status}. Fix: check the device's health (`nvme error-log`, dmesg)", path.display())
            }
            Self::NvmeRange { path, error } => write!(f, "{}: {error}", path.display()),
            Self::NvmeRead { path, slba, blocks, slot, status } => write!(
                f,
                "{}: NVMe Read of blocks {slba}..{} into slot {slot} failed with {status}. Fix: check the device's health (`nvme error-log`, dmesg)",
                path.display(),
                slba + *blocks as u64
            ),
            Self::NvmeReadErrno { path, slba, blocks, slot, errno } => write!(
                f,
                "{}: NVMe Read of blocks {slba}..{} into slot {slot} failed in the kernel: {errno}. Fix: run `gpuring probe` to see whether passthrough works here{}",
                path.display(),
                slba + *blocks as u64,
                if *errno == Errno::INVAL { " (EINVAL: a transfer over the kernel's limit, or fixed buffers this kernel refuses)" } else { "" }
            ),
            Self::Unsupported { what } => write!(f, "{what}"),
            Self::MemlockLimit { slots, slot_size, requested, ring, limit: Some(limit) } => {
                let total = requested.saturating_add(*ring);
                write!(
                    f,
                    "registering {} of slots ({slots} of {}) with io_uring needs {} KiB of RLIMIT_MEMLOCK with the ring's own {}, and this process may lock {} ({} KiB). Fix: raise the limit to at least {} KiB (`ulimit -l {}` as root, LimitMEMLOCK= for a systemd service, memlock in /etc/security/limits.conf)",
                    Bytes(*requested),
                    Bytes(*slot_size as u64),
                    total.div_ceil(1024),
                    Bytes(*ring),
                    Bytes(*limit),
                    limit / 1024,
                    total.div_ceil(1024),
                    total.div_ceil(1024)
                )?;
                match crate::memlock::fitting_ring(*slots, *slot_size, *limit) {
                    Some((n, size)) => write!(f, ", or use a ring that fits: {n} slots of {}", size_arg(size))?,
                    None => write!(f, "; no ring fits in {}", Bytes(*limit))?,
                }
                write!(f, " (every io_uring of this user counts against the same limit)")
            }
            Self::MemlockLimit { requested, limit: None, .. } => write!(
                f,
                "the kernel refused to register {} of slots with io_uring (out of memory). Fix: free memory, or use fewer/smaller slots",
                Bytes(*requested)
            ),
            Self::RingGeometry { what } => write!(f, "{what}"),
            Self::Ring { op, errno } => write!(
                f,
                "io_uring {op} failed: {errno}. Fix: check that io_uring is enabled (/proc/sys/kernel/io_uring_disabled is 0) and run `gpuring probe`"
            ),
            Self::ConsumerStalled { outstanding, why } => write!(
                f,
                "the consumer stopped releasing slots ({outstanding} entries outstanding): {why}. Fix: check the consumer (its own error is reported separately)"
            ),
            Self::DeviceStalled { what, seconds } => write!(
                f,
                "{what}: nothing completed in {seconds} s. Fix: check the device (`dmesg` for I/O errors, NVMe command timeouts and controller resets; `nvme list`); Linux's NVMe driver aborts a command after its io_timeout (30 s by default) and resets the controller, which ends such reads with an error, so a longer stall means the device or its driver is stuck"
            ),
            Self::Geometry(e) => write!(f, "{e}"),
            Self::Queue(e) => write!(f, "{e}"),
            Self::Pending(e) => write!(f, "{e}"),
            Self::Telemetry(e) => write!(f, "{e}"),
        }
    }
}

impl IngestError {
    /// The error of an NVMe Read of `blocks` blocks from `slba` into `slot`
    /// that ended with `res` (not 0): a positive `res` is the controller's
    /// status, a negative one an errno.
    pub fn nvme_read(path: PathBuf, slba: u64, blocks: u32, slot: u32, res: i32) -> Self {
        if res > 0 {
            Self::NvmeRead { path, slba, blocks, slot, status: NvmeStatus(res as u32) }
        } else {
            Self::NvmeReadErrno { path, slba, blocks, slot, errno: Errno::from_raw_os_error(-res) }
        }
    }
}

impl std::error::Error for IngestError {}

impl From<GeometryError> for IngestError {
    fn from(e: GeometryError) -> Self {
        Self::Geometry(e)
    }
}

impl From<QueueError> for IngestError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

impl From<PendingError> for IngestError {
    fn from(e: PendingError) -> Self {
        Self::Pending(e)
    }
}

impl From<TelemetryError> for IngestError {
    fn from(e: TelemetryError) -> Self {
        Self::Telemetry(e)
    }
}

/// A byte count as a person (and the command's `--slot-size`) writes it:
/// `256K`, `1M`, or bytes.
fn size_arg(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}
