// The byte histogram as a CUDA kernel of a user's, following gpuring's
// published io_queue contract (`gpuring header --lang c`, which
// UserKernel puts before this source: GPURING_* offsets and statuses,
// GPURING_ENTRY_OFFSET). gpuring launches it once per batch of published
// entries, one block of 256 threads per entry; `output` holds 256 counts.

__device__ unsigned int gpuring_u32(const unsigned char* queue, unsigned long long byte) {
    return *(const volatile unsigned int*)(queue + byte);
}

extern "C" __global__ void histogram(unsigned char* queue, const unsigned char* slots, unsigned int first, unsigned int count,
                                     unsigned int capacity, unsigned int slot_count, unsigned int slot_bytes, unsigned char* output) {
    __shared__ unsigned int bins[256];
    // Block i owns the entry at position first + i (positions wrap at 2^32).
    unsigned int position = first + blockIdx.x;
    unsigned long long entry = GPURING_ENTRY_OFFSET(position, capacity);
    unsigned int slot = gpuring_u32(queue, entry + GPURING_E_SLOT);
    unsigned int len = gpuring_u32(queue, entry + GPURING_E_BYTES);
    bool ok = gpuring_u32(queue, entry + GPURING_E_SEQ) == position + 1u && slot < slot_count
              && gpuring_u32(queue, entry + GPURING_E_BYTES + 4u) == 0u && len <= slot_bytes;
    bool read = ok && gpuring_u32(queue, entry + GPURING_E_STATUS) == 0u;
    bins[threadIdx.x] = 0u;
    __syncthreads();
    if (read) {
        const unsigned char* bytes = slots + (unsigned long long)slot * slot_bytes;
        for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) {
            atomicAdd(&bins[bytes[i]], 1u);
        }
    }
    __syncthreads();
    // One add per bin and block into the output.
    if (bins[threadIdx.x] != 0u) {
        atomicAdd((unsigned int*)output + threadIdx.x, bins[threadIdx.x]);
    }
    if (threadIdx.x == 0u) {
        unsigned int verdict = read ? GPURING_CONSUMED : (ok ? GPURING_SKIPPED : GPURING_REJECTED);
        *(volatile unsigned int*)(queue + entry + GPURING_E_RESULT) = 0u;
        *(volatile unsigned int*)(queue + entry + GPURING_E_RESULT + 4u) = 0u;
        // The host reads the verdict after the launch; the fence orders the
        // result before it across PCIe.
        __threadfence_system();
        *(volatile unsigned int*)(queue + entry + GPURING_E_CONSUMER_STATUS) = verdict;
    }
}
