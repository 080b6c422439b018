// gpuring's GPU consumer, compiled at run time by NVRTC (gpuring-cuda) and
// by hiprtc (gpuring-rocm): the source is in the dialect the two share.
//
// A prelude generated from gpuring-core (gpuring-host's kernel.rs) comes
// first: the published io_queue contract (the C header `gpuring header
// --lang c` prints: layout as GPURING_* byte offsets, consumer statuses),
// then this kernel's own constants: the checksum's multipliers, its
// failure codes, GR_THREADS, the block size every
// kernel here is launched with, and GR_SLEEP(), a short back-off in a
// polling loop (__nanosleep on CUDA, s_sleep on AMD GPUs).
// The same text is compiled by the host C++ compiler in the crate's tests,
// with CUDA's built-ins emulated by CPU threads, so its logic is checked on
// machines without a GPU.
//
// Memory ordering. The io_queue lives in page-locked host memory mapped into
// the device, and the other party is the CPU, so every protocol word is read
// and written with system scope: a volatile access plus __threadfence_system()
// (a fence.sc.sys on NVIDIA, a system-scope fence on AMD, where volatile
// accesses also bypass the GPU's caches), before a store (release) or after
// a load (acquire).
//
// Kernels:
// - gr_partial + gr_finish, the batched consumer: entries first .. first+count.
//   gr_partial runs a grid of (chunks, count) blocks; each block sums its
//   chunk of one slot into the checksum's two lanes and adds them into
//   scratch[2 * (position % capacity)]. gr_finish (one block, launched after
//   it on the same stream) turns each entry's lanes into the checksum, writes
//   result and consumer_status, resets the scratch, and releases the batch
//   with one store of `consumer`, or sets `consumer_failed`.
// - gr_persistent, the persistent consumer: one launch for the whole run.
//   Block 0 is the releaser; every other block claims positions one after the
//   other from control[0], waits until the host has published the claimed
//   entry, checksums the slot, and marks done[position % capacity] =
//   position + 1. The releaser advances `consumer` over every entry done in
//   order. They all return once the queue is closed and every entry is
//   released, the queue failed, or the host sets *abort. control[1] counts
//   skipped entries and the u64 at control[2] checksummed bytes. The host
//   starts control[0] at the queue's `consumer` position and every done mark
//   at that same value, which is no entry's position + 1 in the first lap
//   (zero would be, for the entry at 2^32 - 1). Positions wrap at 2^32:
//   they are compared only as wrapping differences.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#ifndef GR_SHARED
#define GR_SHARED(type, name, count) __shared__ type name[count]
#endif

__device__ __forceinline__ volatile u32* gr_word(u8* queue, u64 byte) {
    return (volatile u32*)(queue + byte);
}

__device__ __forceinline__ u32 gr_load_acquire(u8* queue, u64 byte) {
    u32 value = *gr_word(queue, byte);
    __threadfence_system();
    return value;
}

__device__ __forceinline__ void gr_store_release(u8* queue, u64 byte, u32 value) {
    __threadfence_system();
    *gr_word(queue, byte) = value;
}

__device__ __forceinline__ u64 gr_entry(u32 position, u32 capacity) {
    return (u64)GPURING_HEADER_BYTES + (u64)(position & (capacity - 1u)) * (u64)GPURING_ENTRY_BYTES;
}

// What the consumer needs of one published entry.
struct GrEntry {
    u32 valid;   // seq, slot and length are within the protocol
    u32 status;  // the read's status (0: bytes to checksum)
    u32 slot;
    u32 len;
};

__device__ GrEntry gr_read_entry(u8* queue, u32 position, u32 capacity, u32 slot_count, u32 slot_bytes) {
    u64 e = gr_entry(position, capacity);
    GrEntry out;
    u32 seq = gr_load_acquire(queue, e + GPURING_E_SEQ);
    out.slot = *gr_word(queue, e + GPURING_E_SLOT);
    out.status = *gr_word(queue, e + GPURING_E_STATUS);
    out.len = *gr_word(queue, e + GPURING_E_BYTES);
    u32 len_high = *gr_word(queue, e + GPURING_E_BYTES + 4u);
    out.valid = seq == position + 1u && out.slot < slot_count && len_high == 0u && out.len <= slot_bytes;
    return out;
}

// gr_read_entry done once per block, by thread 0, and shared: the entry is
// in host memory across PCIe. Every thread of the block must call it.
__device__ GrEntry gr_block_entry(u8* queue, u32 position, u32 capacity, u32 slot_count, u32 slot_bytes) {
    GR_SHARED(u32, entry_words, 4);
    if (threadIdx.x == 0u) {
        GrEntry e = gr_read_entry(queue, position, capacity, slot_count, slot_bytes);
        entry_words[0] = e.valid;
        entry_words[1] = e.status;
        entry_words[2] = e.slot;
        entry_words[3] = e.len;
    }
    __syncthreads();
    GrEntry out;
    out.valid = entry_words[0];
    out.status = entry_words[1];
    out.slot = entry_words[2];
    out.len = entry_words[3];
    // No thread may see the words of a later call.
    __syncthreads();
    return out;
}

