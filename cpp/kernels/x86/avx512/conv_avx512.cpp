// AVX-512 VNNI direct convolution: one 32-bit lane per output channel, 16 channels a register.
// For every kernel tap and group of 4 input channels, the 4 activation bytes of a pixel are
// broadcast to every lane and vpdpbusd multiplies them (unsigned: the int8 value plus 128) by
// the 16 x 4 signed weights of the block, four products per lane in one instruction; a tile of
// P pixels x B output blocks shares each weight load among P pixels and each broadcast among B
// blocks. The shift is removed at the end: 128 * (sum of the channel's weights).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "codl/conv.h"
#include "vnni_avx512.h"

namespace codl::avx512 {
namespace {

// The tiles and their epilogue's helpers are inlined (CODL_INLINE) into the loop over a block's
// rows: called, they ran CSRNet's 64- and 128-channel layers 2-5% slower (measured in one process
// against the inlined code).

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
CODL_INLINE __m512 epilogue16(__m512i acc, const float* mult, const float* bias, bool relu, __mmask16 m) {
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(m, mult));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias));
    if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v);
    return v;
}

// quantize_i8 on 16 lanes, as int32 levels in [-127, 127]: max(scaled, -127) maps NaN to -127
// (the second operand), the conversion rounds half to even (MXCSR's default, as the reference's
// 1.5 * 2^23 trick).
CODL_INLINE __m512i levels16(__m512 y, float inverse) {
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y, _mm512_set1_ps(inverse)), _mm512_set1_ps(-127.0f)),
                                         _mm512_set1_ps(127.0f));
    return _mm512_cvtps_epi32(clamped);
}

__m128i requantize16(__m512 y, float inverse) { return _mm512_cvtsepi32_epi8(levels16(y, inverse)); }

// Four vectors of 16 int32 levels in [-127, 127] as 64 bytes, v0's 16 first: vpackssdw and
// vpacksswb narrow within each 128-bit lane, leaving v_k's values 4L .. 4L + 3 in dword 4L + k,
// and vpermd puts them in order. One 64-byte store a pixel instead of four vpmovsdb.
CODL_INLINE __m512i narrow4(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(v0, v1), _mm512_packs_epi32(v2, v3));
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), bytes);
}

// Where a tile's finished sums go, the B blocks of 16 channels of one pixel at a time: the int32
// row (conv_row_i8), or requantized in registers into the int8 outputs (conv_rows_requant_i8).
// pixel(r, p, ...): pixel p of the call's row r.
struct StoreSums {
    std::int32_t* acc;
    std::size_t co_pad, row_stride;
    template <int B>
    CODL_INLINE void pixel(std::size_t r, std::size_t p, std::size_t co, const __m512i* sums) const {
        std::int32_t* out = acc + r * row_stride + p * co_pad + co;
        for (int b = 0; b < B; ++b) _mm512_storeu_si512(out + b * kConvCoBlock, sums[b]);
    }
};

struct Requantize {
    std::int8_t* q;
    std::size_t n;
    const float* mult;
    const float* bias;
    bool relu;
    float inverse;
    std::size_t row_stride;
    std::uint8_t flip;  // XORed into every output byte
    // The levels quantize_i8 gives 16 channels from co, as int32.
    CODL_INLINE __m512i levels(__m512i sums, std::size_t co, __mmask16 m) const {
        return levels16(epilogue16(sums, mult + co, bias ? bias + co : nullptr, relu, m), inverse);
    }
    template <int B>
    CODL_INLINE void pixel(std::size_t r, std::size_t p, std::size_t co0, const __m512i* sums) const {
        std::int8_t* out = q + r * row_stride + p * n + co0;
        if constexpr (B == 4) {
            if (co0 + 4 * kConvCoBlock <= n) {
                const __mmask16 all = 0xFFFF;
                const __m512i bytes = narrow4(levels(sums[0], co0, all), levels(sums[1], co0 + 16, all),
                                              levels(sums[2], co0 + 32, all), levels(sums[3], co0 + 48, all));
                _mm512_storeu_si512(out, _mm512_xor_si512(bytes, _mm512_set1_epi8(static_cast<char>(flip))));
                return;
            }
        }
        for (int b = 0; b < B; ++b) {
            const std::size_t co = co0 + b * kConvCoBlock;
            if (co >= n) return;  // the zero channels that pad out_c to a block
            const __mmask16 m = tail_mask(n - co);
            const __m128i bytes = _mm512_cvtsepi32_epi8(levels(sums[b], co, m));
            _mm_mask_storeu_epi8(out + b * kConvCoBlock, m, _mm_xor_si128(bytes, _mm_set1_epi8(static_cast<char>(flip))));
        }
    }
};

