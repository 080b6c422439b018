//! The HIP runtime's devices, and the one the backend runs on.

use std::ffi::{c_char, c_int, CStr};
use std::sync::Arc;

use gpuring_shared::Unchosen;
use hip_sys::hiprt::hipDeviceAttribute_t as Attr;

use crate::api::{hip, Hip};
use crate::error::RocmError;

/// What gpuring needs to know of a HIP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The runtime's device index.
    pub index: usize,
    /// The device's name.
    pub name: String,
    /// The `major.minor` the runtime reports (on AMD GPUs, the GFX
    /// version: 9.0 for gfx90a and gfx942, 11.0 for gfx1100).
    pub compute_capability: (i32, i32),
    /// Compute units.
    pub compute_units: u32,
    /// Device memory in bytes.
    pub memory: u64,
    /// PCI address (domain:bus:device.function).
    pub pci: String,
    /// Whether it can map page-locked host memory (`hipHostRegisterMapped`).
    pub maps_host_memory: bool,
    /// Whether it shares memory with the CPU (an APU).
    pub integrated: bool,
    /// Why gpuring cannot use it, if it cannot.
    pub unusable: Option<String>,
}

fn attribute(hip: &Hip, device: c_int, attr: Attr) -> Result<i32, RocmError> {
    let mut value = 0;
    // SAFETY: the output is a valid int; a bad device is an error code.
    hip.check("hipDeviceGetAttribute", unsafe { (hip.rt.hipDeviceGetAttribute)(&mut value, attr as c_int, device) })?;
    Ok(value)
}

/// A string the runtime writes into a buffer.
fn text(hip: &Hip, call: &'static str, f: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int, device: c_int) -> Result<String, RocmError> {
    let mut buffer = [0 as c_char; 256];
    // SAFETY: the runtime writes at most `len` bytes, NUL included.
    hip.check(call, unsafe { f(buffer.as_mut_ptr(), buffer.len() as c_int - 1, device) })?;
    // SAFETY: the buffer is NUL-terminated (its last byte is never written).
    Ok(unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().trim().to_owned())
}

fn describe(hip: &Hip, index: usize) -> Result<DeviceInfo, RocmError> {
    let device = index as c_int;
    let name = text(hip, "hipDeviceGetName", hip.rt.hipDeviceGetName, device)?;
    let pci = text(hip, "hipDeviceGetPCIBusId", hip.rt.hipDeviceGetPCIBusId, device)?.to_lowercase();
    let mut memory = 0usize;
    // SAFETY: the output is a valid size_t.
    hip.check("hipDeviceTotalMem", unsafe { (hip.rt.hipDeviceTotalMem)(&mut memory, device) })?;
    let compute_capability =
        (attribute(hip, device, Attr::hipDeviceAttributeComputeCapabilityMajor)?, attribute(hip, device, Attr::hipDeviceAttributeComputeCapabilityMinor)?);
    let maps_host_memory = attribute(hip, device, Attr::hipDeviceAttributeCanMapHostMemory)? != 0;
    let unusable = (!maps_host_memory).then(|| "it cannot map page-locked host memory into its address space (hipHostRegisterMapped)".to_owned());
    Ok(DeviceInfo {
        index,
        name,
        compute_capability,
        compute_units: attribute(hip, device, Attr::hipDeviceAttributeMultiprocessorCount)? as u32,
        memory: memory as u64,
        pci,
        maps_host_memory,
        integrated: attribute(hip, device, Attr::hipDeviceAttributeIntegrated)? != 0,
        unusable,
    })
}

/// Every HIP device, with what gpuring needs of it. No runtime and no
/// device are errors ([`RocmError::is_absent`]), never a panic.
pub fn devices() -> Result<Vec<DeviceInfo>, RocmError> {
    let hip = hip()?;
    let mut count = 0;
    // SAFETY: the output is a valid int.
    let code = unsafe { (hip.rt.hipGetDeviceCount)(&mut count) };
    if code != crate::api::SUCCESS {
        return Err(RocmError::NoDevice { why: format!("hipGetDeviceCount: {}", hip.describe(code)) });
    }
    if count <= 0 {
        return Err(RocmError::NoDevice { why: "hipGetDeviceCount returned 0".into() });
    }
    (0..count as usize).map(|i| describe(hip, i)).collect()
}

/// The runtime's file and version, for the probe (`None`: not loaded).
pub fn runtime() -> Result<(String, Option<i32>), RocmError> {
    let hip = hip()?;
    Ok((hip.library.clone(), hip.version()))
}

/// The device `selector` names (an index, else part of a name), or the
/// first usable one.
pub(crate) fn choose(devices: &[DeviceInfo], selector: Option<&str>) -> Result<usize, RocmError> {
    let list: Vec<(&str, Option<&str>)> = devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())).collect();
    gpuring_shared::choose_device(&list, selector, |_| 0).map_err(|e| match e {
        Unchosen::NoDevices => RocmError::NoDevice { why: "hipGetDeviceCount returned 0".into() },
        Unchosen::NotFound(available) => RocmError::DeviceNotFound { wanted: selector.unwrap_or_default().to_owned(), available },
        Unchosen::Unusable(device, what) => RocmError::Unsupported { device, what },
    })
}

/// An open HIP device. HIP's current device is per thread: every thread
/// that calls the runtime for it binds it first (`hipSetDevice`).
pub struct Device {
    pub(crate) info: DeviceInfo,
    pub(crate) hip: &'static Hip,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("device", &self.info.name).finish()
    }
}

impl Device {
    /// Open the device `selector` names (an index or part of a name;
    /// `None`: the first usable device).
    pub fn open(selector: Option<&str>) -> Result<Arc<Self>, RocmError> {
        let devices = devices()?;
        let index = choose(&devices, selector)?;
        let device = Self { info: devices[index].clone(), hip: hip()? };
        device.bind()?;
        Ok(Arc::new(device))
    }

    /// What the backend knows of it.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Make it the calling thread's current device.
    pub(crate) fn bind(&self) -> Result<(), RocmError> {
        // SAFETY: a plain call with a device index the runtime listed.
        self.hip.check("hipSetDevice", unsafe { (self.hip.rt.hipSetDevice)(self.info.index as c_int) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, name: &str, unusable: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            index,
            name: name.into(),
            compute_capability: (9, 0),
            compute_units: 104,
            memory: 64 << 30,
            pci: "0000:03:00.0".into(),
            maps_host_memory: unusable.is_none(),
            integrated: false,
            unusable: unusable.map(str::to_owned),
        }
    }

    #[test]
    fn choosing_by_default_index_and_name() {
        let list = [device(0, "AMD Radeon Graphics", Some("it cannot map page-locked host memory")), device(1, "AMD Instinct MI210", None)];
        assert_eq!(choose(&list, None).unwrap(), 1, "the first usable device");
        assert_eq!(choose(&list, Some("1")).unwrap(), 1);
        assert_eq!(choose(&list, Some("mi210")).unwrap(), 1);
        let e = choose(&list, Some("mi300")).unwrap_err().to_string();
        assert!(e.contains("no HIP device matches `mi300` (devices: 0: AMD Radeon Graphics; 1: AMD Instinct MI210)"), "{e}");
        let e = choose(&list, Some("0")).unwrap_err().to_string();
        assert!(e.contains("HIP device `AMD Radeon Graphics` cannot run gpuring: it cannot map page-locked host memory. Fix:"), "{e}");
        assert!(matches!(choose(&[], None), Err(RocmError::NoDevice { .. })));
    }
}
