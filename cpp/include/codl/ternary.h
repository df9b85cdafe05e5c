// Ternary linear layers: y = x W^T with W = diag(alpha) * codes, codes in {-1, 0, +1} packed
// 2 bits each (the ternary2 layout, row by row), activations quantized per row to int8 with an
// absmax scale and accumulated exactly in int32: the public entry points and the kernel table
// each ISA provides. Declarations only (ISA translation units include it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"

#include "codl/pack.h"

namespace codl {

// Ternary GEMM: int8 activations (one scale per row) times ternary weights in the ternary2
// layout, one packed row of k_padded / 4 bytes per output feature; k_padded is a multiple of
// kTernary2BlockValues, so rows are whole blocks and activations are zero beyond k.
struct TernaryKernels {
    // q[0..k_padded) = round(x * 127 / max|x|) (zero past k), *scale = max|x| / 127 (1 if the
    // row is all zero), *sum = sum of q. Returns false if x holds NaN or Inf.
    bool (*quantize_row_i8)(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                            float* scale, std::int32_t* sum);
    // out[r * out_stride + c] = sum_k a[r * k_padded + k] * code_c[k], exactly, for r < rows and
    // c < w_rows, where weight row c starts at w + c * k_padded / 4. a_sums[r] is the sum of
    // activation row r (kernels that multiply the stored fields c + 1 subtract it).
    void (*dot_i8_t2)(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
                      const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
                      std::int32_t* out, std::size_t out_stride);
    // The same for weight rows in the ternary3 layout: k_padded is a multiple of
    // kTernary3BlockValues and weight row c starts at w + c * k_padded / 5. Trits are decoded
    // in registers on every call (no repacked copy of the weights).
    void (*dot_i8_t3)(const std::int8_t* a, std::size_t rows, std::size_t k_padded,
                      const std::int32_t* a_sums, const std::uint8_t* w, std::size_t w_rows,
                      std::int32_t* out, std::size_t out_stride);
    // Float activations: out[r * out_stride + c] = sum_k x[r * k_padded + k] * code_c[k],
    // accumulated in float32 in an order fixed per ISA (it depends on neither the row tiling
    // nor the thread count); x is zero past k. The products x * code are exact, so ISAs differ
    // only by the order of the additions.
    void (*dot_f32_t2)(const float* x, std::size_t rows, std::size_t k_padded,
                       const std::uint8_t* w, std::size_t w_rows, float* out,
                       std::size_t out_stride);
};

namespace ref {
// Scalar pieces of quantize_row_i8 that the SIMD variants finish their rows with:
// the largest of `so_far` and the bits of |x[i]| for i < n (>= 0x7F800000 means Inf or NaN),
std::int32_t max_magnitude_bits(const float* x, std::size_t n, std::int32_t so_far);
// and q[i] = round_half_even(x[i] * inverse) for begin <= i < k, 0 up to k_padded; returns
// the sum of what it wrote.
std::int32_t quantize_tail(const float* x, std::size_t begin, std::size_t k, std::size_t k_padded,
                           float inverse, std::int8_t* q);
}  // namespace ref

// The first of `rows` weight rows (row_bytes each, the ternary2 layout) holding a 2-bit field
// 0b11, which maps to no code, or `rows` if none does: one OR-reduction over the bytes, split
// across threads; the answer does not depend on num_threads. The 2-bit linear kernels below
// compute with whatever fields they are given (0b11 as +2), so callers holding untrusted bytes
// check them once with this (the Python operators do, once per weight tensor and version).
std::size_t first_invalid_ternary2_row(const std::uint8_t* w, std::size_t rows, std::size_t row_bytes,
                                       int num_threads = 1);

// Rows are padded with zero codes to whole 128-value blocks: k_padded / 4 bytes per row.
constexpr std::size_t ternary_padded_k(std::size_t k) { return (k + 127) / 128 * 128; }

// Rows in the base-3 (ternary3) layout are padded to whole 160-value blocks: k_padded / 5 bytes.
constexpr std::size_t ternary3_padded_k(std::size_t k) { return (k + 159) / 160 * 160; }

// y[i, j] = scale_i * alpha[j] * sum_k q[i, k] * code[j, k] + bias[j] (bias may be null), where
// q, scale_i quantize row i of x (m rows of k floats). w holds n packed rows of k_padded / 4
// bytes. Returns false, leaving y unspecified, if x holds NaN or Inf.
bool ternary_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                        const float* alpha, std::size_t n, const float* bias, float* y,
                        int num_threads = 1);

// The same with w in the base-3 layout (n rows of ternary3_padded_k(k) / 5 bytes), decoded in
// registers on every call; the integer dots equal those of the 2-bit layout exactly.
bool ternary3_linear_f32(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                         const float* alpha, std::size_t n, const float* bias, float* y,
                         int num_threads = 1);

// Activations kept float: y[i, j] = alpha[j] * sum_k x[i, k] * code[j, k] + bias[j], the sum in
// float32 in an order fixed per ISA (independent of num_threads). w as for ternary_linear_f32.
// Returns false, leaving y unspecified, if x holds NaN or Inf.
bool ternary_linear_f32act(const float* x, std::size_t m, std::size_t k, const std::uint8_t* w,
                           const float* alpha, std::size_t n, const float* bias, float* y,
                           int num_threads = 1);

// The integer core, for tests: out[i * n + j] = sum_k a[i, k] * code[j, k] with a already int8
// (m rows of k_padded values).
void ternary_gemm_i32(const std::int8_t* a, std::size_t m, std::size_t k_padded,
                      const std::uint8_t* w, std::size_t n, std::int32_t* out, int num_threads = 1);

}  // namespace codl