// The taps a run of pixels computes, [kh_begin, kh_end) x [kw_begin, kw_end), and the sums it
// starts from. The image's border holds the byte 128, the value 0, so a tap that reads only border
// bytes adds 128 * (its weights) to a sum, which the shift's correction takes out again: pixels
// whose taps read the border skip those taps and start from sums that leave them out (a 3x3
// layer with dilation 2 on 32 x 32 pixels skips a third of its products on 4 rows and 4 columns of
// 32).
struct Taps {
    std::size_t kh_begin, kh_end, kw_begin, kw_end;
    const std::int32_t* start;  // [16 b + i]: -128 * (the weights' sum over the taps), b < B
};

// A tile: P pixels from output pixel (oh, ow), the next one a row down or a column right, and the
// B blocks of channels from co0 over the taps: the sums of the first go to sink.pixel(out_r,
// out_p, co0, B vectors of 16 sums), the next ones' to the next row or pixel.
template <int P, int B, bool Down, typename Sink>
CODL_INLINE void tile(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, const Taps& taps_in,
                      std::size_t oh, std::size_t ow, std::size_t out_r, std::size_t out_p, std::size_t co0,
                      const Sink& sink) {
    const Taps taps = taps_in;  // a copy: the int8 stores of the epilogue may alias the caller's
    const std::size_t cp = g.channels(), groups = cp / kConvChannelGroup, wp = g.padded_w();
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * cp * kConvCoBlock;
    const std::size_t pixel_step = Down ? g.stride_h * wp * cp : g.stride_w * cp;
    __m512i sum[P][B];
    for (int b = 0; b < B; ++b) {
        const __m512i first = _mm512_loadu_si512(taps.start + b * kConvCoBlock);
        for (int p = 0; p < P; ++p) sum[p][b] = first;
    }
    // With dilation_w 1 a kernel row's taps read one contiguous run of cp bytes a tap and pixel,
    // and their weights follow each other too: one loop over the taps' groups.
    const std::size_t kw_taps = taps.kw_end - taps.kw_begin;
    const bool merged = g.dilation_w == 1;
    const std::size_t kw_count = merged ? 1 : kw_taps, run = merged ? kw_taps * groups : groups;
    for (std::size_t kh = taps.kh_begin; kh < taps.kh_end; ++kh) {
        const std::size_t ih = oh * g.stride_h + kh * g.dilation_h;
        for (std::size_t k = 0; k < kw_count; ++k) {
            const std::size_t kw = taps.kw_begin + k;
            const std::uint8_t* base = image + (ih * wp + ow * g.stride_w + kw * g.dilation_w) * cp;
            const std::int8_t* at_tap = w + (kh * g.kernel_w + kw) * groups * 64;
            for (std::size_t gi = 0; gi < run; ++gi) {
                __m512i weights[B];
                for (int b = 0; b < B; ++b) weights[b] = _mm512_loadu_si512(at_tap + b * block_bytes + gi * 64);
                for (int p = 0; p < P; ++p) {
                    const __m512i x = _mm512_set1_epi32(load4(base + p * pixel_step + gi * kConvChannelGroup));
                    for (int b = 0; b < B; ++b) sum[p][b] = _mm512_dpbusd_epi32(sum[p][b], x, weights[b]);
                }
            }
        }
    }
    for (int p = 0; p < P; ++p) {
        sink.template pixel<B>(Down ? out_r + p : out_r, Down ? out_p : out_p + p, co0, sum[p]);
    }
}

