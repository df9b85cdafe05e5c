// SVE packing kernels, vector-length agnostic (tested under qemu at 128, 256 and 512 bits; the
// A64FX runs 512). Whole vectors and blocks here; the tail goes to the scalar reference.
#include <arm_sve.h>

#include "codl/pack.h"

namespace codl::sve {
namespace {

void pack_signs_f32(const float* x, std::size_t n, std::uint8_t* bits) {
    const std::size_t step = svcntb();  // values per iteration: 4 vectors of floats
    const svbool_t all32 = svptrue_b32(), all64 = svptrue_b64();
    // Byte i of a 64-bit lane holds sign i (0 or 1); multiplying by this constant gathers bit i
    // of byte i into the top byte without carries (every partial product lands on its own bit).
    const svuint64_t gather = svdup_n_u64(0x0102040810204080ull);
    const std::uint32_t* words = reinterpret_cast<const std::uint32_t*>(x);
    std::size_t i = 0;
    for (; i + step <= n; i += step) {
        const std::size_t quarter = step / 4;
        svuint32_t s0 = svlsr_n_u32_x(all32, svld1_u32(all32, words + i), 31);
        svuint32_t s1 = svlsr_n_u32_x(all32, svld1_u32(all32, words + i + quarter), 31);
        svuint32_t s2 = svlsr_n_u32_x(all32, svld1_u32(all32, words + i + 2 * quarter), 31);
        svuint32_t s3 = svlsr_n_u32_x(all32, svld1_u32(all32, words + i + 3 * quarter), 31);
        // Narrow 32 -> 16 -> 8 bits keeping order: uzp1 takes the low halves (little endian).
        const svuint16_t h0 = svuzp1_u16(svreinterpret_u16_u32(s0), svreinterpret_u16_u32(s1));
        const svuint16_t h1 = svuzp1_u16(svreinterpret_u16_u32(s2), svreinterpret_u16_u32(s3));
        const svuint8_t b = svuzp1_u8(svreinterpret_u8_u16(h0), svreinterpret_u8_u16(h1));
        const svuint64_t packed = svlsr_n_u64_x(all64, svmul_u64_x(all64, svreinterpret_u64_u8(b), gather), 56);
        svst1b_u64(all64, bits + i / 8, packed);
    }
    ref::pack_kernels.pack_signs_f32(x + i, n - i, bits + i / 8);
}

void unpack_signs_f32(const std::uint8_t* bits, std::size_t n, float* out) {
    const std::size_t step = svcntb();  // values per iteration: 4 vectors of floats
    const svbool_t all8 = svptrue_b8(), all32 = svptrue_b32(), all64 = svptrue_b64();
    const svuint64_t spread = svdup_n_u64(0x0101010101010101ull);
    const svuint64_t own_bit = svdup_n_u64(0x8040201008040201ull);
    const svuint32_t one = svdup_n_u32(0x3F800000u);
    std::uint32_t* words = reinterpret_cast<std::uint32_t*>(out);
    std::size_t i = 0;
    for (; i + step <= n; i += step) {
        // One packed byte per 64-bit lane, copied to all 8 bytes; byte j keeps bit j.
        const svuint64_t byte = svld1ub_u64(all64, bits + i / 8);
        const svuint64_t kept = svand_u64_x(all64, svmul_u64_x(all64, byte, spread), own_bit);
        const svuint8_t set = svmin_n_u8_x(all8, svreinterpret_u8_u64(kept), 1);
        const svuint16_t lo = svunpklo_u16(set), hi = svunpkhi_u16(set);
        const std::size_t quarter = step / 4;
        const auto store = [&](svuint32_t set32, std::size_t k) {
            svst1_u32(all32, words + i + k * quarter,
                      svorr_u32_x(all32, one, svlsl_n_u32_x(all32, set32, 31)));
        };
        store(svunpklo_u32(lo), 0);
        store(svunpkhi_u32(lo), 1);
        store(svunpklo_u32(hi), 2);
        store(svunpkhi_u32(hi), 3);
    }
    ref::pack_kernels.unpack_signs_f32(bits + i / 8, n - i, out + i);
}

// Ternary blocks are 32 bytes wide; a vector covers them in one step when it is at least 256
// bits, in several when it is 128, with a predicate for the part of the block left.
bool pack_ternary2(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const std::size_t blocks = n / kTernary2BlockValues;
    svbool_t too_large = svpfalse_b();
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::int8_t* in = codes + b * kTernary2BlockValues;
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            svuint8_t word = svdup_n_u8(0);
            for (int k = 0; k < 4; ++k) {
                const svuint8_t field = svadd_n_u8_x(
                    pg, svreinterpret_u8_s8(svld1_s8(pg, in + 32 * k + j)), 1);
                too_large = svorr_b_z(pg, too_large, svcmpgt_n_u8(pg, field, 2));
                word = svorr_u8_x(pg, word, svlsl_n_u8_x(pg, field, 2 * k));
            }
            svst1_u8(pg, packed + b * kTernaryBlockBytes + j, word);
        }
    }
    const std::size_t done = blocks * kTernary2BlockValues;
    return ref::pack_kernels.pack_ternary2(codes + done, n - done,
                                           packed + blocks * kTernaryBlockBytes) &&
           !svptest_any(svptrue_b8(), too_large);
}

