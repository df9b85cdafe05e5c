// Sparse linear layers: y = x W^T (+ bias) with W pruned (most weights zero) and stored as
// 1x4 blocks: a block is 4 consecutive input features of one output row holding at least one
// nonzero, kept as 4 int8 values (zeros included) with its block column (feature / 4) as uint16.
// Rows are CSR over blocks: row j owns blocks row_ptr[j] .. row_ptr[j + 1]. Each output row has
// one float scale (int8 weights: absmax / 127; ternary codes {-1, 0, +1}: alpha), activations are
// quantized per row to int8 (the ternary path's quantize_row_i8) and dots are exact in int32, so
// every ISA gives the same floats bit for bit.
//
// Why 1x4 blocks: 4 consecutive int8 products are one 32-bit lane of vpdpbusd / pmaddubsw / sdot,
// so a block costs one lane of one instruction, and the activation 4-tuple a block needs is one
// 32-bit load (a gather lane at batch 1, a broadcast at larger batches). CSR (one uint16 index
// per int8 value) stores fewer zeros (at 90% unstructured sparsity a kept block holds ~1.2
// nonzeros) but fetches an activation per value: an AVX-512 CSR kernel measured against this
// one on Zen 5 (benchmarks/README.md, "CSR, measured") was 1.5-2.1x slower at 80-95% zeros and
// faster only at 99%.
//
// A second layout, row panels, for batch 1 at 80-93% zeros (pack_sparse's layout="panels"): the
// output rows in panels of kSparsePanelRows = 4, the block columns in steps of kSparseStepBlocks
// = 4, so a panel step covers 4 x 4 block positions, one 32-bit lane each of a 512-bit vector
// (lane 4 * r + t: row 4 * panel + r, block column 4 * step + t). Per panel step (index s =
// panel * sparse_steps(k_blocks) + step) a uint16 mask of the lanes holding a kept 1x4 block and
// starts[s], the index of the first of them; the kept blocks' 4 int8 values, step after step and
// in lane order within a step, are values[4 * starts[s] ..]. Why: the 1x4 layout fetches
// activations per block (a gather or a window permute, ~14 cycles a group of 16 blocks on Zen 5),
// where a panel step needs one 16-byte broadcast of its 4 columns' activations and one expansion
// of its blocks into their lanes (vpexpandd), whatever the sparsity: faster than 1x4 up to ~93%
// zeros, slower above (benchmarks/README.md, "Sparse linear"). 16 rows x 1 column a step
// measured 1.2-1.3x slower than 4 x 4 (a 4-byte broadcast per step instead of a 16-byte one
// per 4 rows).
//
// Declarations only (ISA translation units include it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"

