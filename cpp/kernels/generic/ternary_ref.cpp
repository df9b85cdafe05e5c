// Scalar reference of the ternary GEMM kernels: the oracle of every test.
#include <cmath>
#include <cstring>

#include "codl/ternary.h"

namespace codl::ref {
namespace {

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                     float* scale, std::int32_t* sum) {
    const std::int32_t max_bits = max_magnitude_bits(x, k, 0);
    if (max_bits >= 0x7F800000) return false;  // converting NaN or Inf to int would be undefined
    float absmax;
    std::memcpy(&absmax, &max_bits, sizeof absmax);
    *sum = quantize_tail(x, 0, k, k_padded, absmax > 0.0f ? 127.0f / absmax : 0.0f, q);
    *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    return true;
}

// Code of value i of a packed row made of whole ternary2 blocks.
int code_at(const std::uint8_t* w, std::size_t i) {
    const std::size_t block = i / kTernary2BlockValues, in_block = i % kTernary2BlockValues;
    const std::uint8_t byte = w[block * kTernaryBlockBytes + in_block % kTernaryBlockBytes];
    return ((byte >> (2 * (in_block / kTernaryBlockBytes))) & 3) - 1;
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t*,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < w_rows; ++c) {
            std::int32_t total = 0;
            for (std::size_t i = 0; i < k_padded; ++i) {
                total += a[r * k_padded + i] * code_at(w + c * (k_padded / 4), i);
            }
            out[r * out_stride + c] = total;
        }
    }
}

// Code of value i of a packed row made of whole ternary3 blocks: the field is multiplied by 3^t
// (mod 256) to bring trit t to the top, then ((byte * 3) >> 8) reads it (see kernel_table.h).
int trit_code_at(const std::uint8_t* w, std::size_t i) {
    constexpr unsigned kPowersOf3[5] = {1, 3, 9, 27, 81};
    const std::size_t block = i / kTernary3BlockValues, in_block = i % kTernary3BlockValues;
    const unsigned byte = w[block * kTernaryBlockBytes + in_block % kTernaryBlockBytes];
    const unsigned shifted = (byte * kPowersOf3[in_block / kTernaryBlockBytes]) & 0xFF;
    return static_cast<int>((shifted * 3) >> 8) - 1;
}

void dot_i8_t3(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t*,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < w_rows; ++c) {
            std::int32_t total = 0;
            for (std::size_t i = 0; i < k_padded; ++i) {
                total += a[r * k_padded + i] * trit_code_at(w + c * (k_padded / 5), i);
            }
            out[r * out_stride + c] = total;
        }
    }
}

// One float sum in index order: the plainest order, which the SIMD variants reassociate.
void dot_f32_t2(const float* x, std::size_t rows, std::size_t k_padded, const std::uint8_t* w,
                std::size_t w_rows, float* out, std::size_t out_stride) {
    for (std::size_t r = 0; r < rows; ++r) {
        for (std::size_t c = 0; c < w_rows; ++c) {
            float total = 0.0f;
            for (std::size_t i = 0; i < k_padded; ++i) {
                const int code = code_at(w + c * (k_padded / 4), i);
                // Adding or subtracting (never multiplying) keeps zero codes from touching x.
                if (code > 0) total += x[r * k_padded + i];
                if (code < 0) total -= x[r * k_padded + i];
            }
            out[r * out_stride + c] = total;
        }
    }
}

}  // namespace

// max |x| compared as integer bits: for non-negative floats the order is the float order, and
// every Inf or NaN is at or above the bits of +inf.
std::int32_t max_magnitude_bits(const float* x, std::size_t n, std::int32_t so_far) {
    for (std::size_t i = 0; i < n; ++i) {
        std::int32_t bits;
        std::memcpy(&bits, x + i, sizeof bits);
        bits &= 0x7FFFFFFF;
        so_far = bits > so_far ? bits : so_far;
    }
    return so_far;
}

// Every ISA computes the same float products and rounds half to even (the default mode), so
// the int8 rows agree bit for bit.
std::int32_t quantize_tail(const float* x, std::size_t begin, std::size_t k, std::size_t k_padded,
                           float inverse, std::int8_t* q) {
    std::int32_t total = 0;
    for (std::size_t i = begin; i < k_padded; ++i) {
        const int v = i < k ? static_cast<int>(std::nearbyint(x[i] * inverse)) : 0;
        q[i] = static_cast<std::int8_t>(v);
        total += v;
    }
    return total;
}

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2, dot_i8_t3, dot_f32_t2};

}  // namespace codl::ref
