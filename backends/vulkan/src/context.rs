//! The Vulkan instance and device: loading, listing, choosing, creating.

use std::ffi::CStr;

use ash::vk;
use gpuring_shared::Unchosen;

use crate::error::{call, VulkanError};

/// Workgroup size of the checksum shader (`consumer.wgsl`).
pub(crate) const WORKGROUP: u32 = 256;

/// What the backend needs to know about one physical device, and what
/// `gpuring probe` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Index in the loader's enumeration order (what `--device N` means).
    pub index: usize,
    /// The device's name.
    pub name: String,
    /// `discrete_gpu`, `integrated_gpu`, `virtual_gpu`, `cpu` or `other`.
    pub kind: &'static str,
    /// Vulkan version the device supports, as `major.minor.patch`.
    pub api_version: String,
    /// Whether it offers `VK_EXT_external_memory_host`.
    pub external_memory_host: bool,
    /// `minImportedHostPointerAlignment` (0 without the extension).
    pub import_alignment: u64,
    /// `maxStorageBufferRange`.
    pub max_storage_buffer_range: u64,
    /// Size of the largest device-local heap that also has a host-visible
    /// memory type (a BAR window onto device memory), if any.
    pub bar_window: Option<u64>,
    /// Whether the device's memory is really system memory (a CPU device),
    /// so a "device-local" mapping is ordinary pages.
    pub device_memory_is_system_memory: bool,
    /// Whether it offers `VK_EXT_external_memory_dma_buf` (export of device
    /// memory as a dma-buf file descriptor).
    pub dma_buf: bool,
    /// A queue family with compute, if any.
    pub compute_family: Option<u32>,
    /// Why the backend cannot use this device (`None`: it can).
    pub unusable: Option<String>,
}

/// The loaded library and an instance, destroyed on drop.
pub(crate) struct Instance {
    // Declared before `entry`, so the instance's functions are gone before
    // the library that holds them is unloaded.
    pub(crate) instance: ash::Instance,
    _entry: ash::Entry,
}

impl Instance {
    pub(crate) fn new() -> Result<Self, VulkanError> {
        // SAFETY: loading libvulkan runs its initialisers; the loader is a
        // well-behaved system library, and `Entry` keeps it loaded while
        // any function taken from it can run.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| VulkanError::NoLoader { why: e.to_string() })?;
        let app = vk::ApplicationInfo::default().application_name(c"gpuring").api_version(vk::API_VERSION_1_1);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `info` and what it points to are valid for the call.
        let instance = unsafe { entry.create_instance(&info, None) }.map_err(|result| match result {
            vk::Result::ERROR_INCOMPATIBLE_DRIVER => VulkanError::NoDevice,
            result => VulkanError::Call { call: "vkCreateInstance", result },
        })?;
        Ok(Self { instance, _entry: entry })
    }

    /// Every physical device, described.
    pub(crate) fn devices(&self) -> Result<Vec<(vk::PhysicalDevice, DeviceInfo)>, VulkanError> {
        // SAFETY: the instance is alive; the returned handles live as long as it.
        let physical = unsafe { self.instance.enumerate_physical_devices() }.map_err(call("vkEnumeratePhysicalDevices"))?;
        physical.into_iter().enumerate().map(|(index, pd)| Ok((pd, describe(&self.instance, index, pd)?))).collect()
    }
}

