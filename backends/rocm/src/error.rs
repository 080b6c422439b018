//! What can go wrong in the ROCm backend, each with a fix.

use std::ffi::c_int;
use std::fmt;

use gpuring_shared::HostError;

/// Set to a path to load that file as the HIP runtime instead of searching
/// (for a runtime in an unusual place, and for the tests of a missing one).
/// Here, beside the error that names it, so that the runtime's loader
/// (`api`) depends on the errors and not the other way round.
pub const LIBRARY_VARIABLE: &str = "GPURING_HIP_LIBRARY";

/// Why the ROCm backend could not start or stopped.
#[derive(Clone, Debug)]
pub enum RocmError {
    /// The HIP runtime (libamdhip64) could not be loaded, or lacks a
    /// function the backend needs.
    NoRuntime {
        /// The files tried.
        searched: Vec<String>,
        /// What was wrong with the one that loaded, if one did.
        why: Option<String>,
    },
    /// The runtime loaded but found no AMD GPU.
    NoDevice {
        /// What `hipGetDeviceCount` said.
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
    /// hiprtc, which compiles the consumer kernel, is missing.
    NoHiprtc {
        /// Why.
        why: String,
    },
    /// hiprtc refused the consumer kernel.
    Compile {
        /// hiprtc's result and log.
        log: String,
    },
    /// A HIP runtime call failed.
    Call {
        /// The call.
        call: &'static str,
        /// Its `hipError_t`.
        code: c_int,
        /// The runtime's name and text for it.
        text: String,
    },
    /// Host memory for the slots or the queue could not be set up.
    Host(String),
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

impl RocmError {
    /// True when the machine simply has no usable ROCm (no runtime, no
    /// device): what a test on a machine without an AMD GPU expects.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::NoRuntime { .. } | Self::NoDevice { .. })
    }
}

impl fmt::Display for RocmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRuntime { searched, why: None } => write!(
                f,
                "no HIP runtime: libamdhip64 could not be loaded (tried {}). Fix: install ROCm's HIP runtime (Debian/Ubuntu: libamdhip64-5, or ROCm from AMD's repository), set ROCM_PATH or {} if it is somewhere else, or use the host backend",
                searched.join(", "),
                LIBRARY_VARIABLE
            ),
            Self::NoRuntime { searched, why: Some(why) } => write!(
                f,
                "the HIP runtime {} cannot be used: {why}. Fix: install ROCm 5.2 or newer, or use the host backend",
                searched.join(", ")
            ),
            Self::NoDevice { why } => write!(
                f,
                "the HIP runtime found no AMD GPU ({why}). Fix: check `rocminfo` or `rocm-smi`, that /dev/kfd is readable by this user (the render and video groups), and HIP_VISIBLE_DEVICES; or use the host backend"
            ),
            Self::DeviceNotFound { wanted, available } => write!(
                f,
                "no HIP device matches `{wanted}` (devices: {}). Fix: choose a device by an index or part of a name from that list",
                available.join("; ")
            ),
            Self::Unsupported { device, what } => write!(
                f,
                "HIP device `{device}` cannot run gpuring: {what}. Fix: pick another device (`gpuring probe` lists them), or use the host backend"
            ),
            Self::NoHiprtc { why } => write!(
                f,
                "hiprtc, which compiles the consumer kernel at run time, is missing: {why}. Fix: install ROCm's hiprtc (libhiprtc, part of the HIP runtime packages) beside libamdhip64"
            ),
            Self::Compile { log } => write!(
                f,
                "hiprtc could not compile the consumer kernel:\n{log}\nFix: if the log says a library or the device library (amdgcn bitcode) is missing, install ROCm's comgr and device-libs packages; otherwise this is a bug in gpuring's kernel for this ROCm version: please report it with the log"
            ),
            Self::Call { call, text, .. } => write!(f, "{call} failed: {text}. Fix: check the GPU with `rocm-smi`, or use the host backend"),
            Self::Host(e) => write!(f, "{e}"),
            Self::Timeout { what, seconds } => write!(
                f,
                "the HIP device did not finish {what} in {seconds} s. Fix: check that the GPU is not hung or busy with a long job (`rocm-smi`)"
            ),
            Self::Rejected { position, what } => write!(
                f,
                "the ROCm consumer rejected io_queue entry {position}: {what}. Fix: a kernel or shader of yours rejects what it cannot take, so look at why it did; with gpuring's own consumer, only gpuring's driver may publish to this queue, and this is a bug if it did"
            ),
            Self::ConsumerPanicked => write!(f, "the ROCm consumer thread panicked. Fix: this is a bug; please report it with the panic message above"),
        }
    }
}

impl std::error::Error for RocmError {}

impl From<HostError> for RocmError {
    fn from(e: HostError) -> Self {
        Self::Host(e.to_string())
    }
}
