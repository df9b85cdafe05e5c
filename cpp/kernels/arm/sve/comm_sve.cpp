// SVE gradient codec kernels, vector-length agnostic: Int8 encode (fused error feedback) and
// decode, scaled-sign encode and decode, TernGrad encode and decode, QSGD encode, the top-k
// scans. Same float operations per value as the scalar reference, and the counter generator's
// 64-bit integer steps lane by lane, so the results match it bit for bit at every vector
// length; QSGD decode (a serial bit reader) forwards to the reference.
#include <arm_sve.h>

#include <cmath>
#include <cstring>

#include "codl/comm.h"
#include "codl/pack.h"

namespace codl::sve {
namespace {

constexpr std::uint32_t kExponentBits = 0x7F800000u;

// v = x + error on the active lanes, or x itself without error feedback.
svfloat32_t load_v(svbool_t pg, const float* x, const float* error, std::size_t i) {
    const svfloat32_t xv = svld1_f32(pg, x + i);
    return error ? svadd_f32_x(pg, xv, svld1_f32(pg, error + i)) : xv;
}

std::uint32_t block_max_bits(const float* x, const float* error, std::size_t m) {
    svuint32_t largest = svdup_n_u32(0);
    for (std::size_t i = 0; i < m; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
        const svuint32_t bits = svand_n_u32_x(pg, svreinterpret_u32_f32(load_v(pg, x, error, i)), 0x7FFFFFFFu);
        largest = svmax_u32_m(pg, largest, bits);
    }
    return svmaxv_u32(svptrue_b32(), largest);
}

bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::int8_t* codes) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float max_abs;
        std::memcpy(&max_abs, &largest, sizeof max_abs);
        const float inverse = ref::int8_inverse_scale(max_abs);
        const float scale = inverse != 0.0f ? max_abs / 127.0f : 0.0f;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            const svfloat32_t v = load_v(pg, xb, eb, i);
            // frintn rounds half to even; the int conversion makes -0.0 a plain 0.
            const svint32_t q = svcvt_s32_f32_x(pg, svrintn_f32_x(pg, svmul_n_f32_x(pg, v, inverse)));
            svst1b_s32(pg, codes + begin + i, q);
            if (eb) {
                const svfloat32_t sent = svmul_n_f32_x(pg, svcvt_f32_s32_x(pg, q), scale);
                svst1_f32(pg, eb + i, svsub_f32_x(pg, v, sent));
            }
        }
    }
    return true;
}

void int8_decode(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float scale;
        std::memcpy(&scale, scales + 4 * b, sizeof scale);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            float* o = out + begin + i;
            svfloat32_t value = svmul_n_f32_x(pg, svcvt_f32_s32_x(pg, svld1sb_s32(pg, codes + begin + i)), scale);
            if (accumulate) value = svadd_f32_x(pg, svld1_f32(pg, o), value);
            svst1_f32(pg, o, value);
        }
    }
}

bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::uint8_t* bits) {
    // The reference's 16 sum lanes live in memory: vectors of up to 16 lanes add into them in
    // place, so any vector length keeps the reference's order.
    const std::size_t step = svcntw() < 16 ? svcntw() : 16;
    const svbool_t group = svwhilelt_b32(std::uint64_t{0}, static_cast<std::uint64_t>(step));
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float lanes[16] = {};
        for (std::size_t i = 0; i < m; i += 16) {
            for (std::size_t k = 0; k < 16; k += step) {
                // Lanes past m add nothing (merging add keeps the sum).
                const svbool_t pg = svand_b_z(group, group,
                                              svwhilelt_b32(static_cast<std::uint64_t>(i + k),
                                                            static_cast<std::uint64_t>(m)));
                const svfloat32_t magnitude = svabs_f32_x(pg, load_v(pg, xb, eb, i + k));
                svst1_f32(group, lanes + k, svadd_f32_m(pg, svld1_f32(group, lanes + k), magnitude));
            }
        }
        const float scale = ref::sign_block_scale(lanes, m);
        if (!std::isfinite(scale)) return false;
        std::memcpy(scales + 4 * b, &scale, sizeof scale);
        std::uint8_t* out = bits + begin / 8;
        if (!eb) {
            pack_kernels.pack_signs_f32(xb, m, out);
            continue;
        }
        // v into the error buffer, its signs packed, then v - (+-scale) in place: three passes
        // over a block that stays in L1.
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            svst1_f32(pg, eb + i, load_v(pg, xb, eb, i));
        }
        pack_kernels.pack_signs_f32(eb, m, out);
        const svuint32_t sign_mask = svdup_n_u32(0x80000000u);
        std::uint32_t scale_word;
        std::memcpy(&scale_word, &scale, sizeof scale_word);
        const svuint32_t scale_bits = svdup_n_u32(scale_word);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            const svfloat32_t v = svld1_f32(pg, eb + i);
            // +-scale: the scale with v's sign bit.
            const svuint32_t sent = svorr_u32_x(pg, scale_bits, svand_u32_x(pg, svreinterpret_u32_f32(v), sign_mask));
            svst1_f32(pg, eb + i, svsub_f32_x(pg, v, svreinterpret_f32_u32(sent)));
        }
    }
    return true;
}

