// AVX-512 gradient codec kernels: Int8 and scaled sign (encode with fused error feedback,
// decode), TernGrad and QSGD encode (the counter-based generator in 64-bit lanes) and decode,
// and the top-k scans. Block tails run masked, so every value takes the same float operations
// as in the scalar reference and the results match it bit for bit.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "codl/comm.h"

namespace codl::avx512 {
namespace {

constexpr std::uint32_t kExponentBits = 0x7F800000u;

__mmask16 tail_mask(std::size_t remaining) {
    return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                           : static_cast<__mmask16>((1u << remaining) - 1);
}
__m512 abs_ps(__m512 v) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF)));
}
// v = x + error (masked lanes read 0), or x itself without error feedback.
__m512 load_v(const float* x, const float* error, std::size_t i, __mmask16 mask) {
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i);
    return error ? _mm512_add_ps(xv, _mm512_maskz_loadu_ps(mask, error + i)) : xv;
}
std::uint32_t block_max_bits(const float* x, const float* error, std::size_t m) {
    __m512i largest = _mm512_setzero_si512();
    for (std::size_t i = 0; i < m; i += 16) {
        const __m512 v = load_v(x, error, i, tail_mask(m - i));
        largest = _mm512_max_epu32(largest, _mm512_castps_si512(abs_ps(v)));
    }
    return static_cast<std::uint32_t>(_mm512_reduce_max_epu32(largest));
}

bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::int8_t* codes) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float max_abs;
        std::memcpy(&max_abs, &largest, sizeof max_abs);
        const float inverse = ref::int8_inverse_scale(max_abs);
        const float scale = inverse != 0.0f ? max_abs / 127.0f : 0.0f;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        const __m512 inv = _mm512_set1_ps(inverse), sc = _mm512_set1_ps(scale);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const __m512 v = load_v(xb, eb, i, mask);
            // cvtps rounds half to even (the default MXCSR mode), as nearbyint does.
            const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
            _mm_mask_storeu_epi8(codes + begin + i, mask, _mm512_cvtsepi32_epi8(q));
            if (eb) {
                const __m512 residual = _mm512_sub_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(q), sc));
                _mm512_mask_storeu_ps(eb + i, mask, residual);
            }
        }
    }
    return true;
}

void int8_decode(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float scale;
        std::memcpy(&scale, scales + 4 * b, sizeof scale);
        const __m512 sc = _mm512_set1_ps(scale);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const __m128i q = _mm_maskz_loadu_epi8(mask, codes + begin + i);
            __m512 value = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), sc);
            if (accumulate) value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out + begin + i), value);
            _mm512_mask_storeu_ps(out + begin + i, mask, value);
        }
    }
}

bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::uint8_t* bits) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        // The 16 lanes of the reference's sum order are this register's lanes; masked-off
        // lanes add +0, which leaves a sum of magnitudes unchanged.
        __m512 sums = _mm512_setzero_ps();
        for (std::size_t i = 0; i < m; i += 16) {
            sums = _mm512_add_ps(sums, abs_ps(load_v(xb, eb, i, tail_mask(m - i))));
        }
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, sums);
        const float scale = ref::sign_block_scale(lanes, m);
        if (!std::isfinite(scale)) return false;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        const __m512 positive = _mm512_set1_ps(scale), negative = _mm512_set1_ps(-scale);
        std::uint8_t* out = bits + begin / 8;
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const __m512 v = load_v(xb, eb, i, mask);
            const __mmask16 sign = _mm512_movepi32_mask(_mm512_castps_si512(v)) & mask;
            const auto word = static_cast<std::uint16_t>(sign);
            std::memcpy(out + i / 8, &word, m - i >= 16 ? 2 : (m - i + 7) / 8);
            if (eb) {
                const __m512 sent = _mm512_mask_blend_ps(sign, positive, negative);
                _mm512_mask_storeu_ps(eb + i, mask, _mm512_sub_ps(v, sent));
            }
        }
    }
    return true;
}

void sign_decode(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float scale;
        std::memcpy(&scale, scales + 4 * b, sizeof scale);
        const __m512 positive = _mm512_set1_ps(scale), negative = _mm512_set1_ps(-scale);
        const std::uint8_t* in = bits + begin / 8;
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            std::uint16_t word = 0;
            std::memcpy(&word, in + i / 8, m - i >= 16 ? 2 : (m - i + 7) / 8);
            __m512 value = _mm512_mask_blend_ps(static_cast<__mmask16>(word), positive, negative);
            float* o = out + begin + i;
            if (accumulate) value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), value);
            _mm512_mask_storeu_ps(o, mask, value);
        }
    }
}

