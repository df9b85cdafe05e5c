// AVX-512 ternary GEMM kernels, with VNNI: vpdpbusd multiplies the unsigned weight fields
// c + 1 by the signed activations and accumulates four products per 32-bit lane in one
// instruction (the row sum of the activations is subtracted at the end). A 64-byte activation
// chunk spans planes 2p and 2p + 1 of one block, so the block's 32 packed bytes are broadcast to
// both halves of a register.
#include <immintrin.h>

#include <cstring>

#include "codl/ternary.h"
#include "vnni_avx512.h"

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

// Each plane's fields are masked in place, not shifted down to bits 0-1: a 64-byte register holds
// plane 0 (bits 0-1) in its low half and plane 1 (bits 2-3, so the fields times 4) in its high
// half, and the same for planes 2 | 3 after one shift by 4. Fields times 4 (at most 8) are still
// unsigned bytes for vpdpbusd, and every lane of the high half sums only such products, so it is
// an exact multiple of 4 that an arithmetic shift by 2 brings back when the lanes are reduced.
struct Planes {
    __m512i low, high;  // planes 0 | 1 and 2 | 3
};

CODL_INLINE Planes planes_of(const std::uint8_t* block, __m512i mask) {
    const __m512i packed = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block)));
    return {_mm512_and_si512(packed, mask), _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask)};
}

// The 16 lanes of an accumulator, high half divided by 4 (see Planes), as 8 partial sums.
CODL_INLINE __m256i halves(__m512i acc) {
    return _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm256_srai_epi32(_mm512_extracti64x4_epi64(acc, 1), 2));
}

// [sum(a), sum(b), sum(c), sum(d)] of four accumulators (see Planes): a transposing tree of
// 16 instructions where four horizontal reductions take about 40.
CODL_INLINE __m128i sums4(__m512i a, __m512i b, __m512i c, __m512i d) {
    // 128-bit units: ab = [a0 a1 b0 b1] + [a2 a3 b2 b3] / 4, then [a b c d] by units.
    const __m512i ab = _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_srai_epi32(_mm512_shuffle_i64x2(a, b, 0xEE), 2));
    const __m512i cd = _mm512_add_epi32(_mm512_shuffle_i64x2(c, d, 0x44), _mm512_srai_epi32(_mm512_shuffle_i64x2(c, d, 0xEE), 2));
    __m512i units = _mm512_add_epi32(_mm512_shuffle_i64x2(ab, cd, 0x88), _mm512_shuffle_i64x2(ab, cd, 0xDD));
    units = _mm512_add_epi32(units, _mm512_shuffle_epi32(units, _MM_PERM_BADC));
    units = _mm512_add_epi32(units, _mm512_shuffle_epi32(units, _MM_PERM_CDAB));
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), units));
}

// R activation rows x C weight rows (C a multiple of 4, or 1), one accumulator a pair; with Split,
// two (planes 0 | 1 and 2 | 3), so that few pairs still give vpdpbusd enough independent chains.
// Loading the activations into registers once (not as a memory operand of each vpdpbusd) and
// 4 x 4 pairs keep this core's two vpdpbusd pipes busy: 385-400 GMAC/s at 1 thread on Zen 5,
// against 140-170 for the dot-product tiles this replaced.
template <int R, int C, bool Split>
CODL_INLINE void dot_tile(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
                          const std::uint8_t* w, std::int32_t* out, std::size_t out_stride) {
    static_assert(C % 4 == 0 || C == 1, "the reduction takes weight rows 4 at a time, or 1");
    constexpr int S = Split ? 2 : 1;
    const __m512i mask = _mm512_inserti64x4(_mm512_set1_epi8(0x03), _mm256_set1_epi8(0x0C), 1);
    const std::size_t row_bytes = k_padded / 4;
    __m512i acc[R][C][S];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) {
            for (int s = 0; s < S; ++s) acc[r][c][s] = _mm512_setzero_si512();
        }
    }
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        if constexpr (R == 1) {
            // Batch 1 reads each weight byte once, C rows 1 KiB or more apart in step: the
            // hardware prefetcher follows so many streams only after a ramp-up per 4 KiB page,
            // so the tile fetches the next tile's rows (contiguous after its own) line by line,
            // C / 2 lines a block. A prefetch past the weight's end never faults, and reads no
            // byte a result uses.
            const char* next = reinterpret_cast<const char*>(w + C * row_bytes) + block * (C / 2) * 64;
            for (int line = 0; line < C / 2; ++line) _mm_prefetch(next + line * 64, _MM_HINT_T0);
        }
        Planes planes[C];
        for (int c = 0; c < C; ++c) planes[c] = planes_of(w + c * row_bytes + block * kTernaryBlockBytes, mask);
        for (int r = 0; r < R; ++r) {
            const std::int8_t* row = a + r * k_padded + block * kTernary2BlockValues;
            const __m512i first = _mm512_loadu_si512(row), second = _mm512_loadu_si512(row + 64);
            for (int c = 0; c < C; ++c) {
                acc[r][c][0] = dpbusd(acc[r][c][0], planes[c].low, first);
                acc[r][c][S - 1] = dpbusd(acc[r][c][S - 1], planes[c].high, second);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        if constexpr (Split) {
            for (int c = 0; c < C; ++c) acc[r][c][0] = _mm512_add_epi32(acc[r][c][0], acc[r][c][1]);
        }
        if constexpr (C % 4 == 0) {
            for (int c = 0; c < C; c += 4) {
                const __m128i dots = _mm_sub_epi32(sums4(acc[r][c][0], acc[r][c + 1][0], acc[r][c + 2][0], acc[r][c + 3][0]),
                                                   _mm_set1_epi32(a_sums[r]));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * out_stride + c), dots);
            }
        } else {
            out[r * out_stride] = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(halves(acc[r][0][0]))) - a_sums[r];
        }
    }
}

