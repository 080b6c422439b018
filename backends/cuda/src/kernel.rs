//! The consumer kernel: its source (`consumer.cu` after a prelude generated
//! from gpuring-core), NVRTC, and the launch geometry.

use std::mem::offset_of;
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::driver::CudaFunction;
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
use gpuring_core::checksum::{FMIX_1, FMIX_2, INDEX_KEY, LEN_KEY, MUL_A, MUL_B};
use gpuring_core::io_queue::{QueueEntry, QueueHeader, CONSUMED, ENTRY_SIZE, HEADER_SIZE, REJECTED, SKIPPED};

use crate::device::{Device, THREADS};
use crate::error::{call, CudaError};

/// `consumer_failed`: the kernel rejected an entry.
pub(crate) const FAILED_REJECTED: u32 = 0x4355_0001;
/// `consumer_failed`: `consumer` was not where a batch started.
pub(crate) const FAILED_OUT_OF_STEP: u32 = 0x4355_0002;

/// Words of a slot one block of `gr_partial` checksums: 64 KiB, so a
/// 256 KiB slot is read by four blocks at once.
pub(crate) const CHUNK_WORDS: u32 = 16 << 10;

/// The kernel source as compiled: the prelude, then `consumer.cu`.
pub fn source() -> String {
    let mut text = String::from("// Generated from gpuring-core by gpuring-cuda's kernel.rs.\n");
    let u32s: &[(&str, u32)] = &[
        ("GR_HEADER_BYTES", HEADER_SIZE as u32),
        ("GR_ENTRY_BYTES", ENTRY_SIZE as u32),
        ("GR_H_CLOSED", offset_of!(QueueHeader, closed) as u32),
        ("GR_H_PRODUCER", offset_of!(QueueHeader, producer) as u32),
        ("GR_H_CONSUMER", offset_of!(QueueHeader, consumer) as u32),
        ("GR_H_CONSUMER_FAILED", offset_of!(QueueHeader, consumer_failed) as u32),
        ("GR_E_SEQ", offset_of!(QueueEntry, seq) as u32),
        ("GR_E_SLOT", offset_of!(QueueEntry, slot) as u32),
        ("GR_E_STATUS", offset_of!(QueueEntry, status) as u32),
        ("GR_E_BYTES", offset_of!(QueueEntry, bytes) as u32),
        ("GR_E_RESULT", offset_of!(QueueEntry, result) as u32),
        ("GR_E_CONSUMER_STATUS", offset_of!(QueueEntry, consumer_status) as u32),
        ("GR_CONSUMED", CONSUMED),
        ("GR_SKIPPED", SKIPPED),
        ("GR_REJECTED", REJECTED),
        ("GR_FAILED_REJECTED", FAILED_REJECTED),
        ("GR_FAILED_OUT_OF_STEP", FAILED_OUT_OF_STEP),
        ("GR_INDEX_KEY", INDEX_KEY),
        ("GR_MUL_A", MUL_A),
        ("GR_MUL_B", MUL_B),
        ("GR_THREADS", THREADS),
    ];
    for (name, value) in u32s {
        text += &format!("#define {name} {value:#x}u\n");
    }
    for (name, value) in [("GR_LEN_KEY", LEN_KEY), ("GR_FMIX_1", FMIX_1), ("GR_FMIX_2", FMIX_2)] {
        text += &format!("#define {name} {value:#x}ull\n");
    }
    text + include_str!("consumer.cu")
}

/// Blocks of `gr_partial` per slot of `slot_bytes`.
pub(crate) fn chunks_per_slot(slot_bytes: u32) -> u32 {
    (slot_bytes / 4).div_ceil(CHUNK_WORDS).max(1)
}

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
    nvrtc()?;
    // A virtual architecture (compute_XY) makes NVRTC emit PTX, which the
    // driver compiles for the device on load; a real one (sm_XY) would make
    // a cubin instead.
    let options = CompileOptions { options: vec![format!("--gpu-architecture=compute_{major}{minor}")], ..Default::default() };
    compile_ptx_with_opts(source(), options).map_err(|e| CudaError::Compile {
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
mod tests;