// `left` (<= P) pixels as one tile of exactly that many (a one-pixel tile has B accumulator
// chains, so each vpdpbusd waits out its predecessor's latency: on FashionCNN's 14-pixel rows
// 8 + 4 + 1 + 1 cost the last two pixels as much as eight).
template <int P, int B, bool Down, typename Sink>
CODL_INLINE void last_pixels(std::size_t left, const ConvGeometry& g, const std::uint8_t* image,
                             const std::int8_t* w, const Taps& taps, std::size_t oh, std::size_t ow, std::size_t out_r,
                             std::size_t out_p, std::size_t co0, const Sink& sink) {
    if constexpr (P > 0) {
        if (left == P) {
            tile<P, B, Down>(g, image, w, taps, oh, ow, out_r, out_p, co0, sink);
        } else {
            last_pixels<P - 1, B, Down>(left, g, image, w, taps, oh, ow, out_r, out_p, co0, sink);
        }
    }
}

// count pixels from (oh, ow), along the row or down the column, in tiles (see tile).
template <int B, bool Down, typename Sink>
CODL_INLINE void pixels(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, const Taps& taps,
                        std::size_t oh, std::size_t ow, std::size_t count, std::size_t out_r, std::size_t out_p,
                        std::size_t co0, const Sink& sink) {
    // 12, 16 or 24 accumulators plus B weights and a broadcast in the 32 registers. Four blocks
    // a tile ran 64- and 128-channel 3x3 layers 2-4% faster than two (fewer tiles per row, so
    // less of each tile's start and requantization); 512 channels the same.
    constexpr int P = B == 1 ? 12 : B == 2 ? 8 : 6;
    // In tiles of as equal sizes as the fewest tiles allow: 32 pixels as 6 6 5 5 5 5, not
    // 6 6 6 6 6 2. A tile of 2 pixels and 4 blocks loads 4 weight vectors for 8 multiply-adds and
    // waited on L2; on CSRNet's 512-channel layers (rows of 32) it cost 4% of the layer.
    const std::size_t tiles = (count + P - 1) / P;
    if (tiles == 0) return;
    const std::size_t size = count / tiles, larger = count % tiles;
    std::size_t p = 0;
    for (std::size_t t = 0; t < tiles; ++t) {
        const std::size_t pixels = size + (t < larger ? 1 : 0);
        last_pixels<P, B, Down>(pixels, g, image, w, taps, Down ? oh + p : oh, Down ? ow : ow + p,
                                Down ? out_r + p : out_r, Down ? out_p : out_p + p, co0, sink);
        p += pixels;
    }
}

// The taps [begin, end) along one axis whose input index (out * stride + tap * dilation, in the
// padded image) falls inside the image [pad, pad + size): one run, since it grows with the tap.
void live_taps(std::size_t out, std::size_t stride, std::size_t dilation, std::size_t pad, std::size_t size,
               std::size_t kernel, std::size_t* begin, std::size_t* end) {
    std::size_t b = 0, e = 0;
    for (std::size_t k = 0; k < kernel; ++k) {
        const std::size_t at = out * stride + k * dilation;
        if (at < pad || at >= pad + size) continue;
        if (e == 0) b = k;
        e = k + 1;
    }
    *begin = b;
    *end = e;
}

// The tap borders of the B blocks from w: [(tap * B + b) * 16 + i], 128 * (the sum of tap
// (kh, kw)'s weights), tap = kh * kernel_w + kw: the products of the byte 128 with each tap's
// weights (vpdpbusd, as a tile would have computed them).
template <int B>
void tap_borders(const ConvGeometry& g, const std::int8_t* w, std::int32_t* tap_border) {
    const std::size_t tap_bytes = g.channels() * kConvCoBlock, taps = g.kernel_h * g.kernel_w;
    const __m512i border = _mm512_set1_epi8(static_cast<char>(0x80));
    for (std::size_t tap = 0; tap < taps; ++tap) {
        for (int b = 0; b < B; ++b) {
            const std::int8_t* at = w + (b * taps + tap) * tap_bytes;
            __m512i sum = _mm512_setzero_si512();
            for (std::size_t i = 0; i < tap_bytes; i += 64) {
                sum = _mm512_dpbusd_epi32(sum, border, _mm512_loadu_si512(at + i));
            }
            _mm512_storeu_si512(tap_border + (tap * B + b) * kConvCoBlock, sum);
        }
    }
}

