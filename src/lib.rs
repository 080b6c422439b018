//! gpuring: move bytes from storage into GPU-visible memory through io_uring.
//!
//! This facade crate ties the workspace together: it re-exports the crates
//! ([`core`], [`uring`] and the backends compiled in by Cargo features), runs
//! a whole ingest ([`ingest::run`]: staging memory from a backend, that
//! backend's consumer, the io_uring driver, and verification of the
//! consumer's checksums against an independent read), assembles the
//! capability report ([`probe::report`]), and provides the `gpuring` command.
//!
//! ```no_run
//! use gpuring::ingest::{self, IngestConfig};
//! use gpuring::uring::Source;
//!
//! let config = IngestConfig { slots: 16, slot_size: 1 << 20, ..IngestConfig::default() };
//! let report = ingest::run(&[Source::file("weights.bin")], &config, &mut |_bytes| {})?;
//! assert!(report.checksum.matched && report.zero_bounce);
//! println!("{:.2} GiB/s", report.gib_per_s);
//! # Ok::<(), gpuring::Error>(())
//! ```
//!
//! It deliberately holds no I/O or GPU logic of its own: that lives in
//! `gpuring-uring` and the backend crates.

pub mod error;
pub mod ingest;
pub mod inputs;
pub mod load;
pub mod probe;
pub mod read_into;

pub use error::Error;
pub use gpuring_core as core;
#[cfg(feature = "cuda")]
pub use gpuring_cuda as cuda;
#[cfg(feature = "host")]
pub use gpuring_host as host;
#[cfg(feature = "rocm")]
pub use gpuring_rocm as rocm;
pub use gpuring_shared as shared;
pub use gpuring_uring as uring;
#[cfg(feature = "vulkan")]
pub use gpuring_vulkan as vulkan;
