// The function table that runtime dispatch selects from. Each ISA translation unit fills one
// PackKernels; a family an ISA does not speed up points back at the scalar reference.
//
// Translation units compiled with ISA flags include this header, so it holds declarations and
// constants only: an inline function here could be emitted with AVX2 instructions and then be
// picked by the linker for scalar callers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace codl {

enum class IsaLevel : int { scalar = 0, avx2 = 1, avx512 = 2, sve = 3 };
constexpr int kNumIsaLevels = 4;

// Packed layouts (docs/kernels.md draws them):
//  signs:    bit (i % 8) of byte i / 8 is signbit(x[i]); unused high bits of the last byte are 0.
//  ternary2: 2-bit codes c + 1 in {0, 1, 2}. Whole blocks of 128 values fill 32 bytes, byte j
//            holding values j, j+32, j+64, j+96 of the block in bits 0-1, 2-3, 4-5, 6-7, so a
//            SIMD unpack is a shift and a mask per 32 contiguous values. The tail (n % 128
//            values) packs 4 consecutive values per byte the same way; padding codes are 0.
//  ternary3: 5 trits per byte (1.6 bits per value). v = sum_k (c_k + 1) * 3^(4-k) is stored as
//            ceil(v * 256 / 243), so trit k decodes as ((uint8)(byte * 3^k) * 3) >> 8 with no
//            division (the fixed-point idea of llama.cpp's TQ1_0). Whole blocks of 160 values
//            fill 32 bytes, byte j holding values j + 32k of the block; the tail packs 5
//            consecutive values per byte; padding codes are 0.
constexpr std::size_t kTernary2BlockValues = 128;
constexpr std::size_t kTernary3BlockValues = 160;
constexpr std::size_t kTernaryBlockBytes = 32;

struct PackKernels {
    void (*pack_signs_f32)(const float* x, std::size_t n, std::uint8_t* bits);
    void (*unpack_signs_f32)(const std::uint8_t* bits, std::size_t n, float* out);
    // Return false when a code is outside {-1, 0, 1}; out is then unspecified.
    bool (*pack_ternary2)(const std::int8_t* codes, std::size_t n, std::uint8_t* packed);
    // Returns false when a 2-bit field holds 0b11, which no code maps to.
    bool (*unpack_ternary2)(const std::uint8_t* packed, std::size_t n, std::int8_t* codes);
    bool (*pack_ternary3)(const std::int8_t* codes, std::size_t n, std::uint8_t* packed);
    // Every byte decodes to five valid trits, so there is nothing to report.
    void (*unpack_ternary3)(const std::uint8_t* packed, std::size_t n, std::int8_t* codes);
};

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

struct LinalgKernels;  // codl/linalg.h

// Gradient codecs (codl/comm.h has the payload layouts). Each call covers n values from a block
// boundary (the last block may be partial), writes that range's scales (unaligned: raw bytes)
// and codes, and returns false where v = x + error (or x when error is null) holds NaN or Inf.
// The sign codec's block scale is mean |v|, summed in a fixed order every ISA follows: local
// value i of a block goes to float lane i % 16 (lanes add in index order), then
// ref::sign_block_scale finishes the 16 lanes in double. `first` is the global index of x[0]
// (the counter of the stochastic codecs).
struct CommKernels {
    bool (*int8_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        std::uint8_t* scales, std::int8_t* codes);
    void (*int8_decode)(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                        std::size_t block, float* out, bool accumulate);
    bool (*sign_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        std::uint8_t* scales, std::uint8_t* bits);
    void (*sign_decode)(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                        std::size_t block, float* out, bool accumulate);
    bool (*terngrad_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                            std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                            std::uint8_t* codes);
    bool (*terngrad_decode)(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                            std::size_t block, float* out, bool accumulate);
    bool (*qsgd_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        unsigned levels, std::uint64_t stream, std::size_t first,
                        std::uint8_t* norms, std::uint8_t* codes);
    bool (*qsgd_decode)(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                        std::size_t block, unsigned levels, float* out, bool accumulate);
    // Top-k: v = error + (momentum ? (u = m * u + x) : x) stored in error (with no error buffer
    // only checked); false where v holds NaN or Inf.
    bool (*topk_accumulate)(const float* x, float* error, float* momentum, float m, std::size_t n);
    // How many |v[i]| >= threshold, and (gather) their indices plus base, in increasing order.
    std::size_t (*count_at_least)(const float* v, std::size_t n, float threshold);
    std::size_t (*gather_at_least)(const float* v, std::size_t n, float threshold,
                                   std::uint32_t base, std::uint32_t* indices);
};

struct KernelTable {
    IsaLevel isa;
    const PackKernels* pack;
    const TernaryKernels* ternary;
    const LinalgKernels* linalg;
    const CommKernels* comm;
};

namespace ref {
extern const PackKernels pack_kernels;
extern const TernaryKernels ternary_kernels;
extern const CommKernels comm_kernels;
// mean |v| of a sign block from its 16 lane sums (see CommKernels); 127 / max|v| for an int8
// block (0 for an all-zero block and where the quotient overflows: such a block sends zeros).
float sign_block_scale(const float* lane_sums, std::size_t count);
float int8_inverse_scale(float max_abs);
// Scalar pieces of quantize_row_i8 that the SIMD variants finish their rows with:
// the largest of `so_far` and the bits of |x[i]| for i < n (>= 0x7F800000 means Inf or NaN),
std::int32_t max_magnitude_bits(const float* x, std::size_t n, std::int32_t so_far);
// and q[i] = round_half_even(x[i] * inverse) for begin <= i < k, 0 up to k_padded; returns
// the sum of what it wrote.
std::int32_t quantize_tail(const float* x, std::size_t begin, std::size_t k, std::size_t k_padded,
                           float inverse, std::int8_t* q);
// QSGD's scalar pieces, shared by every ISA so that all of them follow one order: the block norm
// ||x + error||_2 (error may be null), summed sequentially in double; false where it is not
// finite.
bool qsgd_block_norm(const float* x, const float* error, std::size_t m, float* norm);
// The bit writer: fields of `width` bits appended LSB first at `out`; `pending` holds the bits
// not yet stored. flush_fields stores the last partial byte.
struct FieldWriter {
    std::uint8_t* out;
    unsigned width;
    std::uint64_t pending;
    unsigned pending_bits;
};
void write_fields(FieldWriter& writer, const std::uint32_t* fields, std::size_t count);
void flush_fields(FieldWriter& writer);
}
namespace avx2 {
extern const PackKernels pack_kernels;
extern const TernaryKernels ternary_kernels;
extern const CommKernels comm_kernels;
}
namespace avx512 {
extern const PackKernels pack_kernels;
extern const TernaryKernels ternary_kernels;
extern const CommKernels comm_kernels;
}
namespace sve {
extern const PackKernels pack_kernels;
extern const TernaryKernels ternary_kernels;
extern const CommKernels comm_kernels;
int vector_bits();  // the SVE vector length this process runs with
}

}  // namespace codl