void sign_decode(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    const svuint32_t lane = svindex_u32(0, 1);
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float scale;
        std::memcpy(&scale, scales + 4 * b, sizeof scale);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            // At 128 bits a vector holds 4 values: it can start mid-byte, so each lane gathers
            // its own byte.
            const std::size_t first = begin + i;
            const svuint32_t bit_index = svadd_n_u32_x(pg, lane, static_cast<std::uint32_t>(first % 8));
            const svuint32_t bytes = svld1ub_gather_u32offset_u32(pg, bits + first / 8, svlsr_n_u32_x(pg, bit_index, 3));
            const svuint32_t bit = svand_n_u32_x(pg, svlsr_u32_x(pg, bytes, svand_n_u32_x(pg, bit_index, 7)), 1);
            float* o = out + first;
            svfloat32_t value = svsel_f32(svcmpne_n_u32(pg, bit, 0), svdup_n_f32(-scale), svdup_n_f32(scale));
            if (accumulate) value = svadd_f32_x(pg, svld1_f32(pg, o), value);
            svst1_f32(pg, o, value);
        }
    }
}
bool topk_accumulate(const float* x, float* error, float* momentum, float m, std::size_t n) {
    svuint32_t largest = svdup_n_u32(0);
    for (std::size_t i = 0; i < n; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(n));
        svfloat32_t v = svld1_f32(pg, x + i);
        if (error) {
            if (momentum) {
                // m * u + x as two roundings (no fused multiply-add), as the reference.
                v = svadd_f32_x(pg, svmul_n_f32_x(pg, svld1_f32(pg, momentum + i), m), v);
                svst1_f32(pg, momentum + i, v);
            }
            v = svadd_f32_x(pg, svld1_f32(pg, error + i), v);
            svst1_f32(pg, error + i, v);
        }
        largest = svmax_u32_m(pg, largest, svand_n_u32_x(pg, svreinterpret_u32_f32(v), 0x7FFFFFFFu));
    }
    return svmaxv_u32(svptrue_b32(), largest) < kExponentBits;
}

std::size_t count_at_least(const float* v, std::size_t n, float threshold) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(n));
        const svbool_t hit = svcmpge_n_f32(pg, svabs_f32_x(pg, svld1_f32(pg, v + i)), threshold);
        count += svcntp_b32(pg, hit);
    }
    return count;
}

std::size_t gather_at_least(const float* v, std::size_t n, float threshold, std::uint32_t base,
                            std::uint32_t* indices) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; i += svcntw()) {
        const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(n));
        const svbool_t hit = svcmpge_n_f32(pg, svabs_f32_x(pg, svld1_f32(pg, v + i)), threshold);
        const std::uint64_t hits = svcntp_b32(pg, hit);
        if (!hits) continue;
        const svuint32_t index = svindex_u32(base + static_cast<std::uint32_t>(i), 1);
        svst1_u32(svwhilelt_b32(std::uint64_t{0}, hits), indices + count, svcompact_u32(hit, index));
        count += hits;
    }
    return count;
}

