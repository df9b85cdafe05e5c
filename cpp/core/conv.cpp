// Direct convolution: the core builds the padded, shifted int8 NHWC copy of the activations
// (quantizing float inputs once per call) and the blocked weights, then splits the output rows
// over threads in one parallel region; each row runs the active ISA's integer kernel and the
// epilogue here, the same code for every ISA, so every output agrees bit for bit across ISAs
// and thread counts.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "codl/conv.h"
#include "codl/dispatch.h"
#include "codl/pack.h"
#include "codl/parallel.h"
#include "codl/ternary.h"

namespace codl {
namespace {

// Aim for at least this many multiply-adds per thread before waking another.
constexpr std::size_t kMinMacsPerThread = 1 << 17;

// Scratch of the calling thread, so that steady-state calls do not allocate.
struct Scratch {
    std::vector<std::uint8_t> image, row, patches;
    std::vector<std::int8_t> canonical, blocked;
    std::vector<std::int32_t> w_sums;
    std::vector<float> multipliers;
};

Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
}

std::uint8_t shifted(int q) { return static_cast<std::uint8_t>(q + 128); }

// The scale of a float input (the given one, or absmax / 127) and its inverse; false if the input
// is not finite (converting NaN or Inf to int would be undefined).
bool float_input_scale(const ConvArgs& a, float* scale, float* inverse) {
    const std::size_t total = a.batch * a.g.in_c * a.g.in_h * a.g.in_w;
    const std::int32_t max_bits = ref::max_magnitude_bits(static_cast<const float*>(a.x), total, 0);
    if (max_bits >= 0x7F800000) return false;
    if (a.input_scale > 0.0f) {
        *inverse = 1.0f / a.input_scale;
        *scale = a.input_scale;
    } else {
        float absmax;
        std::memcpy(&absmax, &max_bits, sizeof absmax);
        *inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
        *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    }
    return true;
}

// Fills s.image with the padded, shifted activations, `cp` bytes a pixel (the channels padded
// to 4 for the kernels, or exactly in_c for a folded layer's patch gathering); false if a float
// input is not finite.
bool prepare_input(const ConvArgs& a, Scratch& s, float* scale, std::size_t cp) {
    const ConvGeometry& g = a.g;
    const std::size_t hp = g.padded_h(), wp = g.padded_w();
    const std::size_t c = g.in_c, h = g.in_h, w = g.in_w;
    const std::size_t bytes = a.batch * hp * wp * cp + 8;  // 8 bytes of slack: gather_patches reads words
    if (c == cp) {
        // Every interior byte is written below: only the border is set to 128 (zero), not the
        // whole image, which for a 256x256x64 layer was a 4 MB memset before the copy.
        if (s.image.size() < bytes) s.image.resize(bytes);
        std::uint8_t* image = s.image.data();
        const std::size_t row = wp * cp;
        for (std::size_t n = 0; n < a.batch; ++n) {
            std::uint8_t* first = image + n * hp * row;
            std::memset(first, 128, g.pad_h * row);
            std::memset(first + (g.pad_h + h) * row, 128, (hp - g.pad_h - h) * row);
            for (std::size_t y = g.pad_h; y < g.pad_h + h; ++y) {
                std::memset(first + y * row, 128, g.pad_w * cp);
                std::memset(first + y * row + (g.pad_w + w) * cp, 128, (wp - g.pad_w - w) * cp);
            }
        }
        std::memset(image + bytes - 8, 128, 8);
    } else {
        s.image.assign(bytes, 128);
    }
    auto at = [&](std::size_t n, std::size_t y, std::size_t x) {
        return s.image.data() + ((n * hp + y + g.pad_h) * wp + x + g.pad_w) * cp;
    };
    if (a.input == ConvInput::i8_nhwc) {
        const std::int8_t* x = static_cast<const std::int8_t*>(a.x);
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t y = 0; y < h; ++y) {
                const std::int8_t* from = x + (n * h + y) * w * c;
                std::uint8_t* to = at(n, y, 0);
                if (c == cp) {  // one run per row: a loop that vectorizes
                    for (std::size_t i = 0; i < w * c; ++i) to[i] = shifted(from[i]);
                    continue;
                }
                for (std::size_t i = 0; i < w; ++i) {
                    for (std::size_t ch = 0; ch < c; ++ch) to[i * cp + ch] = shifted(from[i * c + ch]);
                }
            }
        }
        *scale = a.input_scale;
        return true;
    }
    const float* x = static_cast<const float*>(a.x);
    const ConvKernels& kernels = *active_table().conv;
    float inverse;
    if (!float_input_scale(a, scale, &inverse)) return false;
    if (a.input == ConvInput::f32_nchw) {
        // Row by row: each channel's row quantized into a contiguous scratch row (a loop that
        // vectorizes), then interleaved into the pixels; writing each value straight to its
        // pixel, cp bytes apart, ran scalar and cost more than a small layer's products.
        if (s.row.size() < c * w) s.row.resize(c * w);
        std::uint8_t* rows = s.row.data();
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t y = 0; y < h; ++y) {
                for (std::size_t ch = 0; ch < c; ++ch) {
                    kernels.quantize_u8(x + ((n * c + ch) * h + y) * w, w, inverse, rows + ch * w);
                }
                std::uint8_t* to = at(n, y, 0);
                for (std::size_t i = 0; i < w; ++i) {
                    for (std::size_t ch = 0; ch < c; ++ch) to[i * cp + ch] = rows[ch * w + i];
                }
            }
        }
    } else {
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t y = 0; y < h; ++y) {
                for (std::size_t i = 0; i < w; ++i) kernels.quantize_u8(x + ((n * h + y) * w + i) * c, c, inverse, at(n, y, i));
            }
        }
    }
    return true;
}

