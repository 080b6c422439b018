//! What GPU peer DMA (the disk writing into VRAM through the GPU's BAR1)
//! would need on this machine, probed rather than assumed, for `gpuring
//! probe`. The last step, registering device memory with io_uring, belongs
//! to the caller (this crate never depends on gpuring-uring): it gets a
//! [`DmaBufWindow`], device memory exported as a dma-buf and mapped into
//! this process, to try.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::sys;

use crate::device::{check, Device, DeviceInfo};
use crate::error::{describe, CudaError};

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What was looked at.
    pub name: &'static str,
    /// Whether it is there.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// The kernel-side pieces, for `device`: nvidia-fs (GPUDirect Storage's
/// kernel module), P2PDMA memory registered by the GPU's driver, the
/// device's own GPUDirect RDMA and dma-buf attributes, and what the
/// driver's P2PDMA mode needs of the platform (the open kernel module, 565
/// or newer; BAR1 mapped statically).
pub fn findings(device: &DeviceInfo) -> Vec<Finding> {
    let nvfs = Path::new("/sys/module/nvidia_fs").exists() || Path::new("/proc/driver/nvidia-fs").exists();
    let p2pmem = Path::new("/sys/bus/pci/devices").join(&device.pci).join("p2pmem");
    vec![
        Finding {
            name: "nvidia_fs",
            ok: nvfs,
            detail: if nvfs {
                "the nvidia-fs module is loaded (GPUDirect Storage through cuFile; io_uring cannot use it)".into()
            } else {
                "the nvidia-fs module (GPUDirect Storage) is not loaded".into()
            },
        },
        Finding {
            name: "p2pdma",
            ok: p2pmem.exists(),
            detail: if p2pmem.exists() {
                format!("{} exists: the GPU's driver offers P2PDMA memory", p2pmem.display())
            } else {
                format!("no {}: the GPU's driver registers no P2PDMA memory with the kernel", p2pmem.display())
            },
        },
        Finding {
            name: "gpudirect_rdma",
            ok: device.gpudirect_rdma,
            detail: format!("the device {} GPUDirect RDMA", if device.gpudirect_rdma { "supports" } else { "does not support" }),
        },
        Finding {
            name: "dma_buf",
            ok: device.dma_buf,
            detail: format!("the device {} exporting its memory as a dma-buf", if device.dma_buf { "supports" } else { "does not support" }),
        },
        open_kernel_module(std::fs::read_to_string("/proc/driver/nvidia/version").ok().as_deref()),
        static_bar1(std::fs::read_to_string("/proc/driver/nvidia/params").ok().as_deref()),
    ]
}

/// The driver's P2PDMA mode (GPUDirect Storage without nvidia-fs) needs
/// NVIDIA's open kernel module, 565 or newer: from the text of
/// `/proc/driver/nvidia/version` (`None`: not readable).
fn open_kernel_module(version: Option<&str>) -> Finding {
    let name = "open_kernel_module";
    let Some(text) = version else {
        return Finding { name, ok: false, detail: "no /proc/driver/nvidia/version: the NVIDIA kernel module is not loaded".into() };
    };
    let first = text.lines().next().unwrap_or_default().trim();
    let open = first.contains("Open Kernel Module");
    let release = first.split_whitespace().find_map(|w| w.split('.').next()?.parse::<u32>().ok().filter(|major| *major >= 100));
    let recent = release.is_some_and(|major| major >= 565);
    let detail = match (open, release) {
        (true, Some(major)) if recent => format!("the open kernel module, release {major} (P2PDMA mode needs open and 565 or newer): {first}"),
        (true, Some(major)) => format!("the open kernel module, but release {major}: P2PDMA mode needs 565 or newer ({first})"),
        (true, None) => format!("the open kernel module, release not read: {first}"),
        (false, _) => format!("the proprietary kernel module: P2PDMA mode needs the open one ({first})"),
    };
    Finding { name, ok: open && recent, detail }
}

/// The driver's P2PDMA mode needs BAR1 mapped statically
/// (`NVreg_RegistryDwords="RMForceStaticBar1=1"`): from the text of
/// `/proc/driver/nvidia/params` (`None`: not readable).
fn static_bar1(params: Option<&str>) -> Finding {
    let name = "static_bar1";
    let Some(text) = params else {
        return Finding { name, ok: false, detail: "no /proc/driver/nvidia/params: the NVIDIA kernel module is not loaded".into() };
    };
    let dwords = text.lines().find(|l| l.trim_start().starts_with("RegistryDwords:")).unwrap_or_default();
    let on = dwords.replace(' ', "").contains("RMForceStaticBar1=1");
    let detail = match on {
        true => "BAR1 is mapped statically (RegistryDwords has RMForceStaticBar1=1)".to_owned(),
        false => "BAR1 is not forced static: P2PDMA mode needs the module parameter NVreg_RegistryDwords=\"RMForceStaticBar1=1\"".to_owned(),
    };
    Finding { name, ok: on, detail }
}