// Taps::start for the taps (kh_begin .. kw_end) of B blocks: -128 * w_sums plus 128 * the weights
// of every tap left out.
template <int B>
void tap_starts(const ConvGeometry& g, const std::int32_t* w_sums, const std::int32_t* tap_border, Taps* taps,
                std::int32_t* start) {
    for (int b = 0; b < B; ++b) {
        __m512i sum = _mm512_sub_epi32(_mm512_setzero_si512(),
                                       _mm512_slli_epi32(_mm512_loadu_si512(w_sums + b * kConvCoBlock), 7));
        for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
            for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
                if (kh >= taps->kh_begin && kh < taps->kh_end && kw >= taps->kw_begin && kw < taps->kw_end) continue;
                const std::int32_t* border = tap_border + ((kh * g.kernel_w + kw) * B + b) * kConvCoBlock;
                sum = _mm512_add_epi32(sum, _mm512_loadu_si512(border));
            }
        }
        _mm512_storeu_si512(start + b * kConvCoBlock, sum);
    }
    taps->start = start;
}

// The B blocks from co0 (weights w, sums w_sums) of rows oh0 .. oh0 + rows - 1, pixels ow0 ..
// ow0 + count - 1 of each: row after row over the same blocks, so that their weights stay in L2
// while every row reads them (a 512 -> 512 3x3 layer's 2.3 MiB of weights do not fit, and all
// blocks a row streamed them from L3 on every row, from memory on the first where a chain of
// layers had moved them out). Where the call has whole rows, the columns at the ends whose taps
// read border columns run as columns, down the rows, in tiles that skip those taps.
template <int B, typename Sink>
void block_rows(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, const std::int32_t* w_sums,
                std::size_t co0, std::size_t oh0, std::size_t rows, std::size_t ow0, std::size_t count,
                const Sink& sink) {
    thread_local std::vector<std::int32_t> tap_border;
    tap_border.resize(g.kernel_h * g.kernel_w * B * kConvCoBlock);
    tap_borders<B>(g, w, tap_border.data());
    alignas(64) std::int32_t start[B * kConvCoBlock], start_column[B * kConvCoBlock];
    // Inner columns [left, right): every tap reads image columns.
    std::size_t left = ow0, right = ow0 + count;
    if (ow0 == 0 && count == g.out_w()) {
        auto whole = [&](std::size_t ow) {
            std::size_t begin = 0, end = 0;
            live_taps(ow, g.stride_w, g.dilation_w, g.pad_w, g.in_w, g.kernel_w, &begin, &end);
            return begin == 0 && end == g.kernel_w;
        };
        while (left < right && !whole(left)) ++left;
        while (right > left && !whole(right - 1)) --right;
        // Worth it where the skipped taps are 2% of a row's or more: 32-pixel rows, not the wide
        // rows of the first layers (0.3% of a 256-pixel row, and those layers ran 2-3% slower
        // with their end columns apart).
        std::size_t skipped = 0;
        for (std::size_t ow = 0; ow < count; ++ow) {
            if (ow == left) ow = right;
            if (ow >= count) break;
            std::size_t begin = 0, end = 0;
            live_taps(ow, g.stride_w, g.dilation_w, g.pad_w, g.in_w, g.kernel_w, &begin, &end);
            skipped += g.kernel_w - (end - begin);
        }
        if (skipped * 50 < count * g.kernel_w) left = ow0, right = ow0 + count;
    }
    // Rows whose kernel rows all read the image leave their end columns to tiles down the
    // columns, a band of rows at a time, so that the band's pixels are still in cache; the
    // other rows (the first and last) run whole.
    auto all_kernel_rows = [&](std::size_t r) {
        std::size_t begin = 0, end = 0;
        live_taps(oh0 + r, g.stride_h, g.dilation_h, g.pad_h, g.in_h, g.kernel_h, &begin, &end);
        return begin == 0 && end == g.kernel_h;
    };
    constexpr std::size_t band_rows = B == 1 ? 12 : B == 2 ? 8 : 6;  // a tile of pixels (see pixels)
    for (std::size_t r = 0; r < rows;) {
        Taps taps{0, 0, 0, g.kernel_w, nullptr};
        if (!all_kernel_rows(r)) {
            live_taps(oh0 + r, g.stride_h, g.dilation_h, g.pad_h, g.in_h, g.kernel_h, &taps.kh_begin, &taps.kh_end);
            tap_starts<B>(g, w_sums, tap_border.data(), &taps, start);
            pixels<B, false>(g, image, w, taps, oh0 + r, ow0, count, r, 0, co0, sink);
            ++r;
            continue;
        }
        std::size_t end = r + 1;
        while (end < rows && end - r < band_rows && all_kernel_rows(end)) ++end;
        taps.kh_end = g.kernel_h;
        tap_starts<B>(g, w_sums, tap_border.data(), &taps, start);
        for (std::size_t row = r; row < end; ++row) {
            pixels<B, false>(g, image, w, taps, oh0 + row, left, right - left, row, left - ow0, co0, sink);
        }
        for (std::size_t ow = ow0; ow < ow0 + count; ++ow) {
            if (ow == left) ow = right;
            if (ow >= ow0 + count) break;
            Taps column{0, g.kernel_h, 0, 0, nullptr};
            live_taps(ow, g.stride_w, g.dilation_w, g.pad_w, g.in_w, g.kernel_w, &column.kw_begin, &column.kw_end);
            tap_starts<B>(g, w_sums, tap_border.data(), &column, start_column);
            pixels<B, true>(g, image, w, column, oh0 + r, ow, end - r, r, ow - ow0, co0, sink);
        }
        r = end;
    }
}

