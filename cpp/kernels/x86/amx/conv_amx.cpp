// AMX direct convolution (Intel AMX-INT8): 16 output pixels of a row are the rows of an A tile,
// read in place from the padded, shifted image (pixel p's channels at a stride of stride_w *
// channels bytes, one kernel tap and up to 64 channels at a time), and the blocked weights of
// that tap are already the B tile's VNNI layout: [channels / 4][16 output channels][4] bytes,
// 64 bytes a row. TDPBUSD (unsigned A times signed B, as the VNNI kernel's vpdpbusd) adds
// 16 x 16 x 64 products per instruction, 16 times a 512-bit vpdpbusd. The shift of the image
// bytes is removed at the end as in the VNNI kernel: 128 * (sum of the channel's weights).
//
// A tile of 2 x 16 pixels times 2 x 16 output channels uses the four C tiles; rows with fewer
// than 16 pixels left, fewer than kMinAmxChannels channels, and channel counts above 64 that
// are not a multiple of 64 (a K chunk must be one width for the whole call), run the AVX-512
// VNNI kernel, forwarded at call time (the
// avx512 table is another translation unit's static).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "codl/conv.h"
#include "tile_config.h"

namespace codl::amx {
namespace {

// Below this many (padded) input channels a TDPBUSD multiplies fewer bytes per row than its 64,
// and the VNNI kernel, as fast per product, wins by its cheaper loads.
constexpr std::size_t kMinAmxChannels = 16;

// Tiles 0-3: C (pixel group g, channel block b at 2 g + b); 4, 5: A; 6, 7: B.
template <int Groups, int Blocks>
void tile(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, std::size_t oh,
          std::size_t ow, std::size_t chunk, std::int32_t* acc) {
    const std::size_t cp = g.channels(), wp = g.padded_w(), co_pad = g.out_c_padded();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * cp * kConvCoBlock;
    const long a_stride = static_cast<long>(g.stride_w * cp);
    const long c_stride = static_cast<long>(co_pad * sizeof(std::int32_t));
    _tile_zero(0);
    if constexpr (Blocks > 1) _tile_zero(1);
    if constexpr (Groups > 1) _tile_zero(2);
    if constexpr (Groups > 1 && Blocks > 1) _tile_zero(3);
    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
        const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
            const std::uint8_t* pixels = image + (ih * wp + ow * g.stride_w + kw * g.dilation_w) * cp;
            const std::int8_t* taps = w + (kh * g.kernel_w + kw) * cp * kConvCoBlock;
            for (std::size_t c0 = 0; c0 < cp; c0 += chunk) {
                _tile_loadd(4, pixels + c0, a_stride);
                if constexpr (Groups > 1) _tile_loadd(5, pixels + 16 * a_stride + c0, a_stride);
                _tile_loadd(6, taps + c0 * kConvCoBlock, 64);
                if constexpr (Blocks > 1) _tile_loadd(7, taps + block_bytes + c0 * kConvCoBlock, 64);
                _tile_dpbusd(0, 4, 6);
                if constexpr (Blocks > 1) _tile_dpbusd(1, 4, 7);
                if constexpr (Groups > 1) _tile_dpbusd(2, 5, 6);
                if constexpr (Groups > 1 && Blocks > 1) _tile_dpbusd(3, 5, 7);
            }
        }
    }
    _tile_stored(0, acc, c_stride);
    if constexpr (Blocks > 1) _tile_stored(1, acc + kConvCoBlock, c_stride);
    if constexpr (Groups > 1) _tile_stored(2, acc + 16 * co_pad, c_stride);
    if constexpr (Groups > 1 && Blocks > 1) _tile_stored(3, acc + 16 * co_pad + kConvCoBlock, c_stride);
}