// Virtual pixels per kernel call on the span path: many AMX tiles of 16, so that the tile
// configuration each call loads (and releases) is paid once per 256 pixels, not per 32.
constexpr std::size_t kSpanPixels = 256;
// Output rows narrower than this run as spans (two AMX tiles of pixels).
constexpr std::size_t kNarrowRow = 32;

// With stride 1, output pixel (oh, ow) reads the image from pixel oh * wp + ow on, so the
// "virtual row" of pixels q = oh * wp + ow (0 <= ow < wp) is uniform: conv_row_i8 with oh = 0
// and ow0 = q computes it, past the ends of the output rows too (those columns are dropped).
// Narrow images then give the kernel runs of 256 pixels instead of rows of 10 or 14; AMX
// tiles take 16 pixels. The last valid pixel reads the image's last byte, never past it.
bool uses_spans(const ConvGeometry& g) {
    return g.stride_h == 1 && g.stride_w == 1 && g.out_w() < kNarrowRow && active_isa() == IsaLevel::amx;
}

// Output rows a thread takes at least: kMinMacsPerThread multiply-adds.
std::size_t min_rows_per_thread(const ConvGeometry& g) {
    const std::size_t macs_per_pixel = std::max<std::size_t>(g.out_c_padded() * g.reduction(), 1);
    return std::max<std::size_t>(1, kMinMacsPerThread / (std::max<std::size_t>(g.out_w(), 1) * macs_per_pixel));
}

// Calls row_fn(n, oh, acc) for every output row of the batch, in parallel (at least
// kMinMacsPerThread multiply-adds a thread), acc a per-thread buffer of acc_size sums.
template <typename RowFn>
void for_each_row(const ConvGeometry& g, std::size_t batch, int num_threads, std::size_t acc_size, RowFn row_fn) {
    const std::size_t oh_count = g.out_h(), min_rows = min_rows_per_thread(g);
    parallel_for(batch * oh_count, 1, min_rows, num_threads, [&](std::size_t begin, std::size_t end) {
        std::vector<std::int32_t> acc(acc_size);
        for (std::size_t row = begin; row < end; ++row) row_fn(row / oh_count, row % oh_count, acc.data());
    });
}

// Calls rows_fn(n, oh, rows) for runs of output rows of one image that together cover the batch,
// in parallel as for_each_row, each thread's share in as few runs as image boundaries allow.
template <typename RowsFn>
void for_each_row_run(const ConvGeometry& g, std::size_t batch, int num_threads, RowsFn rows_fn) {
    const std::size_t oh_count = g.out_h(), min_rows = min_rows_per_thread(g);
    parallel_for(batch * oh_count, 1, min_rows, num_threads, [&](std::size_t begin, std::size_t end) {
        while (begin < end) {
            const std::size_t n = begin / oh_count, oh = begin % oh_count;
            const std::size_t rows = std::min(end - begin, oh_count - oh);
            rows_fn(n, oh, rows);
            begin += rows;
        }
    });
}

// Runs the kernel over all output pixels, in parallel, and hands each run of pixels of one
// output row to sink(n, oh, ow0, count, acc), acc holding count x out_c_padded sums.
template <typename Sink>
void for_each_run(const ConvGeometry& g, std::size_t batch, const std::uint8_t* image, const std::int8_t* blocked,
                  const std::int32_t* w_sums, int num_threads, Sink sink) {
    const ConvKernels& kernels = *active_table().conv;
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w(), co_pad = g.out_c_padded();
    const std::size_t wp = g.padded_w(), image_bytes = g.padded_h() * wp * g.channels();
    const std::size_t macs_per_pixel = std::max<std::size_t>(co_pad * g.reduction(), 1);
    if (uses_spans(g)) {
        const std::size_t span = (oh_count - 1) * wp + ow_count;  // to the last valid pixel
        const std::size_t pieces = (span + kSpanPixels - 1) / kSpanPixels;
        const std::size_t min_pieces = std::max<std::size_t>(1, kMinMacsPerThread / (kSpanPixels * macs_per_pixel));
        parallel_for(batch * pieces, 1, min_pieces, num_threads, [&](std::size_t begin, std::size_t end) {
            std::vector<std::int32_t> acc(kSpanPixels * co_pad);
            for (std::size_t piece = begin; piece < end; ++piece) {
                const std::size_t n = piece / pieces, q0 = piece % pieces * kSpanPixels;
                const std::size_t count = std::min(kSpanPixels, span - q0);
                kernels.conv_row_i8(g, image + n * image_bytes, blocked, w_sums, 0, q0, count, acc.data());
                for (std::size_t q = q0; q < q0 + count;) {
                    const std::size_t oh = q / wp, ow = q % wp;
                    if (ow >= ow_count) {
                        q = (oh + 1) * wp;
                        continue;
                    }
                    const std::size_t run_end = std::min(q0 + count, oh * wp + ow_count);
                    sink(n, oh, ow, run_end - q, acc.data() + (q - q0) * co_pad);
                    q = run_end;
                }
            }
        });
        return;
    }
    for_each_row(g, batch, num_threads, ow_count * co_pad, [&](std::size_t n, std::size_t oh, std::int32_t* acc) {
        kernels.conv_row_i8(g, image + n * image_bytes, blocked, w_sums, oh, 0, ow_count, acc);
        sink(n, oh, 0, ow_count, acc);
    });
}

// The same for one output channel along a row: y[i] = acc[i * stride] * mult + bias[0].
void epilogue_column(const std::int32_t* __restrict acc, std::size_t stride, float mult,
                     const float* bias, bool relu, std::size_t n, float* __restrict y) {
    if (bias) {
        const float b = *bias;
        for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(acc[i * stride]) * mult + b;
    } else {
        for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(acc[i * stride]) * mult;
    }
    if (relu) {
        for (std::size_t i = 0; i < n; ++i) y[i] = std::max(y[i], 0.0f);
    }
}


