// Bit packing of 1-bit signs and ternary codes {-1, 0, +1}: the public entry points, which
// split the work across threads and call the selected ISA's kernels. Layouts: kernel_table.h.
#pragma once

#include <cstddef>
#include <cstdint>

namespace codl {

constexpr std::size_t packed_signs_bytes(std::size_t n) { return (n + 7) / 8; }
constexpr std::size_t packed_ternary2_bytes(std::size_t n) { return (n + 3) / 4; }
constexpr std::size_t packed_ternary3_bytes(std::size_t n) { return (n + 4) / 5; }

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits, int num_threads = 1);
void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out, int num_threads = 1);
// The bool results are false when the input holds an invalid code (see kernel_table.h).
bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed,
                   int num_threads = 1);
bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads = 1);
bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed,
                   int num_threads = 1);
void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes,
                     int num_threads = 1);

}  // namespace codl