template <typename Sink>
void rows(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w, const std::int32_t* w_sums,
          std::size_t oh0, std::size_t row_count, std::size_t ow0, std::size_t count, const Sink& sink) {
    const std::size_t blocks = g.out_c_padded() / kConvCoBlock;
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    std::size_t b = 0;
    for (; b + 4 <= blocks; b += 4) {
        block_rows<4>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, b * kConvCoBlock, oh0, row_count, ow0,
                      count, sink);
    }
    for (; b + 2 <= blocks; b += 2) {
        block_rows<2>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, b * kConvCoBlock, oh0, row_count, ow0,
                      count, sink);
    }
    if (b < blocks) {
        block_rows<1>(g, image, w + b * block_bytes, w_sums + b * kConvCoBlock, b * kConvCoBlock, oh0, row_count, ow0,
                      count, sink);
    }
}

void conv_row_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                 const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                 std::int32_t* acc) {
    rows(g, image, w, w_sums, oh, 1, ow0, count, StoreSums{acc, g.out_c_padded(), count * g.out_c_padded()});
}

void conv_rows_requant_i8(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* w,
                          const std::int32_t* w_sums, std::size_t oh, std::size_t row_count, std::size_t ow0,
                          std::size_t count, std::size_t n, const float* mult, const float* bias, bool relu,
                          float inverse, std::int8_t* q, std::size_t q_row_stride, std::uint8_t flip) {
    rows(g, image, w, w_sums, oh, row_count, ow0, count,
         Requantize{q, n, mult, bias, relu, inverse, q_row_stride, flip});
}

// Channel planes (conv_planes_layout), for layers of few output channels or a count that is not
// a multiple of 16: a register holds 16 pixels of one group of 4 channels, each output channel has
// its own accumulator, and vpdpbusd takes the channel's 4 weights as a broadcast memory operand
// (free on the load ports), so each plane load feeds C multiply-adds and no lane computes a
// padding channel. The epilogue runs per channel on 16 pixels, then a byte transpose writes the
// pixels' channels contiguously. More than kPassChannels channels run in passes: 16 at a time
// while more than kPassChannels are left, then the rest, so every pass starts on a weight block.
constexpr std::size_t kPassChannels = 28;  // C accumulators + the plane in 32 registers
constexpr std::size_t kPlanarMaxChannels = 64;

// Four channels' 16 output bytes each (one channel a 128-bit lane) rearranged so that lane k,
// dword p' holds pixel 4k + p''s 4 channels: vpermd gathers dword k of every lane (pixels 4k ..
// 4k + 3 of the 4 channels) into lane k, vpshufb turns that lane from channel-major to
// pixel-major (AVX-512 F and BW only: the ISA level does not promise VBMI's vpermb).
__m512i pixels_by_dword(__m128i c0, __m128i c1, __m128i c2, __m128i c3) {
    const __m512i lanes = _mm512_inserti32x4(
        _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(c0), c1, 1), c2, 2), c3, 3);
    const __m512i by_pixel_group = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    const __m512i channel_major_to_pixel_major = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    return _mm512_shuffle_epi8(_mm512_permutexvar_epi32(by_pixel_group, lanes), channel_major_to_pixel_major);
}

