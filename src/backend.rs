//! Which backend, and the ring and shards a run gets when the caller names
//! none: the defaults every journey shares.

/// What supplies the slot memory and the consumer. Every backend has a
/// name here; [`BACKENDS`] lists those this build was compiled with (Cargo
/// features).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Page-aligned host memory and a CPU consumer thread; no GPU.
    #[default]
    Host,
    /// Host pages imported into a Vulkan device, a compute-shader consumer.
    Vulkan,
    /// Host pages mapped into a CUDA device, NVRTC-compiled kernels.
    Cuda,
    /// Host pages mapped into a ROCm device, hiprtc-compiled kernels.
    Rocm,
}

impl Backend {
    /// Every backend, default first.
    pub const ALL: [Backend; 4] = [Backend::Host, Backend::Vulkan, Backend::Cuda, Backend::Rocm];

    /// The name `--backend` takes and reports show.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Host => "host",
            Backend::Vulkan => "vulkan",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
        }
    }

    /// The backend called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this build has it (its Cargo feature).
    pub fn compiled(self) -> bool {
        BACKENDS.contains(&self)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backends compiled into this build, default first.
pub const BACKENDS: &[Backend] = &[
    #[cfg(feature = "host")]
    Backend::Host,
    #[cfg(feature = "vulkan")]
    Backend::Vulkan,
    #[cfg(feature = "cuda")]
    Backend::Cuda,
    #[cfg(feature = "rocm")]
    Backend::Rocm,
];

/// How the CUDA consumer runs (`--cuda-mode`; see `gpuring_cuda::Mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CudaMode {
    /// One launch per batch of published slots, reading them in place.
    #[default]
    Batched,
    /// One kernel polling the io_queue for the whole run.
    Persistent,
    /// Batched, after the copy engine moved each slot into device memory.
    DeviceCopy,
}

impl CudaMode {
    /// Every mode, default first.
    pub const ALL: [CudaMode; 3] = [CudaMode::Batched, CudaMode::Persistent, CudaMode::DeviceCopy];

    /// The name `--cuda-mode` takes and reports show.
    pub fn name(self) -> &'static str {
        match self {
            CudaMode::Batched => "batched",
            CudaMode::Persistent => "persistent",
            CudaMode::DeviceCopy => "device-copy",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Slots in the default ring, where RLIMIT_MEMLOCK allows (see [`default_ring`]).
pub const DEFAULT_SLOTS: u32 = 32;
/// Bytes per slot in the default ring: 32 slots of 256 KiB (8 MiB) stay in
/// this kind of machine's last-level cache between the kernel's copy into a
/// slot and the consumer's read of it, which measured faster for page-cache
/// reads than 1 MiB slots (11-13 against 7-8 GiB/s on a cached 1 GiB file,
/// 2 vCPUs, 2026-11-23).
pub const DEFAULT_SLOT_SIZE: usize = 256 << 10;

/// The ring to use when the caller names neither or only one of the slot
/// count and size: [`DEFAULT_SLOTS`] of [`DEFAULT_SLOT_SIZE`] where io_uring
/// charges nothing against RLIMIT_MEMLOCK (`CAP_IPC_LOCK`, or no limit);
/// otherwise as many slots as fit this process's limit, and smaller slots
/// when not even one fits (see `gpuring_uring::memlock`). With Debian's
/// default 8 MiB: 31 slots of 256 KiB. A count or size the caller gives is
/// kept as given (only the other one adapts); when nothing fits, the
/// defaults stand and registration fails with an error that says why.
pub fn default_ring(slots: Option<u32>, slot_size: Option<usize>) -> (u32, usize) {
    let wanted = (slots.unwrap_or(DEFAULT_SLOTS), slot_size.unwrap_or(DEFAULT_SLOT_SIZE));
    let Some(budget) = gpuring_uring::memlock::budget() else { return wanted };
    match (slots, slot_size) {
        (Some(_), Some(_)) => wanted,
        (None, Some(size)) => (gpuring_uring::memlock::fit_slots(size, DEFAULT_SLOTS, budget).unwrap_or(DEFAULT_SLOTS), size),
        (Some(n), None) => {
            // Halve the size (a page at least) until `n` slots fit.
            let fits = |size| gpuring_uring::memlock::need(n, size).is_some_and(|need| need <= budget);
            let mut size = DEFAULT_SLOT_SIZE;
            while !fits(size) && size > gpuring_core::PAGE_SIZE {
                size /= 2;
            }
            if fits(size) {
                (n, size)
            } else {
                wanted
            }
        }
        (None, None) => gpuring_uring::memlock::fitting_ring(DEFAULT_SLOTS, DEFAULT_SLOT_SIZE, budget).unwrap_or(wanted),
    }
}

/// Who consumes what the rings read, for [`default_shards`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerRuns {
    /// A CPU thread that reads every byte (the host backend's checksum, a
    /// host closure): it needs a CPU of its own.
    OnCpu,
    /// A GPU, or nothing but the destination (`read_into`, `load`).
    Elsewhere,
}

/// The one shard policy: rings for a run through `slots` slots of
/// `slot_size` (on the host's `read_into`: reads of that size): one per CPU
/// this process may use, less one when the consumer runs on a CPU of its
/// own; at most one per slot, and only as many rings as RLIMIT_MEMLOCK
/// leaves room for beside the slots (`gpuring_uring::memlock::fit_shards`).
///
/// Measured on the README's 2-CPU machine: the host ingest (consumer on a
/// CPU), `gpuring bench`'s scaling section, cached 1 GiB, four runs of 5:
/// 1 shard 7.7-8.0 GiB/s, 2 shards 7.1-7.4; the command line, 8 interleaved
/// runs: 7.16-7.68 against 6.85-7.56. `read_into` (nothing else needs a
/// CPU): two rings read a cached 1 GiB file into a host buffer at
/// 11.07-11.32 GiB/s against 5.68-6.12 for one.
pub fn default_shards(consumer: ConsumerRuns, slots: u32, slot_size: usize) -> u32 {
    let cpus = gpuring_uring::default_shards();
    let wanted = match consumer {
        ConsumerRuns::OnCpu => cpus.saturating_sub(1).max(1),
        ConsumerRuns::Elsewhere => cpus,
    };
    gpuring_uring::memlock::fit_shards(slots, slot_size, wanted, gpuring_uring::memlock::budget())
}

impl Backend {
    /// Where this backend's own consumer runs.
    pub fn consumer_runs(self) -> ConsumerRuns {
        match self {
            Backend::Host => ConsumerRuns::OnCpu,
            _ => ConsumerRuns::Elsewhere,
        }
    }
}
