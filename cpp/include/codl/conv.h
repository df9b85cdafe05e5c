// Direct 2-D convolution with int8 activations and int8 or ternary weights: the kernel table
// each ISA provides and the public entry points. Declarations only (ISA files include it).
//
// Layouts (no im2col, no padding of the reduction to 128):
//  activations  NHWC int8, one scale per tensor, quantized once per layer. The kernels read a
//               padded copy the core builds once per call: [Hp][Wp][Cp] bytes per image with
//               Hp = H + 2 pad_h, Wp = W + 2 pad_w, Cp = C rounded up to kConvChannelGroup,
//               each byte the int8 value plus 128 (so the zero border and the zero channels
//               past C are the byte 128). Unsigned bytes are what VNNI's vpdpbusd multiplies.
//  weights      canonical: int8 [Cout][KH][KW][Cp] (channels past Cin zero), or the same codes
//               in {-1, 0, +1} as one ternary2 stream (codl/pack.h) of Cout * KH * KW * Cp
//               values. The core decodes either once per call into the blocked layout the
//               kernels read: [ceil(Cout / 16)][KH][KW][Cp / 4][16][4], output channels past
//               Cout zero. A layer's weights are reused at every output pixel, so decoding
//               them once per call costs a 1 / (output pixels) share of the multiply-adds.
//  accumulators int32, exact: sum over (kh, kw, c) of activation * weight.
//  epilogue     in the core, the same code for every ISA (float outputs agree bit for bit):
//               y = float(acc) * (a_scale * w_scale[co]) + bias[co], then max(y, 0) with
//               relu, written as float32 NCHW or NHWC, or requantized to int8 NHWC as
//               q = clamp(nearbyint(y * (1 / out_scale)), -127, 127) so layers chain in int8.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"

namespace codl {

constexpr std::size_t kConvChannelGroup = 4;  // input channels per VNNI dword
constexpr std::size_t kConvCoBlock = 16;      // output channels per weight block

constexpr std::size_t conv_padded_channels(std::size_t c) {
    return (c + kConvChannelGroup - 1) / kConvChannelGroup * kConvChannelGroup;
}
constexpr std::size_t conv_padded_out_channels(std::size_t c) {
    return (c + kConvCoBlock - 1) / kConvCoBlock * kConvCoBlock;
}

// One convolution layer. in_c is the real channel count; channels() the padded one.
struct ConvGeometry {
    std::size_t in_h = 0, in_w = 0, in_c = 0, out_c = 0;
    std::size_t kernel_h = 1, kernel_w = 1;
    std::size_t stride_h = 1, stride_w = 1;
    std::size_t pad_h = 0, pad_w = 0;
    std::size_t dilation_h = 1, dilation_w = 1;

