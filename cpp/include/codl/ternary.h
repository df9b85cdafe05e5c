// Ternary linear layers: y = x W^T with W = diag(alpha) * codes, codes in {-1, 0, +1} packed
// 2 bits each (the ternary2 layout, row by row), activations quantized per row to int8 with an
// absmax scale and accumulated exactly in int32.
#pragma once

#include <cstddef>
#include <cstdint>

namespace codl {

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