/// What gpuring needs to know of `pd`, the `index`th device of `i`.
fn describe(i: &ash::Instance, index: usize, pd: vk::PhysicalDevice) -> Result<DeviceInfo, VulkanError> {
    // SAFETY: for this and the queries below, `pd` came from this live instance,
    // and every output structure is valid for writing.
    let props = unsafe { i.get_physical_device_properties(pd) };
    // SAFETY: as above.
    let extensions = unsafe { i.enumerate_device_extension_properties(pd) }.map_err(call("vkEnumerateDeviceExtensionProperties"))?;
    let has = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
    let external_memory_host = has(ash::ext::external_memory_host::NAME);
    let mut import_alignment = 0;
    if external_memory_host && props.api_version >= vk::API_VERSION_1_1 {
        let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
        // SAFETY: as above; the chain holds a structure the device knows.
        unsafe { i.get_physical_device_properties2(pd, &mut props2) };
        import_alignment = host.min_imported_host_pointer_alignment;
    }
    // SAFETY: as above.
    let memory = unsafe { i.get_physical_device_memory_properties(pd) };
    let heaps = memory.memory_heaps_as_slice();
    let bar_window = memory
        .memory_types_as_slice()
        .iter()
        .filter(|t| t.property_flags.contains(vk::MemoryPropertyFlags::DEVICE_LOCAL | vk::MemoryPropertyFlags::HOST_VISIBLE))
        .map(|t| heaps[t.heap_index as usize].size)
        .max();
    // SAFETY: as above.
    let families = unsafe { i.get_physical_device_queue_family_properties(pd) };
    let compute_family = families.iter().position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE)).map(|f| f as u32);
    let kind = match props.device_type {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete_gpu",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated_gpu",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual_gpu",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    };
    let limits = props.limits;
    let unusable = if props.api_version < vk::API_VERSION_1_1 {
        Some("it supports only Vulkan 1.0; gpuring needs 1.1".to_owned())
    } else if !external_memory_host {
        Some("it lacks VK_EXT_external_memory_host, which imports the io_uring-registered slots".to_owned())
    } else if compute_family.is_none() {
        Some("it has no compute queue".to_owned())
    } else if limits.max_compute_work_group_invocations < WORKGROUP || limits.max_compute_work_group_size[0] < WORKGROUP {
        Some(format!("its compute workgroups hold at most {} invocations; the shader needs {WORKGROUP}", limits.max_compute_work_group_invocations))
    } else {
        None
    };
    Ok(DeviceInfo {
        index,
        name: props.device_name_as_c_str().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("device {index}")),
        kind,
        api_version: format!(
            "{}.{}.{}",
            vk::api_version_major(props.api_version),
            vk::api_version_minor(props.api_version),
            vk::api_version_patch(props.api_version)
        ),
        external_memory_host,
        import_alignment,
        max_storage_buffer_range: limits.max_storage_buffer_range as u64,
        bar_window,
        device_memory_is_system_memory: props.device_type == vk::PhysicalDeviceType::CPU,
        dma_buf: has(ash::ext::external_memory_dma_buf::NAME),
        compute_family,
        unusable,
    })
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every device made from this instance is gone (`Context`
        // drops its device first), and nothing else uses the instance.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// Describe every Vulkan device on this machine (for `gpuring probe`).
pub fn devices() -> Result<Vec<DeviceInfo>, VulkanError> {
    Ok(Instance::new()?.devices()?.into_iter().map(|(_, info)| info).collect())
}

/// Pick a device: `selector` is an index or part of a name (case-blind);
/// without one, the first usable device, GPUs before CPU devices.
pub(crate) fn choose(devices: &[DeviceInfo], selector: Option<&str>) -> Result<usize, VulkanError> {
    let list: Vec<(&str, Option<&str>)> = devices.iter().map(|d| (d.name.as_str(), d.unusable.as_deref())).collect();
    let rank = |i: usize| match devices[i].kind {
        "discrete_gpu" => 0,
        "integrated_gpu" => 1,
        "virtual_gpu" => 2,
        "cpu" => 4,
        _ => 3,
    };
    gpuring_shared::choose_device(&list, selector, rank).map_err(|e| match e {
        Unchosen::NoDevices => VulkanError::NoDevice,
        Unchosen::NotFound(available) => VulkanError::DeviceNotFound { wanted: selector.unwrap_or_default().to_owned(), available },
        Unchosen::Unusable(device, what) => VulkanError::Unsupported { device, what },
    })
}

/// A logical device with one compute queue, and what the backend uses of it:
/// gpuring's own ([`Context::new`]) or yours ([`Context::from_device`]).
pub struct Context {
    pub(crate) device: ash::Device,
    pub(crate) host_memory: ash::ext::external_memory_host::Device,
    pub(crate) queue: vk::Queue,
    pub(crate) queue_family: u32,
    pub(crate) memory: vk::PhysicalDeviceMemoryProperties,
    pub(crate) info: DeviceInfo,
    /// Held around every `vkQueueSubmit` of gpuring's (consumers, copy
    /// consumers, read-backs, on any thread): Vulkan requires a queue's
    /// submissions to be externally synchronised.
    pub(crate) queue_lock: std::sync::Mutex<()>,
    /// gpuring's instance, which made the device: both are destroyed on
    /// drop (the device first, see `Drop`). `None`: the caller's device and
    /// instance, which gpuring never destroys.
    owned: Option<Instance>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("device", &self.info.name).field("owned", &self.owned.is_some()).finish()
    }
}