// bytes[c]: channel c's outputs for 16 pixels (c < C, zero past n). Writes pixel p < pixels's
// channels [0, n) to q + p * stride.
template <int C>
void transpose_outputs(const __m128i* bytes, std::size_t pixels, std::size_t n, std::size_t stride, std::int8_t* q) {
    int c0 = 0;
    for (; c0 + 16 <= C; c0 += 16) {
        // A 4 x 4 dword transpose per lane across four groups of 4 channels leaves pixel 4k + p'
        // in lane k of r[p'], its 16 channels in order.
        __m512i z[4];
        for (int j = 0; j < 4; ++j) {
            z[j] = pixels_by_dword(bytes[c0 + 4 * j], bytes[c0 + 4 * j + 1], bytes[c0 + 4 * j + 2], bytes[c0 + 4 * j + 3]);
        }
        const __m512i a = _mm512_unpacklo_epi32(z[0], z[1]), b = _mm512_unpackhi_epi32(z[0], z[1]);
        const __m512i c = _mm512_unpacklo_epi32(z[2], z[3]), d = _mm512_unpackhi_epi32(z[2], z[3]);
        // r[p'] holds pixel 4k + p' in lane k. Each pixel's 16 bytes leave from the register
        // (vextracti32x4): through a stack array, each 16-byte load waited on the 64-byte store
        // it read from, and the transposition cost the folded first layers a quarter of their time.
        const __m512i r[4] = {_mm512_unpacklo_epi64(a, c), _mm512_unpackhi_epi64(a, c), _mm512_unpacklo_epi64(b, d),
                              _mm512_unpackhi_epi64(b, d)};
        const __mmask16 m = tail_mask(n - static_cast<std::size_t>(c0));
        auto lane = [&](std::size_t p) {
            const __m512i v = r[p % 4];
            switch (p / 4) {
                case 0: return _mm512_castsi512_si128(v);
                case 1: return _mm512_extracti32x4_epi32(v, 1);
                case 2: return _mm512_extracti32x4_epi32(v, 2);
                default: return _mm512_extracti32x4_epi32(v, 3);
            }
        };
        if (pixels == kConvPlanePixels && m == 0xFFFF) {
#pragma GCC unroll 16
            for (std::size_t p = 0; p < kConvPlanePixels; ++p) {
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q + p * stride + c0), lane(p));
            }
        } else {
            for (std::size_t p = 0; p < pixels; ++p) _mm_mask_storeu_epi8(q + p * stride + c0, m, lane(p));
        }
    }
    for (; c0 < C && static_cast<std::size_t>(c0) < n; c0 += 4) {
        alignas(64) std::int8_t dwords[64];  // pixel p's 4 channels at 4 p
        _mm512_store_si512(dwords, pixels_by_dword(bytes[c0], bytes[c0 + 1], bytes[c0 + 2], bytes[c0 + 3]));
        const std::size_t count = std::min<std::size_t>(4, n - static_cast<std::size_t>(c0));
        for (std::size_t p = 0; p < pixels; ++p) std::memcpy(q + p * stride + c0, dwords + 4 * p, count);
    }
}