// y[i] = max(a[i], b[i], c[i], d[i]), as int8 (shifted 0) or as the value plus 128 (shifted
// 0x80: the byte of a padded image). Flipping the sign bit maps int8 order onto uint8 order,
// whose max baseline x86-64 (SSE2) has as one instruction and the compiler vectorizes; int8 max
// needs SSE4.1, so the plain form ran scalar.
void max4_i8(const std::int8_t* __restrict a, const std::int8_t* __restrict b, const std::int8_t* __restrict c,
             const std::int8_t* __restrict d, std::size_t n, std::int8_t* __restrict y, std::uint8_t shifted) {
    const std::uint8_t back = static_cast<std::uint8_t>(0x80u ^ shifted);
    for (std::size_t i = 0; i < n; ++i) {
        const auto flip = [](std::int8_t v) { return static_cast<std::uint8_t>(static_cast<std::uint8_t>(v) ^ 0x80u); };
        const std::uint8_t m = std::max(std::max(flip(a[i]), flip(b[i])), std::max(flip(c[i]), flip(d[i])));
        y[i] = static_cast<std::int8_t>(m ^ back);
    }
}

}  // namespace

void conv_block_weights(const ConvGeometry& g, const std::int8_t* w, std::int8_t* blocked,
                        std::int32_t* w_sums) {
    const std::size_t cp = g.channels(), taps = g.kernel_h * g.kernel_w, k = taps * cp;
    const std::size_t co_pad = g.out_c_padded();
    std::memset(blocked, 0, co_pad * k);
    for (std::size_t co = 0; co < co_pad; ++co) {
        std::int32_t sum = 0;
        if (co < g.out_c) {
            std::int8_t* block = blocked + (co / kConvCoBlock) * k * kConvCoBlock;
            for (std::size_t t = 0; t < taps; ++t) {
                for (std::size_t c = 0; c < cp; ++c) {
                    const std::int8_t v = w[co * k + t * cp + c];
                    block[(t * (cp / kConvChannelGroup) + c / kConvChannelGroup) * kConvCoBlock * kConvChannelGroup +
                          (co % kConvCoBlock) * kConvChannelGroup + c % kConvChannelGroup] = v;
                    sum += v;
                }
            }
        }
        w_sums[co] = sum;
    }
}

ConvStatus conv_prepare_weights(const ConvGeometry& g, ConvWeights format, const void* w,
                                std::int8_t* blocked, std::int32_t* w_sums) {
    const std::int8_t* canonical = static_cast<const std::int8_t*>(w);
    std::vector<std::int8_t>& decoded = scratch().canonical;
    if (format == ConvWeights::ternary2) {
        decoded.resize(g.out_c * g.reduction());
        if (!unpack_ternary2(static_cast<const std::uint8_t*>(w), decoded.size(), decoded.data(), 1)) {
            return ConvStatus::invalid_ternary_code;
        }
        canonical = decoded.data();
    }
    if (conv_folds_patches(g)) {
        // [co][kh][kw][cp] -> [co][f.kernel_h][f.channels()]: value (kh, kw, c) at
        // (kh * kw_count + kw) * in_c + c of the one patch, or at kw * in_c + c of row kh.
        const ConvGeometry f = conv_folded_geometry(g);
        const std::size_t taps = g.kernel_h * g.kernel_w, cp = g.channels(), fp = f.channels();
        std::vector<std::int8_t> folded(g.out_c * f.reduction(), 0);
        for (std::size_t co = 0; co < g.out_c; ++co) {
            for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
                for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
                    const std::size_t t = kh * g.kernel_w + kw;
                    const std::size_t at = f.kernel_h == 1 ? co * fp + t * g.in_c : (co * g.kernel_h + kh) * fp + kw * g.in_c;
                    for (std::size_t c = 0; c < g.in_c; ++c) folded[at + c] = canonical[(co * taps + t) * cp + c];
                }
            }
        }
        conv_block_weights(f, folded.data(), blocked, w_sums);
        return ConvStatus::ok;
    }
    conv_block_weights(g, canonical, blocked, w_sums);
    return ConvStatus::ok;
}

