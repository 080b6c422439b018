//! gpuring-host: the default backend, which needs no GPU.
//!
//! It supplies slot memory that is page-aligned, anonymous and present (not
//! `mlock`ed: io_uring's registration pins the slots, and locking too would
//! count them twice against RLIMIT_MEMLOCK), and an io_queue in the same
//! kind of memory ([`HostStaging`]), and a consumer that runs on a CPU
//! thread ([`HostConsumer`]): it reads the io_queue and hands each published
//! slot to gpuring's checksum, exactly as the GPU backends' kernels do, or
//! to a closure of the user's ([`HostConsumer::with`]). [`PeerStaging`]
//! puts the slots in another PCI device's memory (P2PDMA) instead, for the
//! same consumer.
//!
//! What every backend shares (host mappings, consumer threads and their
//! waits, device choice, the CUDA/HIP kernel) lives in `gpuring-shared`;
//! the types of it this crate's API uses are re-exported here.
//!
//! It deliberately does not talk to any GPU API, and it does not depend on
//! `gpuring-uring`: the ingest driver and this backend meet only through
//! `gpuring-core`'s [`StagingMemory`] trait and io_queue protocol.

pub mod checksum;
mod consumer;
mod memory;
pub mod peer;

pub use consumer::HostConsumer;
pub use gpuring_shared::{ConsumerStats, HostError, Mapping};
pub use memory::HostStaging;
pub use peer::{peer_memory_devices, PeerMemory, PeerStaging};

pub use gpuring_core::StagingMemory;
