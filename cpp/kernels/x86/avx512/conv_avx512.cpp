// AVX-512 VNNI direct convolution: one 32-bit lane per output channel, 16 channels a register.
// For every kernel tap and group of 4 input channels, the 4 activation bytes of a pixel are
// broadcast to every lane and vpdpbusd multiplies them (unsigned: the int8 value plus 128) by
// the 16 x 4 signed weights of the block, four products per lane in one instruction; a tile of
// P pixels x B output blocks shares each weight load among P pixels and each broadcast among B
// blocks. The shift is removed at the end: 128 * (sum of the channel's weights).
#include <immintrin.h>

#include <cstring>

#include "codl/conv.h"

namespace codl::avx512 {
namespace {

std::int32_t load4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

__mmask16 tail_mask(std::size_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// 16 channels of y = acc * mult (+ bias), max(0, y) with relu: VMAXPS returns its second
// operand when either is NaN, so max(0, y) keeps a NaN y as the reference does. Masked loads
// cover the tail.
__m512 epilogue16(__m512i acc, const float* mult, const float* bias, bool relu, __mmask16 m) {
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(m, mult));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias));
    if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
    return v;
}

// quantize_i8 on 16 lanes: max(scaled, -127) maps NaN to -127 (the second operand), the
// conversion rounds half to even (MXCSR's default, as the reference's 1.5 * 2^23 trick).
__m128i requantize16(__m512 y, float inverse) {
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y, _mm512_set1_ps(inverse)), _mm512_set1_ps(-127.0f)),
                                         _mm512_set1_ps(127.0f));
    return _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(clamped));
}

// Where a tile's finished sums go, 16 channels of one pixel at a time: the int32 row
// (conv_row_i8), or requantized in registers into the int8 outputs (conv_row_requant_i8).
struct StoreSums {
    std::int32_t* acc;
    std::size_t co_pad;
    void operator()(std::size_t p, std::size_t co, __m512i sums) const {
        _mm512_storeu_si512(acc + p * co_pad + co, sums);
    }
};

struct Requantize {
    std::int8_t* q;
    std::size_t n;
    const float* mult;
    const float* bias;
    bool relu;
    float inverse;
    void operator()(std::size_t p, std::size_t co, __m512i sums) const {
        if (co >= n) return;  // the zero channels that pad out_c to a block
        const __mmask16 m = tail_mask(n - co);
        const __m512 y = epilogue16(sums, mult + co, bias ? bias + co : nullptr, relu, m);
        _mm_mask_storeu_epi8(q + p * n + co, m, requantize16(y, inverse));
    }
};

// Pixels p0 .. p0 + P - 1 of the call and the B blocks of channels from co0: their sums go to
// sink(p, co, 16 sums).
template <int P, int B, typename Sink>
void tile(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
          const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t p0, std::size_t co0,
          const Sink& sink) {
    const std::size_t cp = g.channels(), groups = cp / kConvChannelGroup, wp = g.padded_w();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * cp * kConvCoBlock;
    const std::size_t pixel_step = g.stride_w * cp;
    __m512i sum[P][B];
    for (int p = 0; p < P; ++p) {
        for (int b = 0; b < B; ++b) sum[p][b] = _mm512_setzero_si512();
    }
    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
        const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
            const std::uint8_t* base = image + (ih * wp + (ow0 + p0) * g.stride_w + kw * g.dilation_w) * cp;
            const std::int8_t* taps = w + (kh * g.kernel_w + kw) * groups * 64;
            for (std::size_t gi = 0; gi < groups; ++gi) {
                __m512i weights[B];
                for (int b = 0; b < B; ++b) weights[b] = _mm512_loadu_si512(taps + b * block_bytes + gi * 64);
                for (int p = 0; p < P; ++p) {
                    const __m512i x = _mm512_set1_epi32(load4(base + p * pixel_step + gi * kConvChannelGroup));
                    for (int b = 0; b < B; ++b) sum[p][b] = _mm512_dpbusd_epi32(sum[p][b], x, weights[b]);
                }
            }
        }
    }
    for (int b = 0; b < B; ++b) {
        const __m512i correction = _mm512_slli_epi32(_mm512_loadu_si512(w_sums + b * kConvCoBlock), 7);
        for (int p = 0; p < P; ++p) sink(p0 + p, co0 + b * kConvCoBlock, _mm512_sub_epi32(sum[p][b], correction));
    }
}

