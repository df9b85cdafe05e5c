// SVE ternary GEMM kernels, vector-length agnostic. SDOT multiplies signed int8 activations by
// the signed codes directly (four products per 32-bit lane), so no row-sum correction is needed.
// Blocks are 32 bytes; a vector covers one in a single predicated step from 256 bits up.
#include <arm_sve.h>

#include <cmath>
#include <cstring>

#include "codl/ternary.h"

namespace codl::sve {
namespace {

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q,
                     float* scale, std::int32_t* sum) {
    const std::uint32_t* bits = reinterpret_cast<const std::uint32_t*>(x);
    svuint32_t largest = svdup_n_u32(0);
    for (std::size_t i = 0; i < k; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32_u64(i, k);
        largest = svmax_u32_m(pg, largest, svand_n_u32_x(pg, svld1_u32(pg, bits + i), 0x7FFFFFFFu));
    }
    // max |x| as integer bits (same order for non-negative floats; >= +inf's bits: Inf or NaN).
    const std::uint32_t max_bits = svmaxv_u32(svptrue_b32(), largest);
    if (max_bits >= 0x7F800000u) return false;
    float absmax;
    std::memcpy(&absmax, &max_bits, sizeof absmax);

    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    svint32_t totals = svdup_n_s32(0);
    for (std::size_t i = 0; i < k; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32_u64(i, k);
        // FRINTN rounds half to even, as nearbyint does in the reference.
        const svfloat32_t scaled = svmul_n_f32_x(pg, svld1_f32(pg, x + i), inverse);
        const svint32_t v = svcvt_s32_f32_x(pg, svrintn_f32_x(pg, scaled));
        totals = svadd_s32_m(pg, totals, v);
        svst1b_s32(pg, q + i, v);
    }
    for (std::size_t i = k; i < k_padded; ++i) q[i] = 0;
    *scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    *sum = static_cast<std::int32_t>(svaddv_s32(svptrue_b32(), totals));
    return true;
}

// Up to four activation rows share each unpacked weight block. SVE values cannot live in
// arrays, hence the four named accumulators.
template <int Rows>
void dot_tile(const std::int8_t* a, std::size_t k_padded, const std::uint8_t* w, std::int32_t* out,
              std::size_t out_stride) {
    svint32_t acc0 = svdup_n_s32(0), acc1 = svdup_n_s32(0), acc2 = svdup_n_s32(0),
              acc3 = svdup_n_s32(0);
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            const svuint8_t packed = svld1_u8(pg, w + block * kTernaryBlockBytes + j);
            for (int plane = 0; plane < 4; ++plane) {
                // Inactive lanes load activations as 0, so they add nothing to the sums.
                const svint8_t codes = svreinterpret_s8_u8(
                    svsub_n_u8_x(pg, svand_n_u8_x(pg, svlsr_n_u8_x(pg, packed, 2 * plane), 3), 1));
                const std::int8_t* column = a + block * kTernary2BlockValues + 32 * plane + j;
                acc0 = svdot_s32(acc0, svld1_s8(pg, column), codes);
                if constexpr (Rows > 1) acc1 = svdot_s32(acc1, svld1_s8(pg, column + k_padded), codes);
                if constexpr (Rows > 2) acc2 = svdot_s32(acc2, svld1_s8(pg, column + 2 * k_padded), codes);
                if constexpr (Rows > 3) acc3 = svdot_s32(acc3, svld1_s8(pg, column + 3 * k_padded), codes);
            }
        }
    }
    const svbool_t all = svptrue_b32();
    out[0] = static_cast<std::int32_t>(svaddv_s32(all, acc0));
    if constexpr (Rows > 1) out[out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc1));
    if constexpr (Rows > 2) out[2 * out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc2));
    if constexpr (Rows > 3) out[3 * out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc3));
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t*,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 4);
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) dot_tile<4>(a + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
        for (; r < rows; ++r) dot_tile<1>(a + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
    }
}

