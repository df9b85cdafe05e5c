// AVX2 sparse (1x4 block) kernels. A block's 4 int8 products are one 32-bit lane of
// pmaddubsw + pmaddwd: pmaddubsw multiplies unsigned by signed bytes, so it takes |w| and x with
// w's sign (psignb); |w| <= 128 and |x| <= 127 keep each pair sum (<= 32512) from saturating,
// so the int32 sums are exact.
#include <immintrin.h>

#include "codl/sparse.h"

namespace codl::avx2 {
namespace {

inline __m256i dot4(__m256i acc, __m256i x, __m256i w, __m256i ones) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
}

inline std::int32_t horizontal_sum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i last = _mm256_set1_epi32(static_cast<int>(k_blocks - 1));
    const int* base = reinterpret_cast<const int*>(q);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        __m256i acc = _mm256_setzero_si256();
        for (; p + 8 <= end; p += 8) {
            __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cols + p)));
            idx = _mm256_min_epu32(idx, last);
            const __m256i x = _mm256_i32gather_epi32(base, idx, 4);
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 4 * p));
            acc = dot4(acc, x, w, ones);
        }
        std::int32_t total = horizontal_sum(acc);
        for (; p < end; ++p) {
            const std::int8_t* a = q + 4 * (cols[p] < k_blocks ? cols[p] : k_blocks - 1);
            for (std::size_t t = 0; t < 4; ++t) total += a[t] * values[4 * p + t];
        }
        out[j - row_begin] = total;
    }
}

// Rows [r0, r0 + 8 * V) of one weight row: V accumulators of 8 rows, the block broadcast once.
template <int V>
void gemm_chunk(const std::int8_t* xt, std::size_t rows, std::size_t r0, std::size_t k_blocks, std::size_t p,
                std::size_t end, const std::uint16_t* cols, const std::int8_t* values, std::int32_t* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_si256();
    for (; p < end; ++p) {
        std::int32_t word;
        __builtin_memcpy(&word, values + 4 * p, 4);
        const __m256i w = _mm256_set1_epi32(word);
        const std::size_t col = cols[p] < k_blocks ? cols[p] : k_blocks - 1;
        const std::int8_t* a = xt + (col * rows + r0) * 4;
        for (int v = 0; v < V; ++v) {
            acc[v] = dot4(acc[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32 * v)), w, ones);
        }
    }
    for (int v = 0; v < V; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r0 + 8 * v), acc[v]);
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        std::size_t r0 = 0;
        for (; r0 + 64 <= rows; r0 += 64) gemm_chunk<8>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 + 32 <= rows; r0 += 32) gemm_chunk<4>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 < rows; r0 += 16) gemm_chunk<2>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4};

}  // namespace codl::avx2
