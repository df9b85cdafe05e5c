// Ternary linear layers: quantize the activation rows, then run the active ISA's integer dot
// kernel over weight rows, both in one parallel region, each weight row meeting the activation
// rows four at a time, and scale to float here, once for every ISA, so float outputs agree bit
// for bit across ISAs. The base-3 path is the same with the ternary3 dot kernel; the float-activation
// path skips quantization and sums in float32, so there ISAs differ by the order of additions.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
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

// Scratch for quantized (or zero-padded float) activations, kept per calling thread so that
// steady-state calls do not allocate.
struct Scratch {
    std::vector<std::int8_t> q;
    std::vector<float> scales;
    std::vector<std::int32_t> sums;
    std::vector<float> padded;
};

Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
}

// Weight rows [begin, end) against all activation rows, in tiles small enough for the L1 cache
// (a tile of weight rows is reused by every activation chunk): tile(i, rows, j, columns, dots)
// fills dots[r * kWeightTile + c], then sink(i, j, dot) takes each.
constexpr std::size_t kWeightTile = 16, kActivationTile = 64;

template <typename Dot, typename Tile, typename Sink>
void gemm_rows(std::size_t m, std::size_t begin, std::size_t end, Tile tile, Sink sink) {
    Dot dots[kActivationTile * kWeightTile];
    for (std::size_t j = begin; j < end; j += kWeightTile) {
        const std::size_t columns = std::min(kWeightTile, end - j);
        for (std::size_t i = 0; i < m; i += kActivationTile) {
            const std::size_t rows = std::min(kActivationTile, m - i);
            tile(i, rows, j, columns, dots);
            for (std::size_t r = 0; r < rows; ++r) {
                for (std::size_t c = 0; c < columns; ++c) sink(i + r, j + c, dots[r * kWeightTile + c]);
            }
        }
    }
}

using IntegerDot = void (*)(const std::int8_t*, std::size_t, std::size_t, const std::int32_t*,
                            const std::uint8_t*, std::size_t, std::int32_t*, std::size_t);

// Quantize the activation rows to int8 (rows of k_padded values), run `dot` over weight rows of
// k_padded / values_per_byte bytes, and scale to float.
bool quantized_linear(const float* x, std::size_t m, std::size_t k, std::size_t k_padded,
                      std::size_t values_per_byte, IntegerDot dot, const std::uint8_t* w,
                      const float* alpha, std::size_t n, const float* bias, float* y,
                      int num_threads) {
    const TernaryKernels& kernels = *active_table().ternary;
    Scratch& s = scratch();
    s.q.resize(m * k_padded);
    s.scales.resize(m);
    s.sums.resize(m);
    // Quantization in up to q_parts row blocks and the GEMM in up to g_parts weight-row blocks,
    // each as many as a parallel_for of its own would make, run in one parallel region: a
    // region costs a hand-off to the workers (and, under contention, a wait for them), which at
    // small layers is more than either step. Every chunk of the region first helps quantize
    // (claiming blocks until none is left), then waits for the blocks other threads claimed,
    // then runs its share of the GEMM; run serially, the first chunk quantizes every block.
    // Each row is quantized and each output computed the same way whatever the split, so the
    // floats do not depend on num_threads.
    const std::size_t threads = static_cast<std::size_t>(std::max(num_threads, 1));
    const std::size_t q_parts = std::min(threads, std::max<std::size_t>(m / min_rows(k), 1));
    const std::size_t g_parts = std::min(threads, std::max<std::size_t>(n / min_rows(k_padded * m), 1));
    const std::size_t q_per = (m + q_parts - 1) / q_parts, g_per = (n + g_parts - 1) / g_parts;
    const std::size_t q_blocks = (m + q_per - 1) / q_per, g_blocks = (n + g_per - 1) / g_per;
    const std::size_t row_bytes = k_padded / values_per_byte;
    std::atomic<bool> finite{true};
    std::atomic<std::size_t> q_next{0}, q_done{0};
    auto quantize_block = [&](std::size_t b) {
        for (std::size_t i = b * q_per; i < std::min(m, (b + 1) * q_per); ++i) {
            if (!kernels.quantize_row_i8(x + i * k, k, k_padded, s.q.data() + i * k_padded,
                                         &s.scales[i], &s.sums[i])) {
                finite.store(false, std::memory_order_relaxed);
            }
        }
    };
    auto gemm_block = [&](std::size_t b) {
        const float* scales = s.scales.data();
        const std::int8_t* q = s.q.data();
        const std::int32_t* sums = s.sums.data();
        gemm_rows<std::int32_t>(
            m, b * g_per, std::min(n, (b + 1) * g_per),
            [&](std::size_t i, std::size_t rows, std::size_t j, std::size_t columns, std::int32_t* dots) {
                dot(q + i * k_padded, rows, k_padded, sums + i, w + j * row_bytes, columns, dots, kWeightTile);
            },
            [&](std::size_t i, std::size_t j, std::int32_t total) {
                const float value = static_cast<float>(total) * (scales[i] * alpha[j]);
                y[i * n + j] = bias ? value + bias[j] : value;
            });
    };
    const std::size_t parts = std::max(q_blocks, g_blocks);
    parallel_for(parts, 1, 1, static_cast<int>(parts), [&](std::size_t begin, std::size_t end) {
        for (std::size_t b; (b = q_next.fetch_add(1)) < q_blocks;) {
            quantize_block(b);
            q_done.fetch_add(1, std::memory_order_release);
        }
        // The blocks left are being quantized by threads already running them.
        while (q_done.load(std::memory_order_acquire) < q_blocks) std::this_thread::yield();
        if (!finite.load(std::memory_order_relaxed)) return;
        for (std::size_t b = begin; b < std::min(end, g_blocks); ++b) gemm_block(b);
    });
    if (!finite.load()) return false;
    return true;
}

