// Sparse linear layers: quantize the activation rows (in parallel), then split the output
// features over threads; each thread runs the active ISA's integer kernel on its rows and scales
// to float here, once for every ISA, so float outputs agree bit for bit across ISAs. Up to
// kGatherRows activation rows run the gather kernel row by row (batch 1 reads each weight block
// once); more rows are transposed into tiles of at most kSparseRowTile rows, so that one weight
// block meets a whole tile with contiguous loads.
#include <algorithm>
#include <atomic>
#include <vector>

#include "codl/dispatch.h"
#include "codl/parallel.h"
#include "codl/sparse.h"
#include "codl/ternary.h"

namespace codl {
namespace {

// The transposed kernel pads a tile to 16 rows; from 4 rows on, 4 gathers per block cost about
// as much as one padded tile's loads (an estimate, not yet measured: the bench times batch 1, 8
// and 64 only).
constexpr std::size_t kGatherRows = 3;
// Aim for at least this many block products per thread before waking another.
constexpr std::size_t kMinBlocksPerThread = 1 << 15;
// Output features per inner step: the int32 results of one step stay in L1.
constexpr std::size_t kFeatureStep = 64;

struct Scratch {
    std::vector<std::int8_t> q, xt;
    std::vector<float> scales;
    std::vector<std::int32_t> sums;
};

Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
}

std::size_t min_features(std::size_t blocks, std::size_t n, std::size_t rows) {
    const std::size_t per_feature = std::max<std::size_t>(1, blocks / std::max<std::size_t>(n, 1) * rows);
    return std::max<std::size_t>(1, kMinBlocksPerThread / per_feature);
}

// Transposes rows [i, i + count) of q (rows of 4 * k_blocks values) into xt as the batched
// kernel reads them: rows padded with zeros to a multiple of kSparseRowAlign.
std::size_t transpose_tile(const std::int8_t* q, std::size_t i, std::size_t count, std::size_t k_blocks,
                           std::int8_t* xt) {
    const std::size_t rows = (count + kSparseRowAlign - 1) / kSparseRowAlign * kSparseRowAlign;
    for (std::size_t b = 0; b < k_blocks; ++b) {
        std::int8_t* dst = xt + b * rows * 4;
        for (std::size_t r = 0; r < count; ++r) {
            const std::int8_t* src = q + (i + r) * k_blocks * 4 + b * 4;
            std::copy(src, src + 4, dst + r * 4);
        }
        std::fill(dst + count * 4, dst + rows * 4, std::int8_t{0});
    }
    return rows;
}

// The integer products of m rows of q against the n weight rows, each handed to sink(i, j, dot).
template <typename Sink>
void integer_products(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::int32_t* row_ptr,
                      const std::uint16_t* cols, const std::int8_t* values, std::size_t blocks, std::size_t n,
                      int num_threads, Scratch& s, Sink sink) {
    const SparseKernels& kernels = *active_table().sparse;
    if (m <= kGatherRows) {
        parallel_for(n, 1, min_features(blocks, n, m), num_threads, [&](std::size_t begin, std::size_t end) {
            std::int32_t dots[kFeatureStep];
            for (std::size_t j = begin; j < end; j += kFeatureStep) {
                const std::size_t stop = std::min(end, j + kFeatureStep);
                for (std::size_t i = 0; i < m; ++i) {
                    kernels.gemv_i8_b4(q + i * k_blocks * 4, k_blocks, row_ptr, blocks, cols, values, j, stop, dots);
                    for (std::size_t c = j; c < stop; ++c) sink(i, c, dots[c - j]);
                }
            }
        });
        return;
    }
    // Every tile transposed up front (m * in_features bytes), then one parallel region.
    const std::size_t tiles = (m + kSparseRowTile - 1) / kSparseRowTile;
    s.xt.resize(tiles * kSparseRowTile * k_blocks * 4);
    std::vector<std::size_t> tile_rows(tiles);
    for (std::size_t t = 0; t < tiles; ++t) {
        const std::size_t i = t * kSparseRowTile;
        tile_rows[t] = transpose_tile(q, i, std::min(kSparseRowTile, m - i), k_blocks,
                                      s.xt.data() + t * kSparseRowTile * k_blocks * 4);
    }
    const std::int8_t* xt = s.xt.data();
    parallel_for(n, 1, min_features(blocks, n, m), num_threads, [&](std::size_t begin, std::size_t end) {
        std::int32_t dots[kFeatureStep / 4 * kSparseRowTile];
        constexpr std::size_t step = kFeatureStep / 4;
        for (std::size_t j = begin; j < end; j += step) {
            const std::size_t stop = std::min(end, j + step);
            for (std::size_t t = 0; t < tiles; ++t) {
                const std::size_t i = t * kSparseRowTile, count = std::min(kSparseRowTile, m - i);
                const std::size_t rows = tile_rows[t];
                kernels.gemm_i8_b4(xt + t * kSparseRowTile * k_blocks * 4, rows, k_blocks, row_ptr, blocks, cols,
                                   values, j, stop, dots);
                for (std::size_t c = j; c < stop; ++c) {
                    for (std::size_t r = 0; r < count; ++r) sink(i + r, c, dots[(c - j) * rows + r]);
                }
            }
        }
    });
}

// The panel layout's products (q: m rows of 16 * sparse_steps(k_blocks) values): threads split
// the panels; a call covers up to kPanelOutputs / m panels (the int32 results of one call stay in
// L1) with every activation row, the kernel reusing a step's expanded blocks across rows.
constexpr std::size_t kPanelOutputs = 4096;

template <typename Sink>
void panel_products(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                    const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t n,
                    int num_threads, Sink sink) {
    const SparseKernels& kernels = *active_table().sparse;
    const std::size_t panels = sparse_panels(n);
    const std::size_t per_call = std::max<std::size_t>(1, kPanelOutputs / (kSparsePanelRows * m));
    // a panel step costs about what a 1x4 block does
    const std::size_t min_panels =
        std::max<std::size_t>(1, kMinBlocksPerThread / std::max<std::size_t>(1, sparse_steps(k_blocks) * m));
    parallel_for(panels, 1, min_panels, num_threads, [&](std::size_t begin, std::size_t end) {
        std::vector<std::int32_t> dots(per_call * m * kSparsePanelRows);
        for (std::size_t p = begin; p < end; p += per_call) {
            const std::size_t stop = std::min(end, p + per_call);
            kernels.gemm_i8_p4x4(q, m, k_blocks, masks, starts, values, blocks, p, stop, dots.data());
            for (std::size_t panel = p; panel < stop; ++panel) {
                const std::size_t rows = std::min(kSparsePanelRows, n - panel * kSparsePanelRows);
                for (std::size_t i = 0; i < m; ++i) {
                    const std::int32_t* d = dots.data() + ((panel - p) * m + i) * kSparsePanelRows;
                    for (std::size_t r = 0; r < rows; ++r) sink(i, panel * kSparsePanelRows + r, d[r]);
                }
            }
        }
    });
}

// Each row of x (m rows of k floats) to int8 with its absmax, in parallel, into s.q (rows padded
// with zeros to k_padded) and s.scales; false if x holds NaN or Inf.
bool quantize_rows(const float* x, std::size_t m, std::size_t k, std::size_t k_padded, int num_threads, Scratch& s) {
    const TernaryKernels& quantize = *active_table().ternary;
    s.q.resize(m * k_padded);
    s.scales.resize(m);
    s.sums.resize(m);
    std::atomic<bool> finite{true};
    parallel_for(m, 1, std::max<std::size_t>(1, (std::size_t{1} << 16) / std::max<std::size_t>(k, 1)), num_threads,
                 [&](std::size_t begin, std::size_t end) {
                     for (std::size_t i = begin; i < end; ++i) {
                         if (!quantize.quantize_row_i8(x + i * k, k, k_padded, s.q.data() + i * k_padded,
                                                       &s.scales[i], &s.sums[i])) {
                             finite.store(false, std::memory_order_relaxed);
                         }
                     }
                 });
    return finite.load();
}

// The sink that scales an exact dot to float, once for every ISA and layout (so that their floats
// agree bit for bit).
auto float_outputs(const float* scales, const float* w_scale, const float* bias, std::size_t n, float* y) {
    return [=](std::size_t i, std::size_t j, std::int32_t dot) {
        const float value = static_cast<float>(dot) * (scales[i] * w_scale[j]);
        y[i * n + j] = bias ? value + bias[j] : value;
    };
}

}  // namespace

