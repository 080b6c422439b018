//! gpuring-uring: the io_uring ring, buffer registration, and the ingest driver.
//!
//! - [`ring`]: a thin owner of an `io_uring` instance (from the `io-uring`
//!   crate) that registers slot memory as fixed buffers, counts what is in
//!   flight, and on drop cancels and waits for every outstanding request, so
//!   the kernel never writes into memory after its owner let go of it.
//! - [`source`]: opening what is read (regular files, buffered or `O_DIRECT`),
//!   with the checks and alignment rules that come with it.
//! - [`driver`]: the ingest driver: streams files and byte ranges through the
//!   slot ring with `IORING_OP_READ_FIXED`, finishes short reads, publishes
//!   each completion to the io_queue exactly once, and reuses a slot only
//!   after the consumer released it.
//! - [`nvme`]: NVMe namespace character devices: what they are, from the
//!   device (namespace id, block size, capacity, max transfer).
//! - [`bounce`]: the path programs use today (`pread()` into a heap
//!   buffer, then a copy into the slot), producing into the same io_queue,
//!   for comparison and as a fallback; counted as `bounce` in telemetry.
//! - [`buffer`]: page-aligned heap memory for gpuring's own reads.
//! - `fault` (Cargo feature `fault-injection`, for tests): errors, short
//!   reads, `EAGAIN` and stalls injected into a ring's completions.
//! - [`memlock`]: what io_uring charges against RLIMIT_MEMLOCK, and rings
//!   that fit a process's limit (the default ring does).
//! - [`probe`]: what this kernel and process can do (opcodes, SQE128,
//!   RLIMIT_MEMLOCK, direct-I/O alignment), with reasons.
//!
//! It deliberately never names a backend: staging memory arrives through
//! `gpuring-core`'s `StagingMemory` trait. Everything that is not the ring
//! itself goes through `rustix`.

// `bounce`, `buffer`, `memlock`, `ring`, `shard` and `read_into` are gpuring's own
// plumbing: public because the facade, its command and its bench use them
// across the crate boundary, hidden because no user needs them (the facade
// has `gpuring::read_into`, the driver's options cover rings and shards).
#[doc(hidden)]
pub mod bounce;
#[doc(hidden)]
pub mod buffer;
pub mod driver;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[doc(hidden)]
pub mod memlock;
pub mod nvme;
pub mod probe;
#[doc(hidden)]
pub mod read_into;
#[doc(hidden)]
pub mod ring;
#[doc(hidden)]
pub mod shard;
pub mod source;
mod wait;

pub use driver::{default_shards, Driver, DriverOptions, Event, Ingest, IngestStats, Poll, MAX_SHARDS};
pub use error::IngestError;
pub use read_into::ReadRequest;
#[doc(hidden)]
pub use read_into::{read_into, read_into_many, ReadIntoOptions, ReadIntoStats};
#[doc(hidden)]
pub use ring::Ring;
pub use source::{Source, SourceKind};
