// AVX2 ternary GEMM kernels. Weights are multiplied as their stored fields c + 1 in {0, 1, 2}
// (unsigned, as vpmaddubsw wants) and the row sum of the activations is subtracted at the end,
// the approach of bitnet.cpp's I2_S. One unpacked weight block serves up to four activation
// rows, so a batch reads and unpacks the weights once.
#include <immintrin.h>

#include <cstring>

#include "codl/ternary.h"

namespace codl::avx2 {
namespace {

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                     float* scale, std::int32_t* sum) {
    // max |x| as integer bits: for non-negative floats the order is the same, and anything at
    // or above the bits of +inf is Inf or NaN.
    const __m256i magnitude_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i largest = _mm256_setzero_si256();
    std::size_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
        largest = _mm256_max_epi32(largest, _mm256_and_si256(bits, magnitude_mask));
    }
    alignas(32) std::int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), largest);
    std::int32_t max_bits = 0;
    for (std::int32_t lane : lanes) max_bits = lane > max_bits ? lane : max_bits;
    max_bits = ref::max_magnitude_bits(x + i, k - i, max_bits);
    if (max_bits >= 0x7F800000) return false;
    float absmax;
    std::memcpy(&absmax, &max_bits, sizeof absmax);

    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    const __m256 scale_by = _mm256_set1_ps(inverse);
    __m256i totals = _mm256_setzero_si256();
    // cvtps rounds half to even under the default MXCSR mode, as nearbyint does in the reference.
    const __m256i restore_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    i = 0;
    for (; i + 32 <= k; i += 32) {
        __m256i v[4];
        for (int part = 0; part < 4; ++part) {
            v[part] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * part), scale_by));
            totals = _mm256_add_epi32(totals, v[part]);
        }
        // packs work within 128-bit lanes; the permutation puts the 32 values back in order.
        const __m256i words = _mm256_packs_epi32(v[0], v[1]), words2 = _mm256_packs_epi32(v[2], v[3]);
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words2), restore_order);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), bytes);
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), totals);
    std::int32_t total = 0;
    for (std::int32_t lane : lanes) total += lane;
    total += ref::quantize_tail(x, i, k, k_padded, inverse, q);
    *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    *sum = total;
    return true;
}

std::int32_t horizontal_sum(__m256i v) {
    const __m128i half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i quarter = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtsi128_si32(_mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, _MM_SHUFFLE(2, 3, 0, 1))));
}

template <int Rows>
void dot_tile(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
              const std::uint8_t* w, std::int32_t* out, std::size_t out_stride) {
    const __m256i low_bits = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i acc[Rows];
    for (int r = 0; r < Rows; ++r) acc[r] = _mm256_setzero_si256();
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        const __m256i packed = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(w + block * kTernaryBlockBytes));
        const __m256i f0 = _mm256_and_si256(packed, low_bits);
        const __m256i f1 = _mm256_and_si256(_mm256_srli_epi16(packed, 2), low_bits);
        const __m256i f2 = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low_bits);
        const __m256i f3 = _mm256_and_si256(_mm256_srli_epi16(packed, 6), low_bits);
        for (int r = 0; r < Rows; ++r) {
            const std::int8_t* row = a + r * k_padded + block * kTernary2BlockValues;
            const auto load = [row](int plane) {
                return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * plane));
            };
            // Each 16-bit lane is at most 4 * 2 * 2 * 127 = 2032 in magnitude: no saturation.
            const __m256i pairs = _mm256_add_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(f0, load(0)), _mm256_maddubs_epi16(f1, load(1))),
                _mm256_add_epi16(_mm256_maddubs_epi16(f2, load(2)), _mm256_maddubs_epi16(f3, load(3))));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
        }
    }
    for (int r = 0; r < Rows; ++r) out[r * out_stride] = horizontal_sum(acc[r]) - a_sums[r];
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
               const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
               std::int32_t* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 4);
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) {
            dot_tile<4>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
        for (; r < rows; ++r) {
            dot_tile<1>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
    }
}

// Trit t of each byte of `powered` = byte * 3^t (mod 256), as the unsigned field c + 1:
// (powered * 3) >> 8 is 1 from 86 up and 2 from 171 up, two saturating threshold tests.
__m256i trit_fields(__m256i powered) {
    const __m256i one = _mm256_set1_epi8(1);
    return _mm256_add_epi8(_mm256_min_epu8(_mm256_subs_epu8(powered, _mm256_set1_epi8(85)), one),
                           _mm256_min_epu8(_mm256_subs_epu8(powered, _mm256_set1_epi8(char(170))), one));
}

__m256i times3(__m256i bytes) { return _mm256_add_epi8(bytes, _mm256_add_epi8(bytes, bytes)); }

