// AVX2 gradient codec kernels: Int8 and scaled sign (encode with fused error feedback,
// decode), TernGrad and QSGD encode (the generator's 64-bit multiplies from 32-bit ones), and
// the top-k scans. Each value takes the same float operations as in the scalar reference, so
// results match it bit for bit; tails shorter than a vector run the same scalar code. The
// stochastic decoders forward to the reference.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codl/comm.h"

namespace codl::avx2 {
namespace {

constexpr std::uint32_t kExponentBits = 0x7F800000u;

__m256 abs_ps(__m256 v) {
    return _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF)));
}
// v = x + error, or x itself without error feedback (x + 0 would turn -0 into +0).
__m256 load_v(const float* x, const float* error, std::size_t i) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    return error ? _mm256_add_ps(xv, _mm256_loadu_ps(error + i)) : xv;
}
float scalar_v(const float* x, const float* error, std::size_t i) {
    return error ? x[i] + error[i] : x[i];
}
std::uint32_t magnitude_bits(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return bits & 0x7FFFFFFFu;
}
std::uint32_t horizontal_max(__m256i v) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
    return static_cast<std::uint32_t>(_mm_cvtsi128_si32(m));
}
std::uint32_t block_max_bits(const float* x, const float* error, std::size_t m) {
    __m256i largest = _mm256_setzero_si256();
    std::size_t i = 0;
    for (; i + 8 <= m; i += 8) {
        largest = _mm256_max_epu32(largest, _mm256_castps_si256(abs_ps(load_v(x, error, i))));
    }
    std::uint32_t result = horizontal_max(largest);
    for (; i < m; ++i) result = std::max(result, magnitude_bits(scalar_v(x, error, i)));
    return result;
}

bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::int8_t* codes) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        std::int8_t* cb = codes + begin;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float max_abs;
        std::memcpy(&max_abs, &largest, sizeof max_abs);
        const float inverse = ref::int8_inverse_scale(max_abs);
        const float scale = inverse != 0.0f ? max_abs / 127.0f : 0.0f;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        const __m256 inv = _mm256_set1_ps(inverse), sc = _mm256_set1_ps(scale);
        std::size_t i = 0;
        for (; i + 8 <= m; i += 8) {
            const __m256 v = load_v(xb, eb, i);
            // cvtps rounds half to even (the default MXCSR mode), as nearbyint does.
            const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
            const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(cb + i), _mm_packs_epi16(words, words));
            if (eb) {
                _mm256_storeu_ps(eb + i, _mm256_sub_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(q), sc)));
            }
        }
        for (; i < m; ++i) {
            const float v = scalar_v(xb, eb, i);
            const int q = static_cast<int>(std::nearbyint(v * inverse));
            cb[i] = static_cast<std::int8_t>(q);
            if (eb) eb[i] = v - static_cast<float>(q) * scale;
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
        const __m256 sc = _mm256_set1_ps(scale);
        const std::int8_t* cb = codes + begin;
        float* ob = out + begin;
        std::size_t i = 0;
        for (; i + 8 <= m; i += 8) {
            const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(cb + i));
            __m256 value = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), sc);
            if (accumulate) value = _mm256_add_ps(_mm256_loadu_ps(ob + i), value);
            _mm256_storeu_ps(ob + i, value);
        }
        for (; i < m; ++i) {
            const float value = static_cast<float>(cb[i]) * scale;
            ob[i] = accumulate ? ob[i] + value : value;
        }
    }
}

bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::uint8_t* bits) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        // Lanes 0-7 and 8-15 of the reference's sum order, then its scalar tail.
        __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();
        std::size_t i = 0;
        for (; i + 16 <= m; i += 16) {
            low = _mm256_add_ps(low, abs_ps(load_v(xb, eb, i)));
            high = _mm256_add_ps(high, abs_ps(load_v(xb, eb, i + 8)));
        }
        float lanes[16];
        _mm256_storeu_ps(lanes, low);
        _mm256_storeu_ps(lanes + 8, high);
        for (; i < m; ++i) lanes[i % 16] += std::fabs(scalar_v(xb, eb, i));
        const float scale = ref::sign_block_scale(lanes, m);
        if (!std::isfinite(scale)) return false;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        const __m256 positive = _mm256_set1_ps(scale), negative = _mm256_set1_ps(-scale);
        std::uint8_t* out = bits + begin / 8;
        for (i = 0; i + 8 <= m; i += 8) {
            const __m256 v = load_v(xb, eb, i);
            // movemask and blendv both read exactly the IEEE sign bit of v.
            out[i / 8] = static_cast<std::uint8_t>(_mm256_movemask_ps(v));
            if (eb) _mm256_storeu_ps(eb + i, _mm256_sub_ps(v, _mm256_blendv_ps(positive, negative, v)));
        }
        if (i < m) {
            unsigned packed = 0;
            for (std::size_t j = i; j < m; ++j) {
                const float v = scalar_v(xb, eb, j);
                const bool sign = std::signbit(v);
                packed |= static_cast<unsigned>(sign) << (j - i);
                if (eb) eb[j] = v - (sign ? -scale : scale);
            }
            out[i / 8] = static_cast<std::uint8_t>(packed);
        }
    }
    return true;
}

void sign_decode(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float scale;
        std::memcpy(&scale, scales + 4 * b, sizeof scale);
        const __m256 positive = _mm256_set1_ps(scale), negative = _mm256_set1_ps(-scale);
        const std::uint8_t* in = bits + begin / 8;
        float* ob = out + begin;
        std::size_t i = 0;
        for (; i + 8 <= m; i += 8) {
            const __m256i byte = _mm256_set1_epi32(in[i / 8]);
            const __m256 set = _mm256_castsi256_ps(
                _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), lane_bit));
            __m256 value = _mm256_blendv_ps(positive, negative, set);
            if (accumulate) value = _mm256_add_ps(_mm256_loadu_ps(ob + i), value);
            _mm256_storeu_ps(ob + i, value);
        }
        for (; i < m; ++i) {
            const float value = ((in[i / 8] >> (i % 8)) & 1) ? -scale : scale;
            ob[i] = accumulate ? ob[i] + value : value;
        }
    }
}

bool topk_accumulate(const float* x, float* error, float* momentum, float m, std::size_t n) {
    const __m256 factor = _mm256_set1_ps(m);
    __m256i largest = _mm256_setzero_si256();
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        if (error) {
            if (momentum) {
                v = _mm256_add_ps(_mm256_mul_ps(factor, _mm256_loadu_ps(momentum + i)), v);
                _mm256_storeu_ps(momentum + i, v);
            }
            v = _mm256_add_ps(_mm256_loadu_ps(error + i), v);
            _mm256_storeu_ps(error + i, v);
        }
        largest = _mm256_max_epu32(largest, _mm256_castps_si256(abs_ps(v)));
    }
    const bool finite = horizontal_max(largest) < kExponentBits;
    return ref::comm_kernels.topk_accumulate(x + i, error ? error + i : nullptr,
                                             momentum ? momentum + i : nullptr, m, n - i) &&
           finite;
}

std::size_t count_at_least(const float* v, std::size_t n, float threshold) {
    const __m256 t = _mm256_set1_ps(threshold);
    std::size_t count = 0, i = 0;
    for (; i + 32 <= n; i += 32) {
        const auto mask = [&](std::size_t at) {
            return static_cast<std::uint32_t>(
                _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(v + at)), t, _CMP_GE_OQ)));
        };
        count += static_cast<std::size_t>(__builtin_popcount(
            mask(i) | mask(i + 8) << 8 | mask(i + 16) << 16 | mask(i + 24) << 24));
    }
    return count + ref::comm_kernels.count_at_least(v + i, n - i, threshold);
}

std::size_t gather_at_least(const float* v, std::size_t n, float threshold, std::uint32_t base,
                            std::uint32_t* indices) {
    const __m256 t = _mm256_set1_ps(threshold);
    std::size_t count = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        unsigned hit = static_cast<unsigned>(
            _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(v + i)), t, _CMP_GE_OQ)));
        while (hit) {  // sparse: a few set bits per thousand values
            indices[count++] = base + static_cast<std::uint32_t>(i) + static_cast<std::uint32_t>(__builtin_ctz(hit));
            hit &= hit - 1;
        }
    }
    return count + ref::comm_kernels.gather_at_least(v + i, n - i, threshold,
                                                     base + static_cast<std::uint32_t>(i),
                                                     indices + count);
}

