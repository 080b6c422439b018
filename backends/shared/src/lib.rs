//! gpuring-shared: what every gpuring backend shares, so that no backend
//! depends on another.
//!
//! - [`Mapping`]: anonymous, page-aligned host memory, present up front and
//!   never mlocked (whoever hands it to a device pins it), with
//!   [`HostError`], and [`abandon_to_device`] for memory a device did not
//!   let go of in time; [`HostBuffer`], page-aligned host memory of a
//!   user's, which `O_DIRECT` reads can DMA into;
//! - [`spawn_consumer`], [`wait_for_entries`], [`wake_consumer`],
//!   [`wake_producer`]: the host side of every consumer, a thread that takes
//!   the queue's consumer end and waits by the io_queue's sleeping protocol;
//! - [`choose_device`], [`select_device`]: the `--device` selector and the
//!   default choice, for the GPU backends;
//! - [`kernel`]: the consumer kernel in the dialect CUDA and HIP share,
//!   after the published io_queue header, the host's account of how a
//!   batch of it ended, and [`kernel::UserKernel`], a kernel of a user's;
//! - [`batch`]: the batched-consumer engine, the host side (waiting,
//!   batching, counting, releasing, failing, bounded waits for the device)
//!   of the CUDA, ROCm and Vulkan consumers, each of which supplies only
//!   its API's launch and idle check ([`batch::BatchDevice`]).
//!
//! It talks to no GPU API and does not depend on `gpuring-uring`.

pub mod batch;
pub mod copy;
pub mod kernel;
mod memory;
mod select;
mod wait;

pub use memory::{abandon_to_device, HostBuffer, HostError, Mapping};
pub use select::{choose_device, select_device, Unchosen};
pub use wait::{spawn_consumer, wait_for_entries, wake_consumer, wake_producer, ConsumerStats, ConsumerThread, Waited};