template <int Rows>
void dot3_tile(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
               const std::uint8_t* w, std::int32_t* out, std::size_t out_stride) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[Rows];
    for (int r = 0; r < Rows; ++r) acc[r] = _mm256_setzero_si256();
    for (std::size_t block = 0; block < k_padded / kTernary3BlockValues; ++block) {
        __m256i powered = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + block * kTernaryBlockBytes));
        __m256i fields[5];
        for (int plane = 0; plane < 5; ++plane) {
            fields[plane] = trit_fields(powered);
            powered = times3(powered);
        }
        for (int r = 0; r < Rows; ++r) {
            const std::int8_t* row = a + r * k_padded + block * kTernary3BlockValues;
            const auto product = [row, &fields](int plane) {
                return _mm256_maddubs_epi16(
                    fields[plane], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * plane)));
            };
            // Each 16-bit lane is at most 5 * 2 * 2 * 128 = 2560 in magnitude: no saturation.
            const __m256i pairs = _mm256_add_epi16(
                _mm256_add_epi16(_mm256_add_epi16(product(0), product(1)), _mm256_add_epi16(product(2), product(3))),
                product(4));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
        }
    }
    for (int r = 0; r < Rows; ++r) out[r * out_stride] = horizontal_sum(acc[r]) - a_sums[r];
}

void dot_i8_t3(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
               const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
               std::int32_t* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 5);
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) {
            dot3_tile<4>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
        for (; r < rows; ++r) {
            dot3_tile<1>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
    }
}

// Float activations: 8 packed bytes widen to 8 lanes; for plane p the lane shifted right by 2p
// holds the field in its low 2 bits, and vpermilps (which reads only those bits) looks the code
// up as a float. A tile of R activation rows x C weight rows shares each decode among R rows
// and each activation load among C weight rows. The fused multiply-add by -1, 0 or +1 rounds
// once, like an addition. Every (row, weight row) pair has two accumulators, even and odd
// planes, in every tile shape, so the order of the sums is fixed.
template <int R, int C>
void dot_f32_tile(const float* x, std::size_t k_padded, const std::uint8_t* w, float* out,
                  std::size_t out_stride) {
    const __m256 code_of_field = _mm256_setr_ps(-1.0f, 0.0f, 1.0f, 0.0f, -1.0f, 0.0f, 1.0f, 0.0f);
    const std::size_t row_bytes = k_padded / 4;
    __m256 acc[R][C][2];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) acc[r][c][0] = acc[r][c][1] = _mm256_setzero_ps();
    }
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        for (std::size_t group = 0; group < kTernaryBlockBytes; group += 8) {
            __m256i fields[C];
            for (int c = 0; c < C; ++c) {
                std::int64_t eight;
                std::memcpy(&eight, w + c * row_bytes + block * kTernaryBlockBytes + group, sizeof eight);
                fields[c] = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(eight));
            }
            for (int p = 0; p < 4; ++p) {
                __m256 code[C];
                for (int c = 0; c < C; ++c) code[c] = _mm256_permutevar_ps(code_of_field, _mm256_srli_epi32(fields[c], 2 * p));
                const std::size_t at = block * kTernary2BlockValues + 32 * p + group;
                for (int r = 0; r < R; ++r) {
                    const __m256 values = _mm256_loadu_ps(x + r * k_padded + at);
                    for (int c = 0; c < C; ++c) acc[r][c][p & 1] = _mm256_fmadd_ps(values, code[c], acc[r][c][p & 1]);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            const __m256 sum = _mm256_add_ps(acc[r][c][0], acc[r][c][1]);
            const __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
            out[r * out_stride + c] = _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
        }
    }
}

// Runs tile shape <R, C> over all weight rows, finishing the remainder one weight row at a time.
template <int R, int C>
void dot_f32_rows(const float* x, std::size_t k_padded, const std::uint8_t* w, std::size_t w_rows,
                  float* out, std::size_t out_stride) {
    const std::size_t row_bytes = k_padded / 4;
    std::size_t c = 0;
    for (; c + C <= w_rows; c += C) dot_f32_tile<R, C>(x, k_padded, w + c * row_bytes, out + c, out_stride);
    for (; c < w_rows; ++c) dot_f32_tile<R, 1>(x, k_padded, w + c * row_bytes, out + c, out_stride);
}

void dot_f32_t2(const float* x, std::size_t rows, std::size_t k_padded, const std::uint8_t* w,
                std::size_t w_rows, float* out, std::size_t out_stride) {
    std::size_t r = 0;
    for (; r + 2 <= rows; r += 2) dot_f32_rows<2, 2>(x + r * k_padded, k_padded, w, w_rows, out + r * out_stride, out_stride);
    for (; r < rows; ++r) dot_f32_rows<1, 2>(x + r * k_padded, k_padded, w, w_rows, out + r * out_stride, out_stride);
}

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2, dot_i8_t3, dot_f32_t2};

}  // namespace codl::avx2
