//! gpuring-cuda: the CUDA backend, on cudarc with the driver and NVRTC
//! loaded at run time (it builds, and its no-driver tests run, on machines
//! without CUDA).
//!
//! - [`CudaStaging`]: the slots and the io_queue are locked, page-aligned
//!   host pages (from `gpuring_shared::Mapping`) that `cuMemHostRegister`
//!   maps into the device. io_uring registers the same pages, so the
//!   kernel's copy (buffered reads) or the disk's DMA (`O_DIRECT`, NVMe
//!   passthrough) lands in bytes the GPU reads with no copy.
//! - [`CudaConsumer`]: the consumer kernels (gpuring-shared's `consumer.cu`,
//!   shared with the ROCm backend, compiled by NVRTC for the device, with a
//!   prelude of constants generated from gpuring-core), in one of three [`Mode`]s: batched launches, one
//!   persistent kernel, or batched after a copy-engine copy into VRAM; or
//!   a kernel of yours, [`UserKernel`], through
//!   [`CudaConsumer::with_kernel`]. The host side of the batched modes is
//!   gpuring-shared's batched-consumer engine, which ROCm shares.
//! - [`devices`] and [`Device`]: the driver's devices with what gpuring
//!   needs of them; [`peer`]: what GPU peer DMA (BAR1) needs, probed.
//!
//! No driver, a driver older than CUDA 12.0, no device, no NVRTC: each is a
//! [`CudaError`] with a fix, never a panic ([`device::driver`] checks before
//! cudarc is asked for anything). It depends on gpuring-core and on
//! gpuring-shared (host mappings, the host side of waiting on the
//! io_queue, the kernel source), never on gpuring-uring or another backend.

// The bench's read()+HtoD and pinned-copy baselines: the command's, not a
// user's (hidden from the docs).
#[doc(hidden)]
pub mod baseline;
mod consumer;
mod copy;
pub mod device;
mod error;
mod kernel;
mod memory;
pub mod peer;

pub use consumer::{CudaConsumer, CudaStats, Mode};
pub use copy::CudaCopyConsumer;
/// The cudarc this crate is built on, for naming its types in the same version.
pub use cudarc;
pub use device::{devices, Device, DeviceInfo};
pub use error::CudaError;
pub use gpuring_shared::kernel::UserKernel;
pub use kernel::compile_kernel;
pub use memory::CudaStaging;
