// Scalar reference of the direct convolution kernel: the oracle of every test. It reads the
// same padded, shifted activations and blocked weights as the SIMD kernels and subtracts 128
// from each byte before multiplying, so it needs no correction term.
#include <vector>

#include "codl/conv.h"

namespace codl::ref {
namespace {

// acc[p * out_c_padded + co] for the output pixels (oh, ow0 + p), p < count, with the image's
// byte of (padded row y, padded column x, channel c) read as byte_at(y, x, c): the one
// definition of the sums, for the pixel layout and the channel planes alike.
template <typename ByteAt>
void sums(const ConvGeometry& g, const std::int8_t* w, std::size_t oh, std::size_t ow0, std::size_t count,
          ByteAt byte_at, std::int32_t* acc) {
    const std::size_t cp = g.channels(), co_pad = g.out_c_padded();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * cp * kConvCoBlock;
    for (std::size_t p = 0; p < count; ++p) {
        const std::size_t ow = ow0 + p;
        for (std::size_t co = 0; co < co_pad; ++co) {
            const std::int8_t* wb = w + (co / kConvCoBlock) * block_bytes;
            std::int32_t total = 0;
            for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
                const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
                for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
                    const std::size_t iw = ow * g.stride_w + kw * g.dilation_w;
                    const std::int8_t* tap = wb + (kh * g.kernel_w + kw) * cp * kConvCoBlock;
                    for (std::size_t c = 0; c < cp; ++c) {
                        const std::int8_t weight =
                            tap[(c / kConvChannelGroup) * kConvCoBlock * kConvChannelGroup +
                                (co % kConvCoBlock) * kConvChannelGroup + c % kConvChannelGroup];
                        total += (static_cast<int>(byte_at(ih, iw, c)) - 128) * weight;
                    }
                }
            }
            acc[p * co_pad + co] = total;
        }
    }
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t*, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    const std::size_t cp = g.channels(), wp = g.padded_w();
    sums(g, w, oh, ow0, count, [&](std::size_t y, std::size_t x, std::size_t c) { return image[(y * wp + x) * cp + c]; },
         acc);
}

void epilogue_f32(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                  const float* mult, const float* bias, bool relu, float* y) {
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, y += n) {
        for (std::size_t i = 0; i < n; ++i) {
            float v = static_cast<float>(acc[i]) * mult[i];
            if (bias) v += bias[i];
            y[i] = relu && v < 0.0f ? 0.0f : v;
        }
    }
}

void epilogue_i8(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                 const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q) {
    for (std::size_t p = 0; p < pixels; ++p, acc += acc_stride, q += n) {
        for (std::size_t i = 0; i < n; ++i) {
            float v = static_cast<float>(acc[i]) * mult[i];
            if (bias) v += bias[i];
            if (relu && v < 0.0f) v = 0.0f;
            q[i] = static_cast<std::int8_t>(quantize_i8(v, inverse));
        }
    }
}

void quantize_u8(const float* x, std::size_t n, float inverse, std::uint8_t* q) {
    for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<std::uint8_t>(quantize_i8(x[i], inverse) + 128);
}

// XORs every one of n bytes with flip.
void flip_bytes(std::int8_t* q, std::size_t n, std::uint8_t flip) {
    for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<std::int8_t>(static_cast<std::uint8_t>(q[i]) ^ flip);
}

// The fused kernels' twin: literally the two steps it fuses, row after row, then the flip.
void conv_rows_requant_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                          const std::int32_t* w_sums, std::size_t oh, std::size_t rows, std::size_t ow0,
                          std::size_t count, std::size_t n, const float* mult, const float* bias, bool relu,
                          float inverse, std::int8_t* q, std::size_t q_row_stride, std::uint8_t flip) {
    thread_local std::vector<std::int32_t> acc;
    acc.resize(count * g.out_c_padded());
    for (std::size_t r = 0; r < rows; ++r) {
        std::int8_t* row = q + r * q_row_stride;
        conv_row_i8(g, image, w, w_sums, oh + r, ow0, count, acc.data());
        epilogue_i8(acc.data(), g.out_c_padded(), count, n, mult, bias, relu, inverse, row);
        flip_bytes(row, count * n, flip);
    }
}

// The planar kernels' twin: the sums read from the channel planes, then the same epilogue.
void conv_row_planar_requant_i8(const ConvGeometry& g, const std::uint8_t* planes, const std::int8_t* w,
                                const std::int32_t*, std::size_t oh, std::size_t ow0, std::size_t count,
                                std::size_t n, const float* mult, const float* bias, bool relu, float inverse,
                                std::int8_t* q, std::uint8_t flip) {
    const std::size_t groups = g.channels() / kConvChannelGroup, plane_w = conv_plane_width(g);
    thread_local std::vector<std::int32_t> acc;
    acc.resize(count * g.out_c_padded());
    sums(
        g, w, oh, ow0, count,
        [&](std::size_t y, std::size_t x, std::size_t c) {
            return planes[((y * groups + c / kConvChannelGroup) * plane_w + x) * kConvChannelGroup + c % kConvChannelGroup];
        },
        acc.data());
    epilogue_i8(acc.data(), g.out_c_padded(), count, n, mult, bias, relu, inverse, q);
    flip_bytes(q, count * n, flip);
}

}  // namespace

// The reference takes any channel count; its limit is the AVX-512 kernel's, so that forcing the
// scalar kernels runs the same paths of the core.
const ConvKernels conv_kernels = {conv_row_i8,         epilogue_f32, epilogue_i8, quantize_u8, conv_rows_requant_i8,
                                  conv_row_planar_requant_i8, 64};

}  // namespace codl::ref