// The last `left` (< P + 1) pixels of a row as one tile of exactly that many: a row of 14 runs
// as 8 + 6, not 8 + 4 + 1 + 1 (a one-pixel tile has B accumulator chains, so each vpdpbusd
// waits out its predecessor's latency: on FashionCNN's 14-pixel rows those two pixels cost as
// much as eight).
template <int P, int B, typename Sink>
void last_pixels(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t p0, std::size_t left,
                 std::size_t co0, const Sink& sink) {
    if constexpr (P > 0) {
        if (left == P) {
            tile<P, B>(g, image, w, w_sums, oh, ow0, p0, co0, sink);
        } else {
            last_pixels<P - 1, B>(g, image, w, w_sums, oh, ow0, p0, left, co0, sink);
        }
    }
}

template <int B, typename Sink>
void pixels(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
            const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count, std::size_t co0,
            const Sink& sink) {
    // 12, 16 or 24 accumulators plus B weights and a broadcast in the 32 registers. Four blocks
    // a tile ran 64- and 128-channel 3x3 layers 2-4% faster than two (fewer tiles per row, so
    // less of each tile's start and requantization); 512 channels the same.
    constexpr int P = B == 1 ? 12 : B == 2 ? 8 : 6;
    std::size_t p = 0;
    for (; p + P <= count; p += P) tile<P, B>(g, image, w, w_sums, oh, ow0, p, co0, sink);
    last_pixels<P - 1, B>(g, image, w, w_sums, oh, ow0, p, count - p, co0, sink);
}

template <typename Sink>
void row(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, const std::int32_t* w_sums,
         std::size_t oh, std::size_t ow0, std::size_t count, const Sink& sink) {
    const std::size_t blocks = g.out_c_padded() / kConvCoBlock;
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    std::size_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
        pixels<4>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, oh, ow0, count, b * kConvCoBlock, sink);
    }
    for (; b + 2 <= blocks; b += 2) {
        pixels<2>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, oh, ow0, count, b * kConvCoBlock, sink);
    }
    if (b < blocks) {
        pixels<1>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, oh, ow0, count, b * kConvCoBlock, sink);
    }
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    row(g, image, w, w_sums, oh, ow0, count, StoreSums{acc, g.out_c_padded()});
}

void conv_row_requant_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                         const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                         std::size_t n, const float* mult, const float* bias, bool relu, float inverse,
                         std::int8_t* q) {
    row(g, image, w, w_sums, oh, ow0, count, Requantize{q, n, mult, bias, relu, inverse});
}

void epilogue_f32(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                  const float* mult, const float* bias, bool relu, float* y) {
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, y += n) {
        for (std::size_t i = 0; i < n; i += 16) {
            const __mmask16 m = tail_mask(n - i);
            _mm512_mask_storeu_ps(y + i, m, epilogue16(_mm512_maskz_loadu_epi32(m, acc + i), mult + i, bias ? bias + i : nullptr, relu, m));
        }
    }
}

void epilogue_i8(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                 const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q) {
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, q += n) {
        for (std::size_t i = 0; i < n; i += 16) {
            const __mmask16 m = tail_mask(n - i);
            const __m512 y = epilogue16(_mm512_maskz_loadu_epi32(m, acc + i), mult + i, bias ? bias + i : nullptr, relu, m);
            _mm_mask_storeu_epi8(q + i, m, requantize16(y, inverse));
        }
    }
}

void quantize_u8(const float* x, std::size_t n, float inverse, std::uint8_t* q) {
    const __m512 inv = _mm512_set1_ps(inverse), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i shift = _mm512_set1_epi32(128);
    for (std::size_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 scaled = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
        const __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(scaled, lo), hi));
        _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(v, shift)));
    }
}

}  // namespace

const ConvKernels conv_kernels = {conv_row_i8, epilogue_f32, epilogue_i8, quantize_u8, conv_row_requant_i8};

}  // namespace codl::avx512
