//! NVMe namespaces read through io_uring passthrough.
//!
//! [`NvmeDevice::open`] takes a namespace's character device (`/dev/ngXnY`)
//! and asks the device, not the caller, what it is:
//!
//! - `NVME_IOCTL_ID` gives the namespace id, and tells an NVMe device from
//!   any other character device (which answers `ENOTTY`);
//! - Identify Namespace (through `NVME_IOCTL_ADMIN_CMD`, read-only and allowed
//!   to unprivileged users since Linux 6.2) gives the capacity and the
//!   formatted logical block size;
//! - the max transfer is the smallest of the controller's MDTS (Identify
//!   Controller) and the kernel's limits for the namespace's block device
//!   (`queue/max_hw_sectors_kb` and `queue/max_segments` pages in sysfs),
//!   because a passthrough command over the kernel's limit fails with
//!   `EINVAL` instead of being split.
//!
//! Nothing here writes to the device: the only I/O command gpuring sends is
//! Read, and the only admin command Identify.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use gpuring_core::nvme::{self, IdentifyNamespace, Namespace, NvmeUringCmd, CNS_CONTROLLER, CNS_NAMESPACE, IDENTIFY_BYTES};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::buffer::HeapBuffer;
use crate::error::IngestError;

/// The max transfer assumed when neither the controller nor the kernel says
/// (no MDTS and no sysfs entry): 128 KiB, which every NVMe driver accepts.
pub const FALLBACK_MAX_TRANSFER: u32 = 128 << 10;

/// Where the namespace's max transfer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLimits {
    /// The controller's MDTS in bytes (`None`: no limit set).
    pub mdts: Option<u32>,
    /// The kernel's `max_hw_sectors_kb` for the namespace, in bytes.
    pub kernel_max_hw: Option<u32>,
    /// `max_segments` pages: what one command's page list can hold.
    pub kernel_segments: Option<u32>,
}

impl TransferLimits {
    /// The smallest limit, or [`FALLBACK_MAX_TRANSFER`] when none is known.
    pub fn effective(&self) -> u32 {
        [self.mdts, self.kernel_max_hw, self.kernel_segments].into_iter().flatten().min().unwrap_or(FALLBACK_MAX_TRANSFER)
    }

    /// The largest Read one command can make on a namespace of
    /// `lba_size`-byte blocks: [`TransferLimits::effective`], no more than
    /// one command's 65,536 blocks (its block count is 16 bits; a fabric
    /// controller may set no MDTS and the kernel no size limit, as NVMe/TCP
    /// does, leaving that the only bound), in whole blocks.
    pub fn max_transfer(&self, lba_size: u32) -> u32 {
        let blocks = (self.effective() / lba_size).min(nvme::MAX_BLOCKS_PER_COMMAND);
        (blocks as u64 * lba_size as u64).min((u32::MAX / lba_size * lba_size) as u64) as u32
    }
}

/// An open NVMe namespace character device and its geometry.
#[derive(Debug)]
pub struct NvmeDevice {
    /// The character device, open for reading.
    pub fd: OwnedFd,
    /// Its path.
    pub path: PathBuf,
    /// Its geometry, from the device.
    pub namespace: Namespace,
    /// What the max transfer was computed from.
    pub limits: TransferLimits,
    /// The namespace's block device (`/dev/nvmeXnY`), where sysfs names one.
    pub block_device: Option<PathBuf>,
}

