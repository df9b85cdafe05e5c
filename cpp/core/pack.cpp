// Public packing entry points: split the array into thread chunks that start on block
// boundaries (so each chunk packs exactly as the whole would), and run the active ISA's kernel.
#include <atomic>

#include "codl/dispatch.h"
#include "codl/pack.h"
#include "codl/parallel.h"

namespace codl {
namespace {

// Chunk starts must be multiples of 8 values (signs), 128 (ternary2) and 160 (ternary3).
constexpr std::size_t kChunkAlign = 640;
// Below this a thread's wake-up costs more than the copy it would share.
constexpr std::size_t kMinValuesPerThread = 1 << 16;

// Runs kernel(begin, end) over chunks and reports whether every chunk was valid.
template <typename Kernel>
bool run_chunks(std::size_t n, int num_threads, Kernel kernel) {
    std::atomic<bool> valid{true};
    parallel_for(n, kChunkAlign, kMinValuesPerThread, num_threads,
                 [&](std::size_t begin, std::size_t end) {
                     if (!kernel(begin, end)) valid.store(false, std::memory_order_relaxed);
                 });
    return valid.load();
}

const PackKernels& kernels() { return *active_table().pack; }

}  // namespace

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits, int num_threads) {
    run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        kernels().pack_signs_f32(x + b, e - b, bits + b / 8);
        return true;
    });
}

void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out, int num_threads) {
    run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        kernels().unpack_signs_f32(bits + b / 8, e - b, out + b);
        return true;
    });
}

bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed, int num_threads) {
    return run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().pack_ternary2(codes + b, e - b, packed + b / 4);
    });
}

bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads) {
    return run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().unpack_ternary2(packed + b / 4, e - b, codes + b);
    });
}

bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed, int num_threads) {
    return run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().pack_ternary3(codes + b, e - b, packed + b / 5);
    });
}

void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads) {
    run_chunks(n, num_threads, [&](std::size_t b, std::size_t e) {
        kernels().unpack_ternary3(packed + b / 5, e - b, codes + b);
        return true;
    });
}

}  // namespace codl