// Base-3 blocks: SVE multiplies bytes, so trit t is umulh(byte * 3^t, 3) (the high byte of the
// 16-bit product, i.e. (powered * 3) >> 8), minus 1 for the signed code SDOT takes.
template <int Rows>
void dot3_tile(const std::int8_t* a, std::size_t k_padded, const std::uint8_t* w, std::int32_t* out,
               std::size_t out_stride) {
    constexpr std::uint8_t kPowersOf3[5] = {1, 3, 9, 27, 81};
    svint32_t acc0 = svdup_n_s32(0), acc1 = svdup_n_s32(0), acc2 = svdup_n_s32(0),
              acc3 = svdup_n_s32(0);
    for (std::size_t block = 0; block < k_padded / kTernary3BlockValues; ++block) {
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            const svuint8_t packed = svld1_u8(pg, w + block * kTernaryBlockBytes + j);
            for (int plane = 0; plane < 5; ++plane) {
                const svuint8_t powered = svmul_n_u8_x(pg, packed, kPowersOf3[plane]);
                const svint8_t codes = svreinterpret_s8_u8(svsub_n_u8_x(pg, svmulh_n_u8_x(pg, powered, 3), 1));
                // Inactive lanes load activations as 0, so they add nothing to the sums.
                const std::int8_t* column = a + block * kTernary3BlockValues + 32 * plane + j;
                acc0 = svdot_s32(acc0, svld1_s8(pg, column), codes);
                if constexpr (Rows > 1) acc1 = svdot_s32(acc1, svld1_s8(pg, column + k_padded), codes);
                if constexpr (Rows > 2) acc2 = svdot_s32(acc2, svld1_s8(pg, column + 2 * k_padded), codes);
                if constexpr (Rows > 3) acc3 = svdot_s32(acc3, svld1_s8(pg, column + 3 * k_padded), codes);
            }
        }
    }
    const svbool_t all = svptrue_b32();
    out[0] = static_cast<std::int32_t>(svaddv_s32(all, acc0));
    if constexpr (Rows > 1) out[out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc1));
    if constexpr (Rows > 2) out[2 * out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc2));
    if constexpr (Rows > 3) out[3 * out_stride] = static_cast<std::int32_t>(svaddv_s32(all, acc3));
}

void dot_i8_t3(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t*,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 5);
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) dot3_tile<4>(a + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
        for (; r < rows; ++r) dot3_tile<1>(a + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
    }
}

// Float activations: each plane's 32 fields widen to 32-bit lanes (svld1ub), shift and mask to
// the field, convert code = field - 1 to float and multiply-add (exact product, one rounding).
// One accumulator per row; the order of the sums depends only on the vector length.
template <int Rows>
void dot_f32_tile(const float* x, std::size_t k_padded, const std::uint8_t* w, float* out,
                  std::size_t out_stride) {
    svfloat32_t acc0 = svdup_n_f32(0), acc1 = svdup_n_f32(0), acc2 = svdup_n_f32(0),
                acc3 = svdup_n_f32(0);
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntw()) {
            const svbool_t pg = svwhilelt_b32_u64(j, kTernaryBlockBytes);
            const svuint32_t fields = svld1ub_u32(pg, w + block * kTernaryBlockBytes + j);
            for (int plane = 0; plane < 4; ++plane) {
                const svint32_t field = svreinterpret_s32_u32(svand_n_u32_x(pg, svlsr_n_u32_x(pg, fields, 2 * plane), 3));
                const svfloat32_t code = svcvt_f32_s32_x(pg, svsub_n_s32_x(pg, field, 1));
                const float* column = x + block * kTernary2BlockValues + 32 * plane + j;
                acc0 = svmla_f32_m(pg, acc0, svld1_f32(pg, column), code);
                if constexpr (Rows > 1) acc1 = svmla_f32_m(pg, acc1, svld1_f32(pg, column + k_padded), code);
                if constexpr (Rows > 2) acc2 = svmla_f32_m(pg, acc2, svld1_f32(pg, column + 2 * k_padded), code);
                if constexpr (Rows > 3) acc3 = svmla_f32_m(pg, acc3, svld1_f32(pg, column + 3 * k_padded), code);
            }
        }
    }
    const svbool_t all = svptrue_b32();
    out[0] = svaddv_f32(all, acc0);
    if constexpr (Rows > 1) out[out_stride] = svaddv_f32(all, acc1);
    if constexpr (Rows > 2) out[2 * out_stride] = svaddv_f32(all, acc2);
    if constexpr (Rows > 3) out[3 * out_stride] = svaddv_f32(all, acc3);
}

void dot_f32_t2(const float* x, std::size_t rows, std::size_t k_padded, const std::uint8_t* w,
                std::size_t w_rows, float* out, std::size_t out_stride) {
    for (std::size_t c = 0; c < w_rows; ++c) {
        const std::uint8_t* row = w + c * (k_padded / 4);
        std::size_t r = 0;
        for (; r + 4 <= rows; r += 4) dot_f32_tile<4>(x + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
        for (; r < rows; ++r) dot_f32_tile<1>(x + r * k_padded, k_padded, row, out + r * out_stride + c, out_stride);
    }
}

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2, dot_i8_t3, dot_f32_t2};

}  // namespace codl::sve
