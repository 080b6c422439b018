//! The CUDA driver and its devices: loading, listing, choosing, opening.
//!
//! cudarc loads libcuda at run time and panics when a function is called
//! without it, or when the driver lacks a symbol its bindings name; so
//! [`driver`] checks both, once, before anything else touches the driver,
//! and every entry point of this crate goes through it.

use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use cudarc::driver::{result, CudaContext, DriverError};
use gpuring_shared::Unchosen;

use crate::error::{call, CudaError};

/// The oldest driver the backend works with: CUDA 12.0 (`cuDriverGetVersion`
/// 12000). Every driver function the backend calls exists there.
pub const MIN_DRIVER: i32 = 12_000;

/// What the backend needs to know about one CUDA device, and what `gpuring
/// probe` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's ordinal (what `--device N` means).
    pub index: usize,
    /// The device's name.
    pub name: String,
    /// Compute capability, as (major, minor).
    pub compute_capability: (i32, i32),
    /// Multiprocessors.
    pub multiprocessors: u32,
    /// Device memory in bytes.
    pub memory: u64,
    /// PCI address, as `domain:bus:device.0`.
    pub pci: String,
    /// Whether it can map page-locked host memory (`CAN_MAP_HOST_MEMORY`).
    pub maps_host_memory: bool,
    /// Whether the driver can page-lock memory it did not allocate
    /// (`HOST_REGISTER_SUPPORTED`), which is how io_uring's slots are mapped.
    pub host_register: bool,
    /// Whether kernels can be launched cooperatively (all blocks resident at
    /// once), which the persistent consumer relies on.
    pub cooperative_launch: bool,
    /// Whether device memory can be exported as a dma-buf
    /// (`DMA_BUF_SUPPORTED`).
    pub dma_buf: bool,
    /// Whether the device supports GPUDirect RDMA (`GPU_DIRECT_RDMA_SUPPORTED`).
    pub gpudirect_rdma: bool,
    /// Why the backend cannot use this device (`None`: it can).
    pub unusable: Option<String>,
}

/// Check, once per process, that libcuda loads, that it is recent enough,
/// and that `cuInit` succeeds.
pub fn driver() -> Result<(), CudaError> {
    /// What the one attempt to load the driver found.
    enum Loaded {
        Ready,
        NoLibrary,
        TooOld(i32),
        InitFailed(String),
    }
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        // SAFETY: only tries to dlopen the driver library and drops it.
        if !unsafe { sys::is_culib_present() } {
            return Loaded::NoLibrary;
        }
        let mut version = 0;
        // SAFETY: the library is present and has had this function since
        // CUDA 2.2; the output is a valid int.
        let got = unsafe { sys::cuDriverGetVersion(&mut version) };
        if got != sys::CUresult::CUDA_SUCCESS || version < MIN_DRIVER {
            return Loaded::TooOld(version);
        }
        match result::init() {
            Ok(()) => Loaded::Ready,
            Err(e) => Loaded::InitFailed(crate::error::describe(&e)),
        }
    });
    match loaded {
        Loaded::Ready => Ok(()),
        Loaded::NoLibrary => Err(CudaError::NoDriver),
        Loaded::TooOld(version) => Err(CudaError::DriverTooOld { version: *version, needed: MIN_DRIVER }),
        Loaded::InitFailed(why) => Err(CudaError::NoDevice { why: format!("cuInit: {why}") }),
    }
}

fn attribute(device: sys::CUdevice, attr: Attr) -> Result<i32, CudaError> {
    // SAFETY: the driver is initialised and `device` came from it.
    unsafe { result::device::get_attribute(device, attr) }.map_err(call("cuDeviceGetAttribute"))
}

fn describe(index: usize) -> Result<DeviceInfo, CudaError> {
    let device = result::device::get(index as i32).map_err(call("cuDeviceGet"))?;
    let name = result::device::get_name(device).map_err(call("cuDeviceGetName"))?;
    let flag = |attr| attribute(device, attr).map(|v| v != 0);
    let compute_capability =
        (attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?, attribute(device, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?);
    let pci = format!(
        "{:04x}:{:02x}:{:02x}.0",
        attribute(device, Attr::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
        attribute(device, Attr::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
        attribute(device, Attr::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?
    );
    // SAFETY: as in `attribute`.
    let memory = unsafe { result::device::total_mem(device) }.map_err(call("cuDeviceTotalMem"))? as u64;
    let maps_host_memory = flag(Attr::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)?;
    let host_register = flag(Attr::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED)?;
    let unusable = if compute_capability.0 < 7 {
        Some(format!("compute capability {}.{}; the consumer kernel needs 7.0 (Volta) or newer", compute_capability.0, compute_capability.1))
    } else if !maps_host_memory {
        Some("it cannot map page-locked host memory into its address space".to_owned())
    } else if !host_register {
        Some("its driver cannot page-lock memory it did not allocate (cuMemHostRegister), which the io_uring-registered slots need".to_owned())
    } else {
        None
    };
    Ok(DeviceInfo {
        index,
        name,
        compute_capability,
        multiprocessors: attribute(device, Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        memory,
        pci,
        maps_host_memory,
        host_register,
        cooperative_launch: flag(Attr::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)?,
        dma_buf: flag(Attr::CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED)?,
        gpudirect_rdma: flag(Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED)?,
        unusable,
    })
}

/// Describe every CUDA device on this machine (for `gpuring probe`).
pub fn devices() -> Result<Vec<DeviceInfo>, CudaError> {
    driver()?;
    let count = result::device::get_count().map_err(|e| CudaError::NoDevice { why: crate::error::describe(&e) })?;
    (0..count.max(0) as usize).map(describe).collect()
}

/// Pick a device: `selector` is an index or part of a name (case-blind);
/// without one, the first usable device.
pub(crate) fn choose(devices: &[DeviceInfo], selector: Option<&str>) -> Result<usize, CudaError> {
    let list: Vec<(&str, Option<&str>)> = devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())).collect();
    gpuring_shared::choose_device(&list, selector, |_| 0).map_err(|e| match e {
        Unchosen::NoDevices => CudaError::NoDevice { why: "cuDeviceGetCount returned 0".into() },
        Unchosen::NotFound(available) => CudaError::DeviceNotFound { wanted: selector.unwrap_or_default().to_owned(), available },
        Unchosen::Unusable(device, what) => CudaError::Unsupported { device, what },
    })
}

/// An open device: its primary context, and what the backend knows of it.
pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) info: DeviceInfo,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("device", &self.info.name).finish()
    }
}

