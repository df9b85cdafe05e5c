// AMX ternary GEMM (Intel AMX-INT8, Sapphire Rapids and later): the int8 activations are the A
// tiles, read in place (16 rows of 64 bytes at a stride of k_padded), the weight fields c + 1 in
// {0, 1, 2} the B tile, and TDPBSUD (signed A times unsigned B) accumulates 16 x 16 int32 dots
// per tile; the activation row sums are subtracted at the end, as the VNNI kernel does. One
// TDPBSUD does 16 x 16 x 64 multiply-adds, 16x a 512-bit VPDPBUSD, so AMX pays where a call
// has enough activation rows to fill the A tiles; below kMinAmxRows (batch 1 to 3: the weights
// stream from memory and a tile would be mostly padding) the call goes to the AVX-512 VNNI
// kernel. Everything other than dot_i8_t2 is the AVX-512 kernel, forwarded at call time (the
// avx512 table is another translation unit's static: copying its members here would depend on
// static-initialisation order).
//
// The B tile in VNNI layout holds, in row kk (0..15) and column n, the 4 weight fields
// 4kk..4kk+3 of weight row n. In the ternary2 layout, value v of a 128-value block sits in byte
// v % 32, bits 2 (v / 32): dword kk % 8 of the block's 32 bytes, shifted by 2 (kk / 8), holds
// values 4kk..4kk+3 (kk < 16, plane 0 or 1) and shifted by 4 + 2 (kk / 8) values 64 + 4kk..
// (planes 2 and 3). So each 128-value block becomes two B tiles (K = 64 each) from one 16 x 8
// dword transpose of the weight rows (loads and shuffles: 8 gathers took longer).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "codl/ternary.h"
#include "tile_config.h"

namespace codl::amx {
namespace {

constexpr std::size_t kMinAmxRows = 4;

// Tiles 0-3: C, 16 activation rows each (the last may be shorter); 4: A, 16 rows; 5: B; 6: A
// for a last group of fewer than 16 rows. GCC's tile intrinsics paste the tile number into the
// instruction, so the code below spells them as literals.
enum : int { kTileA = 4, kTileB = 5, kTileAShort = 6 };

// The 16 x 8 dwords of one block of 16 weight rows, transposed (dword j of row n to lane n of
// vector j) and split into the B tiles of values 0-63 (lower) and 64-127 (upper). Register n
// holds row n in its low 256 bits and row n + 8 in its high 256 bits, so one 8 x 8 transpose
// per half (in-lane unpacks, then a two-source qword permute) puts row n in lane n. Absent
// weight rows (past w_rows) are zero fields, never read; their columns are not stored.
void decode_block(const std::uint8_t* w, std::size_t row_bytes, std::size_t columns, std::uint8_t* lower,
                  std::uint8_t* upper) {
    __m512i r[8];
    for (std::size_t n = 0; n < 8; ++n) {
        const __m256i low = n < columns ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + n * row_bytes))
                                        : _mm256_setzero_si256();
        const __m256i high = n + 8 < columns
                                 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (n + 8) * row_bytes))
                                 : _mm256_setzero_si256();
        r[n] = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    }
    __m512i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);      // rows i, i+1: dwords 0 1 | 4 5 per lane
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);  // dwords 2 3 | 6 7
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);          // rows i..i+3, dword 0 | 4
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);      // dword 1 | 5
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);  // dword 2 | 6
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);  // dword 3 | 7
    }
    // Lanes of u[d] (d < 4): 128-bit lane 0 = rows 0-3 dword d, lane 1 = rows 0-3 dword d + 4,
    // lanes 2-3 the same for rows 8-11; u[d + 4] likewise for rows 4-7 and 12-15.
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i second = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    const __m512i low_bits = _mm512_set1_epi32(0x03030303);
    for (int d = 0; d < 4; ++d) {
        for (int which = 0; which < 2; ++which) {
            const int j = d + 4 * which;  // the dword of the block
            const __m512i dwords = _mm512_permutex2var_epi64(u[d], which == 0 ? first : second, u[d + 4]);
            _mm512_store_si512(lower + j * 64, _mm512_and_si512(dwords, low_bits));
            _mm512_store_si512(lower + (j + 8) * 64, _mm512_and_si512(_mm512_srli_epi32(dwords, 2), low_bits));
            _mm512_store_si512(upper + j * 64, _mm512_and_si512(_mm512_srli_epi32(dwords, 4), low_bits));
            _mm512_store_si512(upper + (j + 8) * 64, _mm512_and_si512(_mm512_srli_epi32(dwords, 6), low_bits));
        }
    }
}

