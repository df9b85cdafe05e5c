// AVX2 packing kernels. Whole vectors and blocks here; the rest goes to the scalar reference,
// which starts on a byte or block boundary and so packs the tail exactly as a whole call would.
#include <immintrin.h>

#include <cstring>

#include "codl/pack.h"

namespace codl::avx2 {
namespace {

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits) {
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        // movemask_ps reads exactly the IEEE sign bits, which is the definition of the format.
        const std::uint32_t word =
            static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_loadu_ps(x + i))) |
            static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_loadu_ps(x + i + 8))) << 8 |
            static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_loadu_ps(x + i + 16))) << 16 |
            static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_loadu_ps(x + i + 24))) << 24;
        std::memcpy(bits + i / 8, &word, sizeof word);
    }
    ref::pack_kernels.pack_signs_f32(x + i, n - i, bits + i / 8);
}

void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    const __m256i one = _mm256_castps_si256(_mm256_set1_ps(1.0f));
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i byte = _mm256_set1_epi32(bits[i / 8]);
        const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bit), lane_bit);
        const __m256i value = _mm256_or_si256(one, _mm256_and_si256(set, sign));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(value));
    }
    ref::pack_kernels.unpack_signs_f32(bits + i / 8, n - i, out + i);
}

bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const __m256i one = _mm256_set1_epi8(1);
    __m256i largest = _mm256_setzero_si256();  // max of c + 1 as unsigned: valid iff <= 2
    const std::size_t blocks = n / kTernary2BlockValues;
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::int8_t* in = codes + b * kTernary2BlockValues;
        __m256i fields[4];
        for (int k = 0; k < 4; ++k) {
            fields[k] = _mm256_add_epi8(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 32 * k)), one);
            largest = _mm256_max_epu8(largest, fields[k]);
        }
        // 16-bit shifts are safe: a valid field shifted by up to 6 stays inside its byte.
        const __m256i word = _mm256_or_si256(
            _mm256_or_si256(fields[0], _mm256_slli_epi16(fields[1], 2)),
            _mm256_or_si256(_mm256_slli_epi16(fields[2], 4), _mm256_slli_epi16(fields[3], 6)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + b * kTernaryBlockBytes), word);
    }
    const __m256i too_large = _mm256_cmpeq_epi8(_mm256_max_epu8(largest, _mm256_set1_epi8(2)),
                                                _mm256_set1_epi8(2));
    const bool valid = _mm256_movemask_epi8(too_large) == -1;
    const std::size_t done = blocks * kTernary2BlockValues;
    return ref::pack_kernels.pack_ternary2(codes + done, n - done,
                                           packed + blocks * kTernaryBlockBytes) &&
           valid;
}

bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    const __m256i low_bits = _mm256_set1_epi8(3);
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i odd_bits = _mm256_set1_epi8(0x55);
    __m256i invalid = _mm256_setzero_si256();  // a field 0b11 leaves a bit here
    const std::size_t blocks = n / kTernary2BlockValues;
    for (std::size_t b = 0; b < blocks; ++b) {
        const __m256i word = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(packed + b * kTernaryBlockBytes));
        invalid = _mm256_or_si256(
            invalid, _mm256_and_si256(_mm256_and_si256(word, _mm256_srli_epi16(word, 1)), odd_bits));
        std::int8_t* out = codes + b * kTernary2BlockValues;
        const __m256i f0 = _mm256_and_si256(word, low_bits);
        const __m256i f1 = _mm256_and_si256(_mm256_srli_epi16(word, 2), low_bits);
        const __m256i f2 = _mm256_and_si256(_mm256_srli_epi16(word, 4), low_bits);
        const __m256i f3 = _mm256_and_si256(_mm256_srli_epi16(word, 6), low_bits);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_sub_epi8(f0, one));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_sub_epi8(f1, one));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64), _mm256_sub_epi8(f2, one));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 96), _mm256_sub_epi8(f3, one));
    }
    const bool valid = _mm256_testz_si256(invalid, invalid) != 0;
    const std::size_t done = blocks * kTernary2BlockValues;
    return ref::pack_kernels.unpack_ternary2(packed + blocks * kTernaryBlockBytes, n - done,
                                             codes + done) &&
           valid;
}

bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i rounding = _mm256_set1_epi8(static_cast<char>(242));
    const __m256i reciprocal = _mm256_set1_epi16(static_cast<short>(34522));
    __m256i largest = _mm256_setzero_si256();
    const std::size_t blocks = n / kTernary3BlockValues;
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::int8_t* in = codes + b * kTernary3BlockValues;
        __m256i value = _mm256_setzero_si256();  // base 3 in bytes: at most 242, no overflow
        for (int k = 0; k < 5; ++k) {
            const __m256i trit = _mm256_add_epi8(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 32 * k)), one);
            largest = _mm256_max_epu8(largest, trit);
            value = _mm256_add_epi8(_mm256_add_epi8(value, _mm256_add_epi8(value, value)), trit);
        }
        // ceil(v * 256 / 243) = (v * 256 + 242) / 243; in 16 bits v * 256 + 242 is the pair
        // (242, v), and x / 243 == mulhi(x, 34522) >> 7 for all 243 such x (checked in tests).
        const __m256i low = _mm256_srli_epi16(
            _mm256_mulhi_epu16(_mm256_unpacklo_epi8(rounding, value), reciprocal), 7);
        const __m256i high = _mm256_srli_epi16(
            _mm256_mulhi_epu16(_mm256_unpackhi_epi8(rounding, value), reciprocal), 7);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(packed + b * kTernaryBlockBytes),
                            _mm256_packus_epi16(low, high));
    }
    const __m256i too_large = _mm256_cmpeq_epi8(_mm256_max_epu8(largest, _mm256_set1_epi8(2)),
                                                _mm256_set1_epi8(2));
    const bool valid = _mm256_movemask_epi8(too_large) == -1;
    const std::size_t done = blocks * kTernary3BlockValues;
    return ref::pack_kernels.pack_ternary3(codes + done, n - done,
                                           packed + blocks * kTernaryBlockBytes) &&
           valid;
}

void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    // Trit = (q * 3) >> 8 for q = byte * 3^k mod 256, i.e. [q >= 86] + [q >= 171]; bytes are
    // compared as signed after flipping the top bit, since AVX2 has no unsigned byte compare.
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    const __m256i above_85 = _mm256_set1_epi8(static_cast<char>(85 ^ 0x80));
    const __m256i above_170 = _mm256_set1_epi8(static_cast<char>(170 ^ 0x80));
    const __m256i minus_one = _mm256_set1_epi8(-1);
    const std::size_t blocks = n / kTernary3BlockValues;
    for (std::size_t b = 0; b < blocks; ++b) {
        __m256i scaled = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(packed + b * kTernaryBlockBytes));
        std::int8_t* out = codes + b * kTernary3BlockValues;
        for (int k = 0; k < 5; ++k) {
            const __m256i biased = _mm256_xor_si256(scaled, flip);
            // cmpgt yields -1 where true, so subtracting counts the thresholds passed.
            const __m256i code =
                _mm256_sub_epi8(_mm256_sub_epi8(minus_one, _mm256_cmpgt_epi8(biased, above_85)),
                                _mm256_cmpgt_epi8(biased, above_170));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * k), code);
            scaled = _mm256_add_epi8(scaled, _mm256_add_epi8(scaled, scaled));
        }
    }
    const std::size_t done = blocks * kTernary3BlockValues;
    ref::pack_kernels.unpack_ternary3(packed + blocks * kTernaryBlockBytes, n - done,
                                      codes + done);
}

}  // namespace

const PackKernels pack_kernels = {pack_signs_f32, unpack_signs_f32, pack_ternary2,
                                  unpack_ternary2, pack_ternary3,   unpack_ternary3};

}  // namespace codl::avx2
