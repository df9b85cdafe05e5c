// Scalar reference of the packing kernels: written for clarity, the oracle of every test.
// The SIMD variants call these for the tail they do not cover, which starts on a byte (signs)
// or block (ternary) boundary, so the tail packs exactly as it would in a whole-array call.
#include <cstring>

#include "codl/pack.h"

namespace codl::ref {
namespace {

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits) {
    for (std::size_t byte = 0; byte < (n + 7) / 8; ++byte) {
        std::uint8_t packed = 0;
        for (std::size_t bit = 0; bit < 8 && byte * 8 + bit < n; ++bit) {
            std::uint32_t word;
            std::memcpy(&word, &x[byte * 8 + bit], sizeof word);
            packed |= static_cast<std::uint8_t>((word >> 31) << bit);
        }
        bits[byte] = packed;
    }
}

void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out) {
    for (std::size_t i = 0; i < n; ++i) {
        out[i] = ((bits[i / 8] >> (i % 8)) & 1) ? -1.0f : 1.0f;
    }
}

// The value stored in slot `slot` of packed byte `byte` of an n-value ternary array, or n for a
// padding slot. Slot k is bits 2k..2k+1 for ternary2 and the k-th most significant trit for
// ternary3.
std::size_t value_index(std::size_t byte, unsigned slot, std::size_t n, std::size_t block_values,
                        unsigned values_per_byte) {
    const std::size_t whole_blocks = n / block_values;
    std::size_t index;
    if (byte < whole_blocks * kTernaryBlockBytes) {
        index = byte / kTernaryBlockBytes * block_values + slot * kTernaryBlockBytes +
                byte % kTernaryBlockBytes;
    } else {
        index = whole_blocks * block_values +
                (byte - whole_blocks * kTernaryBlockBytes) * values_per_byte + slot;
    }
    return index < n ? index : n;
}

bool valid_code(std::int8_t c) { return c >= -1 && c <= 1; }

bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    bool valid = true;
    for (std::size_t byte = 0; byte < (n + 3) / 4; ++byte) {
        unsigned packed_byte = 0;
        for (unsigned slot = 0; slot < 4; ++slot) {
            const std::size_t i = value_index(byte, slot, n, kTernary2BlockValues, 4);
            const std::int8_t code = i < n ? codes[i] : 0;
            valid = valid && valid_code(code);
            packed_byte |= (static_cast<unsigned>(code + 1) & 3u) << (2 * slot);
        }
        packed[byte] = static_cast<std::uint8_t>(packed_byte);
    }
    return valid;
}

bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    bool valid = true;
    for (std::size_t byte = 0; byte < (n + 3) / 4; ++byte) {
        for (unsigned slot = 0; slot < 4; ++slot) {
            const std::size_t i = value_index(byte, slot, n, kTernary2BlockValues, 4);
            const int field = (packed[byte] >> (2 * slot)) & 3;
            valid = valid && field != 3;  // padding slots of the last byte included
            if (i < n) codes[i] = static_cast<std::int8_t>(field - 1);
        }
    }
    return valid;
}

bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    bool valid = true;
    for (std::size_t byte = 0; byte < (n + 4) / 5; ++byte) {
        unsigned value = 0;  // base 3, slot 0 most significant
        for (unsigned slot = 0; slot < 5; ++slot) {
            const std::size_t i = value_index(byte, slot, n, kTernary3BlockValues, 5);
            const std::int8_t code = i < n ? codes[i] : 0;
            valid = valid && valid_code(code);
            value = value * 3 + (valid_code(code) ? static_cast<unsigned>(code + 1) : 1u);
        }
        packed[byte] = static_cast<std::uint8_t>((value * 256 + 242) / 243);  // ceil(v*256/243)
    }
    return valid;
}

void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    for (std::size_t byte = 0; byte < (n + 4) / 5; ++byte) {
        unsigned scaled = packed[byte];  // byte * 3^slot mod 256 brings trit `slot` to the top
        for (unsigned slot = 0; slot < 5; ++slot) {
            const std::size_t i = value_index(byte, slot, n, kTernary3BlockValues, 5);
            if (i == n) break;
            codes[i] = static_cast<std::int8_t>(static_cast<int>((scaled * 3) >> 8) - 1);
            scaled = (scaled * 3) & 0xFFu;
        }
    }
}

}  // namespace

const PackKernels pack_kernels = {pack_signs_f32, unpack_signs_f32, pack_ternary2,
                                  unpack_ternary2, pack_ternary3,   unpack_ternary3};

}  // namespace codl::ref
