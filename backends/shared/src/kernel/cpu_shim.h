// The GPU built-ins for the host C++ compiler, so gpuring-host's tests can run
// consumer.cu's kernels on a machine without a GPU: every CUDA thread is a
// std::thread, a block's threads share a std::barrier (__syncthreads) and
// their GR_SHARED arrays, atomics and fences are the compiler's sequentially
// consistent ones. Blocks run one after another, or all at once for the
// persistent kernel, whose blocks wait on each other.
#include <barrier>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

struct uint4 {
    unsigned x, y, z, w;
};
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct GrBlock {
    explicit GrBlock(unsigned threads) : barrier(threads) {}
    std::barrier<> barrier;
    std::mutex lock;
    std::map<std::string, std::vector<unsigned char>> shared;
};

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
thread_local GrBlock* gr_block;

#define __global__
#define __device__
#define __forceinline__ inline
#define GR_SHARED(type, name, count) type* name = gr_shared<type>(#name, count)

template <class T>
T* gr_shared(const char* name, std::size_t count) {
    std::lock_guard<std::mutex> guard(gr_block->lock);
    auto& bytes = gr_block->shared[name];
    if (bytes.empty()) bytes.resize(sizeof(T) * count);
    return reinterpret_cast<T*>(bytes.data());
}

inline void __syncthreads() { gr_block->barrier.arrive_and_wait(); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __nanosleep(unsigned) { std::this_thread::yield(); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

// Run `kernel` on a grid of `grid` blocks of `threads` threads.
template <class F>
void gr_launch(dim3 grid, unsigned threads, bool concurrent_blocks, F kernel) {
    std::vector<std::unique_ptr<GrBlock>> blocks;
    std::vector<std::thread> running;
    auto start = [&](unsigned bx, unsigned by) {
        blocks.push_back(std::make_unique<GrBlock>(threads));
        GrBlock* block = blocks.back().get();
        for (unsigned t = 0; t < threads; t++) {
            running.emplace_back([=, &kernel] {
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{bx, by, 0};
                blockDim = dim3{threads, 1, 1};
                gridDim = grid;
                gr_block = block;
                kernel();
            });
        }
    };
    auto join = [&] {
        for (auto& t : running) t.join();
        running.clear();
    };
    for (unsigned by = 0; by < grid.y; by++) {
        for (unsigned bx = 0; bx < grid.x; bx++) {
            start(bx, by);
            if (!concurrent_blocks) join();
        }
    }
    join();
}
