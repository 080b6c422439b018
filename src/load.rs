//! Load a safetensors checkpoint into one device buffer (an arena, each
//! tensor at an offset aligned to [`TENSOR_ALIGN`]), with
//! [`crate::read_into`], and verify every tensor.
//!
//! [`Checkpoint::open`] reads only each file's header: its length (8
//! bytes), then the JSON, which the `safetensors` crate parses and
//! validates (dtypes, shapes, contiguous offsets that match them). gpuring
//! adds what needs the file's size: a header longer than the file, tensor
//! data past the end (a truncated file) or bytes after the last tensor. A
//! sharded checkpoint's `model.safetensors.index.json` names its files
//! (`weight_map`); every tensor it maps must be in the file it names.
//!
//! ```no_run
//! use gpuring::load::{self, Checkpoint, LoadConfig};
//!
//! let checkpoint = Checkpoint::open(&["model.safetensors.index.json".into()])?;
//! let report = load::load(&checkpoint, &LoadConfig::default())?;
//! assert!(report.checksum.matched);
//! for t in &report.tensors {
//!     println!("{} {} {:?} at {}", t.name, t.dtype, t.shape, t.offset);
//! }
//! # Ok::<(), gpuring::Error>(())
//! ```

// The slot path serves only the GPU backends.
#![cfg_attr(not(any(feature = "vulkan", feature = "cuda", feature = "rocm")), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use serde::Serialize;

use crate::ingest::TelemetryReport;
use crate::read_into::{self, ReadIntoReport, ReadRequest, Target};
use crate::Error;

/// Where each tensor starts in the arena: a multiple of this many bytes
/// (CUDA's and HIP's allocation alignment, and every dtype's).
pub const TENSOR_ALIGN: u64 = 256;
/// The largest header the `safetensors` crate reads (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its dtype, as safetensors writes it (`F32`, `BF16`, ...).
    pub dtype: String,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Its file.
    #[serde(skip)]
    pub file: PathBuf,
    /// Its bytes in the file.
    #[serde(skip)]
    pub range: Range<u64>,
    /// Where it starts in the arena.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The tensors of one or more safetensors files, placed in one arena.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The safetensors files, in the order given (an index's in name order).
    pub files: Vec<PathBuf>,
    /// Every tensor, file by file, in file order.
    pub tensors: Vec<Tensor>,
    /// The arena's length.
    pub arena_bytes: u64,
}

fn bad(path: &Path, what: impl Into<String>, fix: &'static str) -> Error {
    Error::Checkpoint { path: path.to_owned(), what: what.into(), fix }
}

const FIX_FILE: &str = "the file is damaged or not a safetensors file: write it again (safetensors' save_file) or download it again";

/// The tensors of the safetensors file at `path`, from its header, in file
/// order (their arena offsets still 0).
fn read_header(path: &Path) -> Result<Vec<Tensor>, Error> {
    let file = std::fs::File::open(path).map_err(|error| Error::Io { path: path.to_owned(), op: "open", error })?;
    let size = file.metadata().map_err(|error| Error::Io { path: path.to_owned(), op: "stat", error })?.len();
    let mut len = [0u8; 8];
    if size < 8 {
        return Err(bad(path, format!("{size} bytes is too short for a safetensors file (an 8-byte header length first)"), FIX_FILE));
    }
    file.read_exact_at(&mut len, 0).map_err(|error| Error::Io { path: path.to_owned(), op: "read the header length", error })?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad(path, format!("the header claims {n} bytes, more than the 100 MB a safetensors header may have"), FIX_FILE));
    }
    if n > size - 8 {
        return Err(bad(path, format!("the header claims {n} bytes, but the file has only {} after the length: the file is truncated", size - 8), FIX_FILE));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8).map_err(|error| Error::Io { path: path.to_owned(), op: "read the header", error })?;
    let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| bad(path, format!("invalid safetensors header: {e}"), FIX_FILE))?;
    let data_start = 8 + n;
    let data_len = metadata.data_len() as u64;
    let have = size - data_start;
    if data_len > have {
        let what = format!("its tensors need {data_len} bytes of data but the file has {have} after the header: the file is truncated");
        return Err(bad(path, what, FIX_FILE));
    }
    if data_len < have {
        return Err(bad(path, format!("{} bytes follow the last tensor's data (the header accounts for {data_len})", have - data_len), FIX_FILE));
    }
    let infos = metadata.tensors();
    let mut tensors: Vec<_> = metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = infos[&name];
            let (s, e) = info.data_offsets;
            let range = data_start + s as u64..data_start + e as u64;
            Tensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                file: path.to_owned(),
                bytes: range.end - range.start,
                range,
                offset: 0,
            }
        })
        .collect();
    tensors.sort_by_key(|t| t.range.start);
    Ok(tensors)
}

/// A sharded checkpoint's index: its files (in name order) and which file
/// each tensor is in.
fn read_index(path: &Path) -> Result<(Vec<PathBuf>, HashMap<String, PathBuf>), Error> {
    const FIX: &str = "a sharded checkpoint's index is JSON with a \"weight_map\" object from tensor names to file names beside it: write it again";
    let text = std::fs::read(path).map_err(|error| Error::Io { path: path.to_owned(), op: "read", error })?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| bad(path, format!("invalid JSON: {e}"), FIX))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(path, "no \"weight_map\" object", FIX))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut by_tensor = HashMap::new();
    let mut files = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(path, format!("tensor {name}'s file is not a string"), FIX))?;
        if file.contains('/') {
            return Err(bad(path, format!("tensor {name}'s file {file} is not a file name beside the index"), FIX));
        }
        let file = dir.join(file);
        files.insert(file.clone(), ());
        by_tensor.insert(name.clone(), file);
    }
    Ok((files.into_keys().collect(), by_tensor))
}