// Up to 64 activation rows (`groups` groups of 16, the last of `last` rows) against up to 16
// weight rows: accumulates over all blocks in tiles 0..groups-1. The tile numbers are
// immediates, hence the unrolled groups.
template <int Groups>
void accumulate(const std::int8_t* a, std::size_t k_padded, const std::uint8_t* w, std::size_t row_bytes,
                std::size_t columns, bool last_short, std::uint8_t* lower, std::uint8_t* upper) {
    if constexpr (Groups > 0) _tile_zero(0);
    if constexpr (Groups > 1) _tile_zero(1);
    if constexpr (Groups > 2) _tile_zero(2);
    if constexpr (Groups > 3) _tile_zero(3);
    for (std::size_t block = 0; block < k_padded / kTernary2BlockValues; ++block) {
        decode_block(w + block * kTernaryBlockBytes, row_bytes, columns, lower, upper);
        for (int half = 0; half < 2; ++half) {
            const std::int8_t* at = a + block * kTernary2BlockValues + 64 * half;
            _tile_loadd(5 /* B */, half == 0 ? lower : upper, 64);
            // The last group reads its own (possibly shorter) A tile so no row past `rows` is read.
#define CODL_AMX_GROUP(g)                                                         \
    if constexpr (Groups > g) {                                                   \
        if (g + 1 < Groups || !last_short) {                                      \
            _tile_loadd(4 /* A */, at + g * 16 * k_padded, static_cast<long>(k_padded)); \
            _tile_dpbsud(g, 4, 5);                                      \
        } else {                                                                  \
            _tile_loadd(6 /* short A */, at + g * 16 * k_padded, static_cast<long>(k_padded)); \
            _tile_dpbsud(g, 6, 5);                                 \
        }                                                                         \
    }
            CODL_AMX_GROUP(0)
            CODL_AMX_GROUP(1)
            CODL_AMX_GROUP(2)
            CODL_AMX_GROUP(3)
#undef CODL_AMX_GROUP
        }
    }
}

void dot_i8_t2(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t* a_sums,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    if (rows < kMinAmxRows) {
        avx512::ternary_kernels.dot_i8_t2(a, rows, k_padded, a_sums, w, w_rows, out, out_stride);
        return;
    }
    const std::size_t row_bytes = k_padded / 4;
    alignas(64) std::uint8_t lower[16 * 64], upper[16 * 64];
    alignas(64) std::int32_t dots[4][16 * 16];
    for (std::size_t r0 = 0; r0 < rows; r0 += 64) {
        const std::size_t count = std::min<std::size_t>(64, rows - r0);
        const std::size_t groups = (count + 15) / 16, last = count - 16 * (groups - 1);
        TileConfig config;
        for (std::size_t g = 0; g < 4; ++g) {
            config.rows[g] = static_cast<std::uint8_t>(g + 1 < groups ? 16 : last);
            config.colsb[g] = 64;
        }
        config.rows[kTileA] = 16;
        config.rows[kTileB] = 16;
        config.rows[kTileAShort] = static_cast<std::uint8_t>(last);
        config.colsb[kTileA] = config.colsb[kTileB] = config.colsb[kTileAShort] = 64;
        _tile_loadconfig(&config);
        const std::int8_t* a_rows = a + r0 * k_padded;
        for (std::size_t c0 = 0; c0 < w_rows; c0 += 16) {
            const std::size_t columns = std::min<std::size_t>(16, w_rows - c0);
            const std::uint8_t* w_tile = w + c0 * row_bytes;
            const bool last_short = last < 16;
            switch (groups) {
                case 1: accumulate<1>(a_rows, k_padded, w_tile, row_bytes, columns, last_short, lower, upper); break;
                case 2: accumulate<2>(a_rows, k_padded, w_tile, row_bytes, columns, last_short, lower, upper); break;
                case 3: accumulate<3>(a_rows, k_padded, w_tile, row_bytes, columns, last_short, lower, upper); break;
                default: accumulate<4>(a_rows, k_padded, w_tile, row_bytes, columns, last_short, lower, upper); break;
            }
            if (groups > 0) _tile_stored(0, dots[0], 64);
            if (groups > 1) _tile_stored(1, dots[1], 64);
            if (groups > 2) _tile_stored(2, dots[2], 64);
            if (groups > 3) _tile_stored(3, dots[3], 64);
            for (std::size_t r = 0; r < count; ++r) {
                const std::int32_t* dot = dots[r / 16] + (r % 16) * 16;
                std::int32_t* o = out + (r0 + r) * out_stride + c0;
                for (std::size_t c = 0; c < columns; ++c) o[c] = dot[c] - a_sums[r0 + r];
            }
        }
    }
    // Hands the tile state back, so the kernel's context switches stay cheap between calls.
    _tile_release();
}

bool quantize_row_i8(const float* x, std::size_t k, std::size_t k_padded, std::int8_t* q, float* scale,
                     std::int32_t* sum) {
    return avx512::ternary_kernels.quantize_row_i8(x, k, k_padded, q, scale, sum);
}

void dot_i8_t3(const std::int8_t* a, std::size_t rows, std::size_t k_padded, const std::int32_t* a_sums,
               const std::uint8_t* w, std::size_t w_rows, std::int32_t* out, std::size_t out_stride) {
    avx512::ternary_kernels.dot_i8_t3(a, rows, k_padded, a_sums, w, w_rows, out, out_stride);
}

void dot_f32_t2(const float* x, std::size_t rows, std::size_t k_padded, const std::uint8_t* w, std::size_t w_rows,
                float* out, std::size_t out_stride) {
    avx512::ternary_kernels.dot_f32_t2(x, rows, k_padded, w, w_rows, out, out_stride);
}

}  // namespace

const TernaryKernels ternary_kernels = {quantize_row_i8, dot_i8_t2, dot_i8_t3, dot_f32_t2};

}  // namespace codl::amx
