// Bit packing of 1-bit signs and ternary codes {-1, 0, +1}: the public entry points, which
// split the work across threads and call the selected ISA's kernels, and the kernel table each
// ISA provides (the layouts below; docs/kernels.md draws them).
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"

namespace codl {

// Packed layouts:
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
    // Returns false when a 2-bit field holds 0b11, which no code maps to (the padding fields of
    // the last byte included: pack writes them as code 0, field 0b01).
    bool (*unpack_ternary2)(const std::uint8_t* packed, std::size_t n, std::int8_t* codes);
    bool (*pack_ternary3)(const std::int8_t* codes, std::size_t n, std::uint8_t* packed);
    // Every byte decodes to five valid trits, so there is nothing to report.
    void (*unpack_ternary3)(const std::uint8_t* packed, std::size_t n, std::int8_t* codes);
};

constexpr std::size_t packed_signs_bytes(std::size_t n) { return (n + 7) / 8; }
constexpr std::size_t packed_ternary2_bytes(std::size_t n) { return (n + 3) / 4; }
constexpr std::size_t packed_ternary3_bytes(std::size_t n) { return (n + 4) / 5; }

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits, int num_threads = 1);
void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out, int num_threads = 1);
// The bool results are false when the input holds an invalid code (see PackKernels).
bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed,
                   int num_threads = 1);
bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads = 1);
bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed,
                   int num_threads = 1);
void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads = 1);

}  // namespace codl
