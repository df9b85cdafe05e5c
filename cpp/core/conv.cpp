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
    std::vector<std::uint8_t> image;
    std::vector<std::int8_t> canonical, blocked;
    std::vector<std::int32_t> w_sums;
    std::vector<float> multipliers;
};

Scratch& scratch() {
    thread_local Scratch buffers;
    return buffers;
}

std::uint8_t shifted(int q) { return static_cast<std::uint8_t>(q + 128); }

// q = nearbyint(x * inverse) clamped to [-127, 127]: half to even, as quantize_row_i8. Adding
// and subtracting 1.5 * 2^23 rounds a float of magnitude below 2^22 to an integer in the
// current rounding mode (nearest even, as nearbyint), without the libm call nearbyint costs
// at baseline x86-64 flags (it was most of the time of small layers).
int quantize(float x, float inverse) {
    const float scaled = x * inverse;
    // std::max(-127, NaN) is -127 (NaN from a NaN bias): never an undefined cast. Branch-free,
    // so the loops over channels vectorize.
    const float clamped = std::min(127.0f, std::max(-127.0f, scaled));
    // Without -ffast-math the compiler keeps both roundings (IEEE semantics).
    return static_cast<int>((clamped + 12582912.0f) - 12582912.0f);
}

// Fills s.image with the padded, shifted activations; false if a float input is not finite.
bool prepare_input(const ConvArgs& a, Scratch& s, float* scale) {
    const ConvGeometry& g = a.g;
    const std::size_t cp = g.channels(), hp = g.padded_h(), wp = g.padded_w();
    const std::size_t c = g.in_c, h = g.in_h, w = g.in_w;
    s.image.assign(a.batch * hp * wp * cp, 128);
    auto at = [&](std::size_t n, std::size_t y, std::size_t x) {
        return s.image.data() + ((n * hp + y + g.pad_h) * wp + x + g.pad_w) * cp;
    };
    if (a.input == ConvInput::i8_nhwc) {
        const std::int8_t* x = static_cast<const std::int8_t*>(a.x);
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t y = 0; y < h; ++y) {
                for (std::size_t i = 0; i < w; ++i) {
                    const std::int8_t* from = x + ((n * h + y) * w + i) * c;
                    std::uint8_t* to = at(n, y, i);
                    for (std::size_t ch = 0; ch < c; ++ch) to[ch] = shifted(from[ch]);
                }
            }
        }
        *scale = a.input_scale;
        return true;
    }
    const float* x = static_cast<const float*>(a.x);
    const std::size_t total = a.batch * c * h * w;
    const std::int32_t max_bits = ref::max_magnitude_bits(x, total, 0);
    if (max_bits >= 0x7F800000) return false;  // converting NaN or Inf to int would be undefined
    float inverse;
    if (a.input_scale > 0.0f) {
        inverse = 1.0f / a.input_scale;
        *scale = a.input_scale;
    } else {
        float absmax;
        std::memcpy(&absmax, &max_bits, sizeof absmax);
        inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
        *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    }
    if (a.input == ConvInput::f32_nchw) {
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t ch = 0; ch < c; ++ch) {
                for (std::size_t y = 0; y < h; ++y) {
                    const float* from = x + ((n * c + ch) * h + y) * w;
                    std::uint8_t* to = at(n, y, 0) + ch;
                    for (std::size_t i = 0; i < w; ++i) to[i * cp] = shifted(quantize(from[i], inverse));
                }
            }
        }
    } else {
        for (std::size_t n = 0; n < a.batch; ++n) {
            for (std::size_t y = 0; y < h; ++y) {
                for (std::size_t i = 0; i < w; ++i) {
                    const float* from = x + ((n * h + y) * w + i) * c;
                    std::uint8_t* to = at(n, y, i);
                    for (std::size_t ch = 0; ch < c; ++ch) to[ch] = shifted(quantize(from[ch], inverse));
                }
            }
        }
    }
    return true;
}

