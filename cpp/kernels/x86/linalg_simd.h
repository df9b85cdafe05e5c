// The GEMM register tile and B panel packing of linalg_blocked.h, written once over the vector
// interface of vec_<isa>.h (AVX2 and AVX-512 compile it, each with its own flags and in its own
// namespace CODL_ISA_NAMESPACE, which the build defines).
//
// SimdTile<Vec, MR>: MR rows x 2 vectors of C in 2 MR accumulators; per step of k one broadcast
// of A per row, read where A lies, and two loads of the packed B panel; explicit FMA, so each
// element of C is sum_p a * b in ascending p with one rounding per step (the same on every
// vector width). Panels are packed with masked loads/stores where B's rows are contiguous and
// with width x width in-register transposes where its columns are.
#pragma once

#include <cstddef>

#ifndef CODL_ISA_NAMESPACE
#error "CODL_ISA_NAMESPACE is undefined: build kernel files through codl_add_kernel_family"
#endif

namespace codl::CODL_ISA_NAMESPACE {
namespace {

// A block of W consecutive rows p0 .. p0 + W - 1 of a B whose rows are contiguous, ascending
// (rs = 1) or descending (rs = -1): the offset of its lowest address, and where a vector lane q
// (in address order) belongs.
template <std::size_t W>
inline std::ptrdiff_t first_row_offset(std::size_t p0, std::ptrdiff_t rs) {
    return rs > 0 ? static_cast<std::ptrdiff_t>(p0) : -static_cast<std::ptrdiff_t>(p0 + W - 1);
}
template <std::size_t W>
inline std::size_t lane_row(std::size_t p0, std::size_t q, std::ptrdiff_t rs) {
    return rs > 0 ? p0 + q : p0 + W - 1 - q;
}

template <class Vec, std::size_t MR>
struct SimdTile {
    using T = typename Vec::T;
    using V = typename Vec::V;
    static constexpr std::size_t W = Vec::width;
    static constexpr bool fused = true;
    static constexpr std::size_t mr = MR, nr = 2 * W;

    static void run(std::size_t k, const T* a, std::ptrdiff_t a_rs, std::ptrdiff_t a_cs, const T* b, T alpha, T* c,
                    std::ptrdiff_t ldc, bool add) {
        V acc[mr][2];
        for (std::size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = Vec::zero();
        for (std::size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            const V b0 = Vec::load(b), b1 = Vec::load(b + W);
            for (std::size_t i = 0; i < mr; ++i) {
                const V ai = Vec::set1(a[static_cast<std::ptrdiff_t>(i) * a_rs]);
                acc[i][0] = Vec::fmadd(ai, b0, acc[i][0]);
                acc[i][1] = Vec::fmadd(ai, b1, acc[i][1]);
            }
        }
        const V scale = Vec::set1(alpha);
        for (std::size_t i = 0; i < mr; ++i, c += ldc) {
            for (std::size_t h = 0; h < 2; ++h) {
                V v = alpha == T(1) ? acc[i][h] : Vec::mul(acc[i][h], scale);
                if (add) v = Vec::add(Vec::load(c + W * h), v);
                Vec::store(c + W * h, v);
            }
        }
    }

    // Panel packing for any width cols <= nr.
    static bool pack_b(std::size_t k, std::size_t cols, const T* b, std::ptrdiff_t rs, std::ptrdiff_t cs, T* panel) {
        const std::size_t cols1 = cols > W ? cols - W : 0;
        if (cs == 1) {
            for (std::size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                Vec::store(panel, Vec::load_n(b, cols));
                Vec::store(panel + W, Vec::load_n(b + W, cols1));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        std::size_t p0 = 0;
        for (; p0 + W <= k; p0 += W) {
            for (std::size_t j0 = 0; j0 < nr; j0 += W) {
                V r[W];
                for (std::size_t j = 0; j < W; ++j) {
                    r[j] = j0 + j < cols
                               ? Vec::load(b + static_cast<std::ptrdiff_t>(j0 + j) * cs + first_row_offset<W>(p0, rs))
                               : Vec::zero();
                }
                Vec::transpose(r);
                for (std::size_t q = 0; q < W; ++q) Vec::store(panel + lane_row<W>(p0, q, rs) * nr + j0, r[q]);
            }
        }
        for (; p0 < k; ++p0) {
            for (std::size_t j = 0; j < nr; ++j) {
                panel[p0 * nr + j] =
                    j < cols ? b[static_cast<std::ptrdiff_t>(j) * cs + static_cast<std::ptrdiff_t>(p0) * rs] : T(0);
            }
        }
        return true;
    }

    static bool unpack_b(std::size_t k, std::size_t cols, const T* panel, T* b, std::ptrdiff_t rs, std::ptrdiff_t cs) {
        const std::size_t cols1 = cols > W ? cols - W : 0;
        if (cs == 1) {
            for (std::size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                Vec::store_n(b, Vec::load(panel), cols);
                Vec::store_n(b + W, Vec::load(panel + W), cols1);
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        std::size_t p0 = 0;
        for (; p0 + W <= k; p0 += W) {
            for (std::size_t j0 = 0; j0 < cols; j0 += W) {
                V r[W];
                for (std::size_t q = 0; q < W; ++q) r[q] = Vec::load(panel + lane_row<W>(p0, q, rs) * nr + j0);
                Vec::transpose(r);
                for (std::size_t j = 0; j < W && j0 + j < cols; ++j) {
                    Vec::store(b + static_cast<std::ptrdiff_t>(j0 + j) * cs + first_row_offset<W>(p0, rs), r[j]);
                }
            }
        }
        for (; p0 < k; ++p0) {
            for (std::size_t j = 0; j < cols; ++j) {
                b[static_cast<std::ptrdiff_t>(j) * cs + static_cast<std::ptrdiff_t>(p0) * rs] = panel[p0 * nr + j];
            }
        }
        return true;
    }
};

}  // namespace
}  // namespace codl::CODL_ISA_NAMESPACE
