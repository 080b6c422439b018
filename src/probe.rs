//! The capability report behind `gpuring probe`.

use crate::ingest::{Backend, CudaMode};
use std::path::Path;

use gpuring_uring::probe::{self, Check};
use serde::Serialize;

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    /// Group: `io_uring`, `memory`, `direct_io`, `nvme`, `backend`, `gpu`.
    pub group: &'static str,
    /// What was checked.
    pub name: String,
    /// Whether it is usable.
    pub ok: bool,
    /// Why (not).
    pub detail: String,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The backends compiled into this build, default first.
    pub backends: Vec<&'static str>,
    /// Backends whose consumer runs in more than one mode, with the modes,
    /// default first (the option is `--<backend>-mode`).
    pub modes: std::collections::BTreeMap<&'static str, Vec<&'static str>>,
    /// Every check, grouped.
    pub checks: Vec<Item>,
}

fn item(group: &'static str, c: Check) -> Item {
    Item { group, name: c.name.to_owned(), ok: c.ok, detail: c.detail }
}

/// Probe this machine for a ring of `slots` slots of `slot_size` and direct
/// I/O under `dir`.
pub fn report(slots: u32, slot_size: usize, dir: &Path) -> Report {
    let mut checks: Vec<Item> = probe::uring_checks().into_iter().map(|c| item("io_uring", c)).collect();
    checks.push(item("memory", probe::memlock_check(slots, slot_size)));
    checks.push(item("direct_io", probe::direct_io_check(dir)));
    // Each namespace is opened (Identify sent) once, for both groups of rows.
    let namespaces = nvme_devices();
    checks.extend(nvme_checks(&namespaces));
    #[cfg(feature = "host")]
    checks.extend(peer_memory_checks(&namespaces));
    let mut peer_dma = Vec::new();
    for backend in crate::ingest::BACKENDS {
        let (rows, devices) = backend_checks(backend.name());
        checks.extend(rows);
        peer_dma.extend(devices);
    }
    for backend in [Backend::Cuda, Backend::Vulkan, Backend::Rocm] {
        if !backend.compiled() {
            checks.push(Item { group: "backend", name: backend.name().into(), ok: false, detail: "not compiled into this build".into() });
        }
    }
    let detail = if !peer_dma.is_empty() {
        format!("io_uring registered mapped device memory (a BAR window) of: {}", peer_dma.join(", "))
    } else if crate::ingest::BACKENDS.iter().all(|b| *b == Backend::Host) {
        "no GPU backend is compiled in, so no GPU memory can be exposed for peer DMA (BAR1)".to_owned()
    } else {
        "no GPU's device memory could be registered with io_uring (see the gpu rows above)".to_owned()
    };
    checks.push(Item { group: "gpu", name: "peer_dma".into(), ok: !peer_dma.is_empty(), detail });
    let mut modes = std::collections::BTreeMap::new();
    if Backend::Cuda.compiled() {
        modes.insert("cuda", CudaMode::ALL.iter().map(|m| m.name()).collect());
    }
    Report { backends: crate::ingest::BACKENDS.iter().map(|b| b.name()).collect(), modes, checks }
}

/// One row per PCI device that publishes peer memory (P2PDMA): its size,
/// whether io_uring can register it, and for each NVMe block device whether
/// an O_DIRECT read lands in it (the kernel's distance verdict on that
/// pair, tried, never assumed).
#[cfg(feature = "host")]
pub fn peer_memory_checks(namespaces: &[Namespace]) -> Vec<Item> {
    let devices = gpuring_host::peer_memory_devices();
    if devices.is_empty() {
        let detail = "no PCI device publishes peer memory (none has /sys/bus/pci/devices/*/p2pmem: the kernel lacks CONFIG_PCI_P2PDMA, or no device, such as an NVMe controller with a memory buffer, offers any)";
        return vec![Item { group: "peer", name: "p2pmem".into(), ok: false, detail: detail.into() }];
    }
    let blocks: Vec<&std::path::PathBuf> = namespaces.iter().filter_map(|(_, dev)| dev.as_ref().ok()?.block_device.as_ref()).collect();
    devices
        .iter()
        .map(|m| {
            let mut detail =
                format!("{} of peer memory, {} available, published: {}", gpuring_core::Bytes(m.size), gpuring_core::Bytes(m.available), m.published);
            let staging = gpuring_core::SlotGeometry::new(1, 64 << 10)
                .map_err(|e| e.to_string())
                .and_then(|g| gpuring_host::PeerStaging::new(&m.device, g, 1).map_err(|e| e.to_string()));
            match &staging {
                Err(e) => detail += &format!("; cannot map it: {e}"),
                Ok(staging) => {
                    detail += &format!("; io_uring fixed buffers: {}", peer_registration(staging));
                    for block in &blocks {
                        detail += &format!("; O_DIRECT read from {} into it: {}", block.display(), peer_read(staging, block));
                    }
                    if blocks.is_empty() {
                        detail += "; no NVMe block device to try a peer read from";
                    }
                }
            }
            Item { group: "peer", name: m.device.clone(), ok: m.published && staging.is_ok(), detail }
        })
        .collect()
}