std::size_t first_invalid_sparse_panel(const std::uint16_t* masks, const std::int32_t* starts, std::size_t n,
                                       std::size_t k_blocks, std::size_t blocks) {
    const std::size_t panels = sparse_panels(n), steps = sparse_steps(k_blocks);
    // The lanes a mask may name: rows below n, block columns below k_blocks.
    const auto lanes_within = [](std::size_t rows, std::size_t columns) {
        unsigned lanes = 0;
        for (std::size_t r = 0; r < rows; ++r) lanes |= ((1u << columns) - 1) << (kSparseStepBlocks * r);
        return lanes;
    };
    std::size_t kept = 0;
    for (std::size_t p = 0; p < panels; ++p) {
        const std::size_t rows = std::min(kSparsePanelRows, n - p * kSparsePanelRows);
        for (std::size_t g = 0; g < steps; ++g) {
            const std::size_t s = p * steps + g;
            const unsigned allowed = lanes_within(rows, std::min(kSparseStepBlocks, k_blocks - g * kSparseStepBlocks));
            if (starts[s] < 0 || static_cast<std::size_t>(starts[s]) != kept || (masks[s] & ~allowed) != 0) return p;
            kept += static_cast<std::size_t>(__builtin_popcount(masks[s]));
        }
    }
    return kept == blocks ? panels : panels - 1;
}