bool topk_accumulate(const float* x, float* error, float* momentum, float m, std::size_t n) {
    const __m512 factor = _mm512_set1_ps(m);
    __m512i largest = _mm512_setzero_si512();
    for (std::size_t i = 0; i < n; i += 16) {
        const __mmask16 mask = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(mask, x + i);
        if (error) {
            if (momentum) {
                v = _mm512_add_ps(_mm512_mul_ps(factor, _mm512_maskz_loadu_ps(mask, momentum + i)), v);
                _mm512_mask_storeu_ps(momentum + i, mask, v);
            }
            v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, error + i), v);
            _mm512_mask_storeu_ps(error + i, mask, v);
        }
        largest = _mm512_max_epu32(largest, _mm512_castps_si512(abs_ps(v)));
    }
    return static_cast<std::uint32_t>(_mm512_reduce_max_epu32(largest)) < kExponentBits;
}

std::size_t count_at_least(const float* v, std::size_t n, float threshold) {
    const __m512 t = _mm512_set1_ps(threshold);
    std::size_t count = 0;
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const auto k0 = _mm512_cmp_ps_mask(abs_ps(_mm512_loadu_ps(v + i)), t, _CMP_GE_OQ);
        const auto k1 = _mm512_cmp_ps_mask(abs_ps(_mm512_loadu_ps(v + i + 16)), t, _CMP_GE_OQ);
        const auto k2 = _mm512_cmp_ps_mask(abs_ps(_mm512_loadu_ps(v + i + 32)), t, _CMP_GE_OQ);
        const auto k3 = _mm512_cmp_ps_mask(abs_ps(_mm512_loadu_ps(v + i + 48)), t, _CMP_GE_OQ);
        count += static_cast<std::size_t>(__builtin_popcountll(
            static_cast<std::uint64_t>(k0) | static_cast<std::uint64_t>(k1) << 16 |
            static_cast<std::uint64_t>(k2) << 32 | static_cast<std::uint64_t>(k3) << 48));
    }
    for (; i < n; i += 16) {
        const __mmask16 mask = tail_mask(n - i);
        const __m512 a = abs_ps(_mm512_maskz_loadu_ps(mask, v + i));
        count += static_cast<std::size_t>(
            __builtin_popcount(_mm512_mask_cmp_ps_mask(mask, a, t, _CMP_GE_OQ)));
    }
    return count;
}

std::size_t gather_at_least(const float* v, std::size_t n, float threshold, std::uint32_t base,
                            std::uint32_t* indices) {
    const __m512 t = _mm512_set1_ps(threshold);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; i += 16) {
        const __mmask16 mask = tail_mask(n - i);
        const __m512 a = abs_ps(_mm512_maskz_loadu_ps(mask, v + i));
        const __mmask16 hit = _mm512_mask_cmp_ps_mask(mask, a, t, _CMP_GE_OQ);
        if (!hit) continue;  // the common case: selections are sparse
        // Compress in a register and store only the packed lanes (a compressing store to
        // memory is slow on AMD Zen 4).
        const __m512i index = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base + i)), iota);
        const int hits = __builtin_popcount(hit);
        _mm512_mask_storeu_epi32(indices + count, static_cast<__mmask16>((1u << hits) - 1),
                                 _mm512_maskz_compress_epi32(hit, index));
        count += static_cast<std::size_t>(hits);
    }
    return count;
}

// Forwarders to the scalar reference for the kernels this ISA does not speed up.
// The counter-based generator for 16 consecutive indices: the reference's splitmix64 in
// 64-bit lanes (AVX-512DQ multiplies), two halves of 8, then the top 24 bits as floats.
__m512i mix64(__m512i z) {
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                           _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ull)));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                           _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull)));
    return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}