impl Device {
    /// Open the device `selector` names: an index or part of a name
    /// (case-blind); `None`: the first usable device.
    pub fn open(selector: Option<&str>) -> Result<Arc<Self>, CudaError> {
        let devices = devices()?;
        let index = choose(&devices, selector)?;
        let ctx = CudaContext::new(index).map_err(call("cuDevicePrimaryCtxRetain"))?;
        // The backend orders its own work (one stream per consumer, and it
        // synchronises before freeing anything), so cudarc's per-use events
        // would only add calls to every launch.
        // SAFETY: nothing in this crate relies on cudarc's event tracking.
        unsafe { ctx.disable_event_tracking() };
        Ok(Arc::new(Self { ctx, info: devices[index].clone() }))
    }

    /// The device of a context of yours (cudarc's), so that gpuring's
    /// staging and consumers work on it: your kernels, buffers and streams
    /// and gpuring's then share one context.
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Arc<Self>, CudaError> {
        let devices = devices()?;
        let info = devices.get(ctx.ordinal()).cloned().ok_or(CudaError::NoDevice { why: format!("the driver lists no device {}", ctx.ordinal()) })?;
        if let Some(why) = &info.unusable {
            return Err(CudaError::Unsupported { device: info.name.clone(), what: why.clone() });
        }
        Ok(Arc::new(Self { ctx, info }))
    }

    /// The context gpuring works in (cudarc's), for your own kernels,
    /// buffers and streams next to gpuring's.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The chosen device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Make the context current on the calling thread (driver calls act on
    /// the current context).
    pub(crate) fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(call("cuCtxSetCurrent"))
    }
}

/// Turn a driver error into [`CudaError::Call`] for `name` (for calls made
/// through `sys` directly, which return a bare `CUresult`).
pub(crate) fn check(name: &'static str, code: sys::CUresult) -> Result<(), CudaError> {
    code.result().map_err(|e: DriverError| CudaError::Call { call: name, error: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, name: &str, unusable: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            index,
            name: name.into(),
            compute_capability: (9, 0),
            multiprocessors: 132,
            memory: 80 << 30,
            pci: "0000:01:00.0".into(),
            maps_host_memory: true,
            host_register: true,
            cooperative_launch: true,
            dma_buf: true,
            gpudirect_rdma: true,
            unusable: unusable.map(str::to_owned),
        }
    }

    #[test]
    fn choosing_by_default_index_and_name() {
        let list = [device(0, "Tesla K80", Some("compute capability 3.7")), device(1, "NVIDIA H100 80GB HBM3", None)];
        assert_eq!(choose(&list, None).unwrap(), 1, "the first usable device");
        assert_eq!(choose(&list, Some("1")).unwrap(), 1);
        assert_eq!(choose(&list, Some("h100")).unwrap(), 1);
        let e = choose(&list, Some("a100")).unwrap_err().to_string();
        assert!(e.contains("no CUDA device matches `a100` (devices: 0: Tesla K80; 1: NVIDIA H100 80GB HBM3)"), "{e}");
        assert!(e.contains("Fix: choose a device by an index"), "{e}");
        let e = choose(&list, Some("0")).unwrap_err().to_string();
        assert!(e.contains("CUDA device `Tesla K80` cannot run gpuring: compute capability 3.7. Fix: pick another device"), "{e}");
        assert!(matches!(choose(&[], None), Err(CudaError::NoDevice { .. })));
    }

    #[test]
    fn too_old_driver_names_both_versions() {
        let e = CudaError::DriverTooOld { version: 11080, needed: MIN_DRIVER }.to_string();
        assert!(e.contains("supports CUDA 11.8, but gpuring's CUDA backend needs 12.0 or newer. Fix: update the NVIDIA driver"), "{e}");
    }
}
