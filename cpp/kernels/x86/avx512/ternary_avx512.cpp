// AVX-512 ternary GEMM kernels, with VNNI: vpdpbusd multiplies the unsigned weight fields
// c + 1 by the signed activations and accumulates four products per 32-bit lane in one
// instruction (the row sum of the activations is subtracted at the end). A 64-byte activation
// chunk spans planes 2p and 2p + 1 of one block, so the block's 32 packed bytes are broadcast to
// both halves and shifted by a different amount in each.
#include <immintrin.h>

#include <cstring>

#include "codl/kernel_table.h"

namespace codl::avx512 {
namespace {

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                     float* scale, std::int32_t* sum) {
    // max |x| as integer bits (same order for non-negative floats; >= +inf's bits: Inf or NaN).
    const __m512i magnitude_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i largest = _mm512_setzero_si512();
    std::size_t i = 0;
    for (; i + 16 <= k; i += 16) {
        largest = _mm512_max_epi32(largest, _mm512_and_si512(_mm512_loadu_si512(x + i), magnitude_mask));
    }
    std::int32_t max_bits = _mm512_reduce_max_epi32(largest);
    max_bits = ref::max_magnitude_bits(x + i, k - i, max_bits);
    if (max_bits >= 0x7F800000) return false;
    float absmax;
    std::memcpy(&absmax, &max_bits, sizeof absmax);

    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    const __m512 scale_by = _mm512_set1_ps(inverse);
    __m512i totals = _mm512_setzero_si512();
    i = 0;
    for (; i + 16 <= k; i += 16) {
        // cvtps rounds half to even (default MXCSR), as nearbyint does in the reference.
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), scale_by));
        totals = _mm512_add_epi32(totals, v);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(v));
    }
    std::int32_t total = _mm512_reduce_add_epi32(totals);
    total += ref::quantize_tail(x, i, k, k_padded, inverse, q);
    *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    *sum = total;
    return true;
}

// R activation rows x C weight rows, two accumulators each (one per plane pair) so that
// consecutive vpdpbusd do not wait on each other's latency.
template <int R, int C>
void dot_tile(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
              const std::uint8_t* w, std::int32_t* out, std::size_t out_stride) {
    const __m512i low_bits = _mm512_set1_epi8(3);
    const std::size_t row_bytes = k_padded / 4;
    __m512i acc01[R][C], acc23[R][C];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) acc01[r][c] = acc23[r][c] = _mm512_setzero_si512();
    }
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        __m512i planes01[C], planes23[C];
        for (int c = 0; c < C; ++c) {
            const __m512i packed = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(w + c * row_bytes + block * kTernaryBlockBytes)));
            // Planes 0 | 1 in one register and 2 | 3 in the other: immediate shifts and a blend
            // of 256-bit halves (variable 16-bit shifts are slow on some cores).
            const __m512i by2 = _mm512_srli_epi16(packed, 2);
            planes01[c] = _mm512_and_si512(_mm512_mask_blend_epi64(0xF0, packed, by2), low_bits);
            planes23[c] = _mm512_and_si512(
                _mm512_mask_blend_epi64(0xF0, _mm512_srli_epi16(packed, 4), _mm512_srli_epi16(packed, 6)),
                low_bits);
        }
        for (int r = 0; r < R; ++r) {
            const std::int8_t* row = a + r * k_padded + block * kTernary2BlockValues;
            const __m512i first = _mm512_loadu_si512(row), second = _mm512_loadu_si512(row + 64);
            for (int c = 0; c < C; ++c) {
                acc01[r][c] = _mm512_dpbusd_epi32(acc01[r][c], planes01[c], first);
                acc23[r][c] = _mm512_dpbusd_epi32(acc23[r][c], planes23[c], second);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            out[r * out_stride + c] =
                _mm512_reduce_add_epi32(_mm512_add_epi32(acc01[r][c], acc23[r][c])) - a_sums[r];
        }
    }
}

// Runs tile shape <R, C> over all weight rows, finishing the remainder one weight row at a time.
template <int R, int C>
void dot_rows(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
              const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    const std::size_t row_bytes = k_padded / 4;
    std::size_t c = 0;
    for (; c + C <= w_rows; c += C) dot_tile<R, C>(a, k_padded, a_sums, w + c * row_bytes, out + c, out_stride);
    for (; c < w_rows; ++c) dot_tile<R, 1>(a, k_padded, a_sums, w + c * row_bytes, out + c, out_stride);
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
               const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
               std::int32_t* out, std::size_t out_stride) {
    std::size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        dot_rows<4, 2>(a + r * k_padded, k_padded, a_sums + r, w, w_rows, out + r * out_stride, out_stride);
    }
    switch (rows - r) {
        case 3: dot_rows<3, 2>(a + r * k_padded, k_padded, a_sums + r, w, w_rows, out + r * out_stride, out_stride); break;
        case 2: dot_rows<2, 3>(a + r * k_padded, k_padded, a_sums + r, w, w_rows, out + r * out_stride, out_stride); break;
        case 1: dot_rows<1, 4>(a + r * k_padded, k_padded, a_sums + r, w, w_rows, out + r * out_stride, out_stride); break;
        default: break;
    }
}

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2};

}  // namespace codl::avx512