impl Context {
    /// Open the device `selector` names: an index or part of a name
    /// (case-blind); `None`: the first usable device, GPUs before CPU devices.
    pub fn new(selector: Option<&str>) -> Result<Self, VulkanError> {
        let instance = Instance::new()?;
        let devices = instance.devices()?;
        let infos: Vec<DeviceInfo> = devices.iter().map(|(_, d)| d.clone()).collect();
        let (pd, info) = devices.into_iter().nth(choose(&infos, selector)?).expect("choose returns an index into the list");
        let queue_family = info.compute_family.expect("a usable device has a compute family");
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(queue_family).queue_priorities(&priorities)];
        let extensions = [ash::ext::external_memory_host::NAME.as_ptr()];
        let create = vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&extensions);
        // SAFETY: `pd` belongs to this instance; `create` and what it points
        // to are valid for the call; the extension was checked to exist.
        let device = unsafe { instance.instance.create_device(pd, &create, None) }.map_err(call("vkCreateDevice"))?;
        // SAFETY: queue 0 of a family the device was created with.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        // SAFETY: `pd` belongs to this live instance.
        let memory = unsafe { instance.instance.get_physical_device_memory_properties(pd) };
        let host_memory = ash::ext::external_memory_host::Device::new(&instance.instance, &device);
        Ok(Self { device, host_memory, queue, queue_family, memory, info, queue_lock: Default::default(), owned: Some(instance) })
    }

    /// Use a Vulkan device of yours: gpuring imports its staging into it
    /// ([`VulkanStaging::on`](crate::VulkanStaging::on)) and its consumer
    /// submits to queue `queue_index` of `queue_family`, so your own
    /// shaders, buffers and queues live beside gpuring's on one device.
    /// gpuring checks what it can (the physical device supports
    /// `VK_EXT_external_memory_host` and Vulkan 1.1, the family computes)
    /// and never destroys your instance or device.
    ///
    /// # Safety
    /// - `device` was created from `physical`, a device of `instance`, with
    ///   `VK_EXT_external_memory_host` enabled and at least `queue_index + 1`
    ///   queues of `queue_family`;
    /// - `instance` and `device` outlive this context and everything made on
    ///   it (stagings, consumers);
    /// - while a gpuring consumer runs, nothing else submits to that queue
    ///   (Vulkan requires `vkQueueSubmit` to be externally synchronised): give
    ///   gpuring a queue of its own.
    pub unsafe fn from_device(
        instance: &ash::Instance,
        physical: vk::PhysicalDevice,
        device: &ash::Device,
        queue_family: u32,
        queue_index: u32,
    ) -> Result<Self, VulkanError> {
        // SAFETY: the caller promises `instance` is live and `physical` is its.
        let listed = unsafe { instance.enumerate_physical_devices() }.map_err(call("vkEnumeratePhysicalDevices"))?;
        let index = listed.iter().position(|&pd| pd == physical).ok_or(VulkanError::Unsupported {
            device: "(the caller's)".into(),
            what: "a physical device of the instance given: it is not among the instance's devices".into(),
        })?;
        let info = describe(instance, index, physical)?;
        if let Some(why) = &info.unusable {
            return Err(VulkanError::Unsupported { device: info.name.clone(), what: why.clone() });
        }
        // SAFETY: as above.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let family = families.get(queue_family as usize);
        if !family.is_some_and(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE) && queue_index < f.queue_count) {
            let what = format!("queue {queue_index} of family {queue_family} with compute (the device has {} families)", families.len());
            return Err(VulkanError::Unsupported { device: info.name.clone(), what });
        }
        // SAFETY: the caller promises the device has this queue.
        let queue = unsafe { device.get_device_queue(queue_family, queue_index) };
        // SAFETY: as above.
        let memory = unsafe { instance.get_physical_device_memory_properties(physical) };
        let host_memory = ash::ext::external_memory_host::Device::new(instance, device);
        Ok(Self { device: device.clone(), host_memory, queue, queue_family, memory, info, queue_lock: Default::default(), owned: None })
    }

    /// The chosen device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The logical device, to make your own objects on it.
    pub fn device(&self) -> &ash::Device {
        &self.device
    }

    /// The queue family gpuring's consumer submits to.
    pub fn queue_family(&self) -> u32 {
        self.queue_family
    }

    /// Whether gpuring made the device (and will destroy it).
    pub fn owns_device(&self) -> bool {
        self.owned.is_some()
    }

    /// Wait until gpuring's device is idle, before its objects go; on a
    /// caller's device this does nothing (each gpuring object waits for its
    /// own work, and waiting for the whole device would race the caller's
    /// submissions, which Vulkan forbids).
    pub(crate) fn settle(&self) {
        if self.owned.is_some() {
            // SAFETY: gpuring's device; only gpuring's threads submit to it,
            // and none does while its objects are dropped.
            let _ = unsafe { self.device.device_wait_idle() };
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.owned.is_some() {
            self.settle();
            // SAFETY: every object made from the device holds an `Arc<Context>`,
            // so they are all destroyed by now, and the device is idle.
            unsafe { self.device.destroy_device(None) };
        }
        // `owned` (the instance) drops after this, the device gone.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: usize, name: &str, kind: &'static str, unusable: Option<&str>) -> DeviceInfo {
        DeviceInfo {
            index,
            name: name.into(),
            kind,
            api_version: "1.3.0".into(),
            external_memory_host: true,
            import_alignment: 4096,
            max_storage_buffer_range: 1 << 27,
            bar_window: None,
            device_memory_is_system_memory: kind == "cpu",
            dma_buf: false,
            compute_family: Some(0),
            unusable: unusable.map(str::to_owned),
        }
    }

    #[test]
    fn choosing_by_default_index_and_name() {
        let list =
            [device(0, "llvmpipe (LLVM 15)", "cpu", None), device(1, "NVIDIA H100", "discrete_gpu", None), device(2, "Old", "integrated_gpu", Some("too old"))];
        assert_eq!(choose(&list, None).unwrap(), 1, "a usable GPU before a CPU device");
        assert_eq!(choose(&list[..1], None).unwrap(), 0);
        assert_eq!(choose(&list, Some("0")).unwrap(), 0);
        assert_eq!(choose(&list, Some("h100")).unwrap(), 1);
        assert_eq!(choose(&list, Some("LLVMPIPE")).unwrap(), 0);
        let e = choose(&list, Some("radeon")).unwrap_err().to_string();
        assert!(e.contains("no Vulkan device matches `radeon` (devices: 0: llvmpipe (LLVM 15); 1: NVIDIA H100; 2: Old)"), "{e}");
        assert!(e.contains("Fix: choose a device by an index"), "{e}");
        let e = choose(&list, Some("2")).unwrap_err().to_string();
        assert!(e.contains("Vulkan device `Old` cannot run gpuring: too old. Fix: pick another device"), "{e}");
        assert!(matches!(choose(&[], None), Err(VulkanError::NoDevice)));
        // Only unusable devices: the first is named with its reason.
        assert!(matches!(choose(&list[2..], None), Err(VulkanError::Unsupported { .. })));
    }
}