// One K step (a 1x1 kernel, or a folded first layer, with at most 64 channels): the B tiles
// of a pair of channel blocks stay loaded while the A tiles walk the pixels, 32 at a time.
template <int Blocks>
void single_step(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, std::size_t oh,
                 std::size_t ow0, std::size_t full, std::int32_t* acc) {
    const std::size_t cp = g.channels(), wp = g.padded_w(), co_pad = g.out_c_padded();
    const std::size_t block_bytes = cp * kConvCoBlock;
    const long a_stride = static_cast<long>(g.stride_w * cp);
    const long c_stride = static_cast<long>(co_pad * sizeof(std::int32_t));
    _tile_loadd(6, w, 64);
    if constexpr (Blocks > 1) _tile_loadd(7, w + block_bytes, 64);
    const std::uint8_t* row = image + (oh * g.stride_h * wp + ow0 * g.stride_w) * cp;
    for (std::size_t p = 0; p < full; p += 16) {
        _tile_zero(0);
        if constexpr (Blocks > 1) _tile_zero(1);
        _tile_loadd(4, row + p * a_stride, a_stride);
        _tile_dpbusd(0, 4, 6);
        if constexpr (Blocks > 1) _tile_dpbusd(1, 4, 7);
        _tile_stored(0, acc + p * co_pad, c_stride);
        if constexpr (Blocks > 1) _tile_stored(1, acc + p * co_pad + kConvCoBlock, c_stride);
    }
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    const std::size_t cp = g.channels(), co_pad = g.out_c_padded();
    const std::size_t chunk = std::min<std::size_t>(cp, 64);
    const std::size_t full = count / 16 * 16;
    if (full == 0 || cp % chunk != 0 || cp < kMinAmxChannels) {
        avx512::conv_kernels.conv_row_i8(g, image, w, w_sums, oh, ow0, count, acc);
        return;
    }
    TileConfig config;
    for (int t = 0; t < 4; ++t) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    config.rows[4] = config.rows[5] = 16;
    config.colsb[4] = config.colsb[5] = static_cast<std::uint16_t>(chunk);
    config.rows[6] = config.rows[7] = static_cast<std::uint8_t>(chunk / 4);
    config.colsb[6] = config.colsb[7] = 64;
    _tile_loadconfig(&config);
    const std::size_t blocks = co_pad / kConvCoBlock;
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * cp * kConvCoBlock;
    const bool one_step = g.kernel_h * g.kernel_w == 1 && cp <= 64;
    for (std::size_t b = 0; b < blocks; b += 2) {
        const std::int8_t* wb = w + b * block_bytes;
        std::int32_t* ab = acc + b * kConvCoBlock;
        const bool pair = b + 1 < blocks;
        if (one_step) {
            if (pair) {
                single_step<2>(g, image, wb, oh, ow0, full, ab);
            } else {
                single_step<1>(g, image, wb, oh, ow0, full, ab);
            }
            continue;
        }
        std::size_t p = 0;
        for (; p + 32 <= full; p += 32) {
            if (pair) {
                tile<2, 2>(g, image, wb, oh, ow0 + p, chunk, ab + p * co_pad);
            } else {
                tile<2, 1>(g, image, wb, oh, ow0 + p, chunk, ab + p * co_pad);
            }
        }
        if (p < full) {
            if (pair) {
                tile<1, 2>(g, image, wb, oh, ow0 + p, chunk, ab + p * co_pad);
            } else {
                tile<1, 1>(g, image, wb, oh, ow0 + p, chunk, ab + p * co_pad);
            }
        }
    }
    _tile_release();
    // The shift of the image bytes: acc -= 128 * w_sums, per output channel.
    for (std::size_t p = 0; p < full; ++p) {
        std::int32_t* row = acc + p * co_pad;
        for (std::size_t co = 0; co < co_pad; co += 16) {
            const __m512i sums = _mm512_slli_epi32(_mm512_loadu_si512(w_sums + co), 7);
            _mm512_storeu_si512(row + co, _mm512_sub_epi32(_mm512_loadu_si512(row + co), sums));
        }
    }
    if (full < count) {
        avx512::conv_kernels.conv_row_i8(g, image, w, w_sums, oh, ow0 + full, count - full, acc + full * co_pad);
    }
}

void epilogue_f32(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                  const float* mult, const float* bias, bool relu, float* y) {
    avx512::conv_kernels.epilogue_f32(acc, acc_stride, pixels, n, mult, bias, relu, y);
}

void epilogue_i8(const std::int32_t* acc, std::size_t acc_stride, std::size_t pixels, std::size_t n,
                 const float* mult, const float* bias, bool relu, float inverse, std::int8_t* q) {
    avx512::conv_kernels.epilogue_i8(acc, acc_stride, pixels, n, mult, bias, relu, inverse, q);
}

void quantize_u8(const float* x, std::size_t n, float inverse, std::uint8_t* q) {
    avx512::conv_kernels.quantize_u8(x, n, inverse, q);
}

}  // namespace

const ConvKernels conv_kernels = {conv_row_i8, epilogue_f32, epilogue_i8, quantize_u8};

}  // namespace codl::amx
