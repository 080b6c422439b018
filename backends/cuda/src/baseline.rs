//! What `gpuring bench` compares the CUDA backend with, on the same bytes:
//!
//! - [`read_then_copy`]: what users do today: `read()` into pageable memory,
//!   then `cuMemcpyHtoD` into device memory (the driver stages pageable
//!   memory through its own pinned buffer), one slot at a time;
//! - [`pinned_copy`]: the same number of bytes copied from page-locked
//!   memory by the copy engine, slots' worth at a time on one stream: the
//!   host-to-device (PCIe) ceiling, with no file involved.

use std::ffi::c_void;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, DevicePtr};

use crate::device::{check, Device};
use crate::error::{call, CudaError};

/// Bytes moved and seconds taken.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moved {
    /// Bytes that reached device memory.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Read `path` with `read()` into a pageable buffer of `chunk` bytes and
/// copy each chunk into a device ring of `slots` chunks with `cuMemcpyHtoD`.
pub fn read_then_copy(device: &Arc<Device>, path: &Path, chunk: usize, slots: u32) -> Result<Moved, CudaError> {
    device.bind()?;
    let stream = device.ctx.default_stream();
    let ring = stream.alloc_zeros::<u8>(chunk * slots.max(1) as usize).map_err(call("cuMemAlloc"))?;
    let base = ring.device_ptr(&stream).0;
    let mut file =
        std::fs::File::open(path).map_err(|e| CudaError::Unsupported { device: path.display().to_string(), what: format!("cannot open it: {e}") })?;
    let mut buf = vec![0u8; chunk];
    let (mut bytes, mut slot) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        let n = file.read(&mut buf).map_err(|e| CudaError::Unsupported { device: path.display().to_string(), what: format!("read failed: {e}") })?;
        if n == 0 {
            break;
        }
        // SAFETY: `buf[..n]` is initialised host memory and the destination
        // is a slot of the ring, `chunk` >= n bytes long.
        check("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(base + slot * chunk as u64, buf.as_ptr().cast::<c_void>(), n) })?;
        bytes += n as u64;
        slot = (slot + 1) % slots.max(1) as u64;
    }
    Ok(Moved { bytes, seconds: start.elapsed().as_secs_f64() })
}

/// Copy `total` bytes from page-locked host memory (`slots` chunks of
/// `chunk` bytes, reused round-robin) into a device ring of the same shape
/// with asynchronous copies on one stream, then wait for them.
pub fn pinned_copy(device: &Arc<Device>, total: u64, chunk: usize, slots: u32) -> Result<Moved, CudaError> {
    device.bind()?;
    let stream = device.ctx.new_stream().map_err(call("cuStreamCreate"))?;
    let len = chunk * slots.max(1) as usize;
    let ring = stream.alloc_zeros::<u8>(len).map_err(call("cuMemAlloc"))?;
    let base = ring.device_ptr(&stream).0;
    // SAFETY: page-locked memory the copies below only read; cudarc frees it on drop.
    let host = unsafe { device.ctx.alloc_pinned::<u8>(len) }.map_err(call("cuMemHostAlloc"))?;
    let host_ptr = host.as_ptr().map_err(call("cuMemHostAlloc"))?;
    stream.synchronize().map_err(call("cuStreamSynchronize"))?;
    let start = Instant::now();
    let (mut done, mut slot) = (0u64, 0usize);
    while done < total {
        let n = (total - done).min(chunk as u64) as usize;
        let at = slot * chunk;
        // SAFETY: both ranges lie inside their allocations, which outlive
        // the stream's work (it is synchronised below before they drop).
        check("cuMemcpyHtoDAsync", unsafe { sys::cuMemcpyHtoDAsync_v2(base + at as u64, host_ptr.add(at).cast::<c_void>(), n, stream.cu_stream()) })?;
        done += n as u64;
        slot = (slot + 1) % slots.max(1) as usize;
    }
    stream.synchronize().map_err(call("cuStreamSynchronize"))?;
    Ok(Moved { bytes: total, seconds: start.elapsed().as_secs_f64() })
}
