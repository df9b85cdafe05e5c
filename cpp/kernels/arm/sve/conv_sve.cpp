// SVE direct convolution, vector-length agnostic: one 32-bit lane per output channel, a
// 16-channel weight block covered by 16 / svcntw() vectors (one predicated vector from 512 bits
// up). For every tap and group of 4 input channels the pixel's 4 activation bytes are broadcast
// to every lane, turned back into int8 (xor 0x80 undoes the +128 shift) and SDOT multiplies them
// by the 4 signed weights of each channel, so no correction term is needed. Up to 4 pixels share
// each weight load (SVE values cannot live in arrays, hence the named accumulators).
#include <arm_sve.h>

#include <cstring>

#include "codl/conv.h"

namespace codl::sve {
namespace {

std::uint32_t load4(const std::uint8_t* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <int P>
void tile(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, std::size_t lane0,
          std::size_t oh, std::size_t ow0, std::int32_t* acc) {
    const std::size_t cp = g.channels(), groups = cp / kConvChannelGroup, wp = g.padded_w();
    const std::size_t co_pad = g.out_c_padded(), pixel_step = g.stride_w * cp;
    const svbool_t lanes = svwhilelt_b32_u64(lane0, kConvCoBlock);
    const svbool_t bytes = svwhilelt_b8_u64(lane0 * kConvChannelGroup, kConvCoBlock * kConvChannelGroup);
    svint32_t s0 = svdup_n_s32(0), s1 = svdup_n_s32(0), s2 = svdup_n_s32(0), s3 = svdup_n_s32(0);
    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
        const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
            const std::uint8_t* base = image + (ih * wp + ow0 * g.stride_w + kw * g.dilation_w) * cp;
            const std::int8_t* taps = w + (kh * g.kernel_w + kw) * groups * 64 + lane0 * kConvChannelGroup;
            for (std::size_t gi = 0; gi < groups; ++gi) {
                // Inactive lanes load weights as 0, so they add nothing.
                const svint8_t weights = svld1_s8(bytes, taps + gi * 64);
                const std::uint8_t* at = base + gi * kConvChannelGroup;
                auto x = [&](int p) {
                    return svreinterpret_s8_u32(svdup_n_u32(load4(at + p * pixel_step) ^ 0x80808080u));
                };
                s0 = svdot_s32(s0, x(0), weights);
                if constexpr (P > 1) s1 = svdot_s32(s1, x(1), weights);
                if constexpr (P > 2) s2 = svdot_s32(s2, x(2), weights);
                if constexpr (P > 3) s3 = svdot_s32(s3, x(3), weights);
            }
        }
    }
    svst1_s32(lanes, acc + lane0, s0);
    if constexpr (P > 1) svst1_s32(lanes, acc + co_pad + lane0, s1);
    if constexpr (P > 2) svst1_s32(lanes, acc + 2 * co_pad + lane0, s2);
    if constexpr (P > 3) svst1_s32(lanes, acc + 3 * co_pad + lane0, s3);
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t*, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    const std::size_t co_pad = g.out_c_padded();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    for (std::size_t b = 0; b < co_pad / kConvCoBlock; ++b) {
        for (std::size_t lane0 = 0; lane0 < kConvCoBlock; lane0 += svcntw()) {
            const std::int8_t* wb = w + b * block_bytes;
            std::int32_t* out = acc + b * kConvCoBlock;
            std::size_t p = 0;
            for (; p + 4 <= count; p += 4) tile<4>(g, image, wb, lane0, oh, ow0 + p, out + p * co_pad);
            for (; p < count; ++p) tile<1>(g, image, wb, lane0, oh, ow0 + p, out + p * co_pad);
        }
    }
}

// The epilogues are the reference's, forwarded at call time (the ref table is another
// translation unit's static): they are a small share of a layer next to its products.
void epilogue_f32(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                  const float* mult, const float* bias, bool relu, float* y) {
    ref::conv_kernels.epilogue_f32(acc, acc_stride, pixels, n, mult, bias, relu, y);
}

void epilogue_i8(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                 const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q) {
    ref::conv_kernels.epilogue_i8(acc, acc_stride, pixels, n, mult, bias, relu, inverse, q);
}

void quantize_u8(const float* x, std::size_t n, float inverse, std::uint8_t* q) {
    ref::conv_kernels.quantize_u8(x, n, inverse, q);
}

}  // namespace

const ConvKernels conv_kernels = {conv_row_i8, epilogue_f32, epilogue_i8, quantize_u8};

}  // namespace codl::sve