// Nonzero if some 2-bit field of p[0..bytes) is 0b11: an OR-reduction of (b & b >> 1) over
// 8-byte words, masked to the low bit of each field at the end (a bit that the shift carries
// across a byte boundary lands on an odd position and is masked away).
std::uint64_t ternary2_bad_fields(const std::uint8_t* p, std::size_t bytes) {
    std::uint64_t acc = 0;
    std::size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        std::uint64_t word;
        std::memcpy(&word, p + i, sizeof word);
        acc |= word & (word >> 1);
    }
    for (; i < bytes; ++i) acc |= static_cast<std::uint64_t>(p[i] & (p[i] >> 1));
    return acc & 0x5555555555555555ull;
}

}  // namespace

std::size_t first_invalid_ternary2_row(const std::uint8_t* w, std::size_t rows, std::size_t row_bytes,
                                       int num_threads) {
    std::atomic<std::size_t> first{rows};
    // A memory-bound pass: one chunk per thread of at least 256 KiB.
    const std::size_t min_chunk = std::max<std::size_t>(1, (std::size_t{1} << 18) / std::max<std::size_t>(row_bytes, 1));
    parallel_for(rows, 1, min_chunk, num_threads, [&](std::size_t begin, std::size_t end) {
        if (ternary2_bad_fields(w + begin * row_bytes, (end - begin) * row_bytes) == 0) return;
        std::size_t row = begin;
        while (ternary2_bad_fields(w + row * row_bytes, row_bytes) == 0) ++row;
        std::size_t seen = first.load(std::memory_order_relaxed);
        while (row < seen && !first.compare_exchange_weak(seen, row, std::memory_order_relaxed)) {
        }
    });
    return first.load();
}

bool ternary_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                        const float* alpha, std::size_t n, const float* bias, float* y,
                        int num_threads) {
    return quantized_linear(x, m, k, ternary_padded_k(k), 4, active_table().ternary->dot_i8_t2, w,
                            alpha, n, bias, y, num_threads);
}

bool ternary3_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                         const float* alpha, std::size_t n, const float* bias, float* y,
                         int num_threads) {
    return quantized_linear(x, m, k, ternary3_padded_k(k), 5, active_table().ternary->dot_i8_t3, w,
                            alpha, n, bias, y, num_threads);
}

bool ternary_linear_f32act(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                           const float* alpha, std::size_t n, const float* bias, float* y,
                           int num_threads) {
    const TernaryKernels& kernels = *active_table().ternary;
    const std::size_t k_padded = ternary_padded_k(k);
    // Zero codes never change a sum, but 0 * Inf would, so the row is checked as a whole.
    if (ref::max_magnitude_bits(x, m * k, 0) >= 0x7F800000) return false;
    const float* rows = x;
    if (k_padded != k) {
        // The kernels read whole blocks: copy the rows with zeros past k.
        Scratch& s = scratch();
        s.padded.assign(m * k_padded, 0.0f);
        for (std::size_t i = 0; i < m; ++i) std::copy(x + i * k, x + (i + 1) * k, s.padded.begin() + i * k_padded);
        rows = s.padded.data();
    }
    const std::size_t row_bytes = k_padded / 4;
    parallel_for(n, 1, min_rows(k_padded * m), num_threads, [&](std::size_t begin, std::size_t end) {
        gemm_rows<float>(
            m, begin, end,
            [&](std::size_t i, std::size_t count, std::size_t j, std::size_t columns, float* dots) {
                kernels.dot_f32_t2(rows + i * k_padded, count, k_padded, w + j * row_bytes, columns, dots,
                                   kWeightTile);
            },
            [&](std::size_t i, std::size_t j, float total) {
                const float value = total * alpha[j];
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
        gemm_rows<std::int32_t>(
            m, begin, end,
            [&](std::size_t i, std::size_t rows, std::size_t j, std::size_t columns, std::int32_t* dots) {
                kernels.dot_i8_t2(a + i * k_padded, rows, k_padded, sums.data() + i, w + j * (k_padded / 4),
                                  columns, dots, kWeightTile);
            },
            [&](std::size_t i, std::size_t j, std::int32_t dot) { out[i * n + j] = dot; });
    });
}

}  // namespace codl