__m512 uniforms(std::uint64_t stream, std::uint64_t first) {
    const __m512i golden = _mm512_set1_epi64(static_cast<long long>(0x9E3779B97F4A7C15ull));
    const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i base = _mm512_set1_epi64(static_cast<long long>(first));
    const __m512i s = _mm512_set1_epi64(static_cast<long long>(stream));
    const __m512i low = _mm512_add_epi64(base, lane);
    const __m512i high = _mm512_add_epi64(low, _mm512_set1_epi64(8));
    const __m512i z0 = _mm512_srli_epi64(mix64(_mm512_add_epi64(s, _mm512_mullo_epi64(low, golden))), 40);
    const __m512i z1 = _mm512_srli_epi64(mix64(_mm512_add_epi64(s, _mm512_mullo_epi64(high, golden))), 40);
    // Below 2^24: the conversions are exact, as the reference's.
    const __m512 u = _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtepu64_ps(z0)),
                                        _mm512_cvtepu64_ps(z1), 1);
    return _mm512_mul_ps(u, _mm512_set1_ps(0x1p-24f));
}

bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float s;
        std::memcpy(&s, &largest, sizeof s);
        std::memcpy(scales + 4 * b, &s, sizeof s);
        const __m512 sv = _mm512_set1_ps(s);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const __m512 v = load_v(xb, eb, i, mask);
            // Keep with probability |v| / s; with s = 0 the quotient is NaN and nothing is kept,
            // as the reference decides.
            const __m512 p = _mm512_div_ps(abs_ps(v), sv);
            const __mmask16 keep =
                _mm512_mask_cmp_ps_mask(mask, uniforms(stream, first + begin + i), p, _CMP_LT_OQ);
            const __mmask16 negative = _mm512_movepi32_mask(_mm512_castps_si512(v));
            // code + 1: 1 dropped, 2 kept positive, 0 kept negative.
            __m512i field = _mm512_maskz_mov_epi32(mask, _mm512_set1_epi32(1));
            field = _mm512_mask_mov_epi32(field, keep & ~negative, _mm512_set1_epi32(2));
            field = _mm512_mask_mov_epi32(field, keep & negative, _mm512_setzero_si512());
            const auto word = static_cast<std::uint32_t>(
                _mm512_reduce_or_epi32(_mm512_sllv_epi32(field, shifts)));
            // begin + i is a multiple of 8: these 16 values fill whole bytes from (begin + i) / 4.
            std::memcpy(codes + (begin + i) / 4, &word, m - i >= 16 ? 4 : (m - i + 3) / 4);
            if (eb) {
                const __m512 code = _mm512_cvtepi32_ps(_mm512_sub_epi32(field, _mm512_set1_epi32(1)));
                _mm512_mask_storeu_ps(eb + i, mask, _mm512_sub_ps(v, _mm512_mul_ps(code, sv)));
            }
        }
    }
    return true;
}

bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i three = _mm512_set1_epi32(3);
    __mmask16 invalid = 0;
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float s;
        std::memcpy(&s, scales + 4 * b, sizeof s);
        const __m512 sv = _mm512_set1_ps(s);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            std::uint32_t word = 0;  // 16 fields from a byte boundary ((begin + i) % 8 == 0)
            std::memcpy(&word, codes + (begin + i) / 4, m - i >= 16 ? 4 : (m - i + 3) / 4);
            const __m512i field = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), shifts), three);
            invalid |= _mm512_mask_cmpeq_epi32_mask(mask, field, three);
            __m512 value = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(field, _mm512_set1_epi32(1))), sv);
            float* o = out + begin + i;
            if (accumulate) value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), value);
            _mm512_mask_storeu_ps(o, mask, value);
        }
    }
    return invalid == 0;
}
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    unsigned width = 1;
    while ((1u << (width - 1)) < levels) ++width;  // qsgd_field_bits
    const float intervals = static_cast<float>(levels - 1);
    const __m512 iv = _mm512_set1_ps(intervals);
    const __m512i top_level = _mm512_set1_epi32(static_cast<int>(levels - 1));
    const __m512i sign_field = _mm512_set1_epi32(static_cast<int>(1u << (width - 1)));
    ref::FieldWriter writer{codes, width, 0, 0};  // the reference's, fed a vector at a time
    alignas(64) std::uint32_t fields[16];
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float norm;
        if (!ref::qsgd_block_norm(xb, eb, m, &norm)) return false;
        std::memcpy(norms + 4 * b, &norm, sizeof norm);
        const __m512 nv = _mm512_set1_ps(norm);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const __m512 v = load_v(xb, eb, i, mask);
            __m512i level = _mm512_setzero_si512();
            if (norm > 0.0f) {
                const __m512 r = _mm512_mul_ps(_mm512_div_ps(abs_ps(v), nv), iv);
                const __m512 lower = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                const __mmask16 up = _mm512_cmp_ps_mask(uniforms(stream, first + begin + i),
                                                        _mm512_sub_ps(r, lower), _CMP_LT_OQ);
                level = _mm512_cvttps_epi32(lower);
                level = _mm512_mask_add_epi32(level, up, level, _mm512_set1_epi32(1));
                level = _mm512_min_epu32(level, top_level);
            }
            const __mmask16 negative = _mm512_movepi32_mask(_mm512_castps_si512(v)) &
                                       _mm512_test_epi32_mask(level, level);
            _mm512_store_si512(fields, _mm512_mask_or_epi32(level, negative, level, sign_field));
            const std::size_t count = m - i < 16 ? m - i : 16;
            ref::write_fields(writer, fields, count);
            if (eb) {
                // (norm * level) / s, negated where negative: the reference's order.
                __m512 sent = _mm512_div_ps(_mm512_mul_ps(nv, _mm512_cvtepi32_ps(level)), iv);
                sent = _mm512_castsi512_ps(_mm512_mask_xor_epi32(
                    _mm512_castps_si512(sent), negative, _mm512_castps_si512(sent),
                    _mm512_set1_epi32(static_cast<int>(0x80000000u))));
                _mm512_mask_storeu_ps(eb + i, mask, _mm512_sub_ps(v, sent));
            }
        }
    }
    ref::flush_fields(writer);
    return true;
}

bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    unsigned width = 1;
    while ((1u << (width - 1)) < levels) ++width;  // qsgd_field_bits
    const float intervals = static_cast<float>(levels - 1);
    const std::size_t code_bytes = (n * width + 7) / 8;
    const __m512 iv = _mm512_set1_ps(intervals);
    const __m512i lane_bits = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(static_cast<int>(width)));
    const __m512i byte_offsets = _mm512_srli_epi32(lane_bits, 3);
    const __m512i bit_shifts = _mm512_and_si512(lane_bits, _mm512_set1_epi32(7));
    const __m512i level_mask = _mm512_set1_epi32(static_cast<int>((1u << (width - 1)) - 1));
    const __m512i top_level = _mm512_set1_epi32(static_cast<int>(levels - 1));
    bool valid = true;
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float norm;
        std::memcpy(&norm, norms + 4 * b, sizeof norm);
        const __m512 nv = _mm512_set1_ps(norm);
        for (std::size_t i = 0; i < m; i += 16) {
            const __mmask16 mask = tail_mask(m - i);
            const std::size_t count = m - i < 16 ? m - i : 16;
            // begin + i is a multiple of 8 values, so these fields start on a byte.
            const std::uint8_t* group = codes + (begin + i) * width / 8;
            float* o = out + begin + i;
            if (static_cast<std::size_t>(group - codes) + 2 * width + 4 > code_bytes) {
                // Near the end a 4-byte gather could read past the payload: the reference.
                valid = ref::comm_kernels.qsgd_decode(norms + 4 * b, group, count, block, levels,
                                                      o, accumulate) && valid;
                continue;
            }
            // Each lane reads the 32 bits holding its field (width <= 9, shift <= 7).
            const __m512i words = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask,
                                                              byte_offsets, group, 1);
            const __m512i field = _mm512_srlv_epi32(words, bit_shifts);
            const __m512i level = _mm512_and_si512(field, level_mask);
            if (_mm512_mask_cmpgt_epu32_mask(mask, level, top_level)) valid = false;
            const __mmask16 negative = _mm512_test_epi32_mask(
                field, _mm512_set1_epi32(static_cast<int>(1u << (width - 1))));
            __m512 value = _mm512_div_ps(_mm512_mul_ps(nv, _mm512_cvtepi32_ps(level)), iv);
            value = _mm512_castsi512_ps(_mm512_mask_xor_epi32(
                _mm512_castps_si512(value), negative, _mm512_castps_si512(value),
                _mm512_set1_epi32(static_cast<int>(0x80000000u))));
            if (accumulate) value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, o), value);
            _mm512_mask_storeu_ps(o, mask, value);
        }
    }
    return valid;
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace codl::avx512