// Runs the kernel over output rows [begin, end) of the flattened (n, oh) range and hands each
// row's accumulators (out_w x out_c_padded) to sink(n, oh, acc).
template <typename Sink>
void run_rows(const ConvGeometry& g, const std::uint8_t* image, const std::int8_t* blocked,
              const std::int32_t* w_sums, std::size_t begin, std::size_t end, Sink sink) {
    const ConvKernels& kernels = *active_table().conv;
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w();
    const std::size_t image_bytes = g.padded_h() * g.padded_w() * g.channels();
    std::vector<std::int32_t> acc(ow_count * g.out_c_padded());
    for (std::size_t row = begin; row < end; ++row) {
        const std::size_t n = row / oh_count, oh = row % oh_count;
        kernels.conv_row_i8(g, image + n * image_bytes, blocked, w_sums, oh, 0, ow_count, acc.data());
        sink(n, oh, acc.data());
    }
}

// y[i] = acc[i * stride] * mult[i] + bias[i] (bias may be null), then max(y, 0) with relu,
// for i < n: the stated epilogue, with the branches outside the loop and every pointer a
// restrict local (int8 stores alias everything, which otherwise reloads them per element).
void epilogue(const std::int32_t* __restrict acc, std::size_t stride, const float* __restrict mult,
              const float* __restrict bias, bool relu, std::size_t n, float* __restrict y) {
    if (bias) {
        for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(acc[i * stride]) * mult[i] + bias[i];
    } else {
        for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(acc[i * stride]) * mult[i];
    }
    if (relu) {
        for (std::size_t i = 0; i < n; ++i) y[i] = std::max(y[i], 0.0f);
    }
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

void requantize(const float* __restrict y, std::size_t n, float inverse, std::int8_t* __restrict q) {
    for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<std::int8_t>(quantize(y[i], inverse));
}

std::size_t min_rows(const ConvGeometry& g) {
    const std::size_t per_row = std::max<std::size_t>(g.out_w() * g.out_c_padded() * g.reduction(), 1);
    return std::max<std::size_t>(1, kMinMacsPerThread / per_row);
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

ConvStatus conv2d(const ConvArgs& a, int num_threads) {
    const ConvGeometry& g = a.g;
    Scratch& s = scratch();
    const std::size_t k = g.reduction(), co_pad = g.out_c_padded();
    const std::int8_t* canonical = static_cast<const std::int8_t*>(a.w);
    if (a.weights == ConvWeights::ternary2) {
        s.canonical.resize(g.out_c * k);
        if (!unpack_ternary2(static_cast<const std::uint8_t*>(a.w), g.out_c * k, s.canonical.data(), 1)) {
            return ConvStatus::invalid_ternary_code;
        }
        canonical = s.canonical.data();
    }
    if (a.output == ConvOutput::i8_nhwc && !(a.output_scale > 0.0f && std::isfinite(a.output_scale))) {
        return ConvStatus::bad_scale;
    }
    if (a.input == ConvInput::i8_nhwc && !(a.input_scale > 0.0f && std::isfinite(a.input_scale))) {
        return ConvStatus::bad_scale;
    }
    if (a.input != ConvInput::i8_nhwc && !(a.input_scale >= 0.0f && std::isfinite(a.input_scale))) {
        return ConvStatus::bad_scale;
    }
    s.blocked.resize(co_pad * k);
    s.w_sums.resize(co_pad);
    conv_block_weights(g, canonical, s.blocked.data(), s.w_sums.data());
    float scale = 1.0f;
    if (!prepare_input(a, s, &scale)) return ConvStatus::nonfinite_input;
    if (a.used_input_scale) *a.used_input_scale = scale;

    s.multipliers.resize(g.out_c);
    for (std::size_t co = 0; co < g.out_c; ++co) s.multipliers[co] = scale * a.w_scale[co];
    const float* mult = s.multipliers.data();
    const float* bias = a.bias;
    const bool relu = a.relu;
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w(), out_c = g.out_c;
    const float inverse_out = a.output == ConvOutput::i8_nhwc ? 1.0f / a.output_scale : 0.0f;
    const std::uint8_t* image = s.image.data();
    const std::int8_t* blocked = s.blocked.data();
    const std::int32_t* sums = s.w_sums.data();
    const ConvOutput output = a.output;
    void* out = a.out;
    parallel_for(a.batch * oh_count, 1, min_rows(g), num_threads, [&](std::size_t begin, std::size_t end) {
        std::vector<float> row(out_c);
        float* values = row.data();
        run_rows(g, image, blocked, sums, begin, end, [&](std::size_t n, std::size_t oh, const std::int32_t* acc) {
            if (output == ConvOutput::f32_nchw) {
                // Channel by channel, so that each writes one contiguous run of the output row.
                for (std::size_t co = 0; co < out_c; ++co) {
                    float* y = static_cast<float*>(out) + ((n * out_c + co) * oh_count + oh) * ow_count;
                    epilogue_column(acc + co, co_pad, mult[co], bias ? bias + co : nullptr, relu, ow_count, y);
                }
                return;
            }
            for (std::size_t ow = 0; ow < ow_count; ++ow) {
                const std::size_t at = (n * oh_count + oh) * ow_count + ow;
                if (output == ConvOutput::f32_nhwc) {
                    epilogue(acc + ow * co_pad, 1, mult, bias, relu, out_c, static_cast<float*>(out) + at * out_c);
                } else {
                    epilogue(acc + ow * co_pad, 1, mult, bias, relu, out_c, values);
                    requantize(values, out_c, inverse_out, static_cast<std::int8_t*>(out) + at * out_c);
                }
            }
        });
    });
    return ConvStatus::ok;
}

void conv2d_i32(const ConvGeometry& g, std::size_t batch, const std::int8_t* x, const std::int8_t* w,
                std::int32_t* acc, int num_threads) {
    ConvArgs a;
    a.g = g;
    a.batch = batch;
    a.input = ConvInput::i8_nhwc;
    a.x = x;
    a.input_scale = 1.0f;
    Scratch& s = scratch();
    float scale;
    prepare_input(a, s, &scale);
    const std::size_t co_pad = g.out_c_padded();
    s.blocked.resize(co_pad * g.reduction());
    s.w_sums.resize(co_pad);
    conv_block_weights(g, w, s.blocked.data(), s.w_sums.data());
    const std::size_t oh_count = g.out_h(), ow_count = g.out_w();
    const std::uint8_t* image = s.image.data();
    const std::int8_t* blocked = s.blocked.data();
    const std::int32_t* sums = s.w_sums.data();
    parallel_for(batch * oh_count, 1, min_rows(g), num_threads, [&](std::size_t begin, std::size_t end) {
        run_rows(g, image, blocked, sums, begin, end, [&](std::size_t n, std::size_t oh, const std::int32_t* row) {
            for (std::size_t ow = 0; ow < ow_count; ++ow) {
                std::int32_t* to = acc + ((n * oh_count + oh) * ow_count + ow) * g.out_c;
                std::memcpy(to, row + ow * co_pad, g.out_c * sizeof(std::int32_t));
            }
        });
    });
}

void maxpool2x2_i8_nhwc(const std::int8_t* x, std::size_t batch, std::size_t h, std::size_t w,
                        std::size_t c, std::int8_t* y, int num_threads) {
    const std::size_t oh = h / 2, ow = w / 2;
    const std::size_t min_chunk = std::max<std::size_t>(1, (1 << 16) / std::max<std::size_t>(ow * c * 4, 1));
    parallel_for(batch * oh, 1, min_chunk, num_threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t row = begin; row < end; ++row) {
            const std::size_t n = row / oh, i = row % oh;
            const std::int8_t* top = x + ((n * h + 2 * i) * w) * c;
            const std::int8_t* bottom = top + w * c;
            std::int8_t* to = y + row * ow * c;
            for (std::size_t j = 0; j < ow; ++j) {
                const std::int8_t *a = top + 2 * j * c, *b = bottom + 2 * j * c;
                for (std::size_t ch = 0; ch < c; ++ch) {
                    to[j * c + ch] = std::max(std::max(a[ch], a[c + ch]), std::max(b[ch], b[c + ch]));
                }
            }
        }
    });
}

}  // namespace codl