std::size_t first_invalid_sparse_row(const std::int32_t* row_ptr, std::size_t n, const std::uint16_t* cols,
                                     std::size_t blocks, std::size_t k_blocks) {
    if (n == 0) return 0;
    if (row_ptr[0] != 0) return 0;
    for (std::size_t j = 0; j < n; ++j) {
        const std::int32_t begin = row_ptr[j], end = row_ptr[j + 1];
        if (end < begin || static_cast<std::size_t>(end) > blocks) return j;
        for (std::int32_t p = begin; p < end; ++p) {
            if (cols[p] >= k_blocks) return j;
        }
    }
    return static_cast<std::size_t>(row_ptr[n]) == blocks ? n : n - 1;
}

bool sparse_linear_f32(const float* x, std::size_t m, std::size_t k, const std::int32_t* row_ptr,
                       const std::uint16_t* cols, const std::int8_t* values, std::size_t blocks,
                       const float* w_scale, std::size_t n, const float* bias, float* y, int num_threads) {
    Scratch& s = scratch();
    if (!quantize_rows(x, m, k, 4 * sparse_blocks(k), num_threads, s)) return false;
    integer_products(s.q.data(), m, sparse_blocks(k), row_ptr, cols, values, blocks, n, num_threads, s,
                     float_outputs(s.scales.data(), w_scale, bias, n, y));
    return true;
}

bool sparse_panel_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint16_t* masks,
                             const std::int32_t* starts, const std::int8_t* values, std::size_t blocks,
                             const float* w_scale, std::size_t n, const float* bias, float* y, int num_threads) {
    Scratch& s = scratch();
    if (!quantize_rows(x, m, k, 16 * sparse_steps(sparse_blocks(k)), num_threads, s)) return false;
    panel_products(s.q.data(), m, sparse_blocks(k), masks, starts, values, blocks, n, num_threads,
                   float_outputs(s.scales.data(), w_scale, bias, n, y));
    return true;
}

void sparse_panel_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                           const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t n,
                           std::int32_t* out, int num_threads) {
    panel_products(a, m, k_blocks, masks, starts, values, blocks, n, num_threads,
                   [&](std::size_t i, std::size_t j, std::int32_t dot) { out[i * n + j] = dot; });
}

void sparse_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_blocks, const std::int32_t* row_ptr,
                     const std::uint16_t* cols, const std::int8_t* values, std::size_t blocks, std::size_t n,
                     std::int32_t* out, int num_threads) {
    Scratch& s = scratch();
    integer_products(a, m, k_blocks, row_ptr, cols, values, blocks, n, num_threads, s,
                     [&](std::size_t i, std::size_t j, std::int32_t dot) { out[i * n + j] = dot; });
}

}  // namespace codl