impl NvmeDevice {
    /// Open the namespace character device at `path` and read its geometry.
    pub fn open(path: &Path) -> Result<Self, IngestError> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty()).map_err(|e| match e {
            Errno::NOENT | Errno::NOTDIR | Errno::NXIO | Errno::NODEV => IngestError::NotFound { path: path.to_owned() },
            Errno::ACCESS | Errno::PERM => IngestError::PermissionDenied { path: path.to_owned() },
            errno => IngestError::Open { path: path.to_owned(), errno },
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| IngestError::Open { path: path.to_owned(), errno })?;
        let file_type = FileType::from_raw_mode(stat.st_mode);
        if file_type != FileType::CharacterDevice {
            return Err(IngestError::NotNvmeChar { path: path.to_owned(), kind: crate::source::describe(file_type), hint: generic_name(path) });
        }
        // On another driver's device this request number means nothing and fails with ENOTTY.
        // SAFETY: NVME_IOCTL_ID takes no argument and touches no memory of ours.
        let id = unsafe { libc::ioctl(fd.as_raw_fd(), nvme::NVME_IOCTL_ID as _) };
        if id <= 0 {
            let errno =
                Errno::from_raw_os_error(if id < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { Errno::INVAL.raw_os_error() });
            return Err(match errno {
                Errno::NOTTY | Errno::INVAL | Errno::NOTSUP => IngestError::NotNvme { path: path.to_owned() },
                Errno::ACCESS | Errno::PERM => IngestError::PermissionDenied { path: path.to_owned() },
                errno => IngestError::Nvme { path: path.to_owned(), what: "NVME_IOCTL_ID".into(), errno },
            });
        }
        let nsid = id as u32;
        let ns_data = identify(&fd, path, CNS_NAMESPACE, nsid)?;
        let ns =
            IdentifyNamespace::parse(ns_data.as_slice()).map_err(|e| IngestError::Nvme { path: path.to_owned(), what: e.to_string(), errno: Errno::INVAL })?;
        // The controller's answer only narrows the limit; a controller that
        // refuses it (none should) leaves the kernel's limits.
        let mdts = identify(&fd, path, CNS_CONTROLLER, 0).ok().and_then(|c| nvme::mdts_bytes(c.as_slice()));
        let block = block_device_dir(path, nsid);
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let kernel_max_hw = block.as_deref().and_then(|d| read(d, "queue/max_hw_sectors_kb")).map(|kb| (kb * 1024).min(u32::MAX as u64) as u32);
        let kernel_segments =
            block.as_deref().and_then(|d| read(d, "queue/max_segments")).map(|n| (n * gpuring_core::PAGE_SIZE as u64).min(u32::MAX as u64) as u32);
        let limits = TransferLimits { mdts, kernel_max_hw, kernel_segments };
        let max_transfer_bytes = limits.max_transfer(ns.lba_size);
        if max_transfer_bytes == 0 {
            let what = format!("its max transfer ({} bytes) is smaller than one {}-byte block", limits.effective(), ns.lba_size);
            return Err(IngestError::Nvme { path: path.to_owned(), what, errno: Errno::INVAL });
        }
        let namespace = Namespace { nsid, lba_size: ns.lba_size, capacity_blocks: ns.size_blocks, max_transfer_bytes };
        let block_device = block.and_then(|d| d.file_name().map(|n| Path::new("/dev").join(n))).filter(|p| p.exists());
        Ok(Self { fd, path: path.to_owned(), namespace, limits, block_device })
    }

    /// The namespace's size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.namespace.capacity_blocks * self.namespace.lba_size as u64
    }
}

/// Send Identify `cns` for `nsid` and return its 4096-byte answer.
fn identify(fd: &OwnedFd, path: &Path, cns: u8, nsid: u32) -> Result<HeapBuffer, IngestError> {
    let mut data = HeapBuffer::new(IDENTIFY_BYTES, 0);
    let mut cmd: NvmeUringCmd = nvme::identify_command(cns, nsid, data.as_mut_slice().as_mut_ptr() as u64);
    // `cmd` is a `struct nvme_passthru_cmd` (same layout as `nvme_uring_cmd`,
    // asserted in gpuring-core) and Identify only reads the device.
    // SAFETY: `cmd` lives across the call; its data address points at 4096 writable bytes owned by `data`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), nvme::NVME_IOCTL_ADMIN_CMD as _, &mut cmd as *mut NvmeUringCmd) };
    let what = if cns == CNS_NAMESPACE { "Identify Namespace" } else { "Identify Controller" };
    if rc < 0 {
        let errno = Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO);
        return Err(IngestError::Nvme { path: path.to_owned(), what: what.into(), errno });
    }
    if rc > 0 {
        return Err(IngestError::NvmeFailed { path: path.to_owned(), what: what.into(), status: nvme::NvmeStatus(rc as u32) });
    }
    Ok(data)
}

/// `ngXnY` for `nvmeXnY`: what to pass instead of a block device.
fn generic_name(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("nvme")?;
    rest.contains('n').then(|| path.with_file_name(format!("ng{rest}")))
}

/// The sysfs directory of the block device of the same namespace as the
/// character device at `path` (`ngXnY` pairs with `nvmeXnY`), checked by
/// its namespace id.
fn block_device_dir(path: &Path, nsid: u32) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("ng")?;
    let dir = Path::new("/sys/block").join(format!("nvme{rest}"));
    let id = std::fs::read_to_string(dir.join("nsid")).ok()?;
    (id.trim().parse::<u32>().ok()? == nsid).then_some(dir)
}

