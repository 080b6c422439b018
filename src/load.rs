//! Load a safetensors checkpoint into one device buffer (an arena, each
//! tensor at an offset aligned to [`TENSOR_ALIGN`]), with
//! [`crate::read_into`](mod@crate::read_into), and verify every tensor.
//!
//! [`Checkpoint::open`] reads only each file's header: its length (8
//! bytes), then the JSON, which the `safetensors` crate parses and
//! validates (dtypes, shapes, contiguous offsets that match them). gpuring
//! adds what needs the file's size: a header longer than the file, tensor
//! data past the end (a truncated file) or bytes after the last tensor. A
//! sharded checkpoint's `model.safetensors.index.json` names its files
//! (`weight_map`); every tensor it maps must be in the file it names.
//!
//! [`host`] (and [`crate::load()`]) reads the tensors into a
//! [`HostBuffer`] that stays, and returns it as a [`Loaded`]: the tensor
//! table, [`Loaded::get`] for one tensor's [`TensorInfo`] (a [`Dtype`], its
//! shape, its offset and length in the buffer), and views
//! ([`Loaded::bytes`], [`Loaded::slice`] typed for the plain dtypes, with
//! `half`'s `f16` and `bf16`). [`vulkan`], `cuda` and `rocm` (features of
//! the same names) load into a device buffer of that backend instead, and
//! [`load_into`] into memory you allocated.
//!
//! [`LoadOptions`] selects tensors (by glob or predicate) and a
//! tensor-parallel [`Part`]: rank `r` of `n` along a dimension, cut as
//! `torch.chunk` cuts it; a part that is not contiguous in the file is read
//! as one range per contiguous run, and nothing else of the tensor is read.
//!
//! ```no_run
//! use gpuring::load::{self, LoadOptions, Part};
//!
//! // Rank 1 of 2 of every attention weight, cut along dimension 0.
//! let options = LoadOptions { part: Some(Part { rank: 1, world: 2, dim: 0 }), ..LoadOptions::default() }.select_glob(&["*.attention.*"])?;
//! let loaded = load::host(&["model.safetensors"], &options)?;
//! for t in loaded.tensors() {
//!     println!("{} {} {:?} of {:?} at {}", t.name, t.dtype, t.shape, t.full_shape, t.offset);
//! }
//! # Ok::<(), gpuring::Error>(())
//! ```

// The slot path serves only the GPU backends.
#![cfg_attr(not(any(feature = "vulkan", feature = "cuda", feature = "rocm")), allow(dead_code, unused_imports))]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::Metadata;
use serde::Serialize;

use crate::read_into::{self, ReadIntoReport, ReadOptions, ReadRequest, Target};
use crate::telemetry::TelemetryReport;
use crate::{Error, HostBuffer};

/// Where each tensor starts in the arena: a multiple of this many bytes
/// (CUDA's and HIP's allocation alignment, and every dtype's).
pub const TENSOR_ALIGN: u64 = 256;
/// The largest header the `safetensors` crate reads (100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// A tensor's element type, named as safetensors names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each is its safetensors name
pub enum Dtype {
    Bool,
    F4,
    F6E2M3,
    F6E3M2,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    F8E4M3Fnuz,
    F8E5M2Fnuz,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl Dtype {
    const ALL: [(Dtype, &'static str, usize); 22] = [
        (Dtype::Bool, "BOOL", 8),
        (Dtype::F4, "F4", 4),
        (Dtype::F6E2M3, "F6_E2M3", 6),
        (Dtype::F6E3M2, "F6_E3M2", 6),
        (Dtype::U8, "U8", 8),
        (Dtype::I8, "I8", 8),
        (Dtype::F8E5M2, "F8_E5M2", 8),
        (Dtype::F8E4M3, "F8_E4M3", 8),
        (Dtype::F8E8M0, "F8_E8M0", 8),
        (Dtype::F8E4M3Fnuz, "F8_E4M3FNUZ", 8),
        (Dtype::F8E5M2Fnuz, "F8_E5M2FNUZ", 8),
        (Dtype::I16, "I16", 16),
        (Dtype::U16, "U16", 16),
        (Dtype::F16, "F16", 16),
        (Dtype::BF16, "BF16", 16),
        (Dtype::I32, "I32", 32),
        (Dtype::U32, "U32", 32),
        (Dtype::F32, "F32", 32),
        (Dtype::C64, "C64", 64),
        (Dtype::F64, "F64", 64),
        (Dtype::I64, "I64", 64),
        (Dtype::U64, "U64", 64),
    ];

    /// Its name in a safetensors header (`F32`, `BF16`, `F8_E4M3`, ...).
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(d, ..)| *d == self).map_or("?", |(_, n, _)| n)
    }

