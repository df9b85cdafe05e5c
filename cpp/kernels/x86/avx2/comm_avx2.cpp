// AVX2 gradient codec kernels: Int8 and scaled sign (encode with fused error feedback,
// decode), and the top-k scans. Each value takes the same float operations as in the scalar
// reference, so results match it bit for bit; tails shorter than a vector run the same scalar
// code. The stochastic codecs forward to the reference (their cost is the generator's 64-bit
// multiplies, which AVX2 lacks).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "codl/kernel_table.h"

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
bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    return ref::comm_kernels.terngrad_encode(x, error, n, block, stream, first, scales, codes);
}
bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    return ref::comm_kernels.terngrad_decode(scales, codes, n, block, out, accumulate);
}
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    return ref::comm_kernels.qsgd_encode(x, error, n, block, levels, stream, first, norms, codes);
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