/// Whether io_uring registers the peer memory as a fixed buffer.
#[cfg(feature = "host")]
fn peer_registration(staging: &gpuring_host::PeerStaging) -> String {
    use gpuring_core::StagingMemory;
    let mut ring = match gpuring_uring::Ring::new(1) {
        Ok(ring) => ring,
        Err(e) => return format!("not tried ({e})"),
    };
    let slot = (staging.slot_ptr(0).as_ptr(), staging.geometry().slot_size());
    // SAFETY: the mapping outlives `ring`, which is dropped (unregistering
    // it) before this function returns.
    match unsafe { ring.register_buffers(&[slot]) } {
        Ok(()) => "yes".into(),
        Err(gpuring_uring::IngestError::Ring { errno: rustix::io::Errno::FAULT, .. }) => {
            "no (EFAULT: the kernel pins registered buffers without P2PDMA support); gpuring reads into it by address".into()
        }
        Err(e) => format!("no ({e}); gpuring reads into it by address"),
    }
}

/// One O_DIRECT read of 4 KiB from the start of `block` into the peer memory.
#[cfg(feature = "host")]
fn peer_read(staging: &gpuring_host::PeerStaging, block: &Path) -> String {
    use gpuring_core::StagingMemory;
    let fd = match rustix::fs::open(block, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return format!("not tried (opening it: {e})"),
    };
    // SAFETY: the slot is 64 KiB of the staging's mapping, which no one
    // else uses; the read writes at most 4 KiB of it.
    let buf = unsafe { std::slice::from_raw_parts_mut(staging.slot_ptr(0).as_ptr(), 4096) };
    match rustix::io::pread(&fd, buf, 0) {
        Ok(n) => format!("yes ({n} bytes)"),
        Err(rustix::io::Errno::INVAL) => "no (EINVAL: the kernel's P2PDMA distance rules refuse this pair; put both devices behind one PCIe switch)".into(),
        Err(rustix::io::Errno::REMOTEIO) => "no (EREMOTEIO: this device's driver cannot DMA into peer memory, as NVMe over TCP cannot)".into(),
        Err(e) => format!("no ({e})"),
    }
}

/// An NVMe namespace character device, opened (or why not).
pub type Namespace = (std::path::PathBuf, Result<gpuring_uring::nvme::NvmeDevice, gpuring_uring::IngestError>);

/// Every NVMe namespace character device on this machine, opened.
pub fn nvme_devices() -> Vec<Namespace> {
    gpuring_uring::nvme::list_namespaces().into_iter().map(|path| (path.clone(), gpuring_uring::nvme::NvmeDevice::open(&path))).collect()
}

/// One row per NVMe namespace character device: its geometry, from the
/// device, and whether a passthrough read works, fixed and plain.
pub fn nvme_checks(namespaces: &[Namespace]) -> Vec<Item> {
    if namespaces.is_empty() {
        let detail = "no NVMe character devices (/dev/ngXnY) on this machine (`cargo xtask nvme-vm` tests passthrough on an emulated one)";
        return vec![Item { group: "nvme", name: "namespaces".into(), ok: false, detail: detail.into() }];
    }
    namespaces
        .iter()
        .map(|(path, opened)| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match opened {
                Err(e) => Item { group: "nvme", name, ok: false, detail: e.to_string() },
                Ok(dev) => {
                    let ns = dev.namespace;
                    let l = dev.limits;
                    let kb = |b: Option<u32>| b.map_or("none".to_owned(), |b| format!("{}", gpuring_core::Bytes(b as u64)));
                    let fixed = gpuring_uring::nvme::try_read(dev, true);
                    let plain = gpuring_uring::nvme::try_read(dev, false);
                    let verdict = |r: &Result<(), gpuring_uring::IngestError>| match r {
                        Ok(()) => "yes".to_owned(),
                        Err(e) => format!("no ({e})"),
                    };
                    let detail = format!(
                        "nsid {}, {}-byte blocks, {} blocks ({}), max transfer {} (MDTS {}, kernel max_hw {}, {} segments, one command {}); block device {}; passthrough read: fixed buffers {}, plain {}",
                        ns.nsid,
                        ns.lba_size,
                        ns.capacity_blocks,
                        gpuring_core::Bytes(dev.capacity_bytes()),
                        gpuring_core::Bytes(ns.max_transfer_bytes as u64),
                        kb(l.mdts),
                        kb(l.kernel_max_hw),
                        kb(l.kernel_segments),
                        gpuring_core::Bytes(gpuring_core::nvme::MAX_BLOCKS_PER_COMMAND as u64 * ns.lba_size as u64),
                        dev.block_device.as_ref().map_or("none".to_owned(), |p| p.display().to_string()),
                        verdict(&fixed),
                        verdict(&plain),
                    );
                    Item { group: "nvme", name, ok: fixed.is_ok() || plain.is_ok(), detail }
                }
            }
        })
        .collect()
}

