// The bindings and push constants every gpuring Vulkan consumer sees
// (gpuring's checksum shader, and users' shaders through Shader::wgsl),
// after the io_queue contract module. See gpuring_vulkan::shader.

struct GpuringParams {
    // Position of the batch's first entry: workgroup i owns first + i.
    first: u32,
    // Entries in the batch (the dispatch's workgroup count).
    count: u32,
    // io_queue capacity (a power of two).
    capacity: u32,
    // Number of slots.
    slot_count: u32,
    // Bytes per slot (a multiple of 4096, below 2^32).
    slot_bytes: u32,
}

var<immediate> params: GpuringParams;

@group(0) @binding(0) @coherent var<storage, read_write> queue: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
// A user's shader's output (Shader::with_output); gpuring's checksum shader
// does not use it, and its pipeline does not bind it.
@group(0) @binding(2) var<storage, read_write> output: array<atomic<u32>>;

// The word in the entry for `position` (a GPURING_E_* offset).
fn gpuring_load(position: u32, field: u32) -> u32 {
    return atomicLoad(&queue[gpuring_entry_word(position, params.capacity, field)]);
}

// Store a word of the entry for `position`: its result or consumer_status.
fn gpuring_store(position: u32, field: u32, value: u32) {
    atomicStore(&queue[gpuring_entry_word(position, params.capacity, field)], value);
}