    /// The dtype a safetensors header calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n, _)| *n == name).map(|(d, ..)| *d)
    }

    /// Bits per element (4 and 6 for the sub-byte floats).
    pub fn bits(self) -> usize {
        Self::ALL.iter().find(|(d, ..)| *d == self).map_or(8, |(.., b)| *b)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Dtype {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// An element type whose every bit pattern is a value, viewable in place
/// ([`Loaded::slice`]). Sealed: gpuring implements it for the integers,
/// `f32`, `f64`, and `half`'s `f16` and `bf16`.
pub trait Element: Copy + sealed::Sealed + 'static {
    /// The dtype whose bytes this type reads.
    const DTYPE: Dtype;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! elements {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
        }
    )*};
}

elements!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64, f32 => F32, f64 => F64, half::f16 => F16, half::bf16 => BF16);

/// One tensor of a checkpoint, as its header says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tensor {
    /// Its name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Its file.
    #[serde(skip)]
    pub file: PathBuf,
    /// Its bytes in the file.
    #[serde(skip)]
    pub range: Range<u64>,
    /// Where it starts in an arena of the whole checkpoint.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The tensors of one or more safetensors files, as their headers say.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The safetensors files, in the order given (an index's in name order).
    pub files: Vec<PathBuf>,
    /// Every tensor, file by file, in file order.
    pub tensors: Vec<Tensor>,
    /// The length of an arena of every tensor.
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
        .map(|name| -> Result<Tensor, Error> {
            let info = infos[&name];
            let (s, e) = info.data_offsets;
            let range = data_start + s as u64..data_start + e as u64;
            let dtype = Dtype::from_name(&format!("{:?}", info.dtype));
            let dtype = dtype.ok_or_else(|| bad(path, format!("tensor {name}: dtype {:?} is not one gpuring knows", info.dtype), FIX_FILE))?;
            Ok(Tensor { name, dtype, shape: info.shape.clone(), file: path.to_owned(), bytes: range.end - range.start, range, offset: 0 })
        })
        .collect::<Result<_, _>>()?;
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
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, Error> {
        let mut files = Vec::new();
        let mut mapped: Vec<(PathBuf, HashMap<String, PathBuf>)> = Vec::new();
        for path in paths.iter().map(AsRef::as_ref) {
            if path.to_string_lossy().ends_with(".json") {
                let (shards, map) = read_index(path)?;
                files.extend(shards);
                mapped.push((path.to_owned(), map));
            } else {
                files.push(path.to_owned());
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

    /// Bytes of tensor data.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// What `options` selects of this checkpoint, placed in an arena: each
    /// tensor (or its part) at a [`TENSOR_ALIGN`]-aligned offset, and the
    /// read requests that fill it.
    pub fn plan(&self, options: &LoadOptions) -> Result<Plan, Error> {
        let mut plan = Plan { tensors: Vec::new(), requests: Vec::new(), arena_bytes: 0 };
        for t in self.tensors.iter().filter(|t| options.selects(&t.name)) {
            let (shape, runs) = match options.part {
                Some(part) => part.cut(t)?,
                None => (t.shape.clone(), vec![t.range.clone()]),
            };
            let offset = plan.arena_bytes;
            let first = plan.requests.len();
            let mut at = offset;
            for run in runs.into_iter().filter(|r| !r.is_empty()) {
                let len = run.end - run.start;
                // Runs that follow each other in the file and in the arena
                // are one request.
                let own = plan.requests.len() > first;
                match plan.requests.last_mut() {
                    Some(last) if own && last.range.end == run.start => last.range.end = run.end,
                    _ => plan.requests.push(ReadRequest::new(&t.file, run, at)),
                }
                at += len;
            }
            let bytes = at - offset;
            plan.tensors.push(TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                full_shape: t.shape.clone(),
                offset,
                bytes,
                file: t.file.clone(),
                requests: first..plan.requests.len(),
            });
            plan.arena_bytes = (offset + bytes).next_multiple_of(TENSOR_ALIGN);
        }
        Ok(plan)
    }
}

/// A tensor-parallel part: rank `rank` of `world` along dimension `dim`,
/// as `torch.chunk(tensor, world, dim)[rank]` cuts it (chunks of
/// `ceil(size / world)`, the last ones shorter or empty). A tensor with no
/// dimension `dim` (a scalar, a bias when `dim` is 1) is loaded whole on
/// every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This rank, `0..world`.
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
    /// The dimension cut.
    pub dim: usize,
}