/// Why `backend` cannot run on this machine (`None`: it can). Cheaper than
/// the report: it looks for usable devices but maps and registers nothing.
pub fn backend_unusable(backend: &str) -> Option<String> {
    let row = match backend {
        #[cfg(feature = "vulkan")]
        "vulkan" => vulkan_devices().0,
        #[cfg(feature = "cuda")]
        "cuda" => cuda_devices().0,
        #[cfg(feature = "rocm")]
        "rocm" => rocm_devices().0,
        other => backend_checks(other).0.remove(0),
    };
    (!row.ok).then_some(row.detail)
}

/// The rows for one compiled-in backend (the backend itself, then what it
/// found: devices, BAR windows, dma-buf export), and the GPUs whose device
/// memory io_uring could register (peer DMA).
fn backend_checks(backend: &str) -> (Vec<Item>, Vec<String>) {
    match backend {
        "host" => {
            (vec![Item { group: "backend", name: "host".into(), ok: true, detail: "locked host memory, CPU consumer thread; needs no GPU".into() }], Vec::new())
        }
        #[cfg(feature = "vulkan")]
        "vulkan" => vulkan_checks(),
        #[cfg(feature = "cuda")]
        "cuda" => cuda_checks(),
        #[cfg(feature = "rocm")]
        "rocm" => rocm_checks(),
        other => (vec![Item { group: "backend", name: other.into(), ok: false, detail: "not compiled into this build".into() }], Vec::new()),
    }
}

/// A GPU backend's row from its devices' names and why each is unusable
/// (`None`: usable): usable when one is, else why none is.
#[cfg(any(feature = "vulkan", feature = "cuda", feature = "rocm"))]
fn backend_row<'a>(backend: &str, devices: impl Iterator<Item = (&'a str, Option<&'a str>)>, how: &str) -> Item {
    let devices: Vec<_> = devices.collect();
    let usable = devices.iter().filter(|d| d.1.is_none()).count();
    let detail = if usable == 0 {
        let why: Vec<String> = devices.iter().map(|(name, why)| format!("{name} ({})", why.unwrap_or(""))).collect();
        format!("no usable device among {}: {}", devices.len(), why.join("; "))
    } else {
        format!("{usable} usable device(s); {how}")
    };
    Item { group: "backend", name: backend.into(), ok: usable > 0, detail }
}

/// The Vulkan backend's row (usable or why not) and the devices behind it.
#[cfg(feature = "vulkan")]
fn vulkan_devices() -> (Item, Vec<gpuring_vulkan::DeviceInfo>) {
    let devices = match gpuring_vulkan::devices() {
        Ok(d) if d.is_empty() => Err(gpuring_vulkan::VulkanError::NoDevice),
        other => other,
    };
    let devices = match devices {
        Ok(d) => d,
        Err(e) => return (Item { group: "backend", name: "vulkan".into(), ok: false, detail: e.to_string() }, Vec::new()),
    };
    let row = backend_row(
        "vulkan",
        devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())),
        "slots imported with VK_EXT_external_memory_host, compute-shader consumer",
    );
    (row, devices)
}

