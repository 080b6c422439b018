//! gpuring-host: the default backend, which needs no GPU.
//!
//! It supplies slot memory that is page-aligned, anonymous and present (not
//! `mlock`ed: io_uring's registration pins the slots, and locking too would
//! count them twice against RLIMIT_MEMLOCK), and an io_queue in the same
//! kind of memory ([`HostStaging`]),
//! and a consumer that runs on a CPU thread ([`HostConsumer`]): it reads the
//! io_queue, computes the core checksum of each published slot and releases
//! the slot, exactly as the GPU backends' kernels do.
//!
//! It also holds what the GPU backends share: page-aligned
//! [`Mapping`]s, [`abandon_to_device`] for memory a device did not let go of, the host side of waiting on the io_queue
//! ([`wait_for_entries`], [`wake_producer`]), device selection
//! ([`choose_device`], [`select_device`]) and the consumer kernel's source ([`kernel`]).
//!
//! It deliberately does not talk to any GPU API, and it does not depend on
//! `gpuring-uring`: the ingest driver and this backend meet only through
//! `gpuring-core`'s [`StagingMemory`] trait and io_queue protocol.

pub mod checksum;
mod consumer;
pub mod kernel;
mod memory;
mod select;

pub use consumer::{spawn_consumer, wait_for_entries, wake_consumer, wake_producer, ConsumerStats, HostConsumer, Waited};
pub use memory::{abandon_to_device, HostError, HostStaging, Mapping};
pub use select::{choose_device, select_device, Unchosen};

pub use gpuring_core::StagingMemory;
