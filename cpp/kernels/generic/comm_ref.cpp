// Scalar reference of the gradient codecs: written for clarity, the oracle of every test. The
// SIMD variants reproduce it bit for bit: same float operations in the same order (no FMA, the
// build turns contraction off), integer maxima, and the sign codec's fixed 16-lane sum order.
#include <cmath>
#include <cstring>
#include <limits>

#include "codl/comm.h"

namespace codl {

namespace {
std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
}  // namespace

std::uint64_t counter_stream(std::uint64_t seed, std::uint64_t key, std::uint64_t step) {
    return mix64(mix64(mix64(seed) ^ key) ^ step);
}

float counter_uniform(std::uint64_t stream, std::uint64_t index) {
    const std::uint64_t bits = mix64(stream + index * 0x9E3779B97F4A7C15ull) >> 40;
    return static_cast<float>(bits) * 0x1p-24f;
}

namespace ref {

float int8_inverse_scale(float max_abs) {
    // A block whose largest magnitude is below 127 / FLT_MAX (~3.7e-37) overflows the quotient
    // and would need a scale too small to represent well: it is sent as zeros (scale 0), and
    // error feedback keeps its values.
    const float inverse = max_abs == 0.0f ? 0.0f : 127.0f / max_abs;
    return inverse <= std::numeric_limits<float>::max() ? inverse : 0.0f;
}

float sign_block_scale(const float* lane_sums, std::size_t count) {
    double total = 0.0;
    for (int lane = 0; lane < 16; ++lane) total += lane_sums[lane];
    return static_cast<float>(total / static_cast<double>(count));
}

bool qsgd_block_norm(const float* x, const float* error, std::size_t m, float* norm) {
    double squares = 0.0;  // sequential, in double: one order for every ISA
    for (std::size_t i = 0; i < m; ++i) {
        const double v = error ? x[i] + error[i] : x[i];
        squares += v * v;
    }
    if (!std::isfinite(squares)) return false;
    *norm = static_cast<float>(std::sqrt(squares));
    return std::isfinite(*norm);
}

void write_fields(FieldWriter& writer, const std::uint32_t* fields, std::size_t count) {
    for (std::size_t j = 0; j < count; ++j) {
        writer.pending |= static_cast<std::uint64_t>(fields[j]) << writer.pending_bits;
        writer.pending_bits += writer.width;
        while (writer.pending_bits >= 8) {
            *writer.out++ = static_cast<std::uint8_t>(writer.pending);
            writer.pending >>= 8;
            writer.pending_bits -= 8;
        }
    }
}

void flush_fields(FieldWriter& writer) {
    if (writer.pending_bits) *writer.out = static_cast<std::uint8_t>(writer.pending);
}

namespace {

constexpr std::uint32_t kExponentBits = 0x7F800000u;

std::uint32_t magnitude_bits(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return bits & 0x7FFFFFFFu;
}
float from_bits(std::uint32_t bits) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}
bool sign_bit(float v) { return std::signbit(v); }

// v = x + error with error feedback, else x itself (x + 0 would turn -0 into +0).
float corrected(const float* x, const float* error, std::size_t i) {
    return error ? x[i] + error[i] : x[i];
}
void store_scale(std::uint8_t* scales, std::size_t b, float scale) {
    std::memcpy(scales + 4 * b, &scale, sizeof scale);
}
float load_scale(const std::uint8_t* scales, std::size_t b) {
    float scale;
    std::memcpy(&scale, scales + 4 * b, sizeof scale);
    return scale;
}
void put(float* out, std::size_t i, float value, bool accumulate) {
    out[i] = accumulate ? out[i] + value : value;
}
// The largest |v| of a block as bits; >= kExponentBits means NaN or Inf.
std::uint32_t block_max_bits(const float* x, const float* error, std::size_t n) {
    std::uint32_t largest = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint32_t bits = magnitude_bits(corrected(x, error, i));
        largest = bits > largest ? bits : largest;
    }
    return largest;
}

bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::int8_t* codes) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        const float max_abs = from_bits(largest);
        const float inverse = int8_inverse_scale(max_abs);
        const float scale = inverse != 0.0f ? max_abs / 127.0f : 0.0f;
        store_scale(scales, b, scale);
        for (std::size_t i = 0; i < m; ++i) {
            const float v = corrected(xb, eb, i);
            // Round half to even; through int so that -0.0 becomes code 0 (= +0.0 decoded).
            const int q = static_cast<int>(std::nearbyint(v * inverse));
            codes[begin + i] = static_cast<std::int8_t>(q);
            if (eb) eb[i] = v - static_cast<float>(q) * scale;
        }
    }
    return true;
}

void int8_decode(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    for (std::size_t i = 0; i < n; ++i) {
        put(out, i, static_cast<float>(codes[i]) * load_scale(scales, i / block), accumulate);
    }
}

bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::uint8_t* bits) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float lanes[16] = {};
        for (std::size_t i = 0; i < m; ++i) lanes[i % 16] += std::fabs(corrected(xb, eb, i));
        const float scale = sign_block_scale(lanes, m);
        if (!std::isfinite(scale)) return false;
        store_scale(scales, b, scale);
        // block is a multiple of 8: this block's bits start on a byte.
        std::uint8_t* out = bits + begin / 8;
        for (std::size_t byte = 0; byte < (m + 7) / 8; ++byte) {
            unsigned packed = 0;
            for (std::size_t bit = 0; bit < 8 && byte * 8 + bit < m; ++bit) {
                const std::size_t i = byte * 8 + bit;
                const float v = corrected(xb, eb, i);
                const bool negative = sign_bit(v);
                packed |= static_cast<unsigned>(negative) << bit;
                if (eb) eb[i] = v - (negative ? -scale : scale);
            }
            out[byte] = static_cast<std::uint8_t>(packed);
        }
    }
    return true;
}

void sign_decode(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    for (std::size_t i = 0; i < n; ++i) {
        const float scale = load_scale(scales, i / block);
        put(out, i, ((bits[i / 8] >> (i % 8)) & 1) ? -scale : scale, accumulate);
    }
}

bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    if (n) std::memset(codes, 0, (n + 3) / 4);  // (memset of a null pointer is undefined)
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        const float s = from_bits(largest);
        store_scale(scales, b, s);
        for (std::size_t i = 0; i < m; ++i) {
            const float v = corrected(xb, eb, i);
            // Keep with probability |v| / s (Wen et al. 2017, eq. 3): E[code * s] = v.
            const bool keep = largest != 0 &&
                              counter_uniform(stream, first + begin + i) < std::fabs(v) / s;
            const int code = keep ? (sign_bit(v) ? -1 : 1) : 0;
            const std::size_t j = begin + i;
            codes[j / 4] = static_cast<std::uint8_t>(codes[j / 4] | (code + 1) << (2 * (j % 4)));
            if (eb) eb[i] = v - static_cast<float>(code) * s;
        }
    }
    return true;
}

bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    bool valid = true;
    for (std::size_t i = 0; i < n; ++i) {
        const int field = (codes[i / 4] >> (2 * (i % 4))) & 3;
        valid = valid && field != 3;
        put(out, i, static_cast<float>(field - 1) * load_scale(scales, i / block), accumulate);
    }
    return valid;
}

float qsgd_value(float norm, unsigned level, bool negative, float intervals) {
    const float magnitude = norm * static_cast<float>(level) / intervals;
    return negative ? -magnitude : magnitude;
}

bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 unsigned levels, std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    const unsigned width = qsgd_field_bits(levels);
    const float intervals = static_cast<float>(levels - 1);
    FieldWriter writer{codes, width, 0, 0};
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float norm;
        if (!qsgd_block_norm(xb, eb, m, &norm)) return false;
        store_scale(norms, b, norm);
        for (std::size_t i = 0; i < m; ++i) {
            const float v = corrected(xb, eb, i);
            unsigned level = 0;
            if (norm > 0.0f) {
                // Stochastic rounding of s |v| / ||v|| (Alistarh et al. 2017, eq. 2), unbiased.
                const float r = std::fabs(v) / norm * intervals;
                const float lower = std::floor(r);
                level = static_cast<unsigned>(lower) +
                        (counter_uniform(stream, first + begin + i) < r - lower ? 1u : 0u);
                if (level > levels - 1) level = levels - 1;
            }
            const bool negative = level != 0 && sign_bit(v);
            const std::uint32_t field = level | static_cast<unsigned>(negative) << (width - 1);
            write_fields(writer, &field, 1);
            if (eb) eb[i] = v - qsgd_value(norm, level, negative, intervals);
        }
    }
    flush_fields(writer);
    return true;
}

bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    const unsigned width = qsgd_field_bits(levels);
    const float intervals = static_cast<float>(levels - 1);
    const std::uint64_t level_mask = (1u << (width - 1)) - 1;
    bool valid = true;
    std::uint64_t pending = 0;
    unsigned pending_bits = 0;
    for (std::size_t i = 0; i < n; ++i) {
        while (pending_bits < width) {
            pending |= static_cast<std::uint64_t>(*codes++) << pending_bits;
            pending_bits += 8;
        }
        const unsigned level = static_cast<unsigned>(pending & level_mask);
        const bool negative = (pending >> (width - 1)) & 1;
        pending >>= width;
        pending_bits -= width;
        valid = valid && level < levels;
        put(out, i, qsgd_value(load_scale(norms, i / block), level, negative, intervals),
            accumulate);
    }
    return valid;
}

bool topk_accumulate(const float* x, float* error, float* momentum, float m, std::size_t n) {
    std::uint32_t largest = 0;
    for (std::size_t i = 0; i < n; ++i) {
        float v = x[i];
        if (error) {
            float u = x[i];
            if (momentum) u = momentum[i] = m * momentum[i] + x[i];
            v = error[i] = error[i] + u;
        }
        const std::uint32_t bits = magnitude_bits(v);
        largest = bits > largest ? bits : largest;
    }
    return largest < kExponentBits;
}

std::size_t count_at_least(const float* v, std::size_t n, float threshold) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) count += std::fabs(v[i]) >= threshold;
    return count;
}

std::size_t gather_at_least(const float* v, std::size_t n, float threshold, std::uint32_t base,
                            std::uint32_t* indices) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (std::fabs(v[i]) >= threshold) indices[count++] = base + static_cast<std::uint32_t>(i);
    }
    return count;
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace ref
}  // namespace codl
