//! The consumer kernel compiled by hiprtc: gpuring-shared's `consumer.cu`
//! in the HIP dialect, compiled at start to a code object for the device's
//! own GFX architecture, and loaded as a module.

use std::ffi::{c_char, c_int, c_void, CString};

use gpuring_shared::kernel::{source, Dialect, UserKernel};
use hip_sys::hiprt::{hipFunction_t, hipModule_t};

use crate::api::{static_text, Hip, HiprtcProgram, SUCCESS};
use crate::device::Device;
use crate::error::RocmError;

/// The kernels `consumer.cu` defines that this backend launches.
pub(crate) const ENTRY_POINTS: [&str; 2] = ["gr_partial", "gr_finish"];

/// hiprtc's text for a result code.
fn rtc_error(hip: &Hip, code: c_int) -> String {
    // SAFETY: returns a static string (or null) for any code.
    let text = hip.rtc().ok().and_then(|rtc| unsafe { static_text((rtc.hiprtcGetErrorString)(code)) });
    format!("hiprtcResult {code} {}", text.unwrap_or_default())
}

/// Compile the consumer to a code object. `arch` is an `--offload-arch`
/// (`gfx90a`, ...); `None` compiles for the current device, which hiprtc
/// then asks the runtime for. No device is needed when `arch` is given.
pub(crate) fn compile(hip: &Hip, arch: Option<&str>) -> Result<Vec<u8>, RocmError> {
    compile_source(hip, &source(Dialect::Hip), arch)
}

