//! gpuring-vulkan: the Vulkan backend, on ash with the loader opened at run
//! time (no Vulkan SDK is needed to build it).
//!
//! - [`VulkanStaging`]: the slots and the io_queue are locked, page-aligned
//!   host pages (from `gpuring_shared::Mapping`, aligned to the device's
//!   `minImportedHostPointerAlignment`), imported into the device with
//!   `VK_EXT_external_memory_host` as host-coherent storage buffers. io_uring
//!   registers the same pages, so the kernel's copy (buffered reads) or the
//!   disk's DMA (`O_DIRECT`) lands in bytes the shader reads with no copy.
//! - [`VulkanConsumer`]: a compute shader (`src/consumer.wgsl`, translated to
//!   SPIR-V by naga in build.rs, with its constants generated from
//!   gpuring-core) checksums each published slot with one workgroup per
//!   entry and checks the batch; a host thread (gpuring-shared's
//!   batched-consumer engine) waits for entries, dispatches batches, and
//!   releases each (stores the queue's `consumer` position) once its fence
//!   has signalled.
//! - [`Context`]: gpuring's own device ([`Context::new`]) or one of yours
//!   ([`Context::from_device`], an `ash` device and queue that gpuring uses
//!   and never destroys).
//! - [`Shader`]: a compute shader of the user's (WGSL, compiled by naga, or
//!   SPIR-V) that [`VulkanConsumer::with_shader`] runs in place of the
//!   checksum shader, bound as the [`shader`] module documents.
//! - [`devices`]: every device with what gpuring needs of it, and
//!   [`BarWindow`]: device-local memory mapped by the host, for `gpuring
//!   probe` to test whether io_uring can register it.
//!
//! It depends on gpuring-core and on gpuring-shared (for host mappings and
//! the host side of waiting on the io_queue), never on gpuring-uring or
//! another backend.

mod bar;
mod consumer;
mod context;
mod copy;
mod error;
mod memory;
pub mod shader;

/// The `ash` this crate is built on, for naming `vk` types in the same version.
pub use ash;
pub use bar::BarWindow;
pub use consumer::VulkanConsumer;
pub use context::{devices, Context, DeviceInfo};
pub use copy::{read_buffer, CopyConsumer, DeviceBuffer};
pub use error::VulkanError;
pub use memory::VulkanStaging;
pub use shader::Shader;
