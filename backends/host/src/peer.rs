//! Slots in another PCI device's memory: [`PeerStaging`], whose slots are
//! memory a device publishes for peer-to-peer DMA (Linux's PCI P2PDMA, an
//! NVMe controller's memory buffer for example), mapped from
//! `/sys/bus/pci/devices/<address>/p2pmem/allocate`. An NVMe device's DMA
//! (O_DIRECT reads, passthrough Reads) then lands in that device's memory
//! with no host RAM in between; the host consumer reads the slots through
//! the mapping. [`peer_memory_devices`] lists the devices that publish some.
//!
//! What the kernel allows is found out, not assumed: it accepts a peer path
//! only between devices its distance rules accept (behind one PCIe switch,
//! or a host bridge on its allow list), and io_uring cannot register such
//! pages as fixed buffers (they are pinned without `FOLL_PCI_P2PDMA`), so
//! the driver reads into them by address. `gpuring probe` reports both.

use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use gpuring_core::io_queue::{Ends, IoQueue};
use gpuring_core::{MemoryKind, SlotGeometry, StagingMemory};
use gpuring_shared::{HostError, Mapping};
use rustix::fs::{Mode, OFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// Where the kernel lists PCI devices.
const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// A PCI device that publishes peer memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerMemory {
    /// Its PCI address (`0000:03:00.0`).
    pub device: String,
    /// Bytes of peer memory in all.
    pub size: u64,
    /// Bytes not yet allocated.
    pub available: u64,
    /// Whether the driver published it for any user (`published` is 1),
    /// which mapping `allocate` needs.
    pub published: bool,
}

/// Every PCI device with a `p2pmem` directory (empty where the kernel has no
/// P2PDMA, `CONFIG_PCI_P2PDMA`, or no device publishes memory).
pub fn peer_memory_devices() -> Vec<PeerMemory> {
    let Ok(entries) = std::fs::read_dir(PCI_DEVICES) else { return Vec::new() };
    let mut found: Vec<PeerMemory> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let dir = e.path().join("p2pmem");
            let number = |name: &str| std::fs::read_to_string(dir.join(name)).ok().and_then(|s| s.trim().parse::<u64>().ok());
            Some(PeerMemory {
                device: e.file_name().to_string_lossy().into_owned(),
                size: number("size")?,
                available: number("available").unwrap_or(0),
                published: number("published") == Some(1),
            })
        })
        .collect();
    found.sort_by(|a, b| a.device.cmp(&b.device));
    found
}

/// A mapping of a device's peer memory, unmapped (and so given back to the
/// device's pool) on drop.
#[derive(Debug)]
struct PeerMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory once made; who accesses it is
// governed by the io_queue protocol, as for any slot region.
unsafe impl Send for PeerMapping {}
// SAFETY: as above.
unsafe impl Sync for PeerMapping {}

impl Drop for PeerMapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `PeerStaging::new` with this length; nothing
        // refers to it once the staging is dropped.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Staging memory whose slots are a PCI device's peer memory and whose
/// io_queue is host memory ([`MemoryKind::DevicePeer`]).
#[derive(Debug)]
pub struct PeerStaging {
    device: String,
    slots: PeerMapping,
    queue: Mapping,
    queue_capacity: u32,
    geometry: SlotGeometry,
    ends: Ends,
}

impl PeerStaging {
    /// Map `geometry`'s slots from the peer memory of PCI device `device`
    /// (`0000:03:00.0`; as `gpuring probe` lists them), and an io_queue of
    /// `queue_capacity` entries in host memory.
    pub fn new(device: &str, geometry: SlotGeometry, queue_capacity: u32) -> Result<Self, HostError> {
        let error = |why: String, fix: &str| HostError::PeerMemory { device: device.to_owned(), why, fix: fix.to_owned() };
        let dir = Path::new(PCI_DEVICES).join(device).join("p2pmem");
        let listed = peer_memory_devices();
        let Some(memory) = listed.iter().find(|m| m.device == device) else {
            let others: Vec<&str> = listed.iter().map(|m| m.device.as_str()).collect();
            let why = if Path::new(PCI_DEVICES).join(device).exists() {
                format!("it publishes no peer memory ({} has no p2pmem)", dir.parent().unwrap_or(&dir).display())
            } else {
                "there is no such PCI device".to_owned()
            };
            let fix = match others.is_empty() {
                true => "use a kernel with CONFIG_PCI_P2PDMA and a device that publishes memory (an NVMe controller with a CMB); `gpuring probe` lists them"
                    .to_owned(),
                false => format!("pick a device that does: {}", others.join(", ")),
            };
            return Err(error(why, &fix));
        };
        if !memory.published {
            return Err(error(
                "its driver did not publish the memory for others (p2pmem/published is 0)".into(),
                "use a device whose driver publishes its memory",
            ));
        }
        let len = geometry.region_len();
        if len as u64 > memory.available {
            let why = format!("{len} bytes of slots, but {} of its {} bytes are available", memory.available, memory.size);
            return Err(error(why, "use fewer or smaller slots"));
        }
        let file = dir.join("allocate");
        let fd = rustix::fs::open(&file, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| error(format!("opening {}: {e}", file.display()), "run as root"))?;
        // SAFETY: a fresh shared mapping of the device's allocator file; the
        // kernel backs it with peer memory it hands to no one else until
        // munmap.
        let raw = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, &fd, 0) }
            .map_err(|e| error(format!("mapping {len} bytes of {}: {e}", file.display()), "use fewer or smaller slots"))?;
        let slots = PeerMapping { ptr: NonNull::new(raw.cast()).ok_or_else(|| error("the mapping came back null".into(), "report this"))?, len };
        let queue = Mapping::new(IoQueue::bytes_for(queue_capacity.max(1)))?;
        // SAFETY: the mapping is ours, aligned, large enough, and lives as
        // long as the staging, which only hands out queue views borrowing it.
        unsafe { IoQueue::init_raw(queue.as_ptr().as_ptr(), queue.len(), queue_capacity)? };
        Ok(Self { device: device.to_owned(), slots, queue, queue_capacity, geometry, ends: Ends::new() })
    }

    /// The PCI device whose memory holds the slots.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The device's sysfs directory.
    pub fn sysfs(&self) -> PathBuf {
        Path::new(PCI_DEVICES).join(&self.device)
    }
}

// SAFETY: the slot mapping is page-aligned (mmap), at least `region_len`
// bytes, owned by `self` and unmapped only on drop; the queue is a separate
// host mapping, initialised in `new`.
unsafe impl StagingMemory for PeerStaging {
    fn geometry(&self) -> SlotGeometry {
        self.geometry
    }

    fn slot_base(&self) -> NonNull<u8> {
        self.slots.ptr
    }

    fn queue(&self) -> IoQueue<'_> {
        // SAFETY: initialised in `new` with this capacity; the view borrows
        // `self`, which owns the memory.
        unsafe { IoQueue::view(self.queue.as_ptr().as_ptr(), self.queue_capacity) }
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::DevicePeer
    }

    fn ends(&self) -> &Ends {
        &self.ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_without_peer_memory_is_refused_with_a_fix() {
        let g = SlotGeometry::new(2, 4096).unwrap();
        let e = PeerStaging::new("0000:ff:1f.7", g, 2).unwrap_err().to_string();
        assert!(e.starts_with("peer memory of PCI device 0000:ff:1f.7: there is no such PCI device. Fix: "), "{e}");
        // Whatever this machine has, every listed device has a size.
        for m in peer_memory_devices() {
            assert!(m.size > 0 && m.available <= m.size, "{m:?}");
        }
    }
}
