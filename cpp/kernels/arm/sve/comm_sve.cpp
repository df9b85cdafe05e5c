// SVE gradient codec kernels, vector-length agnostic: Int8 encode (fused error feedback) and
// decode, scaled-sign encode, the top-k scans. Same float operations per value as the scalar
// reference, so the results match it bit for bit at every vector length; the rest (sign
// decode, the stochastic codecs) forwards to the reference.
#include <arm_sve.h>

#include <cmath>
#include <cstring>

#include "codl/kernel_table.h"

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
    ref::comm_kernels.sign_decode(scales, bits, n, block, out, accumulate);
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

// Forwarders to the scalar reference for the kernels this ISA does not speed up.
bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    return ref::comm_kernels.terngrad_encode(x, error, n, block, stream, first, scales, codes);
}
bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    return ref::comm_kernels.terngrad_decode(scales, codes, n, block, out, accumulate);
}
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    return ref::comm_kernels.qsgd_encode(x, error, n, block, levels, stream, first, norms, codes);
}
bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    return ref::comm_kernels.qsgd_decode(norms, codes, n, block, levels, out, accumulate);
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace codl::sve
