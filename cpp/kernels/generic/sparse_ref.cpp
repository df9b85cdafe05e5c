// Scalar reference of the sparse (1x4 block) kernels: the oracle of every test.
#include "codl/sparse.h"

namespace codl::ref {
namespace {

// A block column under the clamp of the memory-safety contract (codl/sparse.h).
std::size_t column(const std::uint16_t* cols, std::size_t p, std::size_t k_blocks) {
    return cols[p] < k_blocks ? cols[p] : k_blocks - 1;
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t total = 0;
        for (std::size_t p = begin; p < end; ++p) {
            const std::int8_t* a = q + 4 * column(cols, p, k_blocks);
            for (std::size_t t = 0; t < 4; ++t) total += a[t] * values[4 * p + t];
        }
        out[j - row_begin] = total;
    }
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        for (std::size_t r = 0; r < rows; ++r) o[r] = 0;
        for (std::size_t p = begin; p < end; ++p) {
            const std::int8_t* a = xt + column(cols, p, k_blocks) * rows * 4;
            for (std::size_t r = 0; r < rows; ++r) {
                for (std::size_t t = 0; t < 4; ++t) o[r] += a[4 * r + t] * values[4 * p + t];
            }
        }
    }
}

void gemm_i8_p4x4(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                  const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t panel_begin,
                  std::size_t panel_end, std::int32_t* out) {
    constexpr std::size_t R = kSparsePanelRows, T = kSparseStepBlocks;
    const std::size_t steps = sparse_steps(k_blocks), row_bytes = 4 * T * steps;
    for (std::size_t p = panel_begin; p < panel_end; ++p) {
        std::int32_t* o = out + (p - panel_begin) * m * R;
        for (std::size_t e = 0; e < m * R; ++e) o[e] = 0;
        for (std::size_t g = 0; g < steps; ++g) {
            const std::size_t s = p * steps + g;
            std::size_t b = sparse_step_start(starts, s, blocks);
            for (std::size_t lane = 0; lane < R * T; ++lane) {
                if (!((masks[s] >> lane) & 1u)) continue;
                if (b < blocks) {
                    const std::size_t r = lane / T, c = T * g + lane % T;
                    for (std::size_t i = 0; i < m; ++i) {
                        const std::int8_t* a = q + i * row_bytes + 4 * c;
                        for (std::size_t e = 0; e < 4; ++e) o[i * R + r] += a[e] * values[4 * b + e];
                    }
                }
                ++b;
            }
        }
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4, gemm_i8_p4x4};

}  // namespace codl::ref
