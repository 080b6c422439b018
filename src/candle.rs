//! candle tensors straight from storage (Cargo feature `candle`).
//!
//! [`load`] has the contract of `candle_core::safetensors::load` (a map from
//! every tensor's name to a `Tensor` on the device asked for, in the dtype
//! of the file), over one or more safetensors files or a sharded
//! checkpoint's index; [`load_with`] takes [`LoadOptions`] too, for a
//! selection of tensors and a tensor-parallel [`Part`](crate::load::Part);
//! [`var_builder`] hands the map to candle-nn's `VarBuilder`, which model
//! code loads from.
//!
//! ```no_run
//! use candle_core::Device;
//!
//! let tensors = gpuring::candle::load(&["model.safetensors"], &Device::Cpu)?;
//! let embeddings = &tensors["embeddings.word_embeddings.weight"];
//! println!("{:?}", embeddings.shape());
//! # Ok::<(), gpuring::Error>(())
//! ```
//!
//! Where the bytes go, and where a copy remains:
//!
//! - On the CPU, candle's storage of a tensor is a `Vec<T>` of its own, and
//!   `Tensor::from_vec` takes that `Vec` as it is. gpuring allocates each
//!   tensor's `Vec`, reads every tensor into its `Vec` in one scatter read
//!   ([`read_into::host_many`](crate::read_into::host_many)), and hands
//!   them over: no byte is copied in userspace (the kernel copies from the
//!   page cache, as for any buffered read). candle's own loader reads the
//!   whole file into one buffer, then copies every tensor out of it.
//! - Under `O_DIRECT` (`options.read.direct`) the `Vec`s are not
//!   page-aligned, so their bytes go through a scratch buffer and a copy,
//!   counted as `bounce`.
//! - Dtypes candle holds in a different type are converted as candle's
//!   loader converts them (`U16` widened to `U32`), a copy; the dtypes
//!   without a Rust element type (`F8_E4M3`, the 6- and 4-bit floats,
//!   `F8_E8M0`) are handed to candle's own conversion from the bytes
//!   gpuring read, also a copy. `BOOL` and `I8` are refused, as candle's
//!   loader refuses them.
//! - On another device than the CPU, each tensor is made on the CPU as
//!   above and moved with `Tensor::to_device`: candle's host-to-device
//!   copy. Reading straight into device memory (`CudaStorage::
//!   wrap_cuda_slice`) needs candle's `cuda` feature, whose kernels are
//!   compiled by `nvcc` when candle is built; gpuring does not enable it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::load::{Checkpoint, Dtype, LoadOptions, Plan, TensorInfo};
use crate::{Error, ReadRequest};

/// Every tensor of the checkpoint made of `paths`, on `device`, by name:
/// `candle_core::safetensors::load`'s contract, read by gpuring.
pub fn load<P: AsRef<Path>>(paths: &[P], device: &Device) -> Result<HashMap<String, Tensor>, Error> {
    load_with(paths, device, &LoadOptions::default())
}

/// As [`load`], with a selection of tensors, a rank's part of each, and
/// how to read ([`LoadOptions`]); with `options.verify`, every tensor's
/// bytes are compared with an independent read before they are handed over.
pub fn load_with<P: AsRef<Path>>(paths: &[P], device: &Device, options: &LoadOptions) -> Result<HashMap<String, Tensor>, Error> {
    let plan = Checkpoint::open(paths)?.plan(options)?;
    let mut storage: Vec<Storage> = plan.tensors.iter().map(Storage::new).collect::<Result<_, _>>()?;
    let requests = scatter(&plan);
    {
        let mut dsts: Vec<&mut [u8]> = storage.iter_mut().map(Storage::bytes_mut).collect();
        crate::read_into::host_many(&requests, &mut dsts, &options.read)?;
        if options.verify {
            let matched = crate::read_into::verify(&requests, |r| Ok(dsts[r.dst][r.dst_range().start as usize..r.dst_range().end as usize].to_vec()))?;
            if let Some(at) = matched.iter().position(|&m| !m) {
                return Err(Error::Mismatch { what: format!("tensor {}", plan.tensors[requests[at].dst].name) });
            }
        }
    }
    let mut tensors = HashMap::with_capacity(plan.tensors.len());
    for (info, storage) in plan.tensors.iter().zip(storage) {
        let tensor = storage.into_tensor(info)?;
        let tensor = if device.is_cpu() { tensor } else { tensor.to_device(device).map_err(|e| candle_error(&info.name, e))? };
        tensors.insert(info.name.clone(), tensor);
    }
    Ok(tensors)
}

/// A `VarBuilder` over every tensor of the checkpoint, for candle-nn model
/// code (`BertModel::load(vb, &config)`); `dtype` is the one the model
/// asks its tensors in (each is converted on use when it differs).
pub fn var_builder<P: AsRef<Path>>(paths: &[P], dtype: DType, device: &Device) -> Result<candle_nn::VarBuilder<'static>, Error> {
    Ok(candle_nn::VarBuilder::from_tensors(load(paths, device)?, dtype, device))
}