bool unpack_ternary2(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    const std::size_t blocks = n / kTernary2BlockValues;
    svbool_t invalid = svpfalse_b();
    for (std::size_t b = 0; b < blocks; ++b) {
        std::int8_t* out = codes + b * kTernary2BlockValues;
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            const svuint8_t word = svld1_u8(pg, packed + b * kTernaryBlockBytes + j);
            for (int k = 0; k < 4; ++k) {
                const svuint8_t field = svand_n_u8_x(pg, svlsr_n_u8_x(pg, word, 2 * k), 3);
                invalid = svorr_b_z(pg, invalid, svcmpeq_n_u8(pg, field, 3));
                svst1_s8(pg, out + 32 * k + j, svreinterpret_s8_u8(svsub_n_u8_x(pg, field, 1)));
            }
        }
    }
    const std::size_t done = blocks * kTernary2BlockValues;
    return ref::pack_kernels.unpack_ternary2(packed + blocks * kTernaryBlockBytes, n - done,
                                             codes + done) &&
           !svptest_any(svptrue_b8(), invalid);
}

bool pack_ternary3(const std::int8_t* codes, std::size_t n, std::uint8_t* packed) {
    const std::size_t blocks = n / kTernary3BlockValues;
    svbool_t too_large = svpfalse_b();
    const svbool_t all16 = svptrue_b16();
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::int8_t* in = codes + b * kTernary3BlockValues;
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            svuint8_t value = svdup_n_u8(0);
            for (int k = 0; k < 5; ++k) {
                const svuint8_t trit = svadd_n_u8_x(
                    pg, svreinterpret_u8_s8(svld1_s8(pg, in + 32 * k + j)), 1);
                too_large = svorr_b_z(pg, too_large, svcmpgt_n_u8(pg, trit, 2));
                value = svmla_n_u8_x(pg, trit, value, 3);
            }
            // (v * 256 + 242) / 243 == mulhi(v * 256 + 242, 34522) >> 7 for every valid v.
            const svuint16_t lo = svadd_n_u16_x(all16, svlsl_n_u16_x(all16, svunpklo_u16(value), 8), 242);
            const svuint16_t hi = svadd_n_u16_x(all16, svlsl_n_u16_x(all16, svunpkhi_u16(value), 8), 242);
            const svuint16_t qlo = svlsr_n_u16_x(all16, svmulh_n_u16_x(all16, lo, 34522), 7);
            const svuint16_t qhi = svlsr_n_u16_x(all16, svmulh_n_u16_x(all16, hi, 34522), 7);
            const svuint8_t byte = svuzp1_u8(svreinterpret_u8_u16(qlo), svreinterpret_u8_u16(qhi));
            svst1_u8(pg, packed + b * kTernaryBlockBytes + j, byte);
        }
    }
    const std::size_t done = blocks * kTernary3BlockValues;
    return ref::pack_kernels.pack_ternary3(codes + done, n - done,
                                           packed + blocks * kTernaryBlockBytes) &&
           !svptest_any(svptrue_b8(), too_large);
}

void unpack_ternary3(const std::uint8_t* packed, std::size_t n, std::int8_t* codes) {
    const std::size_t blocks = n / kTernary3BlockValues;
    for (std::size_t b = 0; b < blocks; ++b) {
        std::int8_t* out = codes + b * kTernary3BlockValues;
        for (std::size_t j = 0; j < kTernaryBlockBytes; j += svcntb()) {
            const svbool_t pg = svwhilelt_b8_u64(j, kTernaryBlockBytes);
            svuint8_t scaled = svld1_u8(pg, packed + b * kTernaryBlockBytes + j);
            for (int k = 0; k < 5; ++k) {
                // trit = (q * 3) >> 8 = [q > 85] + [q > 170]; code = trit - 1.
                svint8_t code = svdup_n_s8(-1);
                code = svadd_n_s8_m(svcmpgt_n_u8(pg, scaled, 85), code, 1);
                code = svadd_n_s8_m(svcmpgt_n_u8(pg, scaled, 170), code, 1);
                svst1_s8(pg, out + 32 * k + j, code);
                scaled = svmul_n_u8_x(pg, scaled, 3);
            }
        }
    }
    const std::size_t done = blocks * kTernary3BlockValues;
    ref::pack_kernels.unpack_ternary3(packed + blocks * kTernaryBlockBytes, n - done,
                                      codes + done);
}

}  // namespace

int vector_bits() { return static_cast<int>(svcntb() * 8); }

const PackKernels pack_kernels = {pack_signs_f32, unpack_signs_f32, pack_ternary2,
                                  unpack_ternary2, pack_ternary3,   unpack_ternary3};

}  // namespace codl::sve