/// Device memory exported as a dma-buf file descriptor and mapped into this
/// process (BAR1 pages), for a caller to try registering with io_uring.
/// Unmapped, closed and freed on drop.
pub struct DmaBufWindow {
    ptr: NonNull<u8>,
    len: usize,
    _fd: OwnedFd,
    memory: sys::CUdeviceptr,
    device: Arc<Device>,
}

impl std::fmt::Debug for DmaBufWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBufWindow").field("device", &self.device.info.name).field("len", &self.len).finish()
    }
}

// SAFETY: the mapping is plain memory with no thread affinity, owned by the value.
unsafe impl Send for DmaBufWindow {}

/// Why a [`DmaBufWindow`] could not be made: the step and what it said.
pub type Refusal = (&'static str, String);

impl DmaBufWindow {
    /// Allocate `len` bytes (a multiple of 2 MiB) of device memory, export
    /// them as a dma-buf and map the dma-buf. Each step that fails says so.
    pub fn export(device: &Arc<Device>, len: usize) -> Result<Self, Refusal> {
        let driver = |e: CudaError| ("setting up", e.to_string());
        device.bind().map_err(driver)?;
        let mut memory = 0;
        // SAFETY: the output is valid; the memory is freed below or in `Drop`.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut memory, len) }).map_err(driver)?;
        let free = |memory| {
            // SAFETY: allocated above and not used by anything else.
            unsafe { sys::cuMemFree_v2(memory) };
        };
        let mut fd: i32 = -1;
        // SAFETY: `memory` is a live allocation of `len` bytes, aligned to
        // the allocation granularity; the output is an int.
        let exported = unsafe {
            sys::cuMemGetHandleForAddressRange((&mut fd as *mut i32).cast(), memory, len, sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0)
        };
        if let Err(e) = exported.result() {
            free(memory);
            return Err(("exporting device memory as a dma-buf (cuMemGetHandleForAddressRange)", describe(&e)));
        }
        // SAFETY: the driver returned a new file descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a fresh shared mapping of the dma-buf; nothing aliases it.
        let mapped = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE, rustix::mm::MapFlags::SHARED, &fd, 0)
        };
        match mapped {
            Ok(ptr) => Ok(Self { ptr: NonNull::new(ptr.cast()).expect("mmap never returns null"), len, _fd: fd, memory, device: device.clone() }),
            Err(errno) => {
                drop(fd);
                free(memory);
                Err(("mapping the dma-buf into this process (mmap)", errno.to_string()))
            }
        }
    }

    /// The first mapped byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DmaBufWindow {
    fn drop(&mut self) {
        // SAFETY: our mapping, made once; whoever registered it had to
        // unregister it first. Then the allocation, which nothing else uses.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len);
            let _ = self.device.bind();
            sys::cuMemFree_v2(self.memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_s_p2pdma_needs_are_read_from_its_proc_files() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)\nGCC version: gcc 12\n";
        assert!(open_kernel_module(Some(open)).ok);
        let old = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build\n";
        let f = open_kernel_module(Some(old));
        assert!(!f.ok && f.detail.contains("release 550: P2PDMA mode needs 565 or newer"), "{}", f.detail);
        let closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15  Release Build\n";
        let f = open_kernel_module(Some(closed));
        assert!(!f.ok && f.detail.starts_with("the proprietary kernel module"), "{}", f.detail);
        assert!(!open_kernel_module(None).ok);
        assert!(static_bar1(Some("ResmanDebugLevel: 4294967295\nRegistryDwords: \"RMForceStaticBar1=1\"\n")).ok);
        assert!(static_bar1(Some("RegistryDwords: \"RmGpuComputeExecTimeout=0; RMForceStaticBar1=1\"\n")).ok);
        let f = static_bar1(Some("RegistryDwords: \"\"\n"));
        assert!(!f.ok && f.detail.contains("NVreg_RegistryDwords"), "{}", f.detail);
        assert!(!static_bar1(None).ok);
    }
}
