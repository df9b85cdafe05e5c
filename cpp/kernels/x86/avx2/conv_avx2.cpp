// AVX2 direct convolution. AVX2 has no VNNI, and vpmaddubsw saturates its 16-bit pair sums for
// int8 weights (255 * 127 * 2 > 32767), so the bytes are widened to 16 bits and vpmaddwd sums
// exact pairs: for a group of 4 input channels, one register holds 4 output channels x 4
// weights, times the pixel's 4 activations broadcast, giving two partial sums per channel that
// are added pairwise once at the end (the sums are linear, so pairs can wait). A tile is P
// pixels x 8 output channels (half a weight block). The activations are the int8 value plus
// 128; 128 * (sum of the channel's weights) is subtracted at the end.
#include <immintrin.h>

#include <cstring>

#include "codl/conv.h"

namespace codl::avx2 {
namespace {

std::int32_t load4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <int P>
void tile(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
          const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::int32_t* acc) {
    const std::size_t cp = g.channels(), groups = cp / kConvChannelGroup, wp = g.padded_w();
    const std::size_t co_pad = g.out_c_padded();
    const std::size_t pixel_step = g.stride_w * cp;
    __m256i low[P], high[P];  // pair sums of channels 0-3 and 4-7 of the half block
    for (int p = 0; p < P; ++p) low[p] = high[p] = _mm256_setzero_si256();
    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
        const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
            const std::uint8_t* base = image + (ih * wp + ow0 * g.stride_w + kw * g.dilation_w) * cp;
            const std::int8_t* taps = w + (kh * g.kernel_w + kw) * groups * 64;
            for (std::size_t gi = 0; gi < groups; ++gi) {
                const std::int8_t* group = taps + gi * 64;
                const __m256i w_low = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group)));
                const __m256i w_high = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16)));
                for (int p = 0; p < P; ++p) {
                    const __m128i bytes = _mm_cvtsi32_si128(load4(base + p * pixel_step + gi * kConvChannelGroup));
                    const __m256i x = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(bytes));
                    low[p] = _mm256_add_epi32(low[p], _mm256_madd_epi16(x, w_low));
                    high[p] = _mm256_add_epi32(high[p], _mm256_madd_epi16(x, w_high));
                }
            }
        }
    }
    const __m256i correction = _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_sums)), 7);
    for (int p = 0; p < P; ++p) {
        // hadd gives channels 0 1 4 5 | 2 3 6 7; the permute puts them in order.
        const __m256i sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(low[p], high[p]), 0xD8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + p * co_pad), _mm256_sub_epi32(sums, correction));
    }
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    const std::size_t co_pad = g.out_c_padded();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    for (std::size_t half = 0; half < co_pad / 8; ++half) {
        // Half h of block b: its weights are bytes 32 (h % 2) .. + 32 of each 64-byte group.
        const std::int8_t* wh = w + (half / 2) * block_bytes + (half % 2) * 32;
        const std::int32_t* sums = w_sums + half * 8;
        std::int32_t* out = acc + half * 8;
        std::size_t p = 0;
        for (; p + 4 <= count; p += 4) tile<4>(g, image, wh, sums, oh, ow0 + p, out + p * co_pad);
        for (; p < count; ++p) tile<1>(g, image, wh, sums, oh, ow0 + p, out + p * co_pad);
    }
}

// 8 channels of y = acc * mult (+ bias), max(0, y) with relu (VMAXPS keeps a NaN second
// operand, as the reference keeps NaN); a tail of fewer than 8 runs the same formula in scalar.
__m256 epilogue8(const std::int32_t* acc, const float* mult, const float* bias, bool relu) {
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc))),
                             _mm256_loadu_ps(mult));
    if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    if (relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);
    return v;
}

float epilogue1(std::int32_t acc, float mult, const float* bias, bool relu) {
    float v = static_cast<float>(acc) * mult;
    if (bias) v += *bias;
    return relu && v < 0.0f ? 0.0f : v;
}

void epilogue_f32(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                  const float* mult, const float* bias, bool relu, float* y) {
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, y += n) {
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, epilogue8(acc + i, mult + i, bias ? bias + i : nullptr, relu));
        for (; i < n; ++i) y[i] = epilogue1(acc[i], mult[i], bias ? bias + i : nullptr, relu);
    }
}

void epilogue_i8(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                 const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q) {
    const __m256 inv = _mm256_set1_ps(inverse), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, q += n) {
        std::size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 y = epilogue8(acc + i, mult + i, bias ? bias + i : nullptr, relu);
            const __m256i q32 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(y, inv), lo), hi));
            const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q32), _mm256_extracti128_si256(q32, 1));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(q16, q16));
        }
        for (; i < n; ++i) {
            q[i] = static_cast<std::int8_t>(
                quantize_i8(epilogue1(acc[i], mult[i], bias ? bias + i : nullptr, relu), inverse));
        }
    }
}

void quantize_u8(const float* x, std::size_t n, float inverse, std::uint8_t* q) {
    const __m256 inv = _mm256_set1_ps(inverse), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m128i shift = _mm_set1_epi8(static_cast<char>(0x80));
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
        const __m256i q32 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(scaled, lo), hi));
        const __m128i q16 = _mm_packs_epi32(_mm256_castsi256_si128(q32), _mm256_extracti128_si256(q32, 1));
        // int8 plus 128 is the int8 with its sign bit flipped.
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_xor_si128(_mm_packs_epi16(q16, q16), shift));
    }
    for (; i < n; ++i) q[i] = static_cast<std::uint8_t>(quantize_i8(x[i], inverse) + 128);
}

}  // namespace

const ConvKernels conv_kernels = {conv_row_i8, epilogue_f32, epilogue_i8, quantize_u8};

}  // namespace codl::avx2