// Rows of R activation rows against every weight row, 4 at a time, then the remainder one by one.
template <int R, int C, bool Split>
void dot_rows(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
              const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    const std::size_t row_bytes = k_padded / 4;
    std::size_t c = 0;
    for (; c + C <= w_rows; c += C) dot_tile<R, C, Split>(a, k_padded, a_sums, w + c * row_bytes, out + c, out_stride);
    if constexpr (C > 4) {
        for (; c + 4 <= w_rows; c += 4) dot_tile<R, 4, Split>(a, k_padded, a_sums, w + c * row_bytes, out + c, out_stride);
    }
    for (; c < w_rows; ++c) dot_tile<R, 1, true>(a, k_padded, a_sums, w + c * row_bytes, out + c, out_stride);
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
               const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
               std::int32_t* out, std::size_t out_stride) {
    std::size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        dot_rows<4, 4, false>(a + r * k_padded, k_padded, a_sums + r, w, w_rows, out + r * out_stride, out_stride);
    }
    const std::int8_t* rest = a + r * k_padded;
    std::int32_t* rest_out = out + r * out_stride;
    switch (rows - r) {
        case 3: dot_rows<3, 4, false>(rest, k_padded, a_sums + r, w, w_rows, rest_out, out_stride); break;
        case 2: dot_rows<2, 4, true>(rest, k_padded, a_sums + r, w, w_rows, rest_out, out_stride); break;
        case 1: dot_rows<1, 8, false>(rest, k_padded, a_sums + r, w, w_rows, rest_out, out_stride); break;
        default: break;
    }
}

// Base-3 blocks: bytes * 3^t (mod 256) brings trit t to the top, and (powered * 3) >> 8, the
// field c + 1, is 1 from 86 up and 2 from 171 up: two unsigned compares and two masked moves.
// Planes 0 | 1 and 2 | 3 share a 512-bit register (the 32 bytes broadcast to both halves and
// raised to a different power in each); plane 4 uses a 256-bit half.
__m512i times3(__m512i bytes) { return _mm512_add_epi8(bytes, _mm512_add_epi8(bytes, bytes)); }

__m512i trit_fields(__m512i powered) {
    const __m512i one = _mm512_set1_epi8(1);
    const __m512i at_least_one = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(powered, _mm512_set1_epi8(86)), one);
    return _mm512_mask_add_epi8(at_least_one, _mm512_cmpge_epu8_mask(powered, _mm512_set1_epi8(char(171))),
                                at_least_one, one);
}

