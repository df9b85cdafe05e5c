// AVX-512 VNNI sparse (1x4 block) kernels: a block is one 32-bit lane of vpdpbusd, which
// multiplies unsigned by signed bytes, so it takes |w| (<= 128 as unsigned) and x negated where
// w < 0 (|x| <= 127, so the negation is exact); vpdpbusd does not saturate, so the int32 sums are
// exact. Batch 1 gathers the activation 4-tuples of 16 blocks; the tail is masked.
#include <immintrin.h>

#include "codl/sparse.h"

namespace codl::avx512 {
namespace {

inline __m512i dot4(__m512i acc, __m512i x, __m512i w) {
    const __m512i signed_x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    return _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(w), signed_x);
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const __m512i last = _mm512_set1_epi32(static_cast<int>(k_blocks - 1));
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        __m512i acc = _mm512_setzero_si512();
        for (; p + 16 <= end; p += 16) {
            __m512i idx = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(cols + p)));
            idx = _mm512_min_epu32(idx, last);
            const __m512i x = _mm512_i32gather_epi32(idx, q, 4);
            acc = dot4(acc, x, _mm512_loadu_si512(values + 4 * p));
        }
        if (p < end) {
            const __mmask16 mask = static_cast<__mmask16>((1u << (end - p)) - 1);
            __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, cols + p));
            idx = _mm512_min_epu32(idx, last);
            const __m512i x = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, idx, q, 4);
            acc = dot4(acc, x, _mm512_maskz_loadu_epi32(mask, values + 4 * p));
        }
        out[j - row_begin] = _mm512_reduce_add_epi32(acc);
    }
}

// Rows [r0, r0 + 16 * V) of one weight row: V accumulators of 16 rows, the block broadcast once.
template <int V>
void gemm_chunk(const std::int8_t* xt, std::size_t rows, std::size_t r0, std::size_t k_blocks, std::size_t p,
                std::size_t end, const std::uint16_t* cols, const std::int8_t* values, std::int32_t* out) {
    __m512i acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm512_setzero_si512();
    for (; p < end; ++p) {
        std::int32_t word;
        __builtin_memcpy(&word, values + 4 * p, 4);
        const __m512i w = _mm512_set1_epi32(word);
        const __m512i magnitude = _mm512_abs_epi8(w);
        const __mmask64 negative = _mm512_movepi8_mask(w);
        const std::size_t col = cols[p] < k_blocks ? cols[p] : k_blocks - 1;
        const std::int8_t* a = xt + (col * rows + r0) * 4;
        for (int v = 0; v < V; ++v) {
            const __m512i x = _mm512_loadu_si512(a + 64 * v);
            acc[v] = _mm512_dpbusd_epi32(acc[v], magnitude,
                                         _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x));
        }
    }
    for (int v = 0; v < V; ++v) _mm512_storeu_si512(out + r0 + 16 * v, acc[v]);
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        std::size_t r0 = 0;
        for (; r0 + 64 <= rows; r0 += 64) gemm_chunk<4>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 + 32 <= rows; r0 += 32) gemm_chunk<2>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 < rows; r0 += 16) gemm_chunk<1>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4};

}  // namespace codl::avx512