/// Send one NVMe Read of block 0 through a fresh ring, into a registered
/// buffer (`fixed`) or by plain address: whether passthrough works here,
/// and in which form. Reads only.
pub fn try_read(dev: &NvmeDevice, fixed: bool) -> Result<(), IngestError> {
    let buf = HeapBuffer::new((dev.namespace.lba_size as usize).next_multiple_of(gpuring_core::PAGE_SIZE), 0);
    let len = buf.as_slice().len();
    let addr = buf.as_slice().as_ptr() as *mut u8;
    let mut ring = crate::Ring::new(1)?;
    // SAFETY: `buf` is declared before `ring`, so it outlives it.
    unsafe { ring.register_buffers(&[(addr, len)])? };
    let cmd = nvme::read_command(&dev.namespace, 0, 1, addr as u64, len as u32).map_err(|error| IngestError::NvmeRange { path: dev.path.clone(), error })?;
    // SAFETY: `buf` and the device's fd outlive the ring, whose drop (or the
    // wait below) ends the request; the command reads one block into `buf`.
    unsafe { ring.push_uring_cmd(std::os::fd::AsFd::as_fd(&dev.fd), nvme::NVME_URING_CMD_IO, &cmd.to_bytes(), fixed.then_some(0), 1)? };
    let mut res = None;
    let deadline = std::time::Instant::now() + crate::ring::DEVICE_TIMEOUT;
    while res.is_none() {
        if !ring.wait_until(deadline)? {
            // The Read may still land in `buf`: leak it, and the ring, rather
            // than free memory the device may yet write.
            std::mem::forget(ring);
            std::mem::forget(buf);
            let what = format!("{}: a one-block NVMe Read", dev.path.display());
            return Err(IngestError::DeviceStalled { what, seconds: crate::ring::DEVICE_TIMEOUT.as_secs() });
        }
        ring.reap(|_, r| res = Some(r));
    }
    match res.expect("the loop ends with the completion") {
        0 => Ok(()),
        r => Err(IngestError::nvme_read(dev.path.clone(), 0, 1, 0, r)),
    }
}

/// The namespace character devices on this machine (`/dev/ng*`), sorted.
pub fn list_namespaces() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("ng") && name[2..].starts_with(|c: char| c.is_ascii_digit())
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_name_pairs_block_and_char_devices() {
        assert_eq!(generic_name(Path::new("/dev/nvme0n1")), Some(PathBuf::from("/dev/ng0n1")));
        assert_eq!(generic_name(Path::new("/dev/nvme12n3")), Some(PathBuf::from("/dev/ng12n3")));
        assert_eq!(generic_name(Path::new("/dev/nvme0")), None);
        assert_eq!(generic_name(Path::new("/dev/sda")), None);
    }

    #[test]
    fn limits_take_the_smallest_known() {
        let l = TransferLimits { mdts: Some(512 << 10), kernel_max_hw: Some(256 << 10), kernel_segments: Some(508 << 10) };
        assert_eq!(l.effective(), 256 << 10);
        assert_eq!(TransferLimits { mdts: None, kernel_max_hw: None, kernel_segments: None }.effective(), FALLBACK_MAX_TRANSFER);
        assert_eq!(TransferLimits { mdts: Some(1 << 20), kernel_max_hw: None, kernel_segments: None }.effective(), 1 << 20);
        // NVMe/TCP in the QEMU guest: no MDTS, no kernel size limit, 256 MiB
        // of segments: one command's 65,536 blocks are the limit.
        let fabric = TransferLimits { mdts: None, kernel_max_hw: Some(u32::MAX), kernel_segments: Some(268_431_360) };
        assert_eq!(fabric.max_transfer(512), 32 << 20);
        assert_eq!(fabric.max_transfer(4096), 268_431_360 / 4096 * 4096);
        assert_eq!(TransferLimits { mdts: None, kernel_max_hw: None, kernel_segments: None }.max_transfer(4096), 128 << 10);
        assert_eq!(TransferLimits { mdts: Some(u32::MAX), kernel_max_hw: None, kernel_segments: None }.max_transfer(1 << 16), u32::MAX / (1 << 16) * (1 << 16));
    }

    #[test]
    fn a_failed_read_names_the_nvme_status_or_the_errno() {
        let e = IngestError::nvme_read(PathBuf::from("/dev/ng0n1"), 8, 16, 3, 0x4281);
        assert!(matches!(e, IngestError::NvmeRead { status: nvme::NvmeStatus(0x4281), slot: 3, .. }), "{e}");
        assert!(e.to_string().contains("blocks 8..24 into slot 3 failed with NVMe status 0x4281 (type 2, code 0x81: unrecovered read error"), "{e}");
        let e = IngestError::nvme_read(PathBuf::from("/dev/ng0n1"), 0, 1, 0, -Errno::INVAL.raw_os_error());
        assert!(matches!(e, IngestError::NvmeReadErrno { errno: Errno::INVAL, .. }), "{e}");
        assert!(e.to_string().contains("a transfer over the kernel's limit"), "{e}");
    }

    #[test]
    fn refuses_what_is_not_an_nvme_namespace() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = NvmeDevice::open(file.path()).unwrap_err();
        assert!(matches!(err, IngestError::NotNvmeChar { kind: "a regular file", .. }), "{err}");
        let err = NvmeDevice::open(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, IngestError::NotNvme { .. }), "{err}");
        assert!(err.to_string().contains("not an NVMe namespace"), "{err}");
        let err = NvmeDevice::open(Path::new("/nonexistent/ng0n1")).unwrap_err();
        assert!(matches!(err, IngestError::NotFound { .. }), "{err}");
    }
}