__device__ __forceinline__ void gr_mix(u32 w, u32 j, u32& a, u32& b) {
    u32 k = j * GR_INDEX_KEY;
    u32 x = (w ^ k) * GR_MUL_A;
    x ^= x >> 13;
    u32 y = (x + k) * GR_MUL_B;
    y ^= y >> 16;
    a += x;
    b += y;
}

// This thread's share of the lanes of words [begin, end) of a slot holding
// `len` bytes: 16-byte loads, quad q = begin/4 + tid, + threads, ...; words at
// or past the length contribute nothing and the last partial word is
// zero-padded. `begin` is a multiple of 4 words, and the slot (page-aligned,
// a whole number of pages long) holds every quad touched.
__device__ void gr_lanes(const u8* slot, u32 len, u32 begin, u32 end, u32 tid, u32 threads, u32& a, u32& b) {
    u32 words = len / 4u + ((len & 3u) != 0u ? 1u : 0u);
    if (end > words) end = words;
    u32 tail_bits = (len & 3u) * 8u;
    const uint4* quads = (const uint4*)slot;
    for (u32 q = begin / 4u + tid; q * 4u < end; q += threads) {
        uint4 v = quads[q];
        u32 w[4] = {v.x, v.y, v.z, v.w};
        for (u32 i = 0; i < 4u; i++) {
            u32 j = q * 4u + i;
            if (j >= end) break;
            u32 word = w[i];
            if (tail_bits != 0u && j == words - 1u) word &= (1u << tail_bits) - 1u;
            gr_mix(word, j, a, b);
        }
    }
}

// Sum (a, b) over the block; every thread must call it; thread 0 gets the totals.
__device__ void gr_block_sum(u32& a, u32& b) {
    GR_SHARED(u32, sum_a, GR_THREADS);
    GR_SHARED(u32, sum_b, GR_THREADS);
    u32 tid = threadIdx.x;
    sum_a[tid] = a;
    sum_b[tid] = b;
    __syncthreads();
    for (u32 stride = GR_THREADS / 2u; stride > 0u; stride >>= 1) {
        if (tid < stride) {
            sum_a[tid] += sum_a[tid + stride];
            sum_b[tid] += sum_b[tid + stride];
        }
        __syncthreads();
    }
    a = sum_a[0];
    b = sum_b[0];
    __syncthreads();
}

__device__ __forceinline__ u64 gr_fmix64(u64 h) {
    h ^= h >> 33;
    h *= GR_FMIX_1;
    h ^= h >> 33;
    h *= GR_FMIX_2;
    h ^= h >> 33;
    return h;
}

__device__ __forceinline__ u64 gr_finish_lanes(u32 a, u32 b, u32 len) {
    return gr_fmix64((((u64)b << 32) | (u64)a) ^ ((u64)len * GR_LEN_KEY));
}

__device__ __forceinline__ void gr_write_result(u8* queue, u64 e, u64 result, u32 consumer_status) {
    *gr_word(queue, e + GPURING_E_RESULT) = (u32)result;
    *gr_word(queue, e + GPURING_E_RESULT + 4u) = (u32)(result >> 32);
    *gr_word(queue, e + GPURING_E_CONSUMER_STATUS) = consumer_status;
}

extern "C" __global__ void gr_partial(u8* queue, const u8* slots, u32* scratch, u32 first, u32 capacity, u32 slot_count, u32 slot_bytes,
                                      u32 chunk_words) {
    u32 position = first + blockIdx.y;
    GrEntry entry = gr_block_entry(queue, position, capacity, slot_count, slot_bytes);
    u32 begin = blockIdx.x * chunk_words;
    // The same answer in every thread of the block, so returning is uniform.
    if (!entry.valid || entry.status != 0u || begin * 4u >= entry.len) return;
    u32 a = 0u, b = 0u;
    gr_lanes(slots + (u64)entry.slot * slot_bytes, entry.len, begin, begin + chunk_words, threadIdx.x, GR_THREADS, a, b);
    gr_block_sum(a, b);
    if (threadIdx.x == 0u) {
        u32 at = 2u * (position & (capacity - 1u));
        atomicAdd(&scratch[at], a);
        atomicAdd(&scratch[at + 1u], b);
    }
}