impl Part {
    /// Rows `start..end` of `size` along the dimension for this rank.
    pub fn rows(&self, size: usize) -> Range<usize> {
        let chunk = size.div_ceil(self.world.max(1));
        let start = (self.rank * chunk).min(size);
        start..(start + chunk).min(size)
    }

    /// `t`'s part: its shape, and its bytes in the file as contiguous runs
    /// in order.
    fn cut(&self, t: &Tensor) -> Result<(Vec<usize>, Vec<Range<u64>>), Error> {
        if self.world == 0 || self.rank >= self.world {
            let what = format!("rank {} of {} ranks does not exist", self.rank, self.world);
            return Err(bad(&t.file, what, "use a rank from 0 to world - 1, and a world of at least 1"));
        }
        if self.dim >= t.shape.len() {
            return Ok((t.shape.clone(), vec![t.range.clone()]));
        }
        let rows = self.rows(t.shape[self.dim]);
        let mut shape = t.shape.clone();
        shape[self.dim] = rows.len();
        let outer: usize = t.shape[..self.dim].iter().product();
        let inner_bits = t.shape[self.dim + 1..].iter().product::<usize>() as u64 * t.dtype.bits() as u64;
        let row_bits = |rows: usize| rows as u64 * inner_bits;
        if row_bits(rows.start) % 8 != 0 || row_bits(rows.len()) % 8 != 0 {
            let what = format!("tensor {}: a part of {} along dimension {} does not start and end on a byte", t.name, t.dtype, self.dim);
            return Err(bad(&t.file, what, "cut sub-byte dtypes along a dimension whose rows are whole bytes"));
        }
        let (row_bytes, size) = (inner_bits / 8, t.shape[self.dim] as u64);
        let runs = (0..outer as u64)
            .map(|o| {
                let start = t.range.start + (o * size + rows.start as u64) * row_bytes;
                start..start + rows.len() as u64 * row_bytes
            })
            .collect();
        Ok((shape, runs))
    }
}

/// One tensor (or its part) as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// The shape of what was loaded (the part's, under a [`Part`]).
    pub shape: Vec<usize>,
    /// The whole tensor's shape, as in the file.
    pub full_shape: Vec<usize>,
    /// Where it starts in the buffer (a multiple of [`TENSOR_ALIGN`]).
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its file.
    #[serde(skip)]
    pub file: PathBuf,
    /// Its read requests, as indexes into [`Plan::requests`].
    #[serde(skip)]
    requests: Range<usize>,
}

impl TensorInfo {
    /// Its bytes in the buffer, `offset .. offset + bytes`.
    pub fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.bytes) as usize
    }

    /// Its read requests, as indexes into [`Plan::requests`].
    pub(crate) fn requests(&self) -> Range<usize> {
        self.requests.clone()
    }
}

/// What a load reads and where it puts it: from [`Checkpoint::plan`].
#[derive(Clone, Debug)]
pub struct Plan {
    /// Every tensor selected, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The reads that fill the arena.
    pub requests: Vec<ReadRequest>,
    /// The arena's length.
    pub arena_bytes: u64,
}

impl Plan {
    /// Bytes of tensor data.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// One verdict per tensor from one per request.
    fn per_tensor(&self, per_request: &[bool]) -> Vec<bool> {
        self.tensors.iter().map(|t| per_request[t.requests.clone()].iter().all(|&m| m)).collect()
    }
}

