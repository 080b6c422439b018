//! Your own compute shader as the consumer: a byte histogram of files,
//! computed on the GPU (or on Mesa's lavapipe, where there is none) by a WGSL
//! shader that follows the published io_queue contract.
//!
//!     cargo run --release --features vulkan --example vulkan_histogram -- FILE...
//!
//! gpuring reads the files into slots the device imported, dispatches the
//! shader with one workgroup per published slot, and releases each batch
//! once its fence has signalled. The shader adds its slot's bytes to a
//! 256-bin histogram in its output buffer and marks the entry consumed. The
//! last line printed is one JSON object:
//! `{"files": N, "bytes": N, "histogram": [256 counts]}`.

use std::sync::Arc;

use gpuring::core::SlotGeometry;
use gpuring::vulkan::{Shader, VulkanConsumer, VulkanStaging};

use gpuring::ConsumeOptions;

mod common;

/// The shader. `Shader::wgsl` puts the contract (`GPURING_*`,
/// `gpuring_entry_word`) and the bindings (`params`, `queue`, `slots`,
/// `output`, `gpuring_load`, `gpuring_store`) before it.
const HISTOGRAM: &str = r#"
var<workgroup> bins: array<atomic<u32>, 256>;

@compute @workgroup_size(256)
fn histogram(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    // Workgroup `group.x` owns the entry at position first + group.x.
    let position = params.first + group.x;
    let ok = gpuring_load(position, GPURING_E_SEQ) == position + 1u
        && gpuring_load(position, GPURING_E_SLOT) < params.slot_count
        && gpuring_load(position, GPURING_E_BYTES + 1u) == 0u
        && gpuring_load(position, GPURING_E_BYTES) <= params.slot_bytes;
    let read = ok && gpuring_load(position, GPURING_E_STATUS) == 0u;
    atomicStore(&bins[lane], 0u);
    workgroupBarrier();
    if read {
        let len = gpuring_load(position, GPURING_E_BYTES);
        let base = gpuring_load(position, GPURING_E_SLOT) * (params.slot_bytes / 4u);
        for (var word = lane; word * 4u < len; word += 256u) {
            let value = slots[base + word];
            for (var b = 0u; b < 4u; b++) {
                if word * 4u + b < len {
                    atomicAdd(&bins[(value >> (8u * b)) & 0xffu], 1u);
                }
            }
        }
    }
    workgroupBarrier();
    // One add per bin and workgroup into the output.
    let count = atomicLoad(&bins[lane]);
    if count != 0u {
        atomicAdd(&output[lane], count);
    }
    if lane == 0u {
        var verdict = GPURING_REJECTED;
        if read {
            verdict = GPURING_CONSUMED;
        } else if ok {
            verdict = GPURING_SKIPPED;
        }
        gpuring_store(position, GPURING_E_RESULT, 0u);
        gpuring_store(position, GPURING_E_CONSUMER_STATUS, verdict);
    }
}
"#;

fn main() -> std::process::ExitCode {
    common::exit("vulkan_histogram", run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let sources = common::sources("vulkan_histogram")?;

    // The first usable device (GPUs before CPU devices such as lavapipe),
    // 16 slots of 1 MiB imported into it, and an io_queue for every slot.
    let staging = Arc::new(VulkanStaging::new(None, SlotGeometry::new(16, 1 << 20)?, 16)?);
    let shader = Shader::wgsl(HISTOGRAM, "histogram")?.with_output(256 * 4);
    let consumer = VulkanConsumer::with_shader(staging.clone(), &shader)?;
    let device = staging.context().info().name.clone();
    // One call drives the reads, closes the queue whatever happens, and
    // finishes the consumer.
    let run = gpuring::consume::run(staging, consumer, &sources, &ConsumeOptions::default())?;
    let (stats, (consumed, output)) = (run.stats, run.output);
    eprintln!("{} files, {} bytes on {device} in {:.3} s, {} slots", sources.len(), consumed.bytes, stats.elapsed.as_secs_f64(), consumed.entries);
    common::print_output(sources.len(), consumed.bytes, &output);
    Ok(())
}