    std::size_t channels() const { return conv_padded_channels(in_c); }
    std::size_t out_c_padded() const { return conv_padded_out_channels(out_c); }
    std::size_t padded_h() const { return in_h + 2 * pad_h; }
    std::size_t padded_w() const { return in_w + 2 * pad_w; }
    // 0 when the (dilated) kernel does not fit in the padded input.
    std::size_t out_h() const {
        const std::size_t span = dilation_h * (kernel_h - 1) + 1;
        return padded_h() < span ? 0 : (padded_h() - span) / stride_h + 1;
    }
    std::size_t out_w() const {
        const std::size_t span = dilation_w * (kernel_w - 1) + 1;
        return padded_w() < span ? 0 : (padded_w() - span) / stride_w + 1;
    }
    std::size_t reduction() const { return kernel_h * kernel_w * channels(); }
};

struct ConvKernels {
    // acc[p * out_c_padded + co] = sum_{kh, kw, c} (image[ih][iw][c] - 128) * w[co][kh][kw][c]
    // exactly, for the output pixels (oh, ow0 + p), p < count, of one image, and every co <
    // out_c_padded, where ih = oh * stride_h + kh * dilation_h and iw likewise (indices into the
    // padded image). image: the padded, shifted bytes of one image, whose border (the pad_h
    // rows above and below, the pad_w columns either side) holds the byte 128, the value 0, as
    // the core writes it: kernels may skip the taps that read only border rows (a 3x3 layer with
    // dilation 2 on 32 x 32 pixels does a third fewer products on 4 rows of 32); w: the blocked
    // weights; w_sums[co]: the sum of weight co's values (kernels that multiply the shifted
    // bytes subtract 128 * w_sums[co]).
    void (*conv_row_i8)(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                        const std::int32_t* w_sums, std::size_t oh, std::size_t ow0,
                        std::size_t count, std::int32_t* acc);
    // The epilogue of `pixels` output pixels of n channels each, pixel p's sums at acc + p *
    // acc_stride and its outputs at y + p * n: y[i] = float(acc[i]) * mult[i] + bias[i] (no
    // addition when bias is null), then max(y, 0) with relu (NaN stays NaN).
    void (*epilogue_f32)(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                         const float* mult, const float* bias, bool relu, float* y);
    // The same y requantized: q[i] = quantize_i8(y[i], inverse).
    void (*epilogue_i8)(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                        const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q);
    // The input's bytes: q[i] = quantize_i8(x[i], inverse) + 128 (x finite).
    void (*quantize_u8)(const float* x, std::size_t n, float inverse, std::uint8_t* q);
    // conv_row_i8 then epilogue_i8 of the same pixels in one pass, for rows oh .. oh + rows - 1:
    // pixel p < count of row oh + r, channel co < n (n <= out_c_padded) at q[r * q_row_stride +
    // p * n + co], bit for bit what the two give XOR flip (0, or 0x80 for the value plus 128: the
    // next layer's padded image, written in place), with the sums requantized while they are
    // still in registers (a row's int32 sums of 64 channels and 256 pixels are 64 KiB: written
    // out and read back they cost a 3x3 64-channel layer 7% of its time). Several rows a call let
    // a kernel keep a few output channels' weights in cache while it runs all the rows over them.
    // Null in a table whose ISA does not fuse: the core then runs the two.
    void (*conv_rows_requant_i8)(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                                 const std::int32_t* w_sums, std::size_t oh, std::size_t rows, std::size_t ow0,
                                 std::size_t count, std::size_t n, const float* mult, const float* bias, bool relu,
                                 float inverse, std::int8_t* q, std::size_t q_row_stride,
                                 std::uint8_t flip) = nullptr;
    // The outputs of one row of conv_rows_requant_i8 (XOR flip) from the image in channel planes (conv_planes_layout:
    // geometries with stride_w 1), for layers of few output channels or a count that is not a
    // multiple of 16: 16 pixels a register and one accumulator per output channel, so 20 or 24
    // channels issue 20 or 24 multiply-adds, not the 32 of two channel blocks (MCNN's 3 -> 20
    // first layer spent 37% of its products on the padding). Null where the ISA has none; takes
    // n <= planar_max_channels.
    void (*conv_row_planar_requant_i8)(const ConvGeometry& g, const std::uint8_t* planes, const std::int8_t* w,
                                       const std::int32_t* w_sums, std::size_t oh, std::size_t ow0,
                                       std::size_t count, std::size_t n, const float* mult, const float* bias,
                                       bool relu, float inverse, std::int8_t* q, std::uint8_t flip) = nullptr;
    std::size_t planar_max_channels = 0;
};

// The channel planes of one image for conv_row_planar_requant_i8: for each padded row, for each
// group of 4 channels, the row's padded pixels (conv_plane_width of them, the ones past padded_w
// unused) of 4 bytes each, byte = int8 value plus 128 as in the pixel layout. Byte of (row y,
// channel c, pixel x): planes[((y * groups + c / 4) * conv_plane_width(g) + x) * 4 + c % 4].
// 16 consecutive output pixels of a 4-channel group are then one 64-byte load at every tap,
// which needs stride_w 1.
constexpr std::size_t kConvPlanePixels = 16;  // pixels a plane load takes; planes are 64-byte rows
inline bool conv_planes_layout(const ConvGeometry& g) { return g.stride_w == 1; }
inline std::size_t conv_plane_width(const ConvGeometry& g) {
    return (g.padded_w() + kConvPlanePixels - 1) / kConvPlanePixels * kConvPlanePixels;
}
inline std::size_t conv_planes_bytes(const ConvGeometry& g) {
    return g.padded_h() * g.channels() * conv_plane_width(g);
}

// q = nearbyint(x * inverse) clamped to [-127, 127] (NaN to -127): half to even, as
// quantize_row_i8. Adding and subtracting 1.5 * 2^23 rounds a float of magnitude below 2^22 to
// an integer in the current rounding mode (nearest even, as nearbyint and the SIMD
// conversions), without the libm call nearbyint costs at baseline x86-64 flags. Branch-free, so
// loops over it vectorize; std::max(-127, NaN) is -127, never an undefined cast.
inline int quantize_i8(float x, float inverse) {
    const float scaled = x * inverse;
    const float low = -127.0f < scaled ? scaled : -127.0f;  // std::max(-127, scaled)
    const float clamped = low < 127.0f ? low : 127.0f;        // std::min(127, low)
    // Without -ffast-math the compiler keeps both roundings (IEEE semantics).
    return static_cast<int>((clamped + 12582912.0f) - 12582912.0f);
}

// Where a convolution reads its activations from.
enum class ConvInput {
    f32_nchw,  // float32 [N][C][H][W], quantized once: absmax per tensor or the given scale
    f32_nhwc,  // float32 [N][H][W][C], the same
    i8_nhwc,   // int8 [N][H][W][C] with the given scale (a previous layer's int8 output)
};
enum class ConvOutput { f32_nchw, f32_nhwc, i8_nhwc };
// i8 and ternary2: the canonical layout, decoded into the blocked one on every call; blocked:
// the blocked layout itself with its w_sums (conv_prepare_weights), decoded once by the caller,
// so a frozen layer pays nothing per call for its weights.
enum class ConvWeights { i8, ternary2, blocked };

enum class ConvStatus { ok, nonfinite_input, invalid_ternary_code, bad_scale };

struct ConvArgs {
    ConvGeometry g;
    std::size_t batch = 1;
    ConvInput input = ConvInput::f32_nchw;
    const void* x = nullptr;
    // f32 inputs: > 0 quantizes with this scale (values clamped to +-127), 0 with absmax / 127;
    // int8 inputs: the scale of x (> 0).
    float input_scale = 0.0f;
    ConvWeights weights = ConvWeights::i8;
    const void* w = nullptr;         // canonical layout (see above), or blocked
    const std::int32_t* w_sums = nullptr;  // blocked weights only: out_c_padded sums
    const float* w_scale = nullptr;  // out_c
    const float* bias = nullptr;     // out_c or null
    bool relu = false;
    ConvOutput output = ConvOutput::f32_nchw;
    void* out = nullptr;
    float output_scale = 0.0f;       // i8 output: > 0
    float* used_input_scale = nullptr;  // optional: receives the activation scale used
};

// Runs one convolution layer (threads split the output rows; results do not depend on
// num_threads).
ConvStatus conv2d(const ConvArgs& args, int num_threads = 1);

// The integer core, for tests: acc[((n * out_h + oh) * out_w + ow) * out_c + co] from int8 NHWC
// activations (in_c channels) and canonical int8 weights.
void conv2d_i32(const ConvGeometry& g, std::size_t batch, const std::int8_t* x, const std::int8_t* w,
                std::int32_t* acc, int num_threads = 1);

// 2x2 max pooling with stride 2 (floor) of int8 NHWC: y[n][i][j][c] = max over the window.
// Max commutes with the monotone quantization, so pooling the int8 values is exact.
void maxpool2x2_i8_nhwc(const std::int8_t* x, std::size_t batch, std::size_t h, std::size_t w,
                        std::size_t c, std::int8_t* y, int num_threads = 1);

// The blocked weights and w_sums from canonical int8 weights (for tests and the core).
void conv_block_weights(const ConvGeometry& g, const std::int8_t* w, std::int8_t* blocked,
                        std::int32_t* w_sums);

// First layers (1 to 3 input channels) would pad every pixel to 4 channels and run one
// multiply-add group per kernel tap, mostly zeros. The core instead gathers the values a kernel
// reads into the channels of a new image:
//  - the whole patch (kh * kw * in_c values, up to kMaxFoldedPatch), for a 1x1 convolution
//    over the out_h x out_w image of patches: a 5x5 kernel on one channel takes 7 groups
//    instead of 25, and its 28 channels fill AMX tiles;
//  - or, for larger kernels, one kernel row (kw * in_c values, up to kMaxFoldedPatch) per
//    padded input row, for a kh x 1 convolution over the padded_h x out_w image of rows
//    (stride_h and dilation_h kept): MCNN's 9x9 on 3 channels takes 9 x 7 groups instead of
//    81, at 28 channels that AMX takes.
// The weights are blocked for the folded convolution (values in kh, kw, c order), so blocked
// weights and their byte count follow the same rule.
constexpr std::size_t kMaxFoldedPatch = 64;
inline bool conv_folds_whole_patch(const ConvGeometry& g) {
    return g.kernel_h * g.kernel_w * g.in_c <= kMaxFoldedPatch;
}
inline bool conv_folds_patches(const ConvGeometry& g) {
    return g.in_c < kConvChannelGroup && g.kernel_w > 1 &&
           (conv_folds_whole_patch(g) || g.kernel_w * g.in_c <= kMaxFoldedPatch);
}
// The convolution of a folded layer over its gathered image.
inline ConvGeometry conv_folded_geometry(const ConvGeometry& g) {
    ConvGeometry f;
    f.out_c = g.out_c;
    f.in_w = g.out_w();
    if (conv_folds_whole_patch(g)) {
        f.in_h = g.out_h();
        f.in_c = g.kernel_h * g.kernel_w * g.in_c;
        return f;
    }
    f.in_h = g.padded_h();
    f.in_c = g.kernel_w * g.in_c;
    f.kernel_h = g.kernel_h;
    f.stride_h = g.stride_h;
    f.dilation_h = g.dilation_h;
    return f;
}

// Bytes of the blocked weights: out_c_padded * reduction, of the folded geometry for a folded
// layer (only out_c, in_c and the kernel size of g matter, not the image size).
inline std::size_t conv_blocked_bytes(const ConvGeometry& g) {
    return conv_folds_patches(g) ? g.out_c_padded() * conv_folded_geometry(g).reduction()
                                 : g.out_c_padded() * g.reduction();
}

// The blocked weights (conv_blocked_bytes(g)) and w_sums (out_c_padded) from canonical weights
// (format i8 or ternary2, not blocked), once, for ConvWeights::blocked; invalid_ternary_code on
// a 0b11 field.
ConvStatus conv_prepare_weights(const ConvGeometry& g, ConvWeights format, const void* w,
                                std::int8_t* blocked, std::int32_t* w_sums);

// A straight chain of layers run by one call into the core: the path of small frozen CNNs at
// small batches, where calling each layer from Python cost more than its products. Each
// layer reads the previous one's output (the chain's input, float32 NCHW, for the first):
//  conv        conv2d with `conv` (x, out and batch are set by the run; conv.input must match
//              what the previous layer writes: f32_nchw first or after a float conv, i8_nhwc
//              after an int8 conv or pool);
//  maxpool2x2  int8 NHWC in and out (the previous layer's int8 output);
//  linear      ternary 2-bit rows with int8 activations (ternary_linear_f32) over the previous
//              output flattened in its memory order; an int8 input is first dequantized with
//              `input_scale` (so its rows must be ordered as that NHWC memory); `relu` applies
//              max(y, 0) to the output.
struct ChainLayer {
    enum class Kind { conv, maxpool2x2, linear } kind = Kind::conv;
    ConvArgs conv;
    // maxpool2x2: the int8 NHWC input's height, width and channels.
    std::size_t pool_h = 0, pool_w = 0, pool_c = 0;
    // linear
    const std::uint8_t* packed = nullptr;
    const float* alpha = nullptr;
    const float* bias = nullptr;
    std::size_t in_features = 0, out_features = 0;
    float input_scale = 0.0f;
    bool relu = false;
};

enum class ChainStatus { ok, nonfinite_input, invalid_ternary_code, bad_scale, mismatched_layers };

// Elements (bytes for int8) each layer writes per image; mismatched_layers if a layer cannot
// take its predecessor's output (kinds, sizes). Called once when a chain is built.
ChainStatus check_chain(const ChainLayer* layers, std::size_t count, std::size_t input_elements,
                        std::size_t* output_elements);

// Runs the chain on `batch` images of x (float32 NCHW, input_elements each), writing the last
// layer's float32 output to out.
ChainStatus run_chain(const ChainLayer* layers, std::size_t count, const float* x, std::size_t batch,
                      float* out, int num_threads = 1);

}  // namespace codl
