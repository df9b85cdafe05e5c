// The LDTILECFG operand (palette 1) shared by the AMX kernels: bytes per row and rows of each
// of the 16 tile registers (8 exist; the rest stay zero).
#pragma once

#include <cstdint>

namespace codl::amx {

struct alignas(64) TileConfig {
    std::uint8_t palette = 1, start_row = 0;
    std::uint8_t reserved[14] = {};
    std::uint16_t colsb[16] = {};
    std::uint8_t rows[16] = {};
};

}  // namespace codl::amx