// Pixels x0 .. x0 + pixels - 1 (pixels <= 16) of output row oh, channels 0 .. C - 1 of the
// pass (w, w_sums, mult and bias start at its first channel, a multiple of 16; C >= n, the weights
// of channels past n zero or the next pass's, their outputs not written); pixel p's n outputs go
// to q + p * stride.
template <int C>
void planar_chunk(const ConvGeometry& g, const std::uint8_t* planes, const std::int8_t* w, const std::int32_t* w_sums,
                  std::size_t oh, std::size_t x0, std::size_t pixels, std::size_t n, std::size_t stride,
                  const float* mult, const float* bias, bool relu, float inverse, std::uint8_t flip, std::int8_t* q) {
    const std::size_t groups = g.channels() / kConvChannelGroup, plane_bytes = conv_plane_width(g) * 4;
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    const __mmask16 m = tail_mask(pixels);
    __m512i acc[C];
    // The shift of the unsigned bytes, removed up front: -128 * (sum of the channel's weights).
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) acc[c] = _mm512_set1_epi32(-128 * w_sums[c]);
    const std::int8_t* second = C > 16 ? w + block_bytes : w;
    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
        const std::uint8_t* row = planes + (oh * g.stride_h + kh * g.dilation_h) * groups * plane_bytes + x0 * 4;
        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
            const std::uint8_t* at_tap = row + kw * g.dilation_w * 4;
            const std::size_t tap = (kh * g.kernel_w + kw) * groups * 64;
            for (std::size_t gi = 0; gi < groups; ++gi) {
                const __m512i x = _mm512_maskz_loadu_epi32(m, at_tap + gi * plane_bytes);
                const std::int8_t* w0 = w + tap + gi * 64;
                const std::int8_t* w1 = second + tap + gi * 64;
                // Unrolled, so that the accumulators stay in registers (GCC kept a rolled loop's
                // array on the stack: a store and a load per multiply-add).
#pragma GCC unroll 32
                for (int c = 0; c < C; ++c) {
                    const std::int8_t* at = c < 16 ? w0 + 4 * c : w1 + 4 * (c - 16);
                    std::int32_t weights;
                    std::memcpy(&weights, at, sizeof weights);
                    acc[c] = _mm512_dpbusd_epi32(acc[c], x, _mm512_set1_epi32(weights));
                }
            }
        }
    }
    const __m512 inv = _mm512_set1_ps(inverse), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    __m128i bytes[C];
#pragma GCC unroll 32
    for (int c = 0; c < C; ++c) {
        if (static_cast<std::size_t>(c) >= n) {
            bytes[c] = _mm_setzero_si128();
            continue;
        }
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[c]), _mm512_set1_ps(mult[c]));
        if (bias) y = _mm512_add_ps(y, _mm512_set1_ps(bias[c]));
        if (relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);
        const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(y, inv), lo), hi);
        bytes[c] = _mm_xor_si128(_mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(clamped)), _mm_set1_epi8(static_cast<char>(flip)));
    }
    transpose_outputs<C>(bytes, pixels, n, stride, q);
}

using PlanarChunk = void (*)(const ConvGeometry&, const std::uint8_t*, const std::int8_t*, const std::int32_t*,
                             std::size_t, std::size_t, std::size_t, std::size_t, std::size_t, const float*,
                             const float*, bool, float, std::uint8_t, std::int8_t*);

// The chunk kernel of a pass of `channels` (1 .. kPassChannels): C = channels rounded up to 4.
PlanarChunk chunk_for(std::size_t channels) {
    static constexpr PlanarChunk by_groups[] = {planar_chunk<4>,  planar_chunk<8>,  planar_chunk<12>, planar_chunk<16>,
                                                planar_chunk<20>, planar_chunk<24>, planar_chunk<28>};
    return by_groups[(channels + 3) / 4 - 1];
}

void conv_row_planar_requant_i8(const ConvGeometry& g, const std::uint8_t* planes, const std::int8_t* w,
                                const std::int32_t* w_sums, std::size_t oh, std::size_t ow0, std::size_t count,
                                std::size_t n, const float* mult, const float* bias, bool relu, float inverse,
                                std::int8_t* q, std::uint8_t flip) {
    if (n == 0 || n > kPlanarMaxChannels) return;  // the core does not call it so
    const std::size_t block_bytes = g.kernel_h * g.kernel_w * g.channels() * kConvCoBlock;
    for (std::size_t p = 0; p < count; p += kConvPlanePixels) {
        const std::size_t pixels = std::min(kConvPlanePixels, count - p);
        for (std::size_t co0 = 0; co0 < n;) {
            const std::size_t left = n - co0;
            const std::size_t channels = left > kPassChannels ? kConvCoBlock : left;
            chunk_for(channels)(g, planes, w + co0 / kConvCoBlock * block_bytes, w_sums + co0, oh, ow0 + p, pixels,
                                channels, n, mult + co0, bias ? bias + co0 : nullptr, relu, inverse, flip,
                                q + p * n + co0);
            co0 += channels;
        }
    }
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

#undef CODL_INLINE

}  // namespace

const ConvKernels conv_kernels = {conv_row_i8,         epilogue_f32, epilogue_i8, quantize_u8, conv_rows_requant_i8,
                                  conv_row_planar_requant_i8, kPlanarMaxChannels};

}  // namespace codl::avx512
