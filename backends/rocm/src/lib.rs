//! gpuring-rocm: the ROCm backend, on hip-sys's types with the HIP runtime
//! and hiprtc opened at run time (a binary built with it starts, and its
//! no-device tests run, on machines without ROCm).
//!
//! - [`RocmStaging`]: the slots and the io_queue are locked, page-aligned
//!   host pages (from `gpuring_shared::Mapping`) that `hipHostRegister` maps
//!   into the device. io_uring registers the same pages, so the kernel's
//!   copy (buffered reads) or the disk's DMA (`O_DIRECT`, NVMe passthrough)
//!   lands in bytes the GPU reads with no copy.
//! - [`RocmConsumer`]: the batched consumer kernels (gpuring-shared's
//!   `consumer.cu`, shared with the CUDA backend, compiled by hiprtc for the
//!   device's GFX architecture, with a prelude of constants generated from
//!   gpuring-core).
//! - [`devices`] and [`Device`]: the runtime's devices with what gpuring
//!   needs of them.
//!
//! No runtime, no device, no hiprtc: each is a [`RocmError`] with a fix,
//! never a panic. It depends on gpuring-core and on gpuring-shared (host
//! mappings, the host side of waiting on the io_queue, the kernel source),
//! never on gpuring-uring or another backend.

mod api;
mod consumer;
pub mod device;
mod error;
mod kernel;
mod memory;

pub use consumer::{RocmConsumer, RocmStats};
pub use device::{devices, runtime, Device, DeviceInfo};
pub use error::RocmError;
pub use error::LIBRARY_VARIABLE;
pub use gpuring_shared::kernel::UserKernel;
/// The hip-sys this crate is built on, for naming its types (`hipStream_t`).
pub use hip_sys;
pub use kernel::compile_kernel;
pub use memory::{DeviceBuffer, RocmStaging};
