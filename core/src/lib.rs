//! gpuring-core: the parts of gpuring that need no operating system.
//!
//! This crate is `#![no_std]` and needs no allocator. It holds what every
//! other gpuring crate agrees on:
//!
//! - [`slot`]: the geometry of the staging region, split into equal slots;
//! - [`pending`]: what each slot is doing (free, read in flight, completed,
//!   published to the consumer) and the rules for moving between those states;
//! - [`telemetry`]: byte and read counters with honest per-path accounting
//!   (`dma`, `kernel_copy`, `bounce`) and the zero-bounce / DMA-only verdicts;
//! - [`nvme`]: the Linux `struct nvme_uring_cmd` and NVMe Read encoding;
//! - [`io_queue`]: the completion queue that GPU code reads, its byte layout
//!   and its memory-ordering protocol;
//! - [`checksum`]: the position-dependent checksum every consumer computes;
//! - [`contract`]: the io_queue as a C header and a WGSL module for
//!   consumers written in other languages;
//! - [`memory`]: the trait through which a backend supplies staging memory.
//! - [`units`]: byte sizes as people write and read them.
//!
//! It deliberately does not do I/O, allocate, spawn threads, or know about
//! any particular GPU API: those live in `gpuring-uring` and the backends.
#![no_std]

pub mod checksum;
pub mod contract;
pub mod io_queue;
pub mod memory;
pub mod nvme;
pub mod pending;
pub mod slot;
pub mod telemetry;
pub mod units;

pub use checksum::{slot_checksum, Lanes, StreamDigest};
pub use io_queue::{Completion, IoQueue, QueueError};
pub use memory::{MemoryKind, StagingMemory};
pub use pending::{PendingError, PendingRead, PendingTable, SlotState};
pub use slot::{GeometryError, SlotGeometry, PAGE_SIZE};
pub use telemetry::{Path, Telemetry, TelemetryError, Verdict};
pub use units::{parse_size, Bytes};
