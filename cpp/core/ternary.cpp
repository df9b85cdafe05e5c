// Ternary linear layers: quantize the activation rows (in parallel), then run the active ISA's
// integer dot kernel over weight rows in parallel, each weight row meeting the activation rows
// four at a time, and scale to float here, once for every ISA, so float outputs agree bit for
// bit across ISAs.
#include <algorithm>
#include <atomic>
#include <vector>

#include "codl/dispatch.h"
#include "codl/parallel.h"
#include "codl/ternary.h"

namespace codl {
namespace {

// Aim for at least this many multiply-adds per thread before waking another.
constexpr std::size_t kMinMacsPerThread = 1 << 18;

std::size_t min_rows(std::size_t macs_per_row) {
    return std::max<std::size_t>(1, kMinMacsPerThread / std::max<std::size_t>(macs_per_row, 1));
}

// Scratch for quantized activations, kept per calling thread so that steady-state calls do not
// allocate.
struct Scratch {
    std::vector<std::int8_t> q;
    std::vector<float> scales;
    std::vector<std::int32_t> sums;
};

Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
}

// Weight rows [begin, end) against all activation rows, in tiles small enough for the L1 cache
// (a tile of weight rows is reused by every activation chunk): sink(i, j, dot).
template <typename Sink>
void gemm_rows(const TernaryKernels& kernels, const std::int8_t* a, std::size_t m,
               std::size_t k_padded, const std::int32_t* sums, const std::uint8_t* w,
               std::size_t begin, std::size_t end, Sink sink) {
    constexpr std::size_t kWeightTile = 16, kActivationTile = 64;
    std::int32_t dots[kActivationTile * kWeightTile];
    for (std::size_t j = begin; j < end; j += kWeightTile) {
        const std::size_t columns = std::min(kWeightTile, end - j);
        for (std::size_t i = 0; i < m; i += kActivationTile) {
            const std::size_t rows = std::min(kActivationTile, m - i);
            kernels.dot_i8_t2(a + i * k_padded, rows, k_padded, sums + i, w + j * (k_padded / 4),
                              columns, dots, kWeightTile);
            for (std::size_t r = 0; r < rows; ++r) {
                for (std::size_t c = 0; c < columns; ++c) sink(i + r, j + c, dots[r * kWeightTile + c]);
            }
        }
    }
}

}  // namespace

bool ternary_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                        const float* alpha, std::size_t n, const float* bias, float* y,
                        int num_threads) {
    const TernaryKernels& kernels = *active_table().ternary;
    const std::size_t k_padded = ternary_padded_k(k);
    Scratch& s = scratch();
    s.q.resize(m * k_padded);
    s.scales.resize(m);
    s.sums.resize(m);
    std::atomic<bool> finite{true};
    parallel_for(m, 1, min_rows(k), num_threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) {
            if (!kernels.quantize_row_i8(x + i * k, k, k_padded, s.q.data() + i * k_padded,
                                         &s.scales[i], &s.sums[i])) {
                finite.store(false, std::memory_order_relaxed);
            }
        }
    });
    if (!finite.load()) return false;
    const float* scales = s.scales.data();
    parallel_for(n, 1, min_rows(k_padded * m), num_threads, [&](std::size_t begin, std::size_t end) {
        gemm_rows(kernels, s.q.data(), m, k_padded, s.sums.data(), w, begin, end,
                  [&](std::size_t i, std::size_t j, std::int32_t dot) {
                      const float value = static_cast<float>(dot) * (scales[i] * alpha[j]);
                      y[i * n + j] = bias ? value + bias[j] : value;
                  });
    });
    return true;
}

void ternary_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_padded,
                      const std::uint8_t* w, std::size_t n, std::int32_t* out, int num_threads) {
    const TernaryKernels& kernels = *active_table().ternary;
    std::vector<std::int32_t> sums(m);
    for (std::size_t i = 0; i < m; ++i) {
        std::int32_t total = 0;
        for (std::size_t c = 0; c < k_padded; ++c) total += a[i * k_padded + c];
        sums[i] = total;
    }
    parallel_for(n, 1, min_rows(k_padded * m), num_threads, [&](std::size_t begin, std::size_t end) {
        gemm_rows(kernels, a, m, k_padded, sums.data(), w, begin, end,
                  [&](std::size_t i, std::size_t j, std::int32_t dot) { out[i * n + j] = dot; });
    });
}

}  // namespace codl