#[cfg(feature = "vulkan")]
fn vulkan_checks() -> (Vec<Item>, Vec<String>) {
    use gpuring_core::Bytes;

    let (row, devices) = vulkan_devices();
    let mut rows = vec![row];
    let mut peer_dma = Vec::new();
    for d in &devices {
        let detail = match &d.unusable {
            None => format!(
                "{} ({}, Vulkan {}): usable; import alignment {}, largest storage buffer {}",
                d.name,
                d.kind,
                d.api_version,
                Bytes(d.import_alignment),
                Bytes(d.max_storage_buffer_range)
            ),
            Some(why) => format!("{} ({}, Vulkan {}): not usable: {why}", d.name, d.kind, d.api_version),
        };
        rows.push(Item { group: "gpu", name: format!("vulkan_device_{}", d.index), ok: d.unusable.is_none(), detail });
        let bar = bar_window_check(d);
        if bar.ok && !d.device_memory_is_system_memory {
            peer_dma.push(d.name.clone());
        }
        rows.push(bar);
        rows.push(Item {
            group: "gpu",
            name: format!("vulkan_dma_buf_{}", d.index),
            ok: false,
            detail: if d.dma_buf {
                "offers VK_EXT_external_memory_dma_buf, but io_uring's buffer registration takes process memory, not a dma-buf file descriptor, so file reads cannot target it on this kernel".into()
            } else {
                "no VK_EXT_external_memory_dma_buf: device memory cannot be exported as a dma-buf".into()
            },
        });
    }
    (rows, peer_dma)
}

/// Map 1 MiB of the device's device-local, host-visible memory and try to
/// register it with io_uring, which is what peer DMA into VRAM would need.
#[cfg(feature = "vulkan")]
fn bar_window_check(d: &gpuring_vulkan::DeviceInfo) -> Item {
    use gpuring_core::Bytes;
    use std::sync::Arc;

    let name = format!("vulkan_bar_window_{}", d.index);
    let Some(heap) = d.bar_window else {
        return Item { group: "gpu", name, ok: false, detail: "no device-local, host-visible memory type (no BAR window)".into() };
    };
    let len = 1 << 20;
    let tried = (|| -> Result<Result<(), String>, String> {
        let ctx = Arc::new(gpuring_vulkan::Context::new(Some(&d.index.to_string())).map_err(|e| e.to_string())?);
        let window = gpuring_vulkan::BarWindow::map(&ctx, len).map_err(|e| e.to_string())?.ok_or("the memory type went away")?;
        let mut ring = gpuring_uring::Ring::new(1).map_err(|e| e.to_string())?;
        // SAFETY: the window stays mapped until after the ring is dropped
        // (`ring` is declared after `window`, so it drops first).
        Ok(unsafe { ring.register_buffers(&[(window.ptr().as_ptr(), window.len())]) }.map_err(|e| e.to_string()))
    })();
    let system =
        if d.device_memory_is_system_memory { " (this is a CPU device: its device-local memory is ordinary system memory, not a GPU BAR)" } else { "" };
    match tried {
        Ok(Ok(())) => {
            Item { group: "gpu", name, ok: true, detail: format!("BAR window in a {} heap: io_uring registered 1 MiB of it mapped{system}", Bytes(heap)) }
        }
        Ok(Err(e)) => Item {
            group: "gpu",
            name,
            ok: false,
            detail: format!(
                "BAR window in a {} heap, but io_uring could not register it ({e}): the kernel cannot pin mapped device memory for I/O{system}",
                Bytes(heap)
            ),
        },
        Err(e) => Item { group: "gpu", name, ok: false, detail: format!("BAR window in a {} heap, but mapping it failed: {e}", Bytes(heap)) },
    }
}

/// The CUDA backend's row (usable or why not) and the devices behind it.
#[cfg(feature = "cuda")]
fn cuda_devices() -> (Item, Vec<gpuring_cuda::DeviceInfo>) {
    let devices = match gpuring_cuda::devices() {
        Ok(d) if d.is_empty() => Err(gpuring_cuda::CudaError::NoDevice { why: "cuDeviceGetCount returned 0".into() }),
        other => other,
    };
    let devices = match devices {
        Ok(d) => d,
        Err(e) => return (Item { group: "backend", name: "cuda".into(), ok: false, detail: e.to_string() }, Vec::new()),
    };
    let row = backend_row(
        "cuda",
        devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())),
        "slots page-locked and mapped with cuMemHostRegister, NVRTC-compiled consumer kernel",
    );
    (row, devices)
}