template <int R>
void dot3_tile(const std::int8_t* a, std::size_t k_padded, const std::int32_t* a_sums,
               const std::uint8_t* w, std::int32_t* out, std::size_t out_stride) {
    __m512i acc01[R], acc23[R];
    __m256i acc4[R];
    for (int r = 0; r < R; ++r) {
        acc01[r] = acc23[r] = _mm512_setzero_si512();
        acc4[r] = _mm256_setzero_si256();
    }
    for (std::size_t block = 0; block < k_padded / kTernary3BlockValues; ++block) {
        const __m512i packed = _mm512_broadcast_i64x4(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + block * kTernaryBlockBytes)));
        const __m512i by3 = times3(packed), by9 = times3(by3), by27 = times3(by9), by81 = times3(by27);
        const __m512i fields01 = trit_fields(_mm512_mask_blend_epi64(0xF0, packed, by3));
        const __m512i fields23 = trit_fields(_mm512_mask_blend_epi64(0xF0, by9, by27));
        const __m256i fields4 = _mm512_castsi512_si256(trit_fields(by81));
        for (int r = 0; r < R; ++r) {
            const std::int8_t* row = a + r * k_padded + block * kTernary3BlockValues;
            acc01[r] = dpbusd(acc01[r], fields01, _mm512_loadu_si512(row));
            acc23[r] = dpbusd(acc23[r], fields23, _mm512_loadu_si512(row + 64));
            acc4[r] = dpbusd(acc4[r], fields4, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 128)));
        }
    }
    for (int r = 0; r < R; ++r) {
        const __m512i both = _mm512_add_epi32(_mm512_add_epi32(acc01[r], acc23[r]),
                                              _mm512_zextsi256_si512(acc4[r]));
        out[r * out_stride] = _mm512_reduce_add_epi32(both) - a_sums[r];
    }
}

void dot_i8_t3(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
               const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
               std::int32_t* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 5);
        // Decoding trits costs more than the 2-bit unpack, so it is shared by up to 8 rows.
        std::size_t r = 0;
        for (; r + 8 <= rows; r += 8) {
            dot3_tile<8>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
        for (; r + 4 <= rows; r += 4) {
            dot3_tile<4>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
        for (; r < rows; ++r) {
            dot3_tile<1>(a + r * k_padded, k_padded, a_sums + r, row, out + r * out_stride + c, out_stride);
        }
    }
}

// Float activations: 16 packed bytes widen to 16 lanes; for plane p the lane shifted right by
// 2p holds the field in bits 0-1, and vpermps (which reads bits 0-3 of each index) looks the
// float code up in a table that repeats every 4 entries. A tile of R activation rows x C weight
// rows shares each decode among R rows and each activation load among C weight rows (float
// rows are 4x the bytes of int8 ones, so the loads, not the FMAs, would otherwise bound it).
// The fused multiply-add by -1, 0 or +1 rounds once, like an addition. Every (row, weight row)
// pair has two accumulators, even and odd planes, in every tile shape: the order of the sums is
// fixed.
template <int R, int C>
void dot_f32_tile(const float* x, std::size_t k_padded, const std::uint8_t* w, float* out,
                  std::size_t out_stride) {
    const __m512 code_of_field = _mm512_setr_ps(-1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0);
    const std::size_t row_bytes = k_padded / 4;
    __m512 acc[R][C][2];
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) acc[r][c][0] = acc[r][c][1] = _mm512_setzero_ps();
    }
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        for (std::size_t group = 0; group < kTernaryBlockBytes; group += 16) {
            __m512i fields[C];
            for (int c = 0; c < C; ++c) {
                fields[c] = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    reinterpret_cast<const __m128i*>(w + c * row_bytes + block * kTernaryBlockBytes + group)));
            }
            for (int p = 0; p < 4; ++p) {
                __m512 code[C];
                for (int c = 0; c < C; ++c) code[c] = _mm512_permutexvar_ps(_mm512_srli_epi32(fields[c], 2 * p), code_of_field);
                const std::size_t at = block * kTernary2BlockValues + 32 * p + group;
                for (int r = 0; r < R; ++r) {
                    const __m512 values = _mm512_loadu_ps(x + r * k_padded + at);
                    for (int c = 0; c < C; ++c) acc[r][c][p & 1] = _mm512_fmadd_ps(values, code[c], acc[r][c][p & 1]);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int c = 0; c < C; ++c) out[r * out_stride + c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][c][0], acc[r][c][1]));
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
    for (; r + 4 <= rows; r += 4) dot_f32_rows<4, 2>(x + r * k_padded, k_padded, w, w_rows, out + r * out_stride, out_stride);
    for (; r < rows; ++r) dot_f32_rows<1, 1>(x + r * k_padded, k_padded, w, w_rows, out + r * out_stride, out_stride);
}

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2, dot_i8_t3, dot_f32_t2};

}  // namespace codl::avx512