namespace {

// The image a folded layer (conv_folds_patches) convolves, from its padded image (in_c bytes a
// pixel): pixel (y, x) holds, for each of the `rows` kernel rows it folds (kernel_h for a whole
// patch, 1 for row folding), the kw * in_c bytes that row of the kernel reads at output column
// x, then 128s (zeros) up to the padded channel count. For a whole patch y is the output row
// (source rows y * stride_h + r * dilation_h); for row folding y is the padded input row.
// With dilation_w 1 a kernel row is one run of bytes, copied in 8-byte words where the word
// stays inside the pixel (no word reaches a pixel another thread writes) and bytewise after;
// the image has 8 bytes of slack for the last word read.
void gather_patches(const ConvGeometry& g, std::size_t batch, const std::uint8_t* tight, Scratch& s,
                    int num_threads) {
    const ConvGeometry f = conv_folded_geometry(g);
    const bool whole = f.kernel_h == 1;
    const std::size_t rows_out = f.in_h, ow_count = f.in_w, fp = f.channels();
    const std::size_t c = g.in_c, wp = g.padded_w(), image_bytes = g.padded_h() * wp * c;
    const std::size_t run = g.kernel_w * c, values = whole ? g.kernel_h * run : run;
    const std::size_t rows = whole ? g.kernel_h : 1;
    const std::size_t size = batch * rows_out * ow_count * fp + 8;
    if (s.patches.size() < size) s.patches.resize(size);
    std::uint8_t* patches = s.patches.data();
    const std::size_t min_rows = std::max<std::size_t>(1, 4096 / std::max<std::size_t>(ow_count * fp, 1));
    // Locals, captured by value: through a reference every byte stored could alias the
    // geometry, and the compiler reloaded it for each word.
    const std::size_t stride_h = whole ? g.stride_h : 1, stride_w = g.stride_w;
    const std::size_t dilation_h = g.dilation_h, dilation_w = g.dilation_w, kernel_w = g.kernel_w;
    parallel_for(batch * rows_out, 1, min_rows, num_threads, [=](std::size_t begin, std::size_t end) {
        for (std::size_t row = begin; row < end; ++row) {
            const std::size_t n = row / rows_out, y = row % rows_out;
            const std::uint8_t* image = tight + n * image_bytes;
            std::uint8_t* to = patches + row * ow_count * fp;
            for (std::size_t x = 0; x < ow_count; ++x, to += fp) {
                for (std::size_t r = 0; r < rows; ++r) {
                    const std::uint8_t* from = image + ((y * stride_h + r * dilation_h) * wp + x * stride_w) * c;
                    std::uint8_t* into = to + r * run;
                    if (dilation_w != 1) {
                        for (std::size_t kw = 0; kw < kernel_w; ++kw) std::memcpy(into + kw * c, from + kw * dilation_w * c, c);
                        continue;
                    }
                    std::size_t i = 0;
                    for (; i + 8 <= run || (i < run && r * run + i + 8 <= fp); i += 8) {
                        std::uint64_t word;
                        std::memcpy(&word, from + i, sizeof word);
                        std::memcpy(into + i, &word, sizeof word);
                    }
                    for (; i < run; ++i) into[i] = from[i];
                }
                for (std::size_t i = values; i < fp; ++i) to[i] = 128;
            }
        }
    });
}

// A folded layer's input as padded, shifted channel rows, s.image = [batch][in_c][padded_h]
// [padded_w] bytes: from float NCHW each row is quantized in place (no interleaving into pixels);
// the other inputs are scattered value by value (first layers have 1 to 3 channels). False if a
// float input is not finite.
bool prepare_channel_rows(const ConvArgs& a, Scratch& s, float* scale) {
    const ConvGeometry& g = a.g;
    const std::size_t c = g.in_c, h = g.in_h, w = g.in_w, hp = g.padded_h(), wp = g.padded_w();
    s.image.assign(a.batch * c * hp * wp, 128);
    auto row = [&](std::size_t n, std::size_t ch, std::size_t y) {
        return s.image.data() + ((n * c + ch) * hp + y + g.pad_h) * wp + g.pad_w;
    };
    if (a.input == ConvInput::i8_nhwc) {
        const std::int8_t* x = static_cast<const std::int8_t*>(a.x);
        for (std::size_t n = 0; n < a.batch; ++n)
            for (std::size_t ch = 0; ch < c; ++ch)
                for (std::size_t y = 0; y < h; ++y)
                    for (std::size_t i = 0; i < w; ++i) row(n, ch, y)[i] = shifted(x[((n * h + y) * w + i) * c + ch]);
        *scale = a.input_scale;
        return true;
    }
    float inverse;
    if (!float_input_scale(a, scale, &inverse)) return false;
    const float* x = static_cast<const float*>(a.x);
    if (a.input == ConvInput::f32_nchw) {
        const ConvKernels& kernels = *active_table().conv;
        for (std::size_t n = 0; n < a.batch; ++n)
            for (std::size_t ch = 0; ch < c; ++ch)
                for (std::size_t y = 0; y < h; ++y)
                    kernels.quantize_u8(x + ((n * c + ch) * h + y) * w, w, inverse, row(n, ch, y));
        return true;
    }
    for (std::size_t n = 0; n < a.batch; ++n)
        for (std::size_t ch = 0; ch < c; ++ch)
            for (std::size_t y = 0; y < h; ++y)
                for (std::size_t i = 0; i < w; ++i)
                    row(n, ch, y)[i] = shifted(quantize_i8(x[((n * h + y) * w + i) * c + ch], inverse));
    return true;
}

// out[4 x + b] = from[b][x * step]: a plane's pixels from four streams of bytes. With step 1 the
// compiler vectorizes it into byte unpacks.
void interleave4(const std::uint8_t* __restrict s0, const std::uint8_t* __restrict s1,
                 const std::uint8_t* __restrict s2, const std::uint8_t* __restrict s3, std::size_t count,
                 std::size_t step, std::uint8_t* __restrict out) {
    if (step == 1) {
        for (std::size_t x = 0; x < count; ++x) {
            out[4 * x] = s0[x];
            out[4 * x + 1] = s1[x];
            out[4 * x + 2] = s2[x];
            out[4 * x + 3] = s3[x];
        }
        return;
    }
    for (std::size_t x = 0; x < count; ++x) {
        out[4 * x] = s0[x * step];
        out[4 * x + 1] = s1[x * step];
        out[4 * x + 2] = s2[x * step];
        out[4 * x + 3] = s3[x * step];
    }
}

// The folded layer's image (gather_patches) in channel planes (conv_planes_layout) instead, from
// its channel rows (prepare_channel_rows): folded channel k of a pixel is one channel row read
// from an offset (its kernel row, tap and channel), so each plane row interleaves four shifted
// byte rows; the folded channels past the patch read a row of 128s (zeros).
void gather_planes(const ConvGeometry& g, std::size_t batch, const std::uint8_t* rows, Scratch& s, int num_threads) {
    const ConvGeometry f = conv_folded_geometry(g);
    const bool whole = f.kernel_h == 1;
    const std::size_t rows_out = f.in_h, ow_count = f.in_w, groups = f.channels() / kConvChannelGroup;
    const std::size_t plane_w = conv_plane_width(f), row_bytes = groups * plane_w * kConvChannelGroup;
    const std::size_t c = g.in_c, hp = g.padded_h(), wp = g.padded_w(), image_bytes = c * hp * wp;
    const std::size_t run = g.kernel_w * c, values = whole ? g.kernel_h * run : run;
    const std::size_t size = batch * rows_out * row_bytes;
    if (s.patches.size() < size) s.patches.resize(size);
    if (s.row.size() < wp) s.row.resize(wp);
    std::fill(s.row.begin(), s.row.end(), std::uint8_t{128});
    std::uint8_t* planes = s.patches.data();
    // Folded channel k reads channel k % c of kernel row k / run at tap (k % run) / c: its offset
    // from the channel rows of the output row's first source row; -1 past the patch.
    std::vector<long> source(groups * kConvChannelGroup, -1);
    for (std::size_t k = 0; k < values; ++k) {
        const std::size_t r = k / run, kw = k % run / c, ch = k % c;
        source[k] = static_cast<long>((ch * hp + r * g.dilation_h) * wp + kw * g.dilation_w);
    }
    const std::size_t min_rows = std::max<std::size_t>(1, 4096 / std::max<std::size_t>(row_bytes, 1));
    const std::size_t stride_h = whole ? g.stride_h : 1, step = g.stride_w;
    const long* offsets = source.data();
    const std::uint8_t* zeros = s.row.data();
    parallel_for(batch * rows_out, 1, min_rows, num_threads, [=](std::size_t begin, std::size_t end) {
        for (std::size_t row = begin; row < end; ++row) {
            const std::size_t n = row / rows_out, y = row % rows_out;
            const std::uint8_t* origin = rows + n * image_bytes + y * stride_h * wp;
            std::uint8_t* to = planes + row * row_bytes;
            for (std::size_t gi = 0; gi < groups; ++gi, to += plane_w * kConvChannelGroup) {
                const long* k = offsets + gi * kConvChannelGroup;
                const std::uint8_t* from[kConvChannelGroup];
                for (std::size_t b = 0; b < kConvChannelGroup; ++b) from[b] = k[b] < 0 ? zeros : origin + k[b];
                // The row of zeros is read with the same step, so it is as long as a padded row.
                interleave4(from[0], from[1], from[2], from[3], ow_count, step, to);
            }
        }
    });
}

// Folded first layers (up to planar_max_channels: CSRNet's 3 -> 64 ran 2.11 ms by pixels and
// 1.56 ms in planes) and layers over int8 whose output channels fill no whole number of 16-channel
// blocks, or fewer than two, run the planar kernel (int8 outputs, stride_w 1); the rest by pixels.
bool runs_planar(const ConvKernels& kernels, const ConvArgs& a, const ConvGeometry& g, bool folded) {
    return kernels.conv_row_planar_requant_i8 && a.output == ConvOutput::i8_nhwc && conv_planes_layout(g) &&
           (folded || a.input == ConvInput::i8_nhwc) && g.out_c <= kernels.planar_max_channels &&
           (folded || g.out_c < 2 * kConvCoBlock || g.out_c % kConvCoBlock != 0);
}

// An int8 NHWC input in channel planes (conv_planes_layout), shifted by 128, zeros (128) on the
// border and in the channels past in_c: one word a pixel and group where the group is whole.
void prepare_planes(const ConvArgs& a, Scratch& s) {
    const ConvGeometry& g = a.g;
    const std::size_t c = g.in_c, h = g.in_h, w = g.in_w, groups = g.channels() / kConvChannelGroup;
    const std::size_t plane = conv_plane_width(g) * kConvChannelGroup, image_bytes = conv_planes_bytes(g);
    s.patches.assign(a.batch * image_bytes, 128);
    const std::int8_t* x = static_cast<const std::int8_t*>(a.x);
    for (std::size_t n = 0; n < a.batch; ++n) {
        for (std::size_t y = 0; y < h; ++y) {
            const std::int8_t* from = x + (n * h + y) * w * c;
            std::uint8_t* row = s.patches.data() + n * image_bytes + (y + g.pad_h) * groups * plane + g.pad_w * 4;
            for (std::size_t gi = 0; gi < groups; ++gi) {
                std::uint8_t* to = row + gi * plane;
                const std::size_t first = gi * kConvChannelGroup;
                if (first + kConvChannelGroup <= c) {
                    for (std::size_t i = 0; i < w; ++i) {
                        std::uint32_t word;
                        std::memcpy(&word, from + i * c + first, sizeof word);
                        word ^= 0x80808080u;  // + 128 in each byte
                        std::memcpy(to + i * 4, &word, sizeof word);
                    }
                    continue;
                }
                for (std::size_t i = 0; i < w; ++i) {
                    for (std::size_t ch = first; ch < c; ++ch) to[i * 4 + ch - first] = shifted(from[i * c + ch]);
                }
            }
        }
    }
}

// Where a layer of a chain reads and writes, beyond ConvArgs: its int8 input already laid out as
// the padded image of bytes the kernels read (written so by the layer before), and its int8
// output written as the next layer's padded image (the value plus 128, a border of 128 around
// it, out_pad_h rows and out_pad_w columns wide), so that no layer copies its input into that
// image (CSRNet's chain copied 13 MB a call: 0.7% of its time at one thread, 1.5% at two).
struct Laid {
    bool padded_input = false;
    bool padded_output = false;
    std::size_t out_pad_h = 0, out_pad_w = 0;
};

// Sets the border of each of batch padded images (h x w pixels inside pad_h rows and pad_w
// columns of border, c bytes a pixel) to the byte 128.
void fill_border(std::uint8_t* images, std::size_t batch, std::size_t h, std::size_t w, std::size_t c,
                 std::size_t pad_h, std::size_t pad_w) {
    const std::size_t hp = h + 2 * pad_h, row = (w + 2 * pad_w) * c;
    for (std::size_t n = 0; n < batch; ++n) {
        std::uint8_t* first = images + n * hp * row;
        std::memset(first, 128, pad_h * row);
        std::memset(first + (pad_h + h) * row, 128, pad_h * row);
        for (std::size_t y = pad_h; y < pad_h + h; ++y) {
            std::memset(first + y * row, 128, pad_w * c);
            std::memset(first + y * row + (pad_w + w) * c, 128, pad_w * c);
        }
    }
}

ConvStatus run_conv(const ConvArgs& a, int num_threads, const Laid& laid) {
    Scratch& s = scratch();
    const std::size_t co_pad = a.g.out_c_padded();
    if (a.output == ConvOutput::i8_nhwc && !(a.output_scale > 0.0f && std::isfinite(a.output_scale))) {
        return ConvStatus::bad_scale;
    }
    if (a.input == ConvInput::i8_nhwc && !(a.input_scale > 0.0f && std::isfinite(a.input_scale))) {
        return ConvStatus::bad_scale;
    }
    if (a.input != ConvInput::i8_nhwc && !(a.input_scale >= 0.0f && std::isfinite(a.input_scale))) {
        return ConvStatus::bad_scale;
    }
    const std::int8_t* blocked_weights = static_cast<const std::int8_t*>(a.w);
    const std::int32_t* weight_sums = a.w_sums;
    if (a.weights != ConvWeights::blocked) {
        s.blocked.resize(conv_blocked_bytes(a.g));
        s.w_sums.resize(co_pad);
        const ConvStatus prepared = conv_prepare_weights(a.g, a.weights, a.w, s.blocked.data(), s.w_sums.data());
        if (prepared != ConvStatus::ok) return prepared;
        blocked_weights = s.blocked.data();
        weight_sums = s.w_sums.data();
    }
    float scale = 1.0f;
    const bool folded = conv_folds_patches(a.g);
    const ConvGeometry g = folded ? conv_folded_geometry(a.g) : a.g;
    const ConvKernels& kernels = *active_table().conv;
    const bool planar = runs_planar(kernels, a, g, folded);
    if (laid.padded_input) {  // the chain only lays out inputs of layers that read the padded image
        scale = a.input_scale;
    } else if (planar && !folded) {
        prepare_planes(a, s);
        scale = a.input_scale;
    } else if (planar) {
        if (!prepare_channel_rows(a, s, &scale)) return ConvStatus::nonfinite_input;
        gather_planes(a.g, a.batch, s.image.data(), s, num_threads);
    } else {
        // A folded layer's image keeps in_c bytes a pixel (its words of patches read them in runs).
        if (!prepare_input(a, s, &scale, folded ? a.g.in_c : a.g.channels())) return ConvStatus::nonfinite_input;
        if (folded) gather_patches(a.g, a.batch, s.image.data(), s, num_threads);
    }
    if (a.used_input_scale) *a.used_input_scale = scale;

    s.multipliers.resize(g.out_c);
    for (std::size_t co = 0; co < g.out_c; ++co) s.multipliers[co] = scale * a.w_scale[co];
    const float* mult = s.multipliers.data();
    const float* bias = a.bias;
    const bool relu = a.relu;
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w(), out_c = g.out_c;
    const float inverse_out = a.output == ConvOutput::i8_nhwc ? 1.0f / a.output_scale : 0.0f;
    const std::uint8_t* image = laid.padded_input ? static_cast<const std::uint8_t*>(a.x)
                                : folded || planar ? s.patches.data()
                                                   : s.image.data();
    const std::int8_t* blocked = blocked_weights;
    const std::int32_t* sums = weight_sums;
    const ConvOutput output = a.output;
    void* out = a.out;
    // Where int8 output row oh of image n starts, how far apart rows are, and the byte XORed into
    // every output: the plain NHWC tensor, or the next layer's padded image.
    const std::size_t out_row_stride =
        laid.padded_output ? (ow_count + 2 * laid.out_pad_w) * out_c : ow_count * out_c;
    const std::size_t out_image_bytes = laid.padded_output ? (oh_count + 2 * laid.out_pad_h) * out_row_stride
                                                           : oh_count * out_row_stride;
    const std::uint8_t flip = laid.padded_output ? 0x80 : 0;
    auto out_row = [&](std::size_t n, std::size_t oh) {
        return static_cast<std::int8_t*>(out) + n * out_image_bytes + (oh + laid.out_pad_h) * out_row_stride +
               laid.out_pad_w * out_c;
    };
    if (laid.padded_output) {
        fill_border(static_cast<std::uint8_t*>(out), a.batch, oh_count, ow_count, out_c, laid.out_pad_h,
                    laid.out_pad_w);
    }
    if (planar) {
        const std::size_t image_bytes = conv_planes_bytes(g);
        for_each_row(g, a.batch, num_threads, 0, [&](std::size_t n, std::size_t oh, std::int32_t*) {
            kernels.conv_row_planar_requant_i8(g, image + n * image_bytes, blocked, sums, oh, 0, ow_count, out_c, mult,
                                               bias, relu, inverse_out, out_row(n, oh), flip);
        });
        return ConvStatus::ok;
    }
    if (output == ConvOutput::i8_nhwc && kernels.conv_rows_requant_i8 && !uses_spans(g)) {
        const std::size_t image_bytes = g.padded_h() * g.padded_w() * g.channels();
        for_each_row_run(g, a.batch, num_threads, [&](std::size_t n, std::size_t oh, std::size_t rows) {
            kernels.conv_rows_requant_i8(g, image + n * image_bytes, blocked, sums, oh, rows, 0, ow_count, out_c, mult,
                                         bias, relu, inverse_out, out_row(n, oh), out_row_stride, flip);
        });
        return ConvStatus::ok;
    }
    for_each_run(g, a.batch, image, blocked, sums, num_threads,
                 [&](std::size_t n, std::size_t oh, std::size_t ow0, std::size_t count, const std::int32_t* acc) {
        if (output == ConvOutput::f32_nchw) {
            // Channel by channel, so that each writes one contiguous run of the output row.
            for (std::size_t co = 0; co < out_c; ++co) {
                float* y = static_cast<float*>(out) + ((n * out_c + co) * oh_count + oh) * ow_count + ow0;
                epilogue_column(acc + co, co_pad, mult[co], bias ? bias + co : nullptr, relu, count, y);
            }
            return;
        }
        const std::size_t at = (n * oh_count + oh) * ow_count + ow0;
        if (output == ConvOutput::f32_nhwc) {
            kernels.epilogue_f32(acc, co_pad, count, out_c, mult, bias, relu, static_cast<float*>(out) + at * out_c);
        } else {
            std::int8_t* q = out_row(n, oh) + ow0 * out_c;
            kernels.epilogue_i8(acc, co_pad, count, out_c, mult, bias, relu, inverse_out, q);
            if (flip) {
                for (std::size_t i = 0; i < count * out_c; ++i) q[i] = static_cast<std::int8_t>(q[i] ^ flip);
            }
        }
    });
    return ConvStatus::ok;
}

// Whether the layer's kernels read the padded image of its input (not channel planes or
// gathered patches), so that the layer before may write it (Laid).
bool reads_padded_image(const ConvArgs& a) {
    const ConvKernels& kernels = *active_table().conv;
    return a.input == ConvInput::i8_nhwc && !conv_folds_patches(a.g) && !runs_planar(kernels, a, a.g, false) &&
           a.g.in_c % kConvChannelGroup == 0;
}

}  // namespace