/// Which tensor names a load keeps.
pub type Selector = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How to load: which tensors, which part of each, how to read, whether to
/// verify.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// How to read (`O_DIRECT`, rings; a GPU's staging slots).
    pub read: ReadOptions,
    /// Compare every tensor with an independent read after loading.
    pub verify: bool,
    /// Load only this rank's part of each tensor.
    pub part: Option<Part>,
    /// Which tensors (all when `None`): see [`LoadOptions::select`] and
    /// [`LoadOptions::select_glob`].
    pub select: Option<Selector>,
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("read", &self.read)
            .field("verify", &self.verify)
            .field("part", &self.part)
            .field("select", &self.select.as_ref().map(|_| "fn"))
            .finish()
    }
}

impl LoadOptions {
    /// Load only the tensors whose name `keep` accepts.
    pub fn select(mut self, keep: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.select = Some(Arc::new(keep));
        self
    }

    /// Load only the tensors whose name matches one of `patterns` (`*`
    /// any run of characters, dots included; `?` one; `[abc]` one of).
    pub fn select_glob(self, patterns: &[&str]) -> Result<Self, Error> {
        let compiled = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| Error::BadOption {
                    what: format!("tensor name pattern {p:?}: {e}"),
                    fix: "write a glob: * for any characters, ? for one, [..] for a set",
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.select(move |name| compiled.iter().any(|p| p.matches(name))))
    }

    fn selects(&self, name: &str) -> bool {
        self.select.as_ref().is_none_or(|keep| keep(name))
    }
}

/// A loaded checkpoint: the buffer `B` that holds its tensors, which it
/// owns, and their table. `B` is a [`HostBuffer`] ([`host`]), a Vulkan
/// `DeviceBuffer`, a CUDA `CudaSlice<u8>`, a ROCm `DeviceBuffer`.
#[derive(Debug)]
pub struct Loaded<B> {
    buffer: B,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    report: LoadReport,
}

impl<B> Loaded<B> {
    fn new(buffer: B, plan: Plan, report: LoadReport) -> Self {
        let by_name = plan.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Self { buffer, tensors: plan.tensors, by_name, report }
    }

    /// The tensor called `name`, if it was loaded.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Every tensor loaded, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The buffer that holds them.
    pub fn buffer(&self) -> &B {
        &self.buffer
    }

    /// What the load did (time, bytes, telemetry, verdicts).
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The buffer and the table, for a framework to take over.
    pub fn into_parts(self) -> (B, Vec<TensorInfo>) {
        (self.buffer, self.tensors)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, Error> {
        self.get(name).ok_or_else(|| Error::NoSuchTensor { name: name.to_owned() })
    }
}

impl Loaded<HostBuffer> {
    /// The bytes of tensor `name`.
    pub fn bytes(&self, name: &str) -> Result<&[u8], Error> {
        Ok(&self.buffer[self.info(name)?.range()])
    }

    /// Tensor `name` as a slice of `T`, whose dtype must be its own
    /// (`f32` for `F32`, `half::bf16` for `BF16`, ...), in the file's
    /// (little-endian, row-major) order.
    pub fn slice<T: Element>(&self, name: &str) -> Result<&[T], Error> {
        let info = self.info(name)?;
        if info.dtype != T::DTYPE {
            return Err(Error::WrongDtype { name: name.to_owned(), dtype: info.dtype.name(), asked: T::DTYPE.name() });
        }
        let bytes = &self.buffer[info.range()];
        let size = std::mem::size_of::<T>();
        // Tensors start at 256-byte offsets of a page-aligned buffer.
        assert!((bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) && bytes.len().is_multiple_of(size));
        let len = bytes.len() / size;
        // SAFETY: initialised bytes borrowed from `self`, aligned for `T` and
        // a whole number of `T`s (checked above); every bit pattern is a `T`
        // (`Element` is sealed to plain numeric types).
        let values = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), len) };
        Ok(values)
    }
}

