// Scalar reference of the ternary GEMM kernels: the oracle of every test.
#include <cmath>

#include "codl/kernel_table.h"

namespace codl::ref {
namespace {

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                     float* scale, std::int32_t* sum) {
    float absmax = 0.0f;
    bool finite = true;
    for (std::size_t i = 0; i < k; ++i) {
        finite = finite && std::isfinite(x[i]);
        absmax = std::fmax(absmax, std::fabs(x[i]));
    }
    if (!finite) return false;  // converting NaN or Inf to int below would be undefined
    // All ISAs compute the same float products and round half to even (the default mode), so
    // the int8 rows agree bit for bit.
    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    std::int32_t total = 0;
    for (std::size_t i = 0; i < k_padded; ++i) {
        const int v = i < k ? static_cast<int>(std::nearbyint(x[i] * inverse)) : 0;
        q[i] = static_cast<std::int8_t>(v);
        total += v;
    }
    *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    *sum = total;
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

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2};

}  // namespace codl::ref