ConvStatus conv2d(const ConvArgs& a, int num_threads) { return run_conv(a, num_threads, Laid{}); }

void conv2d_i32(const ConvGeometry& geometry, std::size_t batch, const std::int8_t* x, const std::int8_t* w,
                std::int32_t* acc, int num_threads) {
    ConvArgs a;
    a.g = geometry;
    a.batch = batch;
    a.input = ConvInput::i8_nhwc;
    a.x = x;
    a.input_scale = 1.0f;
    Scratch& s = scratch();
    float scale;
    const bool folded = conv_folds_patches(geometry);
    prepare_input(a, s, &scale, folded ? geometry.in_c : geometry.channels());
    const std::size_t co_pad = geometry.out_c_padded();
    s.blocked.resize(conv_blocked_bytes(geometry));
    s.w_sums.resize(co_pad);
    conv_prepare_weights(geometry, ConvWeights::i8, w, s.blocked.data(), s.w_sums.data());
    if (folded) gather_patches(geometry, batch, s.image.data(), s, num_threads);
    const ConvGeometry g = folded ? conv_folded_geometry(geometry) : geometry;
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w();
    const std::uint8_t* image = folded ? s.patches.data() : s.image.data();
    const std::int8_t* blocked = s.blocked.data();
    const std::int32_t* sums = s.w_sums.data();
    for_each_run(g, batch, image, blocked, sums, num_threads,
                 [&](std::size_t n, std::size_t oh, std::size_t ow0, std::size_t count, const std::int32_t* row) {
        for (std::size_t p = 0; p < count; ++p) {
            std::int32_t* to = acc + ((n * oh_count + oh) * ow_count + ow0 + p) * g.out_c;
            std::memcpy(to, row + p * co_pad, g.out_c * sizeof(std::int32_t));
        }
    });
}

