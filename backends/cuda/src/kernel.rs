//! The consumer kernel compiled by NVRTC: its source (gpuring-shared's
//! `consumer.cu` after a prelude generated from gpuring-core) in the CUDA
//! dialect, NVRTC found and loaded, the module loaded.

use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::driver::CudaFunction;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use gpuring_shared::kernel::{source, Dialect, UserKernel};

use crate::device::Device;
use crate::error::{call, CudaError};

/// Directories where a CUDA toolkit's libnvrtc may be when the dynamic
/// loader does not know it: `$CUDA_PATH`, `$CUDA_HOME`, `/usr/local/cuda*`.
fn nvrtc_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME", "CUDA_ROOT"].iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    roots.push("/usr/local/cuda".into());
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cuda-"))).collect();
        versioned.sort();
        roots.extend(versioned.into_iter().rev());
    }
    roots.into_iter().flat_map(|r| [r.join("lib64"), r.join("lib"), r.join("targets/x86_64-linux/lib")]).collect()
}

/// Make sure cudarc can load NVRTC: by name through the dynamic loader, or
/// else from a CUDA toolkit directory, loaded here by path and kept loaded,
/// so cudarc's later load by name finds it by its soname.
fn nvrtc() -> Result<(), CudaError> {
    static FOUND: OnceLock<Result<(), Vec<String>>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        // SAFETY: only tries to dlopen NVRTC by name and drops it.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok(());
        }
        let dirs = nvrtc_dirs();
        for dir in &dirs {
            for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
                let path = dir.join(name);
                if !path.exists() {
                    continue;
                }
                // NVRTC opens its builtins library by name when it compiles,
                // which the dynamic loader would not find in this directory
                // either: load it first, by path, so the name resolves.
                let builtins = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path());
                for lib in builtins.filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc-builtins.so"))) {
                    // SAFETY: as below; a plain C library, never unloaded.
                    if let Ok(lib) = unsafe { libloading::Library::new(&lib) } {
                        std::mem::forget(lib);
                    }
                }
                // SAFETY: libnvrtc's initialisers are those of a plain C
                // library; it is never unloaded (forgotten below), so no
                // function taken from it can outlive it.
                if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                    std::mem::forget(lib);
                    // SAFETY: as above.
                    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                        return Ok(());
                    }
                }
            }
        }
        Err(std::iter::once("the dynamic loader's path".to_owned()).chain(dirs.iter().map(|d| d.display().to_string())).collect())
    });
    found.clone().map_err(|searched| CudaError::NoNvrtc { searched })
}

/// Compile the consumer to PTX for compute capability `major.minor` (no
/// device needed, only NVRTC).
pub(crate) fn compile(major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    compile_source(source(Dialect::Cuda), major, minor)
}

/// Compile a kernel of yours to PTX for compute capability `major.minor`
/// (NVRTC only; no device needed), as
/// [`CudaConsumer::with_kernel`](crate::CudaConsumer::with_kernel) does for
/// the staging's device: the io_queue contract header, then your source.
/// Compile errors come back with NVRTC's log.
pub fn compile_kernel(kernel: &UserKernel, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    compile_source(kernel.full_source(), major, minor)
}

/// Compile CUDA C++ `text` to PTX for compute capability `major.minor`.
fn compile_source(text: String, major: i32, minor: i32) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    nvrtc()?;
    // A virtual architecture (compute_XY) makes NVRTC emit PTX, which the
    // driver compiles for the device on load; a real one (sm_XY) would make
    // a cubin instead.
    let options = CompileOptions { options: vec![format!("--gpu-architecture=compute_{major}{minor}")], ..Default::default() };
    compile_ptx_with_opts(text, options).map_err(|e| CudaError::Compile {
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })
}

/// The compiled kernels, loaded into a device's context (each function
/// keeps the module loaded).
pub(crate) struct Kernels {
    pub(crate) partial: CudaFunction,
    pub(crate) finish: CudaFunction,
    pub(crate) persistent: CudaFunction,
}

impl Kernels {
    /// Compile the consumer for `device`'s architecture and load it.
    pub(crate) fn load(device: &Device) -> Result<Self, CudaError> {
        let (major, minor) = device.info.compute_capability;
        let ptx = compile(major, minor)?;
        let module = device.ctx.load_module(ptx).map_err(call("cuModuleLoadData (a driver older than NVRTC refuses its PTX)"))?;
        let function = |name| module.load_function(name).map_err(call("cuModuleGetFunction"));
        Ok(Self { partial: function("gr_partial")?, finish: function("gr_finish")?, persistent: function("gr_persistent")? })
    }
}

#[cfg(test)]
mod tests {
    /// The real NVRTC (no GPU needed) compiles the kernel source, prelude
    /// included, for the architectures NVRTC 12 and 13 share with the H100
    /// (Turing to Hopper), and the PTX holds the three entry points. The test
    /// command provides NVRTC under `target/nvrtc` (Python's
    /// `nvidia-cuda-nvrtc` wheel) and points `CUDA_PATH` at it; without it the
    /// test says why it skips, and fails under CI=true.
    #[test]
    fn nvrtc_compiles_the_kernel() {
        match super::nvrtc() {
            Ok(()) => {}
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true but NVRTC is missing: {e}"),
            Err(e) => {
                eprintln!("skipping the NVRTC compile of the CUDA kernel: {e}");
                return;
            }
        }
        for (major, minor) in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0)] {
            let ptx = super::compile(major, minor).unwrap_or_else(|e| panic!("compute_{major}{minor}: {e}")).to_src();
            assert!(ptx.contains(&format!(".target sm_{major}{minor}")), "compute_{major}{minor}: {}", &ptx[..ptx.len().min(400)]);
            for entry in ["gr_partial", "gr_finish", "gr_persistent"] {
                assert!(ptx.contains(&format!(".entry {entry}(")), "compute_{major}{minor}: no entry {entry}");
            }
        }
    }
}
