// SVE sparse (1x4 block) kernels, vector-length agnostic: a block is one 32-bit lane of sdot
// (signed by signed bytes, 4 products per lane, exact in int32). Batch 1 gathers the activation
// 4-tuples of a vector of blocks; batched rows take one lane each.
#include <arm_sve.h>

#include "codl/sparse.h"

namespace codl::sve {
namespace {

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const std::int32_t* base = reinterpret_cast<const std::int32_t*>(q);
    const std::int32_t* words = reinterpret_cast<const std::int32_t*>(values);
    const std::uint32_t last = static_cast<std::uint32_t>(k_blocks - 1);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        svint32_t acc = svdup_n_s32(0);
        for (; p < end; p += svcntw()) {
            const svbool_t pg = svwhilelt_b32_u64(p, end);
            const svuint32_t idx = svmin_n_u32_x(pg, svld1uh_u32(pg, cols + p), last);
            const svint32_t x = svld1_gather_u32index_s32(pg, base, idx);
            const svint32_t w = svld1_s32(pg, words + p);
            acc = svdot_s32(acc, svreinterpret_s8_s32(x), svreinterpret_s8_s32(w));
        }
        out[j - row_begin] = static_cast<std::int32_t>(svaddv_s32(svptrue_b32(), acc));
    }
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    const std::int32_t* x_words = reinterpret_cast<const std::int32_t*>(xt);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        for (std::size_t r0 = 0; r0 < rows; r0 += svcntw()) {
            const svbool_t pg = svwhilelt_b32_u64(r0, rows);
            svint32_t acc = svdup_n_s32(0);
            for (std::size_t p = begin; p < end; ++p) {
                const std::size_t col = cols[p] < k_blocks ? cols[p] : k_blocks - 1;
                std::int32_t word;
                __builtin_memcpy(&word, values + 4 * p, 4);  // values need not be 4-byte aligned
                const svint32_t x = svld1_s32(pg, x_words + col * rows + r0);
                acc = svdot_s32(acc, svreinterpret_s8_s32(x), svreinterpret_s8_s32(svdup_n_s32(word)));
            }
            svst1_s32(pg, o + r0, acc);
        }
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4};

}  // namespace codl::sve
