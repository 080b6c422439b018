//! The HIP runtime and hiprtc, opened at run time.
//!
//! hip-sys supplies the types and constants (generated from ROCm 5.4's
//! headers); the functions are looked up in `libamdhip64` when first
//! needed, instead of being linked, so that:
//! - a `gpuring` built with the `rocm` feature starts on machines without
//!   ROCm (NVIDIA-only or GPU-less), where the backend then says why it
//!   cannot run;
//! - the same binary finds ROCm 6 and 7 (`libamdhip64.so.6`, `.7`) as well
//!   as Debian's 5.2 (`libamdhip64.so.5`), whose ABI for these functions is
//!   the same.
//!
//! Every function returns its `hipError_t` / `hiprtcResult` as a plain
//! `c_int` rather than hip-sys's Rust enum: a value a newer runtime added
//! would be undefined behaviour in an enum, and is only a number here. The
//! C signature each Rust signature mirrors is written beside it; a test
//! compiles those against the installed headers (`static_cast` of the real
//! function to that type), so a drift is a compile error in CI.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

use hip_sys::hiprt::{hipFunction_t, hipModule_t, hipStream_t};
use libloading::Library;

use crate::error::RocmError;

/// hiprtc's program handle (`hiprtcProgram`, not in hip-sys).
pub(crate) type HiprtcProgram = *mut c_void;
/// A callback queued on a stream (`hipStreamCallback_t`): the stream, the
/// status of the work before it, the user's pointer.
pub(crate) type StreamCallback = Option<unsafe extern "C" fn(hipStream_t, c_int, *mut c_void)>;

/// `hipSuccess`, `HIPRTC_SUCCESS`.
pub(crate) const SUCCESS: c_int = 0;
/// `hipMemcpyHostToDevice`, a `hipMemcpyKind`.
pub(crate) const HOST_TO_DEVICE: c_int = 1;
/// `hipMemcpyDeviceToHost`, a `hipMemcpyKind`.
pub(crate) const DEVICE_TO_HOST: c_int = 2;
/// `hipErrorNotReady`: a stream still has work.
pub(crate) const NOT_READY: c_int = hip_sys::hiprt::hipError_t::hipErrorNotReady as c_int;