extern "C" __global__ void gr_finish(u8* queue, u32* scratch, u32 first, u32 count, u32 capacity, u32 slot_count, u32 slot_bytes) {
    GR_SHARED(u32, rejected, 1);
    if (threadIdx.x == 0u) rejected[0] = 0u;
    __syncthreads();
    for (u32 i = threadIdx.x; i < count; i += GR_THREADS) {
        u32 position = first + i;
        GrEntry entry = gr_read_entry(queue, position, capacity, slot_count, slot_bytes);
        u32 at = 2u * (position & (capacity - 1u));
        u32 a = scratch[at], b = scratch[at + 1u];
        scratch[at] = 0u;
        scratch[at + 1u] = 0u;
        u64 result = 0u;
        u32 consumer_status = GPURING_SKIPPED;
        if (!entry.valid) {
            consumer_status = GPURING_REJECTED;
            atomicAdd(&rejected[0], 1u);
        } else if (entry.status == 0u) {
            result = gr_finish_lanes(a, b, entry.len);
            consumer_status = GPURING_CONSUMED;
        }
        gr_write_result(queue, gr_entry(position, capacity), result, consumer_status);
    }
    // Every thread's results are ordered before the release below.
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0u) {
        u32 failed = 0u;
        if (gr_load_acquire(queue, GPURING_H_CONSUMER) != first) {
            failed = GPURING_FAILED_OUT_OF_STEP;
        } else if (rejected[0] != 0u) {
            failed = GPURING_FAILED_REJECTED;
        }
        if (failed == 0u) {
            gr_store_release(queue, GPURING_H_CONSUMER, first + count);
        } else {
            gr_store_release(queue, GPURING_H_CONSUMER_FAILED, failed);
        }
    }
}

// Nonzero once the persistent consumer must stop: the host asked it to, or
// the queue failed.
__device__ __forceinline__ u32 gr_stopping(u8* queue, volatile u32* abort_flag) {
    return *abort_flag != 0u || gr_load_acquire(queue, GPURING_H_CONSUMER_FAILED) != 0u;
}

__device__ void gr_release_loop(u8* queue, volatile u32* done, volatile u32* abort_flag, u32 capacity) {
    u32 released = gr_load_acquire(queue, GPURING_H_CONSUMER);
    for (;;) {
        u32 next = released;
        u32 failed = 0u;
        while (done[next & (capacity - 1u)] == next + 1u) {
            // The worker's result writes are ordered before its done mark.
            __threadfence_system();
            if (*gr_word(queue, gr_entry(next, capacity) + GPURING_E_CONSUMER_STATUS) == GPURING_REJECTED) {
                failed = GPURING_FAILED_REJECTED;
                break;
            }
            next++;
        }
        if (next != released) {
            released = next;
            gr_store_release(queue, GPURING_H_CONSUMER, released);
        }
        if (failed != 0u) {
            gr_store_release(queue, GPURING_H_CONSUMER_FAILED, failed);
            return;
        }
        if (gr_load_acquire(queue, GPURING_H_CLOSED) != 0u && gr_load_acquire(queue, GPURING_H_PRODUCER) == released) return;
        if (gr_stopping(queue, abort_flag)) return;
        GR_SLEEP();
    }
}

extern "C" __global__ void gr_persistent(u8* queue, const u8* slots, u32* control, u32* done, u32* abort_flag, u32 capacity, u32 slot_count,
                                         u32 slot_bytes) {
    if (blockIdx.x == 0u) {
        if (threadIdx.x == 0u) gr_release_loop(queue, done, abort_flag, capacity);
        return;
    }
    GR_SHARED(u32, claim, 2);
    for (;;) {
        if (threadIdx.x == 0u) {
            u32 position = atomicAdd(&control[0], 1u);
            u32 go = 0u;
            for (;;) {
                if ((int)(gr_load_acquire(queue, GPURING_H_PRODUCER) - position) > 0) {
                    go = 1u;
                    break;
                }
                if (gr_load_acquire(queue, GPURING_H_CLOSED) != 0u) {
                    // `producer` is final once `closed` is seen.
                    go = (int)(gr_load_acquire(queue, GPURING_H_PRODUCER) - position) > 0 ? 1u : 0u;
                    break;
                }
                if (gr_stopping(queue, abort_flag)) break;
                GR_SLEEP();
            }
            claim[0] = position;
            claim[1] = go;
        }
        __syncthreads();
        u32 position = claim[0];
        if (claim[1] == 0u) return;
        GrEntry entry = gr_block_entry(queue, position, capacity, slot_count, slot_bytes);
        u32 a = 0u, b = 0u;
        u32 len = entry.valid && entry.status == 0u ? entry.len : 0u;
        gr_lanes(slots + (u64)entry.slot * slot_bytes, len, 0u, len / 4u + 1u, threadIdx.x, GR_THREADS, a, b);
        gr_block_sum(a, b);
        if (threadIdx.x == 0u) {
            u64 result = 0u;
            u32 consumer_status = GPURING_SKIPPED;
            if (!entry.valid) {
                consumer_status = GPURING_REJECTED;
            } else if (entry.status == 0u) {
                result = gr_finish_lanes(a, b, entry.len);
                consumer_status = GPURING_CONSUMED;
                atomicAdd((u64*)&control[2], (u64)entry.len);
            } else {
                atomicAdd(&control[1], 1u);
            }
            gr_write_result(queue, gr_entry(position, capacity), result, consumer_status);
            __threadfence_system();
            ((volatile u32*)done)[position & (capacity - 1u)] = position + 1u;
        }
        // `claim` is rewritten by the next round only after every thread read it.
        __syncthreads();
    }
}