namespace {

// 2x2 max pooling into y as int8 NHWC (pad 0, 0) or as the padded image of the next layer (Laid).
void maxpool2x2(const std::int8_t* x, std::size_t batch, std::size_t h, std::size_t w, std::size_t c,
                std::int8_t* y, int num_threads, std::size_t pad_h, std::size_t pad_w, bool padded) {
    const std::size_t oh = h / 2, ow = w / 2, row_bytes = (ow + 2 * pad_w) * c;
    const std::size_t image_bytes = (oh + 2 * pad_h) * row_bytes;
    if (padded) fill_border(reinterpret_cast<std::uint8_t*>(y), batch, oh, ow, c, pad_h, pad_w);
    const std::size_t min_chunk = std::max<std::size_t>(1, (1 << 16) / std::max<std::size_t>(ow * c * 4, 1));
    parallel_for(batch * oh, 1, min_chunk, num_threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t row = begin; row < end; ++row) {
            const std::size_t n = row / oh, i = row % oh;
            const std::int8_t* top = x + ((n * h + 2 * i) * w) * c;
            const std::int8_t* bottom = top + w * c;
            std::int8_t* to = y + n * image_bytes + (i + pad_h) * row_bytes + pad_w * c;
            for (std::size_t j = 0; j < ow; ++j) {
                const std::int8_t *a = top + 2 * j * c, *b = bottom + 2 * j * c;
                max4_i8(a, a + c, b, b + c, c, to + j * c, padded ? 0x80 : 0);
            }
        }
    });
}

}  // namespace