/// Declares a table of functions looked up by name, with the C type of each
/// for the header check.
macro_rules! functions {
    ($(#[$doc:meta])* $table:ident { $($name:ident: fn($($arg:ty),*) -> $ret:ty = $c:literal;)* }) => {
        $(#[$doc])*
        #[allow(non_snake_case)]
        pub(crate) struct $table {
            $(pub(crate) $name: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl $table {
            /// Look every function up in `lib`.
            ///
            /// # Safety
            /// `lib` must be the HIP library whose functions have these
            /// signatures, and must stay loaded while the table is used.
            unsafe fn load(lib: &Library) -> Result<Self, String> {
                Ok(Self {
                    $($name: {
                        // SAFETY: the caller vouches for the signature.
                        let symbol = unsafe { lib.get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!(stringify!($name), "\0").as_bytes()) };
                        *symbol.map_err(|e| format!("{}: {e}", stringify!($name)))?
                    },)*
                })
            }

            /// Each function's name and the C function type its Rust
            /// signature mirrors.
            #[cfg_attr(not(test), allow(dead_code))]
            pub(crate) const C_TYPES: &'static [(&'static str, &'static str)] = &[$((stringify!($name), $c),)*];
        }
    };
}

functions! {
    /// The HIP runtime functions the backend calls.
    Runtime {
        hipGetErrorName: fn(c_int) -> *const c_char = "const char* (*)(hipError_t)";
        hipGetErrorString: fn(c_int) -> *const c_char = "const char* (*)(hipError_t)";
        hipRuntimeGetVersion: fn(*mut c_int) -> c_int = "hipError_t (*)(int*)";
        hipGetDeviceCount: fn(*mut c_int) -> c_int = "hipError_t (*)(int*)";
        hipSetDevice: fn(c_int) -> c_int = "hipError_t (*)(int)";
        hipDeviceGetName: fn(*mut c_char, c_int, c_int) -> c_int = "hipError_t (*)(char*, int, hipDevice_t)";
        hipDeviceGetPCIBusId: fn(*mut c_char, c_int, c_int) -> c_int = "hipError_t (*)(char*, int, int)";
        hipDeviceTotalMem: fn(*mut usize, c_int) -> c_int = "hipError_t (*)(size_t*, hipDevice_t)";
        hipDeviceGetAttribute: fn(*mut c_int, c_int, c_int) -> c_int = "hipError_t (*)(int*, hipDeviceAttribute_t, int)";
        hipHostRegister: fn(*mut c_void, usize, c_uint) -> c_int = "hipError_t (*)(void*, size_t, unsigned int)";
        hipHostUnregister: fn(*mut c_void) -> c_int = "hipError_t (*)(void*)";
        hipHostGetDevicePointer: fn(*mut *mut c_void, *mut c_void, c_uint) -> c_int = "hipError_t (*)(void**, void*, unsigned int)";
        hipMalloc: fn(*mut *mut c_void, usize) -> c_int = "hipError_t (*)(void**, size_t)";
        hipFree: fn(*mut c_void) -> c_int = "hipError_t (*)(void*)";
        hipMemset: fn(*mut c_void, c_int, usize) -> c_int = "hipError_t (*)(void*, int, size_t)";
        hipMemcpy: fn(*mut c_void, *const c_void, usize, c_int) -> c_int = "hipError_t (*)(void*, const void*, size_t, hipMemcpyKind)";
        hipMemcpyAsync: fn(*mut c_void, *const c_void, usize, c_int, hipStream_t) -> c_int = "hipError_t (*)(void*, const void*, size_t, hipMemcpyKind, hipStream_t)";
        hipStreamCreateWithFlags: fn(*mut hipStream_t, c_uint) -> c_int = "hipError_t (*)(hipStream_t*, unsigned int)";
        hipStreamDestroy: fn(hipStream_t) -> c_int = "hipError_t (*)(hipStream_t)";
        hipStreamQuery: fn(hipStream_t) -> c_int = "hipError_t (*)(hipStream_t)";
        hipModuleLoadData: fn(*mut hipModule_t, *const c_void) -> c_int = "hipError_t (*)(hipModule_t*, const void*)";
        hipModuleGetFunction: fn(*mut hipFunction_t, hipModule_t, *const c_char) -> c_int = "hipError_t (*)(hipFunction_t*, hipModule_t, const char*)";
        hipModuleUnload: fn(hipModule_t) -> c_int = "hipError_t (*)(hipModule_t)";
        hipModuleLaunchKernel: fn(hipFunction_t, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, hipStream_t, *mut *mut c_void, *mut *mut c_void) -> c_int
            = "hipError_t (*)(hipFunction_t, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, hipStream_t, void**, void**)";
        // Not hipLaunchHostFunc: ROCm 5.2's header declares it, its library lacks it.
        hipStreamAddCallback: fn(hipStream_t, StreamCallback, *mut c_void, c_uint) -> c_int = "hipError_t (*)(hipStream_t, hipStreamCallback_t, void*, unsigned int)";
    }
}

functions! {
    /// The hiprtc functions the backend calls (in `libamdhip64` up to ROCm
    /// 5.2, in `libhiprtc` from 5.3 on).
    Rtc {
        hiprtcGetErrorString: fn(c_int) -> *const c_char = "const char* (*)(hiprtcResult)";
        hiprtcCreateProgram: fn(*mut HiprtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int
            = "hiprtcResult (*)(hiprtcProgram*, const char*, const char*, int, const char**, const char**)";
        hiprtcCompileProgram: fn(HiprtcProgram, c_int, *const *const c_char) -> c_int = "hiprtcResult (*)(hiprtcProgram, int, const char**)";
        hiprtcGetProgramLogSize: fn(HiprtcProgram, *mut usize) -> c_int = "hiprtcResult (*)(hiprtcProgram, size_t*)";
        hiprtcGetProgramLog: fn(HiprtcProgram, *mut c_char) -> c_int = "hiprtcResult (*)(hiprtcProgram, char*)";
        hiprtcGetCodeSize: fn(HiprtcProgram, *mut usize) -> c_int = "hiprtcResult (*)(hiprtcProgram, size_t*)";
        hiprtcGetCode: fn(HiprtcProgram, *mut c_char) -> c_int = "hiprtcResult (*)(hiprtcProgram, char*)";
        hiprtcDestroyProgram: fn(*mut HiprtcProgram) -> c_int = "hiprtcResult (*)(hiprtcProgram*)";
    }
}

/// The runtime, loaded once per process, and where it came from.
pub(crate) struct Hip {
    pub(crate) rt: Runtime,
    /// `None` when no hiprtc was found (the reason is in `rtc_missing`).
    pub(crate) rtc: Option<Rtc>,
    pub(crate) rtc_missing: String,
    /// The file the runtime was loaded from.
    pub(crate) library: String,
    // Kept loaded for the life of the process: the tables point into them.
    _libraries: Vec<Library>,
}

use crate::error::LIBRARY_VARIABLE;

/// The runtime's file names, newest ABI first, then the unversioned name.
const RUNTIME_NAMES: [&str; 4] = ["libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5", "libamdhip64.so"];
/// hiprtc's, when it is a library of its own.
const RTC_NAMES: [&str; 4] = ["libhiprtc.so.7", "libhiprtc.so.6", "libhiprtc.so.5", "libhiprtc.so"];

/// Where to look, in order: the dynamic loader's path (names alone), then
/// the lib directory of `$ROCM_PATH`, `$HIP_PATH` and `/opt/rocm`.
fn candidates(names: &[&str]) -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os(LIBRARY_VARIABLE) {
        return vec![PathBuf::from(path)];
    }
    let mut roots: Vec<PathBuf> = ["ROCM_PATH", "HIP_PATH"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    roots.push("/opt/rocm".into());
    let dirs: Vec<PathBuf> = std::iter::once(PathBuf::new()).chain(roots.into_iter().map(|r| r.join("lib"))).collect();
    dirs.iter().flat_map(|d| names.iter().map(move |n| d.join(n))).collect()
}

fn open_first(candidates: &[PathBuf]) -> Option<(Library, PathBuf)> {
    candidates.iter().find_map(|path| {
        // SAFETY: the HIP runtime and hiprtc are C libraries whose
        // initialisers only set up their own state; they are kept loaded
        // for the life of the process (in `Hip`).
        unsafe { Library::new(path) }.ok().map(|lib| (lib, path.clone()))
    })
}

/// The HIP runtime, loaded on first use; [`RocmError::NoRuntime`] (with
/// where it was looked for) when there is none.
pub(crate) fn hip() -> Result<&'static Hip, RocmError> {
    static HIP: OnceLock<Result<Hip, RocmError>> = OnceLock::new();
    HIP.get_or_init(|| {
        let searched = candidates(&RUNTIME_NAMES);
        let Some((lib, path)) = open_first(&searched) else {
            return Err(RocmError::NoRuntime { searched: searched.iter().map(|p| p.display().to_string()).collect(), why: None });
        };
        let library = path.display().to_string();
        // SAFETY: `lib` is a HIP runtime (it was found under its name); the
        // table is kept beside it in `Hip`, which lives as long as the process.
        let rt = unsafe { Runtime::load(&lib) }.map_err(|why| RocmError::NoRuntime { searched: vec![library.clone()], why: Some(why) })?;
        let mut libraries = vec![lib];
        // hiprtc: a library of its own next to the runtime, or else inside it.
        let beside: Vec<PathBuf> = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => RTC_NAMES.iter().map(|n| dir.join(n)).collect(),
            None => RTC_NAMES.iter().map(PathBuf::from).collect(),
        };
        let (rtc, rtc_missing) = match open_first(&beside) {
            // SAFETY: as for the runtime.
            Some((rtc_lib, _)) => match unsafe { Rtc::load(&rtc_lib) } {
                Ok(rtc) => {
                    libraries.push(rtc_lib);
                    (Some(rtc), String::new())
                }
                Err(e) => (None, e),
            },
            // SAFETY: as for the runtime.
            None => match unsafe { Rtc::load(&libraries[0]) } {
                Ok(rtc) => (Some(rtc), String::new()),
                Err(e) => (None, format!("no libhiprtc beside {library}, and the runtime itself lacks {e}")),
            },
        };
        Ok(Hip { rt, rtc, rtc_missing, library, _libraries: libraries })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// A string a HIP or hiprtc function returned.
///
/// # Safety
/// `p` is null or a NUL-terminated string that lives for the process (as
/// the error-text functions return).
pub(crate) unsafe fn static_text(p: *const c_char) -> Option<String> {
    // SAFETY: non-null, NUL-terminated (the caller's promise).
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

impl Hip {
    /// `hipErrorX (text)` for a HIP error code.
    pub(crate) fn describe(&self, code: c_int) -> String {
        // SAFETY: both return static strings (or null) for any code.
        let (name, text) = unsafe { (static_text((self.rt.hipGetErrorName)(code)), static_text((self.rt.hipGetErrorString)(code))) };
        match (name, text) {
            (Some(name), Some(text)) if name != text => format!("{name} ({text})"),
            (Some(name), _) => name,
            _ => format!("hipError_t {code}"),
        }
    }

    /// `Ok` for `hipSuccess`, else [`RocmError::Call`] naming `call`.
    pub(crate) fn check(&self, call: &'static str, code: c_int) -> Result<(), RocmError> {
        if code == SUCCESS {
            Ok(())
        } else {
            Err(RocmError::Call { call, code, text: self.describe(code) })
        }
    }

    /// hiprtc, or [`RocmError::NoHiprtc`].
    pub(crate) fn rtc(&self) -> Result<&Rtc, RocmError> {
        self.rtc.as_ref().ok_or_else(|| RocmError::NoHiprtc { why: self.rtc_missing.clone() })
    }

    /// The runtime's version, as `hipRuntimeGetVersion` reports it
    /// (major × 10⁷ + minor × 10⁵ + patch).
    pub(crate) fn version(&self) -> Option<i32> {
        let mut version = 0;
        // SAFETY: the output is a valid int.
        (unsafe { (self.rt.hipRuntimeGetVersion)(&mut version) } == SUCCESS).then_some(version)
    }
}

#[cfg(test)]
mod tests;
