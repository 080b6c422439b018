//! gpuring: move bytes from storage into GPU-visible memory through io_uring.
//!
//! Four things a user does, each a few lines from here:
//!
//! - **Ingest files to a backend** ([`ingest()`]): the backend's consumer
//!   checksums every slot, verified against an independent read.
//! - **Run your own consumer over files** ([`consume`]): a closure on the
//!   host, a WGSL or SPIR-V shader, a CUDA or HIP kernel, in one call that
//!   closes the queue on every path.
//! - **Read byte ranges into memory you own** ([`read_into()`]): a
//!   [`HostBuffer`] or any `&mut [u8]` on the host; device buffers through
//!   [`read_into`](mod@read_into)'s backend functions.
//! - **Load a checkpoint** ([`load()`]): safetensors files into one buffer
//!   that stays, with each tensor's dtype, shape and bytes ([`load`](mod@load)).
//!
//! ```no_run
//! use gpuring::{IngestOptions, Source};
//!
//! let report = gpuring::ingest(&[Source::file("weights.bin")], &IngestOptions::default())?;
//! assert!(report.checksum.matched && report.zero_bounce);
//! println!("{:.2} GiB/s", report.gib_per_s);
//! # Ok::<(), gpuring::Error>(())
//! ```
//!
//! Backends are Cargo features: `host` (default, no GPU), `vulkan`, `cuda`,
//! `rocm`; each backend crate is re-exported under its name for its
//! user-facing types (staging memory, consumers, device buffers). The
//! driver's layer is [`uring`] (stepping a `Driver` by hand), the shared
//! protocol and layouts [`core`]. The `gpuring` command sits behind the
//! `cli` feature (default), so a library build with `default-features =
//! false` pulls none of its dependencies.

pub mod backend;
#[cfg(feature = "candle")]
pub mod candle;
pub mod consume;
pub mod error;
pub mod ingest;
pub mod inputs;
pub mod load;
pub mod probe;
pub mod read_into;
pub mod telemetry;

pub use backend::{Backend, BACKENDS};
pub use consume::{ConsumeOptions, Consumed, Consumer};
pub use error::Error;
pub use gpuring_shared::HostBuffer;
pub use gpuring_uring::Source;
pub use ingest::{IngestOptions, IngestReport};
pub use load::{Dtype, LoadOptions, Loaded, TensorInfo};
pub use read_into::{ReadIntoReport, ReadOptions, ReadRequest};

pub use gpuring_core as core;
#[cfg(feature = "cuda")]
pub use gpuring_cuda as cuda;
#[cfg(feature = "host")]
pub use gpuring_host as host;
#[cfg(feature = "rocm")]
pub use gpuring_rocm as rocm;
// What the backends share (the batch engine, consumer threads, device
// choice): gpuring's own plumbing, public only because the backend crates
// and the command use it across crates. Users get its user-facing types
// (`HostBuffer`, `ConsumerStats`) from the root and the backends.
#[doc(hidden)]
pub use gpuring_shared as shared;
pub use gpuring_uring as uring;
#[cfg(feature = "vulkan")]
pub use gpuring_vulkan as vulkan;

/// Ingest `sources` to `options.backend`: its staging memory, its consumer
/// (gpuring's checksum), the io_uring driver, and, with `options.verify`,
/// every file's checksum compared with an independent read. For a progress
/// callback, see [`ingest::run`].
pub fn ingest(sources: &[Source], options: &IngestOptions) -> Result<IngestReport, Error> {
    ingest::run(sources, options, &mut |_| {})
}

/// Read `requests` into `dst`, host memory of yours: the kernel (buffered)
/// or the device (`O_DIRECT`, into a [`HostBuffer`]) writes it, with no
/// copy in between. Every request is checked before anything is read. See
/// [`read_into::host`]; device buffers: [`read_into`](mod@read_into)'s backend functions.
///
/// ```no_run
/// use gpuring::{HostBuffer, ReadOptions, ReadRequest};
///
/// let mut buffer = HostBuffer::new(8 << 20)?;
/// let requests = [ReadRequest::new("model.bin", 0..(4 << 20), 0), ReadRequest::new("model.bin", 8 << 20..12 << 20, 4 << 20)];
/// let report = gpuring::read_into(&requests, &mut buffer, &ReadOptions { direct: true, ..ReadOptions::default() })?;
/// assert!(report.dma_only);
/// # Ok::<(), gpuring::Error>(())
/// ```
pub fn read_into(requests: &[ReadRequest], dst: &mut [u8], options: &ReadOptions) -> Result<ReadIntoReport, Error> {
    read_into::host(requests, dst, options)
}

/// Load the safetensors checkpoint made of `paths` (files, or a sharded
/// checkpoint's `*.index.json`) into host memory that stays: a
/// [`HostBuffer`] holding every tensor selected by `options`, each at a
/// 256-byte aligned offset, with its dtype and shape. See [`load`](mod@load).
///
/// ```no_run
/// use gpuring::{Dtype, LoadOptions};
///
/// let model = gpuring::load(&["model.safetensors"], &LoadOptions::default())?;
/// let embeddings = model.get("embeddings.word_embeddings.weight").expect("a tensor of that name");
/// assert_eq!(embeddings.dtype, Dtype::F32);
/// let values: &[f32] = model.slice("embeddings.word_embeddings.weight")?;
/// println!("{:?}: {} values, first {}", embeddings.shape, values.len(), values[0]);
/// # Ok::<(), gpuring::Error>(())
/// ```
pub fn load<P: AsRef<std::path::Path>>(paths: &[P], options: &LoadOptions) -> Result<Loaded<HostBuffer>, Error> {
    load::host(paths, options)
}

// The README's quick starts compile as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