// Forwarders to the scalar reference for the kernels this ISA does not speed up.
// The counter-based generator for 8 consecutive indices. AVX2 has no 64-bit multiply: each is
// lo*lo + (hi*lo + lo*hi) << 32 from 32-bit products, exact modulo 2^64 as the reference's.
__m256i mullo64(__m256i a, std::uint64_t constant) {
    const __m256i b = _mm256_set1_epi64x(static_cast<long long>(constant));
    const __m256i b_high = _mm256_set1_epi64x(static_cast<long long>(constant >> 32));
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                           _mm256_mul_epu32(a, b_high));
    return _mm256_add_epi64(_mm256_mul_epu32(a, b), _mm256_slli_epi64(cross, 32));
}
__m256i mix64(__m256i z) {
    z = mullo64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xBF58476D1CE4E5B9ull);
    z = mullo64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94D049BB133111EBull);
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}
__m256 uniforms(std::uint64_t stream, std::uint64_t first) {
    const __m256i s = _mm256_set1_epi64x(static_cast<long long>(stream));
    const __m256i low = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<long long>(first)),
                                         _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256i high = _mm256_add_epi64(low, _mm256_set1_epi64x(4));
    const __m256i z0 = _mm256_srli_epi64(mix64(_mm256_add_epi64(s, mullo64(low, 0x9E3779B97F4A7C15ull))), 40);
    const __m256i z1 = _mm256_srli_epi64(mix64(_mm256_add_epi64(s, mullo64(high, 0x9E3779B97F4A7C15ull))), 40);
    // Each draw is below 2^24: its low 32 bits, gathered in order, convert exactly.
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m128i d0 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(z0, order));
    const __m128i d1 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(z1, order));
    const __m256 u = _mm256_cvtepi32_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(d0), d1, 1));
    return _mm256_mul_ps(u, _mm256_set1_ps(0x1p-24f));
}
std::uint32_t horizontal_or(__m256i v) {
    __m128i m = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_or_si128(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_or_si128(m, _mm_shuffle_epi32(m, 0xB1));
    return static_cast<std::uint32_t>(_mm_cvtsi128_si32(m));
}

bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i one = _mm256_set1_epi32(1);
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float s;
        std::memcpy(&s, &largest, sizeof s);
        std::memcpy(scales + 4 * b, &s, sizeof s);
        const __m256 sv = _mm256_set1_ps(s);
        std::size_t i = 0;
        for (; i + 8 <= m; i += 8) {
            const __m256 v = load_v(xb, eb, i);
            // Keep with probability |v| / s; with s = 0 the quotient is NaN and nothing is kept.
            const __m256i keep = _mm256_castps_si256(_mm256_cmp_ps(
                uniforms(stream, first + begin + i), _mm256_div_ps(abs_ps(v), sv), _CMP_LT_OQ));
            // code + 1 = 1 + keep * (negative ? -1 : +1); srai of the sign gives -1 or 0.
            const __m256i direction = _mm256_or_si256(_mm256_srai_epi32(_mm256_castps_si256(v), 31), one);
            const __m256i field = _mm256_add_epi32(one, _mm256_and_si256(keep, direction));
            const auto word = static_cast<std::uint16_t>(horizontal_or(_mm256_sllv_epi32(field, shifts)));
            std::memcpy(codes + (begin + i) / 4, &word, sizeof word);
            if (eb) {
                const __m256 code = _mm256_cvtepi32_ps(_mm256_sub_epi32(field, one));
                _mm256_storeu_ps(eb + i, _mm256_sub_ps(v, _mm256_mul_ps(code, sv)));
            }
        }
        if (i < m) {  // fewer than 8 values: the reference's steps, one value at a time
            std::uint8_t packed[2] = {0, 0};
            for (std::size_t j = i; j < m; ++j) {
                const float v = scalar_v(xb, eb, j);
                const bool keep = largest != 0 && counter_uniform(stream, first + begin + j) < std::fabs(v) / s;
                const int code = keep ? (std::signbit(v) ? -1 : 1) : 0;
                packed[(j - i) / 4] = static_cast<std::uint8_t>(packed[(j - i) / 4] | (code + 1) << (2 * ((j - i) % 4)));
                if (eb) eb[j] = v - static_cast<float>(code) * s;
            }
            std::memcpy(codes + (begin + i) / 4, packed, (m - i + 3) / 4);
        }
    }
    return true;
}

bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    return ref::comm_kernels.terngrad_decode(scales, codes, n, block, out, accumulate);
}
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    const unsigned width = qsgd_field_bits(levels);
    const float intervals = static_cast<float>(levels - 1);
    const __m256 iv = _mm256_set1_ps(intervals);
    const __m256i top_level = _mm256_set1_epi32(static_cast<int>(levels - 1));
    const __m256i sign_mask = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    ref::FieldWriter writer{codes, width, 0, 0};  // the reference's, fed 8 fields at a time
    alignas(32) std::uint32_t fields[8];
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float norm;
        if (!ref::qsgd_block_norm(xb, eb, m, &norm)) return false;
        std::memcpy(norms + 4 * b, &norm, sizeof norm);
        const __m256 nv = _mm256_set1_ps(norm);
        std::size_t i = 0;
        for (; norm > 0.0f && i + 8 <= m; i += 8) {
            const __m256 v = load_v(xb, eb, i);
            const __m256 r = _mm256_mul_ps(_mm256_div_ps(abs_ps(v), nv), iv);
            const __m256 lower = _mm256_floor_ps(r);
            const __m256i up = _mm256_castps_si256(
                _mm256_cmp_ps(uniforms(stream, first + begin + i), _mm256_sub_ps(r, lower), _CMP_LT_OQ));
            // up is all ones (-1) where the value rounds up.
            __m256i level = _mm256_sub_epi32(_mm256_cvttps_epi32(lower), up);
            level = _mm256_min_epu32(level, top_level);
            const __m256i nonzero = _mm256_xor_si256(_mm256_cmpeq_epi32(level, _mm256_setzero_si256()),
                                                     _mm256_set1_epi32(-1));
            const __m256i negative = _mm256_and_si256(_mm256_srai_epi32(_mm256_castps_si256(v), 31), nonzero);
            const __m256i sign_field = _mm256_set1_epi32(static_cast<int>(1u << (width - 1)));
            _mm256_store_si256(reinterpret_cast<__m256i*>(fields),
                               _mm256_or_si256(level, _mm256_and_si256(negative, sign_field)));
            ref::write_fields(writer, fields, 8);
            if (eb) {
                // (norm * level) / s, negated where negative: the reference's order.
                const __m256 magnitude = _mm256_div_ps(_mm256_mul_ps(nv, _mm256_cvtepi32_ps(level)), iv);
                const __m256 sent = _mm256_xor_ps(magnitude, _mm256_castsi256_ps(_mm256_and_si256(negative, sign_mask)));
                _mm256_storeu_ps(eb + i, _mm256_sub_ps(v, sent));
            }
        }
        for (; i < m; ++i) {  // the tail, or every value of an all-zero block
            const float v = scalar_v(xb, eb, i);
            unsigned level = 0;
            if (norm > 0.0f) {
                const float r = std::fabs(v) / norm * intervals;
                const float lower = std::floor(r);
                level = static_cast<unsigned>(lower) +
                        (counter_uniform(stream, first + begin + i) < r - lower ? 1u : 0u);
                if (level > levels - 1) level = levels - 1;
            }
            const bool negative = level != 0 && std::signbit(v);
            const std::uint32_t field = level | static_cast<unsigned>(negative) << (width - 1);
            ref::write_fields(writer, &field, 1);
            if (eb) {
                const float magnitude = norm * static_cast<float>(level) / intervals;
                eb[i] = v - (negative ? -magnitude : magnitude);
            }
        }
    }
    ref::flush_fields(writer);
    return true;
}

bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    return ref::comm_kernels.qsgd_decode(norms, codes, n, block, levels, out, accumulate);
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace codl::avx2
