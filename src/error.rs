//! The facade's error: what failed in a whole ingest, with a fix.

use std::fmt;
use std::path::PathBuf;

use gpuring_core::GeometryError;
#[cfg(feature = "cuda")]
use gpuring_cuda::CudaError;
#[cfg(feature = "host")]
use gpuring_host::HostError;
#[cfg(feature = "rocm")]
use gpuring_rocm::RocmError;
use gpuring_uring::IngestError;
#[cfg(feature = "vulkan")]
use gpuring_vulkan::VulkanError;

/// Why an ingest, a read, a load (or its setup) failed.
///
/// Its `Display` is the message with its `Fix:`; so is its `Debug`, so a
/// `main` that returns `Result<(), gpuring::Error>` prints the message, not
/// the variant's fields.
pub enum Error {
    /// The driver failed.
    Ingest(IngestError),
    /// The host backend failed.
    #[cfg(feature = "host")]
    Host(HostError),
    /// The Vulkan backend failed.
    #[cfg(feature = "vulkan")]
    Vulkan(VulkanError),
    /// The CUDA backend failed.
    #[cfg(feature = "cuda")]
    Cuda(CudaError),
    /// The ROCm backend failed.
    #[cfg(feature = "rocm")]
    Rocm(RocmError),
    /// Bad slot geometry.
    Geometry(GeometryError),
    /// An option was given to a backend that does not take it.
    OptionNotForBackend {
        /// The option.
        option: &'static str,
        /// The backend.
        backend: String,
        /// The backend (or setting) the option is for.
        needs: &'static str,
    },
    /// `--device` was given for a backend that has no devices.
    NoDevices {
        /// The backend.
        backend: String,
    },
    /// The backend asked for is not part of this build.
    BackendNotBuilt {
        /// Its name.
        name: String,
    },
    /// The inputs hold no bytes.
    NothingToIngest {
        /// Why.
        why: String,
    },
    /// A bench case could not run or gave an unusable result. Only the
    /// command's bench makes it (hidden: no library call returns it).
    #[doc(hidden)]
    BenchFailed {
        /// The case.
        case: String,
        /// What happened.
        why: String,
    },
    /// An NVMe namespace has no block device to verify against.
    NoBlockDevice {
        /// The namespace's character device.
        path: PathBuf,
    },
    /// A GPU `read_into`'s copy consumer moved another number of bytes than
    /// the requests asked for.
    CopyMismatch {
        /// Bytes the copy engine moved.
        copied: u64,
        /// Bytes asked for.
        asked: u64,
    },
    /// A checkpoint file (safetensors, or a sharded checkpoint's index) is
    /// not one gpuring can load.
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// An option's value cannot be used.
    BadOption {
        /// What is wrong.
        what: String,
        /// How to fix it.
        fix: &'static str,
    },
    /// A loaded checkpoint has no tensor of that name.
    NoSuchTensor {
        /// The name asked for.
        name: String,
    },
    /// A tensor was asked for as another element type than its dtype.
    WrongDtype {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: &'static str,
        /// The dtype of the type asked for.
        asked: &'static str,
    },
    /// Bytes gpuring read differ from an independent read of the file.
    Mismatch {
        /// What differs.
        what: String,
    },
    /// A framework (candle) refused what gpuring handed it.
    Framework {
        /// What it said.
        what: String,
    },
    /// Walking a directory or reading for verification failed.
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        error: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ingest(e) => write!(f, "{e}"),
            #[cfg(feature = "host")]
            Self::Host(e) => write!(f, "{e}"),
            #[cfg(feature = "vulkan")]
            Self::Vulkan(e) => write!(f, "{e}"),
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => write!(f, "{e}"),
            #[cfg(feature = "rocm")]
            Self::Rocm(e) => write!(f, "{e}"),
            Self::Geometry(e) => write!(f, "{e}"),
            Self::OptionNotForBackend { option, backend, needs } => {
                write!(f, "`{option}` applies to the {needs} backend, not to backend `{backend}`. Fix: leave `{option}` out, or use the {needs} backend")
            }
            Self::NoDevices { backend } => write!(f, "backend `{backend}` has no devices to choose from. Fix: leave the device out, or use a GPU backend"),
            Self::BackendNotBuilt { name } => write!(
                f,
                "backend `{name}` is not compiled into this gpuring (compiled in: {}). Fix: use the {} backend, or build gpuring with the `{name}` feature",
                crate::backend::BACKENDS.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
                crate::backend::BACKENDS.first().map_or("host", |b| b.name())
            ),
            Self::NothingToIngest { why } => write!(f, "nothing to ingest: {why}. Fix: pass at least one non-empty regular file (or a directory holding one)"),
            Self::BenchFailed { case, why } => {
                write!(f, "bench case {case} failed: {why}. Fix: rerun with --runs 1 to see it alone, or leave fio out with --no-fio")
            }
            Self::NoBlockDevice { path } => write!(
                f,
                "{}: no block device of this namespace was found in /sys/block to verify against. Fix: skip verification (verify: false), or check that the kernel exposes /dev/nvmeXnY",
                path.display()
            ),
            Self::CopyMismatch { copied, asked } => write!(
                f,
                "the copy engine moved {copied} bytes into the destination, but the requests asked for {asked}. Fix: this is a gpuring bug; please report it"
            ),
            Self::Checkpoint { path, what, fix } => write!(f, "{}: {what}. Fix: {fix}", path.display()),
            Self::BadOption { what, fix } => write!(f, "{what}. Fix: {fix}"),
            Self::NoSuchTensor { name } => {
                write!(f, "no tensor called {name:?} was loaded. Fix: check the name (Loaded::tensors lists them) and that the load's selection keeps it")
            }
            Self::WrongDtype { name, dtype, asked } => {
                write!(f, "tensor {name:?} is {dtype}, not {asked}. Fix: view it as the Rust type of {dtype}, or as bytes")
            }
            Self::Mismatch { what } => write!(
                f,
                "{what} differs from an independent read of its file. Fix: check that nothing writes the file while it is read; otherwise this is a gpuring bug, please report it"
            ),
            Self::Framework { what } => write!(f, "{what}. Fix: check the framework's version against gpuring's (candle 0.11)"),
            Self::Io { path, op, error } => write!(f, "{}: {op} failed: {error}. Fix: check the path and its permissions", path.display()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// No `source`: each variant's message already holds its cause's.
impl std::error::Error for Error {}

impl From<IngestError> for Error {
    fn from(e: IngestError) -> Self {
        Self::Ingest(e)
    }
}

#[cfg(feature = "host")]
impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        Self::Host(e)
    }
}

#[cfg(feature = "vulkan")]
impl From<VulkanError> for Error {
    fn from(e: VulkanError) -> Self {
        Self::Vulkan(e)
    }
}

#[cfg(feature = "cuda")]
impl From<CudaError> for Error {
    fn from(e: CudaError) -> Self {
        Self::Cuda(e)
    }
}

#[cfg(feature = "rocm")]
impl From<RocmError> for Error {
    fn from(e: RocmError) -> Self {
        Self::Rocm(e)
    }
}

impl From<GeometryError> for Error {
    fn from(e: GeometryError) -> Self {
        Self::Geometry(e)
    }
}