/// The CUDA rows: each device, then what peer DMA into its memory needs
/// (kernel modules, attributes, and whether io_uring can register device
/// memory exported as a dma-buf and mapped), and the GPUs where it can.
#[cfg(feature = "cuda")]
fn cuda_checks() -> (Vec<Item>, Vec<String>) {
    use gpuring_core::Bytes;

    let (row, devices) = cuda_devices();
    let mut rows = vec![row];
    let mut peer_dma = Vec::new();
    for d in &devices {
        let detail = match &d.unusable {
            None => format!(
                "{} (compute {}.{}, {} multiprocessors, {}, PCI {}): usable",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.multiprocessors,
                Bytes(d.memory),
                d.pci
            ),
            Some(why) => format!("{} (compute {}.{}): not usable: {why}", d.name, d.compute_capability.0, d.compute_capability.1),
        };
        rows.push(Item { group: "gpu", name: format!("cuda_device_{}", d.index), ok: d.unusable.is_none(), detail });
        for f in gpuring_cuda::peer::findings(d) {
            rows.push(Item { group: "gpu", name: format!("cuda_{}_{}", f.name, d.index), ok: f.ok, detail: f.detail });
        }
        let window = dma_buf_window_check(d);
        if window.ok {
            peer_dma.push(d.name.clone());
        }
        rows.push(window);
    }
    (rows, peer_dma)
}

/// The ROCm backend's row (usable or why not) and the devices behind it.
#[cfg(feature = "rocm")]
fn rocm_devices() -> (Item, Vec<gpuring_rocm::DeviceInfo>) {
    match gpuring_rocm::devices() {
        Ok(devices) => {
            let how = "slots registered and mapped with hipHostRegister, hiprtc-compiled consumer kernel";
            (backend_row("rocm", devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())), how), devices)
        }
        Err(e) => (Item { group: "backend", name: "rocm".into(), ok: false, detail: e.to_string() }, Vec::new()),
    }
}

/// The ROCm rows: the runtime that loaded, then each device.
#[cfg(feature = "rocm")]
fn rocm_checks() -> (Vec<Item>, Vec<String>) {
    use gpuring_core::Bytes;

    let (row, devices) = rocm_devices();
    let mut rows = vec![row];
    if let Ok((library, version)) = gpuring_rocm::runtime() {
        let version = version.map_or("version unknown".to_owned(), |v| format!("HIP {}.{}.{}", v / 10_000_000, v / 100_000 % 100, v % 100_000));
        rows.push(Item { group: "gpu", name: "rocm_runtime".into(), ok: true, detail: format!("{library} ({version})") });
    }
    for d in &devices {
        let detail = match &d.unusable {
            None => format!(
                "{} (gfx {}.{}, {} compute units, {}, PCI {}{}): usable",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.compute_units,
                Bytes(d.memory),
                d.pci,
                if d.integrated { ", integrated" } else { "" }
            ),
            Some(why) => format!("{}: not usable: {why}", d.name),
        };
        rows.push(Item { group: "gpu", name: format!("rocm_device_{}", d.index), ok: d.unusable.is_none(), detail });
    }
    (rows, Vec::new())
}

/// Export 2 MiB of the device's memory as a dma-buf, map it, and try to
/// register the mapping with io_uring, which is what reads straight into
/// VRAM (BAR1) would need.
#[cfg(feature = "cuda")]
fn dma_buf_window_check(d: &gpuring_cuda::DeviceInfo) -> Item {
    let name = format!("cuda_bar1_window_{}", d.index);
    if !d.dma_buf {
        return Item {
            group: "gpu",
            name,
            ok: false,
            detail: "the device cannot export its memory as a dma-buf, so the host cannot map it for io_uring".into(),
        };
    }
    let tried = (|| -> Result<Result<(), String>, String> {
        let device = gpuring_cuda::Device::open(Some(&d.index.to_string())).map_err(|e| e.to_string())?;
        let window = gpuring_cuda::peer::DmaBufWindow::export(&device, 2 << 20).map_err(|(step, why)| format!("{step} failed: {why}"))?;
        let mut ring = gpuring_uring::Ring::new(1).map_err(|e| e.to_string())?;
        // SAFETY: the window stays mapped until after the ring is dropped
        // (`ring` is declared after `window`, so it drops first).
        Ok(unsafe { ring.register_buffers(&[(window.ptr().as_ptr(), window.len())]) }.map_err(|e| e.to_string()))
    })();
    match tried {
        Ok(Ok(())) => Item { group: "gpu", name, ok: true, detail: "io_uring registered 2 MiB of device memory exported as a dma-buf and mapped: reads can land in VRAM".into() },
        Ok(Err(e)) => Item {
            group: "gpu",
            name,
            ok: false,
            detail: format!("device memory was exported as a dma-buf and mapped, but io_uring could not register the mapping ({e}): the kernel cannot pin BAR pages for I/O"),
        },
        Err(e) => Item { group: "gpu", name, ok: false, detail: e },
    }
}
