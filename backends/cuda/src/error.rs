//! What can go wrong in the CUDA backend, each with a fix.

use std::fmt;

use cudarc::driver::DriverError;
use gpuring_shared::HostError;

/// Why the CUDA backend could not start or stopped.
#[derive(Debug)]
pub enum CudaError {
    /// The driver library (libcuda.so.1) could not be loaded.
    NoDriver,
    /// The driver is older than the backend needs.
    DriverTooOld {
        /// The driver's CUDA version, as `cuDriverGetVersion` reports it (12080 is 12.8).
        version: i32,
        /// The oldest version the backend works with.
        needed: i32,
    },
    /// The driver loaded but found no CUDA device.
    NoDevice {
        /// What `cuInit` or `cuDeviceGetCount` said.
        why: String,
    },
    /// No device matches the `--device` selector.
    DeviceNotFound {
        /// The selector.
        wanted: String,
        /// The devices there are, as `index: name`.
        available: Vec<String>,
    },
    /// The chosen device lacks something the backend needs.
    Unsupported {
        /// The device's name.
        device: String,
        /// What it lacks.
        what: String,
    },
    /// NVRTC (libnvrtc), which compiles the consumer kernel, was not found.
    NoNvrtc {
        /// Where it was looked for.
        searched: Vec<String>,
    },
    /// NVRTC refused the consumer kernel.
    Compile {
        /// NVRTC's log.
        log: String,
    },
    /// A CUDA driver call failed.
    Call {
        /// The call.
        call: &'static str,
        /// Its result.
        error: DriverError,
    },
    /// Host memory for the slots or the queue could not be set up.
    Host(HostError),
    /// The device did not finish in time.
    Timeout {
        /// What it was doing.
        what: String,
        /// Seconds waited.
        seconds: u64,
    },
    /// The kernel rejected an io_queue entry and stopped releasing.
    Rejected {
        /// The entry's position.
        position: u32,
        /// What was wrong with it.
        what: String,
    },
    /// The consumer thread panicked.
    ConsumerPanicked,
}

impl CudaError {
    /// True when the machine simply has no usable CUDA (no driver, a driver
    /// too old, no device): what a test on a machine without a GPU expects.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::NoDriver | Self::DriverTooOld { .. } | Self::NoDevice { .. })
    }
}

/// The name and text of a driver error, as `CUDA_ERROR_X (text)`.
pub(crate) fn describe(error: &DriverError) -> String {
    let name = error.error_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("CUresult {}", error.0 as u32));
    match error.error_string() {
        Ok(text) => format!("{name} ({})", text.to_string_lossy()),
        Err(_) => name,
    }
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDriver => write!(
                f,
                "no CUDA driver: libcuda.so.1 could not be loaded. Fix: install the NVIDIA driver (it provides libcuda.so.1) on a machine with an NVIDIA GPU, or use the host backend"
            ),
            Self::DriverTooOld { version, needed } => write!(
                f,
                "the CUDA driver supports CUDA {}.{}, but gpuring's CUDA backend needs {}.{} or newer. Fix: update the NVIDIA driver, or use the host backend",
                version / 1000,
                version % 1000 / 10,
                needed / 1000,
                needed % 1000 / 10
            ),
            Self::NoDevice { why } => write!(
                f,
                "the CUDA driver found no usable device ({why}). Fix: check `nvidia-smi` and CUDA_VISIBLE_DEVICES, or use the host backend"
            ),
            Self::DeviceNotFound { wanted, available } => write!(
                f,
                "no CUDA device matches `{wanted}` (devices: {}). Fix: choose a device by an index or part of a name from that list",
                available.join("; ")
            ),
            Self::Unsupported { device, what } => write!(
                f,
                "CUDA device `{device}` cannot run gpuring: {what}. Fix: pick another device (`gpuring probe` lists them), or use the host backend"
            ),
            Self::NoNvrtc { searched } => write!(
                f,
                "NVRTC (libnvrtc.so), which compiles the consumer kernel at run time, was not found (looked for it by name and in {}). Fix: install the CUDA toolkit's NVRTC (Debian/Ubuntu: cuda-nvrtc-13-0 or libnvrtc12) and put its directory in LD_LIBRARY_PATH or CUDA_PATH",
                searched.join(", ")
            ),
            Self::Compile { log } => write!(
                f,
                "NVRTC could not compile the consumer kernel:\n{log}\nFix: if the log names a library NVRTC could not open, put the CUDA toolkit's lib64 directory in LD_LIBRARY_PATH; otherwise this is a bug in gpuring's kernel for this NVRTC version: please report it with the log"
            ),
            Self::Call { call, error } => write!(f, "{call} failed: {}. Fix: check the GPU with `nvidia-smi`, or use the host backend", describe(error)),
            Self::Host(e) => write!(f, "{e}"),
            Self::Timeout { what, seconds } => write!(
                f,
                "the CUDA device did not finish {what} in {seconds} s. Fix: check that the GPU is not hung or busy with a long job (`nvidia-smi`), or use the batched consumer mode"
            ),
            Self::Rejected { position, what } => write!(
                f,
                "the CUDA consumer rejected io_queue entry {position}: {what}. Fix: a kernel or shader of yours rejects what it cannot take, so look at why it did; with gpuring's own consumer, only gpuring's driver may publish to this queue, and this is a bug if it did"
            ),
            Self::ConsumerPanicked => write!(f, "the CUDA consumer thread panicked. Fix: this is a bug; please report it with the panic message above"),
        }
    }
}

impl std::error::Error for CudaError {}

impl From<HostError> for CudaError {
    fn from(e: HostError) -> Self {
        Self::Host(e)
    }
}

/// Map a failed call's error to [`CudaError::Call`].
pub(crate) fn call(call: &'static str) -> impl FnOnce(DriverError) -> CudaError {
    move |error| CudaError::Call { call, error }
}