namespace codl {

// Block columns are uint16: at most this many blocks per row (in_features <= 262144).
constexpr std::size_t kSparseMaxBlocks = 65536;
// Batched kernels read activations transposed in tiles of a multiple of this many rows.
constexpr std::size_t kSparseRowAlign = 16;
// and at most this many rows per tile (the accumulators of one weight row stay in registers).
constexpr std::size_t kSparseRowTile = 64;

constexpr std::size_t sparse_blocks(std::size_t k) { return (k + 3) / 4; }

// The panel layout's shape: output rows per panel and block columns per step (one 32-bit lane
// each of a 512-bit vector).
constexpr std::size_t kSparsePanelRows = 4;
constexpr std::size_t kSparseStepBlocks = 4;
constexpr std::size_t sparse_panels(std::size_t n) { return (n + kSparsePanelRows - 1) / kSparsePanelRows; }
constexpr std::size_t sparse_steps(std::size_t k_blocks) {
    return (k_blocks + kSparseStepBlocks - 1) / kSparseStepBlocks;
}

// The first kept block of a panel step under the memory-safety contract: starts[s] read as
// unsigned (a negative start is past every block) and clamped to `blocks`. A kept block whose
// index reaches `blocks` counts as zeros, on every ISA.
inline std::size_t sparse_step_start(const std::int32_t* starts, std::size_t s, std::size_t blocks) {
    const std::size_t v = static_cast<std::uint32_t>(starts[s]);
    return v < blocks ? v : blocks;
}

// The blocks [*begin, *end) of row j under the clamps of the memory-safety contract below; one
// definition, so every ISA clamps alike.
inline void sparse_row_range(const std::int32_t* row_ptr, std::size_t blocks, std::size_t j, std::size_t* begin,
                             std::size_t* end) {
    const auto clamp = [blocks](std::int32_t v) {
        return v < 0 ? std::size_t{0} : (static_cast<std::size_t>(v) > blocks ? blocks : static_cast<std::size_t>(v));
    };
    *begin = clamp(row_ptr[j]);
    *end = clamp(row_ptr[j + 1]);
    if (*end < *begin) *end = *begin;
}

// Memory safety for any input: kernels clamp a row's block range to [0, blocks] (an end below its
// begin is an empty row) and every block column to k_blocks - 1, the same way on every ISA, so
// corrupt indices give wrong numbers, never an out-of-bounds read. Callers that take untrusted
// indices check them once with first_invalid_sparse_row (the Python operator does).
struct SparseKernels {
    // out[j - row_begin] = sum_p sum_t q[4 * col[p] + t] * values[4 * p + t] over the blocks p of
    // row j, for row_begin <= j < row_end, exactly. q holds 4 * k_blocks int8 values in
    // [-127, 127] (zero past in_features).
    void (*gemv_i8_b4)(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr,
                       std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values,
                       std::size_t row_begin, std::size_t row_end, std::int32_t* out);
    // The same for `rows` activation rows at once, given transposed: the 4 values of block b of
    // row r are xt[(b * rows + r) * 4 ..], rows a multiple of kSparseRowAlign and at most
    // kSparseRowTile, values in [-127, 127]. out[(j - row_begin) * rows + r] for every r.
    void (*gemm_i8_b4)(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks,
                       const std::int32_t* row_ptr, std::size_t blocks, const std::uint16_t* cols,
                       const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                       std::int32_t* out);
    // The panel layout, m activation rows (q: m rows of 16 * sparse_steps(k_blocks) int8 in
    // [-127, 127], zero past in_features) against panels [panel_begin, panel_end):
    // out[((p - panel_begin) * m + i) * kSparsePanelRows + r] is the exact dot of row i with
    // output row kSparsePanelRows * p + r (0 for a row past the weight's). Steps read
    // masks[p * steps + g] and starts[p * steps + g], starts clamped as sparse_step_start says.
    void (*gemm_i8_p4x4)(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                        const std::int32_t* starts, const std::int8_t* values, std::size_t blocks,
                        std::size_t panel_begin, std::size_t panel_end, std::int32_t* out);
};

// The first row j of n whose blocks are not well formed (row_ptr[0] != 0, row_ptr[j + 1] <
// row_ptr[j], row_ptr[n] != blocks, or a block column >= k_blocks), or n if all are; a
// malformed row_ptr[0] or row_ptr[n] reports row 0 or n - 1. Reads row_ptr[0..n] and cols.
std::size_t first_invalid_sparse_row(const std::int32_t* row_ptr, std::size_t n, const std::uint16_t* cols,
                                     std::size_t blocks, std::size_t k_blocks);

// The first panel of the panel layout (n output rows over k_blocks block columns) that is not
// well formed (a step's start is not the count of kept blocks before it, a mask names a row past
// n or a block column past k_blocks, or the steps do not keep exactly `blocks` blocks; the last
// reports sparse_panels(n) - 1), or sparse_panels(n) if all are.
std::size_t first_invalid_sparse_panel(const std::uint16_t* masks, const std::int32_t* starts, std::size_t n,
                                       std::size_t k_blocks, std::size_t blocks);

// y[i, j] = scale_i * w_scale[j] * sum_k q[i, k] * values(j, k) + bias[j] (bias may be null),
// q, scale_i quantizing row i of x (m rows of k floats) to int8 with its absmax. W: n rows as
// above over sparse_blocks(k) block columns. Returns false, leaving y unspecified, if x holds NaN
// or Inf. Batch 1 to 3 rows run the gather kernel row by row, more rows the transposed kernel.
bool sparse_linear_f32(const float* x, std::size_t m, std::size_t k, const std::int32_t* row_ptr,
                       const std::uint16_t* cols, const std::int8_t* values, std::size_t blocks,
                       const float* w_scale, std::size_t n, const float* bias, float* y,
                       int num_threads = 1);

// sparse_linear_f32 with W in the panel layout (any batch: the kernel reuses a step's expanded
// blocks across up to 8 activation rows). sparse_panel_gemm_i32 takes rows of 16 *
// sparse_steps(k_blocks) int8 values, zero past the weight's columns.
bool sparse_panel_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint16_t* masks,
                             const std::int32_t* starts, const std::int8_t* values, std::size_t blocks,
                             const float* w_scale, std::size_t n, const float* bias, float* y,
                             int num_threads = 1);
void sparse_panel_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                           const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t n,
                           std::int32_t* out, int num_threads = 1);

// The integer core, for tests: out[i * n + j] = sum_k a[i, k] * values(j, k), a already int8 (m
// rows of 4 * k_blocks values), through the same row split as sparse_linear_f32.
void sparse_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_blocks, const std::int32_t* row_ptr,
                     const std::uint16_t* cols, const std::int8_t* values, std::size_t blocks, std::size_t n,
                     std::int32_t* out, int num_threads = 1);

}  // namespace codl