/// Compile `source` (HIP C++) to a code object, as [`compile`] does.
fn compile_source(hip: &Hip, source: &str, arch: Option<&str>) -> Result<Vec<u8>, RocmError> {
    // One compile at a time per process: two at once crash ROCm 5.2's
    // hiprtc (seen: SIGSEGV when two tests compiled together).
    static COMPILING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
    let rtc = hip.rtc()?;
    let text = CString::new(source).expect("the kernel source has no NUL");
    let name = c"gpuring_consumer.hip";
    let mut program: HiprtcProgram = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings, no headers; hiprtc copies them.
    let created = unsafe { (rtc.hiprtcCreateProgram)(&mut program, text.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
    if created != SUCCESS {
        return Err(RocmError::Compile { log: format!("hiprtcCreateProgram: {}", rtc_error(hip, created)) });
    }
    let options: Vec<CString> = arch.map(|a| CString::new(format!("--offload-arch={a}")).expect("no NUL")).into_iter().collect();
    let pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `program` was created above; the options outlive the call.
    let compiled = unsafe { (rtc.hiprtcCompileProgram)(program, pointers.len() as c_int, pointers.as_ptr()) };
    let result = if compiled == SUCCESS {
        let mut size = 0usize;
        // SAFETY: the program compiled; the output is a valid size_t.
        let sized = unsafe { (rtc.hiprtcGetCodeSize)(program, &mut size) };
        let mut code = vec![0u8; size];
        // SAFETY: `code` holds the `size` bytes hiprtc writes.
        let got = if sized == SUCCESS { unsafe { (rtc.hiprtcGetCode)(program, code.as_mut_ptr().cast()) } } else { sized };
        if got == SUCCESS && !code.is_empty() {
            Ok(code)
        } else {
            Err(RocmError::Compile { log: format!("hiprtcGetCode: {} ({size} bytes)", rtc_error(hip, got)) })
        }
    } else {
        Err(RocmError::Compile { log: format!("{}\n{}", rtc_error(hip, compiled), log(hip, program)) })
    };
    // SAFETY: created above and not used after this.
    unsafe { (rtc.hiprtcDestroyProgram)(&mut program) };
    result
}

/// The compile log of `program`.
fn log(hip: &Hip, program: HiprtcProgram) -> String {
    let Ok(rtc) = hip.rtc() else { return String::new() };
    let mut size = 0usize;
    // SAFETY: a live program; the output is a valid size_t.
    if unsafe { (rtc.hiprtcGetProgramLogSize)(program, &mut size) } != SUCCESS || size == 0 {
        return String::new();
    }
    let mut text = vec![0u8; size];
    // SAFETY: `text` holds the `size` bytes hiprtc writes.
    if unsafe { (rtc.hiprtcGetProgramLog)(program, text.as_mut_ptr().cast()) } != SUCCESS {
        return String::new();
    }
    String::from_utf8_lossy(&text).trim_end_matches('\0').trim().to_owned()
}

/// Compile a kernel of yours to a code object, as
/// [`RocmConsumer::with_kernel`](crate::RocmConsumer::with_kernel) does for
/// the staging's device: the io_queue contract header, then your source.
/// `arch` is an `--offload-arch` (`gfx90a`, ...); `None` compiles for the
/// current device. No device is needed when `arch` is given, only the HIP
/// runtime's hiprtc. Compile errors come back with hiprtc's log.
pub fn compile_kernel(kernel: &UserKernel, arch: Option<&str>) -> Result<Vec<u8>, RocmError> {
    compile_source(crate::api::hip()?, &kernel.full_source(), arch)
}

/// A code object loaded on the current device; unloaded on drop.
pub(crate) struct Module {
    module: hipModule_t,
    hip: &'static Hip,
}

// SAFETY: module and function handles are process-wide in HIP and may be
// used from any thread once its current device is the module's device.
unsafe impl Send for Module {}

impl Module {
    /// Load `code` (a code object for the device's architecture) on `device`.
    pub(crate) fn load(device: &Device, code: &[u8]) -> Result<Self, RocmError> {
        device.bind()?;
        let hip = device.hip;
        let mut module: hipModule_t = std::ptr::null_mut();
        // SAFETY: `code` is a code object hiprtc produced; HIP copies it.
        hip.check("hipModuleLoadData", unsafe { (hip.rt.hipModuleLoadData)(&mut module, code.as_ptr().cast::<c_void>()) })?;
        Ok(Self { module, hip })
    }

    /// The kernel called `name`; valid while the module is loaded.
    pub(crate) fn function(&self, name: &str) -> Result<hipFunction_t, RocmError> {
        let c_name = CString::new(name).map_err(|_| RocmError::Compile { log: format!("a kernel name with a NUL byte: {name:?}") })?;
        let mut function: hipFunction_t = std::ptr::null_mut();
        // SAFETY: a loaded module and a valid name; the output is valid.
        self.hip.check("hipModuleGetFunction", unsafe { (self.hip.rt.hipModuleGetFunction)(&mut function, self.module, c_name.as_ptr()) })?;
        Ok(function)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: loaded in `load`; a consumer drops its module only after
        // its stream finished every launch of it (or leaks it).
        unsafe { (self.hip.rt.hipModuleUnload)(self.module) };
    }
}

/// gpuring's batched kernels, loaded on a device.
pub(crate) struct Kernels {
    pub(crate) partial: hipFunction_t,
    pub(crate) finish: hipFunction_t,
    // Declared last: unloaded after the functions are forgotten.
    _module: Module,
}

// SAFETY: as for `Module`.
unsafe impl Send for Kernels {}

impl Kernels {
    /// Compile the consumer for `device`'s architecture and load it.
    pub(crate) fn load(device: &Device) -> Result<Self, RocmError> {
        device.bind()?;
        let module = Module::load(device, &compile(device.hip, None)?)?;
        let [partial, finish] = ENTRY_POINTS;
        Ok(Self { partial: module.function(partial)?, finish: module.function(finish)?, _module: module })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real hiprtc (no GPU needed: the architecture is named) compiles
    /// the kernel source, prelude included, for the CDNA and RDNA
    /// generations ROCm supports, and each code object is an AMDGPU ELF
    /// holding both entry points. The test command installs Debian's HIP
    /// runtime, whose hiprtc this is; without it the test says why it
    /// skips, and fails under CI=true.
    #[test]
    fn hiprtc_compiles_the_kernel() {
        let hip = match crate::api::hip().and_then(|h| h.rtc().map(|_| h)) {
            Ok(hip) => hip,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but hiprtc is missing: {e}"),
            Err(e) => {
                eprintln!("skipping the hiprtc compile of the ROCm kernel: {e}");
                return;
            }
        };
        for arch in ["gfx906", "gfx908", "gfx90a", "gfx1030"] {
            let code = compile(hip, Some(arch)).unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert_eq!(&code[..4], b"\x7fELF", "{arch}: not an ELF code object");
            // e_machine 224: EM_AMDGPU.
            assert_eq!(u16::from_le_bytes([code[18], code[19]]), 224, "{arch}: not an AMDGPU ELF");
            for entry in ENTRY_POINTS.iter().chain(&["gr_persistent"]) {
                let kd = format!("{entry}.kd");
                assert!(code.windows(kd.len()).any(|w| w == kd.as_bytes()), "{arch}: no kernel descriptor {kd}");
            }
        }
    }

    #[test]
    fn a_broken_source_is_a_compile_error_with_the_log() {
        let Ok(hip) = crate::api::hip().and_then(|h| h.rtc().map(|_| h)) else {
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true but hiprtc is missing");
            return;
        };
        let broken = source(Dialect::Hip).replace("u32 a = 0u, b = 0u;", "u32 a = 0u, b = 0u");
        let e = compile_source(hip, &broken, Some("gfx90a")).unwrap_err().to_string();
        assert!(e.starts_with("hiprtc could not compile the consumer kernel:\nhiprtcResult 6 HIPRTC_ERROR_COMPILATION"), "{e}");
        assert!(e.contains("error: expected ';'"), "hiprtc's log is in the error: {e}");
    }
}