// The reference's counter generator (splitmix64's finalizer of stream + index * golden ratio)
// for the svcntw() indices first, first + 1, ...: two vectors of 64-bit lanes, whose top 24 bits
// narrow into one vector of uniforms in [0, 1). Below 2^24 the conversion is exact.
svuint64_t mix64(svbool_t pg, svuint64_t z) {
    z = svmul_n_u64_x(pg, sveor_u64_x(pg, z, svlsr_n_u64_x(pg, z, 30)), 0xBF58476D1CE4E5B9ull);
    z = svmul_n_u64_x(pg, sveor_u64_x(pg, z, svlsr_n_u64_x(pg, z, 27)), 0x94D049BB133111EBull);
    return sveor_u64_x(pg, z, svlsr_n_u64_x(pg, z, 31));
}
svfloat32_t uniforms(std::uint64_t stream, std::uint64_t first) {
    const svbool_t all = svptrue_b64();
    const auto draw = [&](std::uint64_t start) {
        const svuint64_t index = svindex_u64(start, 1);
        const svuint64_t z = svadd_n_u64_x(all, svmul_n_u64_x(all, index, 0x9E3779B97F4A7C15ull), stream);
        return svreinterpret_u32_u64(svlsr_n_u64_x(all, mix64(all, z), 40));
    };
    // uzp1 keeps the low (even) 32-bit halves: lanes first .. first + L/2 - 1, then the rest.
    const svuint32_t bits = svuzp1_u32(draw(first), draw(first + svcntd()));
    return svmul_n_f32_x(svptrue_b32(), svcvt_f32_u32_x(svptrue_b32(), bits), 0x1p-24f);
}

// Packs the 2-bit fields of the active lanes (inactive lanes hold 0) four to a byte, lane 0 in
// the low bits, and stores the bytes that hold the first `count` fields.
void store_fields2(svuint32_t field, std::size_t count, std::uint8_t* out) {
    const svbool_t all = svptrue_b32();
    const svuint32_t pairs = svorr_u32_x(all, svuzp1_u32(field, field), svlsl_n_u32_x(all, svuzp2_u32(field, field), 2));
    const svuint32_t quads = svorr_u32_x(all, svuzp1_u32(pairs, pairs), svlsl_n_u32_x(all, svuzp2_u32(pairs, pairs), 4));
    svst1b_u32(svwhilelt_b32(std::uint64_t{0}, static_cast<std::uint64_t>((count + 3) / 4)), out, quads);
}

bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        const std::uint32_t largest = block_max_bits(xb, eb, m);
        if (largest >= kExponentBits) return false;
        float s;
        std::memcpy(&s, &largest, sizeof s);
        std::memcpy(scales + 4 * b, &s, sizeof s);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            const svfloat32_t v = load_v(pg, xb, eb, i);
            // Keep with probability |v| / s; with s = 0 the quotient is NaN and nothing is kept,
            // as the reference decides.
            const svfloat32_t p = svdiv_n_f32_x(pg, svabs_f32_x(pg, v), s);
            const svbool_t keep = svcmplt_f32(pg, uniforms(stream, first + begin + i), p);
            const svbool_t negative = svcmplt_n_s32(pg, svreinterpret_s32_f32(v), 0);
            // code + 1: 1 dropped, 2 kept positive, 0 kept negative; inactive lanes 0.
            svuint32_t field = svdup_n_u32_z(pg, 1);
            field = svdup_n_u32_m(field, svbic_b_z(pg, keep, negative), 2);
            field = svdup_n_u32_m(field, svand_b_z(pg, keep, negative), 0);
            // block is a multiple of 8 and svcntw() of 4: begin + i starts a byte.
            store_fields2(field, m - i < svcntw() ? m - i : svcntw(), codes + (begin + i) / 4);
            if (eb) {
                const svfloat32_t code = svcvt_f32_s32_x(pg, svsub_n_s32_x(pg, svreinterpret_s32_u32(field), 1));
                svst1_f32(pg, eb + i, svsub_f32_x(pg, v, svmul_n_f32_x(pg, code, s)));
            }
        }
    }
    return true;
}

bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    const svuint32_t lane = svindex_u32(0, 1);
    svbool_t invalid = svpfalse_b();
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        float s;
        std::memcpy(&s, scales + 4 * b, sizeof s);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            const svuint32_t bytes = svld1ub_gather_u32offset_u32(pg, codes + (begin + i) / 4, svlsr_n_u32_x(pg, lane, 2));
            const svuint32_t shift = svlsl_n_u32_x(pg, svand_n_u32_x(pg, lane, 3), 1);
            const svuint32_t field = svand_n_u32_x(pg, svlsr_u32_x(pg, bytes, shift), 3);
            invalid = svorr_b_z(svptrue_b32(), invalid, svcmpeq_n_u32(pg, field, 3));
            const svfloat32_t code = svcvt_f32_s32_x(pg, svsub_n_s32_x(pg, svreinterpret_s32_u32(field), 1));
            float* o = out + begin + i;
            svfloat32_t value = svmul_n_f32_x(pg, code, s);
            if (accumulate) value = svadd_f32_x(pg, svld1_f32(pg, o), value);
            svst1_f32(pg, o, value);
        }
    }
    return !svptest_any(svptrue_b32(), invalid);
}

bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    const unsigned width = qsgd_field_bits(levels);
    const float intervals = static_cast<float>(levels - 1);
    const std::uint32_t sign_field = 1u << (width - 1);
    ref::FieldWriter writer{codes, width, 0, 0};  // the reference's, fed a vector at a time
    std::uint32_t fields[64];  // svcntw() <= 64 (2048-bit vectors)
    for (std::size_t b = 0; b * block < n; ++b) {
        const std::size_t begin = b * block, m = n - begin < block ? n - begin : block;
        const float* xb = x + begin;
        float* eb = error ? error + begin : nullptr;
        float norm;
        if (!ref::qsgd_block_norm(xb, eb, m, &norm)) return false;
        std::memcpy(norms + 4 * b, &norm, sizeof norm);
        for (std::size_t i = 0; i < m; i += svcntw()) {
            const svbool_t pg = svwhilelt_b32(static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(m));
            const svfloat32_t v = load_v(pg, xb, eb, i);
            svuint32_t level = svdup_n_u32(0);
            if (norm > 0.0f) {
                // Stochastic rounding of s |v| / ||v||, the reference's operations in its order.
                const svfloat32_t r = svmul_n_f32_x(pg, svdiv_n_f32_x(pg, svabs_f32_x(pg, v), norm), intervals);
                const svfloat32_t lower = svrintm_f32_x(pg, r);
                const svbool_t up = svcmplt_f32(pg, uniforms(stream, first + begin + i), svsub_f32_x(pg, r, lower));
                level = svcvt_u32_f32_x(pg, lower);
                level = svadd_n_u32_m(up, level, 1);
                level = svmin_n_u32_x(pg, level, levels - 1);
            }
            const svbool_t negative = svand_b_z(pg, svcmplt_n_s32(pg, svreinterpret_s32_f32(v), 0),
                                                svcmpne_n_u32(pg, level, 0));
            svst1_u32(svptrue_b32(), fields, svorr_n_u32_m(negative, level, sign_field));
            const std::size_t count = m - i < svcntw() ? m - i : svcntw();
            ref::write_fields(writer, fields, count);
            if (eb) {
                // (norm * level) / s, negated where negative: the reference's order.
                svfloat32_t sent = svdiv_n_f32_x(pg, svmul_n_f32_x(pg, svcvt_f32_u32_x(pg, level), norm), intervals);
                sent = svneg_f32_m(sent, negative, sent);
                svst1_f32(pg, eb + i, svsub_f32_x(pg, v, sent));
            }
        }
    }
    ref::flush_fields(writer);
    return true;
}

// QSGD decode is a serial bit reader; the reference's is as fast as it gets here.
bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    return ref::comm_kernels.qsgd_decode(norms, codes, n, block, levels, out, accumulate);
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace codl::sve