/// Load what `options` selects of the checkpoint made of `paths` into a new
/// [`HostBuffer`] (see the module docs).
pub fn host<P: AsRef<Path>>(paths: &[P], options: &LoadOptions) -> Result<Loaded<HostBuffer>, Error> {
    let plan = Checkpoint::open(paths)?.plan(options)?;
    let mut buffer = HostBuffer::new(plan.arena_bytes as usize)?;
    let report = load_into(&plan, &mut buffer, options)?;
    Ok(Loaded::new(buffer, plan, report))
}

/// Load `plan` (see [`Checkpoint::plan`]) into `dst`, host memory of yours
/// of at least `plan.arena_bytes` bytes (a [`HostBuffer`], for `O_DIRECT`
/// to DMA into it); each tensor lands at its [`TensorInfo::offset`].
pub fn load_into(plan: &Plan, dst: &mut [u8], options: &LoadOptions) -> Result<LoadReport, Error> {
    let read = read_into::host(&plan.requests, dst, &options.read)?;
    let matched = verified(plan, options.verify, |r| Ok(dst[r.dst_range().start as usize..r.dst_range().end as usize].to_vec()))?;
    Ok(report_of(plan, read, matched))
}

/// Per tensor, whether its bytes equal the file's (read back by
/// `read_back`); `None` without `verify`.
fn verified(plan: &Plan, verify: bool, read_back: impl FnMut(&ReadRequest) -> Result<Vec<u8>, Error>) -> Result<Option<Vec<bool>>, Error> {
    if !verify {
        return Ok(None);
    }
    Ok(Some(plan.per_tensor(&read_into::verify(&plan.requests, read_back)?)))
}

/// Load what `options` selects into a new `DeviceBuffer` of `ctx`'s device,
/// through slots imported into it and its copy engine.
#[cfg(feature = "vulkan")]
pub fn vulkan<P: AsRef<Path>>(paths: &[P], ctx: &Arc<gpuring_vulkan::Context>, options: &LoadOptions) -> Result<Loaded<gpuring_vulkan::DeviceBuffer>, Error> {
    let plan = Checkpoint::open(paths)?.plan(options)?;
    let mut buffer = gpuring_vulkan::DeviceBuffer::new(ctx, plan.arena_bytes.max(1))?;
    let read = read_into::vulkan(&plan.requests, &mut buffer, &options.read)?;
    let matched = verified(&plan, options.verify, |r| Ok(buffer.read(r.dst_offset, r.bytes())?))?;
    let report = report_of(&plan, read, matched);
    Ok(Loaded::new(buffer, plan, report))
}

#[cfg(feature = "vulkan")]
impl Loaded<gpuring_vulkan::DeviceBuffer> {
    /// Tensor `name` as the buffer and its byte range in it, for a
    /// descriptor or a copy of yours.
    pub fn buffer_range(&self, name: &str) -> Result<(gpuring_vulkan::ash::vk::Buffer, Range<u64>), Error> {
        let t = self.info(name)?;
        Ok((self.buffer.buffer(), t.offset..t.offset + t.bytes))
    }
}

/// Load what `options` selects into new device memory of `stream`'s
/// context, through slots mapped into it and its copy engine (on
/// `stream`); returns once every copy has finished.
#[cfg(feature = "cuda")]
pub fn cuda<P: AsRef<Path>>(
    paths: &[P],
    stream: &Arc<gpuring_cuda::cudarc::driver::CudaStream>,
    options: &LoadOptions,
) -> Result<Loaded<gpuring_cuda::cudarc::driver::CudaSlice<u8>>, Error> {
    use gpuring_cuda::CudaError;
    let plan = Checkpoint::open(paths)?.plan(options)?;
    let mut buffer = stream.alloc_zeros::<u8>(plan.arena_bytes.max(1) as usize).map_err(|error| CudaError::Call { call: "cuMemAlloc", error })?;
    let read = read_into::cuda(&plan.requests, &mut buffer, stream, &options.read)?;
    let matched = verified(&plan, options.verify, |r| {
        let window = buffer.slice(r.dst_offset as usize..(r.dst_offset + r.bytes()) as usize);
        Ok(stream.clone_dtoh(&window).map_err(|error| CudaError::Call { call: "cuMemcpyDtoH (read-back)", error })?)
    })?;
    let report = report_of(&plan, read, matched);
    Ok(Loaded::new(buffer, plan, report))
}