impl Checkpoint {
    /// Open the checkpoint made of `paths`: safetensors files, or indexes
    /// (`*.index.json`) of sharded ones. Reads only headers.
    pub fn open(paths: &[PathBuf]) -> Result<Self, Error> {
        let mut files = Vec::new();
        let mut mapped: Vec<(PathBuf, HashMap<String, PathBuf>)> = Vec::new();
        for path in paths {
            if path.to_string_lossy().ends_with(".json") {
                let (shards, map) = read_index(path)?;
                files.extend(shards);
                mapped.push((path.clone(), map));
            } else {
                files.push(path.clone());
            }
        }
        if files.is_empty() {
            return Err(Error::NothingToIngest { why: "no safetensors file was given".into() });
        }
        let mut tensors = Vec::new();
        let mut arena = 0u64;
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for file in &files {
            for mut tensor in read_header(file)? {
                if let Some(first) = seen.insert(tensor.name.clone(), file.clone()) {
                    let what = format!("tensor {} is also in {}", tensor.name, first.display());
                    return Err(bad(file, what, "load each tensor from one file: pass each shard once, or the index alone"));
                }
                tensor.offset = arena;
                arena = (arena + tensor.bytes).next_multiple_of(TENSOR_ALIGN);
                tensors.push(tensor);
            }
        }
        for (index, map) in &mapped {
            for (name, file) in map {
                if seen.get(name) != Some(file) {
                    let what = format!("it maps tensor {name} to {}, which does not hold it", file.display());
                    return Err(bad(index, what, "write the index again, or pass the safetensors files themselves"));
                }
            }
        }
        Ok(Self { files, tensors, arena_bytes: arena })
    }

    /// One read request per tensor, into its arena offset.
    pub fn requests(&self) -> Vec<ReadRequest> {
        self.tensors.iter().map(|t| ReadRequest::new(&t.file, t.range.clone(), t.offset)).collect()
    }

    /// Bytes of tensor data.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }
}

/// How to load: where the arena goes, and whether to verify.
#[derive(Clone, Debug, Default)]
pub struct LoadConfig {
    /// The backend, device and ring.
    pub target: Target,
    /// Compare every tensor in the arena with an independent read.
    pub verify: bool,
}

/// One loaded tensor.
#[derive(Clone, Debug, Serialize)]
pub struct LoadedTensor {
    /// Its name.
    pub name: String,
    /// Its dtype.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its offset in the arena.
    pub offset: u64,
    /// Whether the arena holds exactly the file's bytes (`false` also when
    /// verification was skipped).
    #[serde(rename = "match")]
    pub matched: bool,
}

/// Whether every tensor matched.
#[derive(Clone, Debug, Serialize)]
pub struct LoadChecksum {
    /// Every tensor was compared and matched.
    #[serde(rename = "match")]
    pub matched: bool,
    /// Whether tensors were compared at all.
    pub verified: bool,
    /// Tensors that did not match.
    pub mismatched: Vec<String>,
}

/// What `load` did.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The backend.
    pub backend: &'static str,
    /// Every tensor.
    pub tensors: Vec<LoadedTensor>,
    /// Safetensors files read.
    pub files: usize,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// The arena's length (tensors at 256-byte aligned offsets).
    pub arena_bytes: u64,
    /// Seconds the reads took (verification not included).
    pub seconds: f64,
    /// GiB/s of tensor data.
    pub gib_per_s: f64,
    /// How the bytes came.
    pub telemetry: TelemetryReport,
    /// Bytes the GPU's copy engine moved from slots into the arena.
    pub device_copy_bytes: u64,
    /// No byte was copied by the CPU in userspace.
    pub zero_bounce: bool,
    /// The verdicts.
    pub checksum: LoadChecksum,
}

/// Allocate the arena on `config`'s backend, read every tensor into it, and
/// verify each (read back from the device, compared with a `pread`).
pub fn load(checkpoint: &Checkpoint, config: &LoadConfig) -> Result<LoadReport, Error> {
    let requests = checkpoint.requests();
    let (report, matched) = read_into::into_new_buffer(&config.target, &requests, checkpoint.arena_bytes, config.verify)?;
    Ok(report_of(checkpoint, config, report, matched.unwrap_or_else(|| vec![false; requests.len()])))
}

fn report_of(checkpoint: &Checkpoint, config: &LoadConfig, r: ReadIntoReport, matched: Vec<bool>) -> LoadReport {
    let tensors: Vec<LoadedTensor> = checkpoint
        .tensors
        .iter()
        .zip(&matched)
        .map(|(t, &m)| LoadedTensor { name: t.name.clone(), dtype: t.dtype.clone(), shape: t.shape.clone(), bytes: t.bytes, offset: t.offset, matched: m })
        .collect();
    let mismatched: Vec<String> = tensors.iter().filter(|t| !t.matched).map(|t| t.name.clone()).collect();
    LoadReport {
        backend: r.backend,
        files: checkpoint.files.len(),
        bytes: r.bytes,
        arena_bytes: checkpoint.arena_bytes,
        seconds: r.seconds,
        gib_per_s: r.gib_per_s,
        telemetry: r.telemetry,
        device_copy_bytes: r.device_copy_bytes,
        zero_bounce: r.zero_bounce,
        checksum: LoadChecksum {
            matched: config.verify && mismatched.is_empty(),
            verified: config.verify,
            mismatched: if config.verify { mismatched } else { Vec::new() },
        },
        tensors,
    }
}
