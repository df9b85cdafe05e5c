// AVX-512 (F, BW, DQ, VL) packing kernels. Mask registers make sign packing a compare, and two
// 32-byte ternary blocks fill one 512-bit register. The tail goes to the scalar reference.
#include <immintrin.h>

#include <cstring>

#include "codl/pack.h"

namespace codl::avx512 {
namespace {

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits) {
    std::size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        // movepi32_mask reads the sign bit of each lane: the definition of the format.
        std::uint64_t word = 0;
        for (int q = 0; q < 4; ++q) {
            const __m512i v = _mm512_castps_si512(_mm512_loadu_ps(x + i + 16 * q));
            word |= static_cast<std::uint64_t>(_mm512_movepi32_mask(v)) << (16 * q);
        }
        std::memcpy(bits + i / 8, &word, sizeof word);
    }
    ref::pack_kernels.pack_signs_f32(x + i, n - i, bits + i / 8);
}

void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out) {
    const __m512 plus = _mm512_set1_ps(1.0f), minus = _mm512_set1_ps(-1.0f);
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        std::uint16_t mask;
        std::memcpy(&mask, bits + i / 8, sizeof mask);
        _mm512_storeu_ps(out + i, _mm512_mask_blend_ps(mask, plus, minus));
    }
    ref::pack_kernels.unpack_signs_f32(bits + i / 8, n - i, out + i);
}

// Plane k of blocks b and b + 1 (each 32 bytes, `stride` values apart) in one register.
__m512i load_plane_pair(const std::int8_t* first_block, std::size_t stride, int k) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first_block + 32 * k));
    const __m256i hi =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first_block + stride + 32 * k));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

void store_plane_pair(std::int8_t* first_block, std::size_t stride, int k, __m512i v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(first_block + 32 * k),
                        _mm512_castsi512_si256(v));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(first_block + stride + 32 * k),
                        _mm512_extracti64x4_epi64(v, 1));
}

bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const __m512i one = _mm512_set1_epi8(1), two = _mm512_set1_epi8(2);
    __mmask64 too_large = 0;
    const std::size_t pairs = n / (2 * kTernary2BlockValues);
    for (std::size_t p = 0; p < pairs; ++p) {
        const std::int8_t* in = codes + p * 2 * kTernary2BlockValues;
        __m512i word = _mm512_setzero_si512();
        for (int k = 0; k < 4; ++k) {
            const __m512i field = _mm512_add_epi8(load_plane_pair(in, kTernary2BlockValues, k), one);
            too_large |= _mm512_cmpgt_epu8_mask(field, two);
            // 16-bit shifts are safe: a valid field shifted by up to 6 stays inside its byte.
            word = _mm512_or_si512(word, _mm512_slli_epi16(field, 2 * k));
        }
        _mm512_storeu_si512(packed + p * 2 * kTernaryBlockBytes, word);
    }
    const std::size_t done = pairs * 2 * kTernary2BlockValues;
    return ref::pack_kernels.pack_ternary2(codes + done, n - done,
                                           packed + pairs * 2 * kTernaryBlockBytes) &&
           too_large == 0;
}

bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    const __m512i low_bits = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    const __m512i odd_bits = _mm512_set1_epi8(0x55);
    __mmask64 invalid = 0;
    const std::size_t pairs = n / (2 * kTernary2BlockValues);
    for (std::size_t p = 0; p < pairs; ++p) {
        const __m512i word = _mm512_loadu_si512(packed + p * 2 * kTernaryBlockBytes);
        // A field 0b11 has both bits set: test bit pairs of word & (word >> 1) at even bits.
        invalid |= _mm512_test_epi8_mask(_mm512_and_si512(word, _mm512_srli_epi16(word, 1)), odd_bits);
        std::int8_t* out = codes + p * 2 * kTernary2BlockValues;
        for (int k = 0; k < 4; ++k) {
            const __m512i field = _mm512_and_si512(_mm512_srli_epi16(word, 2 * k), low_bits);
            store_plane_pair(out, kTernary2BlockValues, k, _mm512_sub_epi8(field, one));
        }
    }
    const std::size_t done = pairs * 2 * kTernary2BlockValues;
    return ref::pack_kernels.unpack_ternary2(packed + pairs * 2 * kTernaryBlockBytes, n - done,
                                             codes + done) &&
           invalid == 0;
}

bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const __m512i one = _mm512_set1_epi8(1), two = _mm512_set1_epi8(2);
    const __m512i rounding = _mm512_set1_epi8(static_cast<char>(242));
    const __m512i reciprocal = _mm512_set1_epi16(static_cast<short>(34522));
    __mmask64 too_large = 0;
    const std::size_t pairs = n / (2 * kTernary3BlockValues);
    for (std::size_t p = 0; p < pairs; ++p) {
        const std::int8_t* in = codes + p * 2 * kTernary3BlockValues;
        __m512i value = _mm512_setzero_si512();
        for (int k = 0; k < 5; ++k) {
            const __m512i trit = _mm512_add_epi8(load_plane_pair(in, kTernary3BlockValues, k), one);
            too_large |= _mm512_cmpgt_epu8_mask(trit, two);
            value = _mm512_add_epi8(_mm512_add_epi8(value, _mm512_add_epi8(value, value)), trit);
        }
        // (v * 256 + 242) / 243 == mulhi((242, v) as 16 bits, 34522) >> 7 (see the AVX2 file).
        const __m512i low = _mm512_srli_epi16(
            _mm512_mulhi_epu16(_mm512_unpacklo_epi8(rounding, value), reciprocal), 7);
        const __m512i high = _mm512_srli_epi16(
            _mm512_mulhi_epu16(_mm512_unpackhi_epi8(rounding, value), reciprocal), 7);
        _mm512_storeu_si512(packed + p * 2 * kTernaryBlockBytes, _mm512_packus_epi16(low, high));
    }
    const std::size_t done = pairs * 2 * kTernary3BlockValues;
    return ref::pack_kernels.pack_ternary3(codes + done, n - done,
                                           packed + pairs * 2 * kTernaryBlockBytes) &&
           too_large == 0;
}

void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    const __m512i above_85 = _mm512_set1_epi8(85), above_170 = _mm512_set1_epi8(static_cast<char>(170));
    const __m512i minus_one = _mm512_set1_epi8(-1), one = _mm512_set1_epi8(1);
    const std::size_t pairs = n / (2 * kTernary3BlockValues);
    for (std::size_t p = 0; p < pairs; ++p) {
        __m512i scaled = _mm512_loadu_si512(packed + p * 2 * kTernaryBlockBytes);
        std::int8_t* out = codes + p * 2 * kTernary3BlockValues;
        for (int k = 0; k < 5; ++k) {
            // trit = (q * 3) >> 8 = [q > 85] + [q > 170]; code = trit - 1.
            __m512i code = _mm512_mask_add_epi8(minus_one, _mm512_cmpgt_epu8_mask(scaled, above_85),
                                                minus_one, one);
            code = _mm512_mask_add_epi8(code, _mm512_cmpgt_epu8_mask(scaled, above_170), code, one);
            store_plane_pair(out, kTernary3BlockValues, k, code);
            scaled = _mm512_add_epi8(scaled, _mm512_add_epi8(scaled, scaled));
        }
    }
    const std::size_t done = pairs * 2 * kTernary3BlockValues;
    ref::pack_kernels.unpack_ternary3(packed + pairs * 2 * kTernaryBlockBytes, n - done,
                                      codes + done);
}

}  // namespace

const PackKernels pack_kernels = {pack_signs_f32, unpack_signs_f32, pack_ternary2,
                                  unpack_ternary2, pack_ternary3,   unpack_ternary3};

}  // namespace codl::avx512
