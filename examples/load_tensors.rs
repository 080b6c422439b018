//! Load a checkpoint into host memory that stays, and look at its tensors
//! through typed views.
//!
//!     cargo run --release --example load_tensors -- model.safetensors [--rank R --world N [--dim D]]
//!
//! Prints one JSON line per tensor, in file order: `{"name", "dtype",
//! "shape", "sum"}`, where `sum` adds up its values as f64 (`null` for the
//! dtypes without a Rust type here: BOOL, the 8-, 6- and 4-bit floats,
//! C64). With `--rank` and `--world` it loads, and sums, only that rank's
//! part of each tensor.

use gpuring::load::{Dtype, Loaded, Part};
use gpuring::{HostBuffer, LoadOptions};

fn sum(model: &Loaded<HostBuffer>, name: &str, dtype: Dtype) -> Result<Option<f64>, gpuring::Error> {
    fn add<T: gpuring::load::Element>(model: &Loaded<HostBuffer>, name: &str, f: impl Fn(T) -> f64) -> Result<Option<f64>, gpuring::Error> {
        Ok(Some(model.slice::<T>(name)?.iter().map(|&x| f(x)).sum()))
    }
    match dtype {
        Dtype::F32 => add(model, name, |x: f32| x as f64),
        Dtype::F64 => add(model, name, |x: f64| x),
        Dtype::F16 => add(model, name, |x: half::f16| x.to_f64()),
        Dtype::BF16 => add(model, name, |x: half::bf16| x.to_f64()),
        Dtype::U8 => add(model, name, |x: u8| x as f64),
        Dtype::I8 => add(model, name, |x: i8| x as f64),
        Dtype::U16 => add(model, name, |x: u16| x as f64),
        Dtype::I16 => add(model, name, |x: i16| x as f64),
        Dtype::U32 => add(model, name, |x: u32| x as f64),
        Dtype::I32 => add(model, name, |x: i32| x as f64),
        Dtype::U64 => add(model, name, |x: u64| x as f64),
        Dtype::I64 => add(model, name, |x: i64| x as f64),
        _ => Ok(None),
    }
}

fn main() -> Result<(), gpuring::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<usize>().ok());
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i].starts_with("--") {
            i += 2;
        } else {
            paths.push(args[i].clone());
            i += 1;
        }
    }
    let part = flag("--rank").zip(flag("--world")).map(|(rank, world)| Part { rank, world, dim: flag("--dim").unwrap_or(0) });
    let model = gpuring::load(&paths, &LoadOptions { part, ..LoadOptions::default() })?;
    for t in model.tensors() {
        let line = serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "sum": sum(&model, &t.name, t.dtype)?});
        println!("{line}");
    }
    Ok(())
}
