// AVX-512 VNNI sparse (1x4 block) kernels: a block is one 32-bit lane of vpdpbusd, which
// multiplies unsigned by signed bytes, so it takes |w| (<= 128 as unsigned) and x negated where
// w < 0 (|x| <= 127, so the negation is exact); vpdpbusd does not saturate, so the int32 sums are
// exact.
#include <immintrin.h>

#include <algorithm>

#include "codl/sparse.h"
#include "vnni_avx512.h"

namespace codl::avx512 {
namespace {

inline __m512i dot4(__m512i acc, __m512i x, __m512i w) {
    const __m512i signed_x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    return dpbusd(acc, _mm512_abs_epi8(w), signed_x);
}

// Batch 1 reads the activation 4-tuples of 16 blocks at a time. A gather does it anywhere in the
// row, but this core (Zen 5) retires one 16-lane vpgatherdd per ~20 cycles, which bound the
// kernel. The blocks of a row are in column order, so 16 of them usually fall within 128 block
// columns (at 90% zeros, a third of the blocks are kept: 16 span about 50 columns): from a window
// of q held in 8 registers, 4 vpermi2d and 3 blends fetch them. Groups that do not fit (sparser
// rows, or columns out of order) are gathered; either way every lane reads q[idx].
constexpr std::size_t kWindowBlocks = 128;

__m512i window_or_gather(const std::int8_t* q, __m512i idx, std::size_t base) {
    const __m512i rel = _mm512_sub_epi32(idx, _mm512_set1_epi32(static_cast<int>(base)));
    if (_mm512_cmplt_epu32_mask(rel, _mm512_set1_epi32(static_cast<int>(kWindowBlocks))) != 0xFFFF) {
        return _mm512_i32gather_epi32(idx, q, 4);
    }
    const std::int8_t* w = q + 4 * base;
    __m512i quarter[4];
    for (int i = 0; i < 4; ++i) {
        quarter[i] = _mm512_permutex2var_epi32(_mm512_loadu_si512(w + 128 * i), rel, _mm512_loadu_si512(w + 128 * i + 64));
    }
    const __mmask16 odd_32 = _mm512_test_epi32_mask(rel, _mm512_set1_epi32(32));
    const __m512i low = _mm512_mask_blend_epi32(odd_32, quarter[0], quarter[1]);
    const __m512i high = _mm512_mask_blend_epi32(odd_32, quarter[2], quarter[3]);
    return _mm512_mask_blend_epi32(_mm512_test_epi32_mask(rel, _mm512_set1_epi32(64)), low, high);
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const __m512i last = _mm512_set1_epi32(static_cast<int>(k_blocks - 1));
    const bool windows = k_blocks >= kWindowBlocks;
    // 16 blocks from `at` (those of `mask`; the others get weight 0 and the first block's column).
    auto group = [&](std::size_t at, __mmask16 mask, __m512i acc) {
        __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, cols + at));
        idx = _mm512_min_epu32(_mm512_mask_mov_epi32(_mm512_set1_epi32(cols[at]), mask, idx), last);
        // The window starts at the first block's column rounded down to 16 (a 64-byte line of q)
        // and ends inside q.
        const std::size_t base = std::min<std::size_t>(cols[at] & ~std::size_t{15}, k_blocks - kWindowBlocks);
        const __m512i x = windows ? window_or_gather(q, idx, base) : _mm512_i32gather_epi32(idx, q, 4);
        return dot4(acc, x, _mm512_maskz_loadu_epi32(mask, values + 4 * at));
    };
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        // Groups alternate between two accumulators, so that consecutive vpdpbusd do not wait on
        // each other (an array indexed by the parity went through the stack).
        __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
        for (; p + 32 <= end; p += 32) {
            even = group(p, 0xFFFF, even);
            odd = group(p + 16, 0xFFFF, odd);
        }
        for (; p < end; p += 16) {
            even = group(p, static_cast<__mmask16>(end - p >= 16 ? 0xFFFF : (1u << (end - p)) - 1), even);
        }
        out[j - row_begin] = _mm512_reduce_add_epi32(_mm512_add_epi32(even, odd));
    }
}

// Rows [r0, r0 + 16 * V) of one weight row: the block broadcast once to V accumulators of 16
// rows, and consecutive blocks on S = 8 / V such sets, summed at the end: with one set, each
// vpdpbusd waited on the previous block's (its latency, not the core's throughput, bound the
// kernel: 2.5-3x slower at 8 rows).
template <int V>
void gemm_chunk(const std::int8_t* xt, std::size_t rows, std::size_t r0, std::size_t k_blocks, std::size_t p,
                std::size_t end, const std::uint16_t* cols, const std::int8_t* values, std::int32_t* out) {
    constexpr int S = 8 / V;
    __m512i acc[S][V];
    for (int s = 0; s < S; ++s) {
        for (int v = 0; v < V; ++v) acc[s][v] = _mm512_setzero_si512();
    }
    auto block = [&](std::size_t at, __m512i* sums) {
        std::int32_t word;
        __builtin_memcpy(&word, values + 4 * at, 4);
        const __m512i w = _mm512_set1_epi32(word);
        const __m512i magnitude = _mm512_abs_epi8(w);
        const __mmask64 negative = _mm512_movepi8_mask(w);
        const std::size_t col = cols[at] < k_blocks ? cols[at] : k_blocks - 1;
        const std::int8_t* a = xt + (col * rows + r0) * 4;
        for (int v = 0; v < V; ++v) {
            const __m512i x = _mm512_loadu_si512(a + 64 * v);
            sums[v] = dpbusd(sums[v], magnitude, _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x));
        }
    };
    for (; p + S <= end; p += S) {
        for (int s = 0; s < S; ++s) block(p + s, acc[s]);
    }
    for (; p < end; ++p) block(p, acc[0]);
    for (int v = 0; v < V; ++v) {
        __m512i total = acc[0][v];
        for (int s = 1; s < S; ++s) total = _mm512_add_epi32(total, acc[s][v]);
        _mm512_storeu_si512(out + r0 + 16 * v, total);
    }
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