#[cfg(feature = "cuda")]
impl Loaded<gpuring_cuda::cudarc::driver::CudaSlice<u8>> {
    /// Tensor `name` as a view of the device memory.
    pub fn view(&self, name: &str) -> Result<gpuring_cuda::cudarc::driver::CudaView<'_, u8>, Error> {
        let t = self.info(name)?;
        Ok(self.buffer.slice(t.range()))
    }
}

/// Load what `options` selects into new device memory of `device`, through
/// slots mapped into it and its copy engine.
#[cfg(feature = "rocm")]
pub fn rocm<P: AsRef<Path>>(paths: &[P], device: &Arc<gpuring_rocm::Device>, options: &LoadOptions) -> Result<Loaded<gpuring_rocm::DeviceBuffer>, Error> {
    let plan = Checkpoint::open(paths)?.plan(options)?;
    let buffer = gpuring_rocm::DeviceBuffer::new(device, plan.arena_bytes.max(1) as usize)?;
    // SAFETY: the buffer is `arena_bytes` (or more) of `device`'s memory,
    // alive and used by nothing else for the call; gpuring's own stream.
    let read = unsafe { read_into::rocm(device, &plan.requests, buffer.as_ptr(), plan.arena_bytes, None, &options.read) }?;
    let matched = verified(&plan, options.verify, |r| Ok(buffer.read(r.dst_offset as usize, r.bytes() as usize)?))?;
    let report = report_of(&plan, read, matched);
    Ok(Loaded::new(buffer, plan, report))
}

#[cfg(feature = "rocm")]
impl Loaded<gpuring_rocm::DeviceBuffer> {
    /// Tensor `name` as a device pointer and its length in bytes.
    pub fn device_ptr(&self, name: &str) -> Result<(*mut std::ffi::c_void, usize), Error> {
        let t = self.info(name)?;
        // SAFETY: `offset + bytes <= arena_bytes`, inside the allocation.
        Ok((unsafe { self.buffer.as_ptr().cast::<u8>().add(t.offset as usize) }.cast(), t.bytes as usize))
    }
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

/// One loaded tensor, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct LoadedTensor {
    /// Where and what it is.
    #[serde(flatten)]
    pub info: TensorInfo,
    /// Whether the buffer holds exactly the file's bytes (`false` also
    /// when verification was skipped).
    #[serde(rename = "match")]
    pub matched: bool,
}

/// What a load did.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The backend.
    pub backend: &'static str,
    /// Every tensor loaded.
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

/// Load `plan` into a new buffer on `target`'s backend, verify it when
/// asked, free it, and say what happened: the command line's and the
/// bench's path on every backend.
pub fn report(plan: &Plan, target: &Target, verify: bool) -> Result<LoadReport, Error> {
    let (read, matched) = read_into::into_new_buffer(target, &plan.requests, plan.arena_bytes, verify)?;
    Ok(report_of(plan, read, matched.map(|m| plan.per_tensor(&m))))
}

fn report_of(plan: &Plan, r: ReadIntoReport, matched: Option<Vec<bool>>) -> LoadReport {
    let verify = matched.is_some();
    let matched = matched.unwrap_or_else(|| vec![false; plan.tensors.len()]);
    let tensors: Vec<LoadedTensor> = plan.tensors.iter().zip(&matched).map(|(t, &m)| LoadedTensor { info: t.clone(), matched: m }).collect();
    let mismatched: Vec<String> = tensors.iter().filter(|t| !t.matched).map(|t| t.info.name.clone()).collect();
    let files: std::collections::BTreeSet<&Path> = plan.tensors.iter().map(|t| t.file.as_path()).collect();
    LoadReport {
        backend: r.backend,
        files: files.len(),
        bytes: r.bytes,
        arena_bytes: plan.arena_bytes,
        seconds: r.seconds,
        gib_per_s: r.gib_per_s,
        telemetry: r.telemetry,
        device_copy_bytes: r.device_copy_bytes,
        zero_bounce: r.zero_bounce,
        checksum: LoadChecksum { matched: verify && mismatched.is_empty(), verified: verify, mismatched: if verify { mismatched } else { Vec::new() } },
        tensors,
    }
}