void maxpool2x2_i8_nhwc(const std::int8_t* x, std::size_t batch, std::size_t h, std::size_t w,
                        std::size_t c, std::int8_t* y, int num_threads) {
    maxpool2x2(x, batch, h, w, c, y, num_threads, 0, 0, false);
}

}  // namespace codl

namespace codl {
namespace {

// What a chain layer writes: its kind and per-image element count.
enum class Flow { f32, i8 };

struct ChainBuffers {
    std::vector<float> f32[2];
    std::vector<std::int8_t> i8[2];
};

ChainBuffers& chain_buffers() {
    thread_local ChainBuffers buffers;
    return buffers;
}

std::size_t conv_output_elements(const ConvGeometry& g) { return g.out_h() * g.out_w() * g.out_c; }

// The buffer's storage for n elements. It only grows: resizing down and up again would zero
// the regrown part on every layer of every call (megabytes for a 256x256 image).
template <typename T>
T* room(std::vector<T>& buffer, std::size_t n) {
    if (buffer.size() < n) buffer.resize(n);
    return buffer.data();
}

}  // namespace

ChainStatus check_chain(const ChainLayer* layers, std::size_t count, std::size_t input_elements,
                        std::size_t* output_elements) {
    Flow flow = Flow::f32;
    std::size_t elements = input_elements;
    for (std::size_t i = 0; i < count; ++i) {
        const ChainLayer& layer = layers[i];
        switch (layer.kind) {
            case ChainLayer::Kind::conv: {
                const ConvArgs& a = layer.conv;
                const bool int8_in = a.input == ConvInput::i8_nhwc;
                if (a.input == ConvInput::f32_nhwc || int8_in != (flow == Flow::i8)) return ChainStatus::mismatched_layers;
                if (a.g.in_h * a.g.in_w * a.g.in_c != elements || a.g.out_h() == 0 || a.g.out_w() == 0) {
                    return ChainStatus::mismatched_layers;
                }
                if (a.output == ConvOutput::f32_nhwc) return ChainStatus::mismatched_layers;
                flow = a.output == ConvOutput::i8_nhwc ? Flow::i8 : Flow::f32;
                elements = conv_output_elements(a.g);
                break;
            }
            case ChainLayer::Kind::maxpool2x2:
                if (flow != Flow::i8 || layer.pool_h * layer.pool_w * layer.pool_c != elements) {
                    return ChainStatus::mismatched_layers;
                }
                elements = (layer.pool_h / 2) * (layer.pool_w / 2) * layer.pool_c;
                break;
            case ChainLayer::Kind::linear:
                if (layer.in_features != elements || layer.out_features == 0) return ChainStatus::mismatched_layers;
                if (flow == Flow::i8 && !(layer.input_scale > 0.0f && std::isfinite(layer.input_scale))) {
                    return ChainStatus::bad_scale;
                }
                flow = Flow::f32;
                elements = layer.out_features;
                break;
        }
    }
    if (flow != Flow::f32) return ChainStatus::mismatched_layers;
    *output_elements = elements;
    return ChainStatus::ok;
}

ChainStatus run_chain(const ChainLayer* layers, std::size_t count, const float* x, std::size_t batch, float* out,
                      int num_threads) {
    ChainBuffers& buffers = chain_buffers();
    const void* current = x;
    bool current_padded = false;  // current is the padded image the layer reads (Laid)
    // The next layer, where it is a convolution that reads a padded image of h x w x c int8 values.
    auto padded_reader = [&](std::size_t i, std::size_t h, std::size_t w, std::size_t c) -> const ConvGeometry* {
        if (i + 1 >= count || layers[i + 1].kind != ChainLayer::Kind::conv) return nullptr;
        const ConvArgs& next = layers[i + 1].conv;
        const bool same = next.g.in_h == h && next.g.in_w == w && next.g.in_c == c;
        return same && reads_padded_image(next) ? &next.g : nullptr;
    };
    int side = 0;
    for (std::size_t i = 0; i < count; ++i) {
        const ChainLayer& layer = layers[i];
        const bool last = i + 1 == count;
        switch (layer.kind) {
            case ChainLayer::Kind::conv: {
                ConvArgs a = layer.conv;
                a.x = current;
                a.batch = batch;
                Laid laid;
                laid.padded_input = current_padded;
                std::size_t elements = batch * conv_output_elements(a.g);
                if (a.output == ConvOutput::i8_nhwc) {
                    if (const ConvGeometry* next = padded_reader(i, a.g.out_h(), a.g.out_w(), a.g.out_c)) {
                        laid.padded_output = true;
                        laid.out_pad_h = next->pad_h;
                        laid.out_pad_w = next->pad_w;
                        elements = batch * next->padded_h() * next->padded_w() * next->channels();
                    }
                    a.out = room(buffers.i8[side], elements);
                } else if (last) {
                    a.out = out;
                } else {
                    a.out = room(buffers.f32[side], elements);
                }
                current_padded = laid.padded_output;
                switch (run_conv(a, num_threads, laid)) {
                    case ConvStatus::ok: break;
                    case ConvStatus::nonfinite_input: return ChainStatus::nonfinite_input;
                    case ConvStatus::invalid_ternary_code: return ChainStatus::invalid_ternary_code;
                    case ConvStatus::bad_scale: return ChainStatus::bad_scale;
                }
                current = a.out;
                break;
            }
            case ChainLayer::Kind::maxpool2x2: {
                std::size_t elements = batch * (layer.pool_h / 2) * (layer.pool_w / 2) * layer.pool_c;
                const ConvGeometry* next = padded_reader(i, layer.pool_h / 2, layer.pool_w / 2, layer.pool_c);
                if (next) elements = batch * next->padded_h() * next->padded_w() * next->channels();
                std::int8_t* pooled = room(buffers.i8[side], elements);
                maxpool2x2(static_cast<const std::int8_t*>(current), batch, layer.pool_h, layer.pool_w, layer.pool_c,
                           pooled, num_threads, next ? next->pad_h : 0, next ? next->pad_w : 0, next != nullptr);
                current = pooled;
                current_padded = next != nullptr;
                break;
            }
            case ChainLayer::Kind::linear: {
                const float* input = static_cast<const float*>(current);
                if (layer.input_scale > 0.0f) {  // int8 input: dequantize into the other side
                    const std::size_t n = batch * layer.in_features;
                    float* values = room(buffers.f32[1 - side], n);
                    const std::int8_t* q = static_cast<const std::int8_t*>(current);
                    for (std::size_t j = 0; j < n; ++j) values[j] = static_cast<float>(q[j]) * layer.input_scale;
                    input = values;
                }
                float* y = out;
                if (!last) y = room(buffers.f32[side], batch * layer.out_features);
                if (!ternary_linear_f32(input, batch, layer.in_features, layer.packed, layer.alpha, layer.out_features,
                                        layer.bias, y, num_threads)) {
                    return ChainStatus::nonfinite_input;
                }
                if (layer.relu) {
                    for (std::size_t j = 0; j < batch * layer.out_features; ++j) y[j] = std::max(y[j], 0.0f);
                }
                current = y;
                break;
            }
        }
        side = 1 - side;
    }
    return ChainStatus::ok;
}

}  // namespace codl
