// The Vulkan consumer: two compute entry points run back to back on one
// batch of published io_queue entries, positions `first .. first + count`.
//
// `checksum`: one workgroup per entry. It checks the entry (seq, slot, bytes),
// then its invocations compute the core checksum's two lane sums over
// interleaved words of the slot, reduce them in workgroup memory, and
// invocation 0 finishes the checksum and writes `result` and
// `consumer_status` into the entry.
//
// `release`: one invocation, dispatched after a pipeline barrier that makes
// the first dispatch's writes visible to it. It checks that every entry was
// accepted and that nobody moved `consumer` meanwhile; a rejected entry, or
// a batch out of step, sets `consumer_failed`. It does not store `consumer`
// itself: the host thread does, once the batch's fence has signalled, so
// the producer can only see a release after the results are host-visible
// (a device store to host memory may become visible to the host before
// the device's other stores do).
//
// A prelude that build.rs generates from gpuring-core comes first: the
// published io_queue contract (the WGSL module `gpuring header --lang wgsl`
// prints: GPURING_* word offsets, consumer statuses, gpuring_entry_word),
// then this shader's own constants (checksum multipliers, failure codes),
// so this file cannot drift from the Rust definitions.

// `params`, `queue` and `slots` are declared in bindings.wgsl, which the
// prelude includes: the layout users' shaders see too.

const WORKGROUP: u32 = 256u;
var<workgroup> part_a: array<u32, WORKGROUP>;
var<workgroup> part_b: array<u32, WORKGROUP>;

fn entry_word(position: u32, field: u32) -> u32 {
    return gpuring_entry_word(position, params.capacity, field);
}

// The full 64-bit product of two u32s, as (low, high), from 16-bit halves.
fn mul_wide(x: u32, y: u32) -> vec2<u32> {
    let x0 = x & 0xFFFFu;
    let x1 = x >> 16u;
    let y0 = y & 0xFFFFu;
    let y1 = y >> 16u;
    let p00 = x0 * y0;
    let p01 = x0 * y1;
    let p10 = x1 * y0;
    let p11 = x1 * y1;
    let mid = (p00 >> 16u) + (p01 & 0xFFFFu) + (p10 & 0xFFFFu);
    let low = (p00 & 0xFFFFu) | (mid << 16u);
    let high = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(low, high);
}

// Wrapping 64-bit multiply of (low, high) pairs.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let w = mul_wide(a.x, b.x);
    return vec2<u32>(w.x, w.y + a.x * b.y + a.y * b.x);
}

// h ^= h >> 33
fn xor_shift33(h: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(h.x ^ (h.y >> 1u), h.y);
}

// MurmurHash3's fmix64, as gpuring_core::checksum::fmix64.
fn fmix64(h0: vec2<u32>) -> vec2<u32> {
    var h = xor_shift33(h0);
    h = mul64(h, vec2<u32>(FMIX_1_LO, FMIX_1_HI));
    h = xor_shift33(h);
    h = mul64(h, vec2<u32>(FMIX_2_LO, FMIX_2_HI));
    return xor_shift33(h);
}

@compute @workgroup_size(256)
fn checksum(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let position = params.first + group.x;
    let seq = atomicLoad(&queue[entry_word(position, GPURING_E_SEQ)]);
    let slot = atomicLoad(&queue[entry_word(position, GPURING_E_SLOT)]);
    let status = atomicLoad(&queue[entry_word(position, GPURING_E_STATUS)]);
    let len = atomicLoad(&queue[entry_word(position, GPURING_E_BYTES)]);
    let len_high = atomicLoad(&queue[entry_word(position, GPURING_E_BYTES + 1u)]);
    let valid = seq == position + 1u && slot < params.slot_count && len_high == 0u && len <= params.slot_bytes;
    let checked = valid && status == 0u;

    // Every invocation takes words lid, lid + 256, ...; a final partial word
    // is zero-padded. No barrier sits inside this loop, whose trip count is
    // not uniform.
    var words = 0u;
    if checked {
        words = len / 4u + select(0u, 1u, (len & 3u) != 0u);
    }
    let tail_bits = (len & 3u) * 8u;
    let base = slot * (params.slot_bytes / 4u);
    var a = 0u;
    var b = 0u;
    for (var j = lid; j < words; j += WORKGROUP) {
        var w = slots[base + j];
        if tail_bits != 0u && j == words - 1u {
            w &= (1u << tail_bits) - 1u;
        }
        let k = j * INDEX_KEY;
        var x = (w ^ k) * MUL_A;
        x ^= x >> 13u;
        var y = (x + k) * MUL_B;
        y ^= y >> 16u;
        a += x;
        b += y;
    }
    part_a[lid] = a;
    part_b[lid] = b;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            part_a[lid] += part_a[lid + stride];
            part_b[lid] += part_b[lid + stride];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        var result = vec2<u32>(0u, 0u);
        var consumer_status = GPURING_SKIPPED;
        if !valid {
            consumer_status = GPURING_REJECTED;
        } else if checked {
            let lanes = vec2<u32>(part_a[0], part_b[0]);
            let keyed_len = mul64(vec2<u32>(len, 0u), vec2<u32>(LEN_KEY_LO, LEN_KEY_HI));
            result = fmix64(lanes ^ keyed_len);
            consumer_status = GPURING_CONSUMED;
        }
        atomicStore(&queue[entry_word(position, GPURING_E_RESULT)], result.x);
        atomicStore(&queue[entry_word(position, GPURING_E_RESULT + 1u)], result.y);
        atomicStore(&queue[entry_word(position, GPURING_E_CONSUMER_STATUS)], consumer_status);
    }
}

@compute @workgroup_size(1)
fn release() {
    var failed = 0u;
    if atomicLoad(&queue[GPURING_H_CONSUMER]) != params.first {
        failed = GPURING_FAILED_OUT_OF_STEP;
    }
    for (var i = 0u; i < params.count && failed == 0u; i++) {
        if atomicLoad(&queue[entry_word(params.first + i, GPURING_E_CONSUMER_STATUS)]) == GPURING_REJECTED {
            failed = GPURING_FAILED_REJECTED;
        }
    }
    if failed != 0u {
        atomicStore(&queue[GPURING_H_CONSUMER_FAILED], failed);
    }
}