/// `plan`'s requests, each into its own tensor's destination (the tensor's
/// index) at the same place within the tensor.
fn scatter(plan: &Plan) -> Vec<ReadRequest> {
    let mut requests = Vec::with_capacity(plan.requests.len());
    for (i, t) in plan.tensors.iter().enumerate() {
        for r in &plan.requests[t.requests()] {
            requests.push(ReadRequest::new(&r.path, r.range.clone(), r.dst_offset - t.offset).to_destination(i));
        }
    }
    requests
}

/// One tensor's memory before candle takes it: the `Vec` of its element
/// type, or bytes for the dtypes candle converts.
enum Storage {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Other(Vec<u8>),
}

/// `v`'s elements as bytes.
fn bytes_of<T: crate::load::Element>(v: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(v);
    // SAFETY: `T` is a plain numeric type (`Element` is sealed to them):
    // no padding, every byte pattern valid; the slice covers exactly `v`'s
    // elements and borrows `v` mutably for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}

impl Storage {
    fn new(t: &TensorInfo) -> Result<Self, Error> {
        let n: usize = t.shape.iter().product();
        Ok(match t.dtype {
            Dtype::U8 => Self::U8(vec![0; n]),
            Dtype::U16 => Self::U16(vec![0; n]),
            Dtype::U32 => Self::U32(vec![0; n]),
            Dtype::I16 => Self::I16(vec![0; n]),
            Dtype::I32 => Self::I32(vec![0; n]),
            Dtype::I64 => Self::I64(vec![0; n]),
            Dtype::F16 => Self::F16(vec![half::f16::ZERO; n]),
            Dtype::BF16 => Self::BF16(vec![half::bf16::ZERO; n]),
            Dtype::F32 => Self::F32(vec![0.0; n]),
            Dtype::F64 => Self::F64(vec![0.0; n]),
            Dtype::F8E4M3 | Dtype::F6E2M3 | Dtype::F6E3M2 | Dtype::F4 | Dtype::F8E8M0 => Self::Other(vec![0; t.bytes as usize]),
            other => {
                return Err(Error::BadOption {
                    what: format!("tensor {}: candle has no dtype for {other}", t.name),
                    fix: "leave the tensor out of the selection (LoadOptions::select), or load it with gpuring::load as bytes",
                })
            }
        })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Self::U8(v) | Self::Other(v) => v,
            Self::U16(v) => bytes_of(v),
            Self::U32(v) => bytes_of(v),
            Self::I16(v) => bytes_of(v),
            Self::I32(v) => bytes_of(v),
            Self::I64(v) => bytes_of(v),
            Self::F16(v) => bytes_of(v),
            Self::BF16(v) => bytes_of(v),
            Self::F32(v) => bytes_of(v),
            Self::F64(v) => bytes_of(v),
        }
    }

    /// The tensor on the CPU, owning this storage where candle can.
    fn into_tensor(self, t: &TensorInfo) -> Result<Tensor, Error> {
        let shape = t.shape.as_slice();
        let cpu = &Device::Cpu;
        let made = match self {
            Self::U8(v) => Tensor::from_vec(v, shape, cpu),
            // candle has no u16: widened, as its own loader does.
            Self::U16(v) => Tensor::from_vec(v.into_iter().map(u32::from).collect::<Vec<_>>(), shape, cpu),
            Self::U32(v) => Tensor::from_vec(v, shape, cpu),
            Self::I16(v) => Tensor::from_vec(v, shape, cpu),
            Self::I32(v) => Tensor::from_vec(v, shape, cpu),
            Self::I64(v) => Tensor::from_vec(v, shape, cpu),
            Self::F16(v) => Tensor::from_vec(v, shape, cpu),
            Self::BF16(v) => Tensor::from_vec(v, shape, cpu),
            Self::F32(v) => Tensor::from_vec(v, shape, cpu),
            Self::F64(v) => Tensor::from_vec(v, shape, cpu),
            Self::Other(bytes) => {
                use candle_core::safetensors::Load;
                let dtype = match t.dtype {
                    Dtype::F8E4M3 => safetensors::Dtype::F8_E4M3,
                    Dtype::F6E2M3 => safetensors::Dtype::F6_E2M3,
                    Dtype::F6E3M2 => safetensors::Dtype::F6_E3M2,
                    Dtype::F4 => safetensors::Dtype::F4,
                    _ => safetensors::Dtype::F8_E8M0,
                };
                let view = safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &bytes).map_err(|e| Error::BadOption {
                    what: format!("tensor {}: {e}", t.name),
                    fix: "the checkpoint's header and data disagree: write it again",
                })?;
                view.load(cpu)
            }
        };
        made.map_err(|e| candle_error(&t.name, e))
    }
}

fn candle_error(name: &str, e: candle_core::Error) -> Error {
    Error::Framework { what: format!("candle refused tensor {name}: {e}") }
}
