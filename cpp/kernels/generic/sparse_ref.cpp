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

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4};

}  // namespace codl::ref
