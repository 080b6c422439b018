//! What can go wrong in the Vulkan backend, each with a fix.

use std::fmt;

use ash::vk;
use gpuring_core::Bytes;
use gpuring_shared::HostError;

/// Why the Vulkan backend could not start or stopped.
#[derive(Debug)]
pub enum VulkanError {
    /// The Vulkan loader (libvulkan.so.1) could not be loaded.
    NoLoader {
        /// The loader's error.
        why: String,
    },
    /// The loader found no Vulkan device.
    NoDevice,
    /// No device matches the `--device` selector.
    DeviceNotFound {
        /// The selector.
        wanted: String,
        /// The devices there are, as `index: name`.
        available: Vec<String>,
    },
    /// The chosen device lacks something the backend needs.
    Unsupported {
        /// The device's name.
        device: String,
        /// What it lacks.
        what: String,
    },
    /// A buffer would exceed what the device can bind as one storage buffer.
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The device's `maxStorageBufferRange`.
        max: u64,
    },
    /// A Vulkan call failed.
    Call {
        /// The call.
        call: &'static str,
        /// Its result.
        result: vk::Result,
    },
    /// Host memory for the slots or the queue could not be set up.
    Host(HostError),
    /// The device did not finish a batch in time.
    Timeout {
        /// What was waited for.
        what: String,
        /// Seconds waited.
        seconds: u64,
    },
    /// The shader rejected an io_queue entry and stopped releasing.
    Rejected {
        /// The entry's position.
        position: u32,
        /// What was wrong with it.
        what: String,
    },
    /// A shader of the user's could not be compiled or is not usable.
    Shader {
        /// What is wrong, with the compiler's message.
        what: String,
    },
    /// The consumer thread panicked.
    ConsumerPanicked,
}

impl fmt::Display for VulkanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLoader { why } => write!(
                f,
                "no Vulkan loader: {why}. Fix: install the loader and a driver (Debian: `apt-get install libvulkan1 mesa-vulkan-drivers` for the lavapipe CPU device, or your GPU vendor's driver), or use the host backend"
            ),
            Self::NoDevice => write!(
                f,
                "the Vulkan loader found no device. Fix: install a Vulkan driver (Debian: `apt-get install mesa-vulkan-drivers` for lavapipe, or your GPU vendor's driver with its Vulkan ICD), or use the host backend"
            ),
            Self::DeviceNotFound { wanted, available } => write!(
                f,
                "no Vulkan device matches `{wanted}` (devices: {}). Fix: choose a device by an index or part of a name from that list",
                available.join("; ")
            ),
            Self::Unsupported { device, what } => write!(
                f,
                "Vulkan device `{device}` cannot run gpuring: {what}. Fix: pick another device (`gpuring probe` lists them), or use the host backend"
            ),
            Self::TooLarge { what, len, max } => write!(
                f,
                "the {what} ({}) exceed the device's largest storage buffer ({}). Fix: ask for a smaller ring (fewer or smaller slots)",
                Bytes(*len),
                Bytes(*max)
            ),
            Self::Call { call, result } => write!(f, "{call} failed: {result}. Fix: check the driver with `vulkaninfo`, or use the host backend"),
            Self::Host(e) => write!(f, "{e}"),
            Self::Timeout { what, seconds } => write!(
                f,
                "the Vulkan device did not finish {what} in {seconds} s. Fix: check that the device is not hung or shared with a long job (`vulkaninfo`, the driver's logs), or use smaller slots"
            ),
            Self::Rejected { position, what } => write!(
                f,
                "the Vulkan consumer rejected io_queue entry {position}: {what}. Fix: a kernel or shader of yours rejects what it cannot take, so look at why it did; with gpuring's own consumer, only gpuring's driver may publish to this queue, and this is a bug if it did"
            ),
            Self::Shader { what } => write!(
                f,
                "the compute shader cannot run: {what}. Fix: compile it against the bindings and push constants gpuring-vulkan's shader module documents (Shader::wgsl declares them for you), with a compute entry point of the name given"
            ),
            Self::ConsumerPanicked => write!(f, "the Vulkan consumer thread panicked. Fix: this is a bug; please report it with the panic message above"),
        }
    }
}

impl std::error::Error for VulkanError {}

impl From<HostError> for VulkanError {
    fn from(e: HostError) -> Self {
        Self::Host(e)
    }
}

/// Map a failed call's result to [`VulkanError::Call`].
pub(crate) fn call(call: &'static str) -> impl FnOnce(vk::Result) -> VulkanError {
    move |result| VulkanError::Call { call, result }
}
