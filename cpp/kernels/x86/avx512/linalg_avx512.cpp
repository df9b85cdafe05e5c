// AVX-512 pieces of the dense factorizations: the GEMM register tile (8 rows x 2 vectors of C in
// 16 zmm accumulators; per step of k one broadcast of A per row, read where A lies, and two
// loads of the packed B panel; explicit FMA) and B panel packing with in-register transposes.
#include <immintrin.h>

#include <cstddef>

namespace codl::avx512 {
namespace {

using std::ptrdiff_t;
using std::size_t;

// r[i] = row i of a 16 x 16 block -> r[j] = column j.
inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[g][q], 128-bit lane L: column 4L + q of rows 4g .. 4g + 3.
    __m512 u[4][4];
    for (int g = 0; g < 4; ++g) {
        const __m512d lo01 = _mm512_castps_pd(t[4 * g]), lo23 = _mm512_castps_pd(t[4 * g + 2]);
        const __m512d hi01 = _mm512_castps_pd(t[4 * g + 1]), hi23 = _mm512_castps_pd(t[4 * g + 3]);
        u[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
        u[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
        u[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
        u[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
    }
    for (int q = 0; q < 4; ++q) {
        const __m512 s01_lo = _mm512_shuffle_f32x4(u[0][q], u[1][q], 0x44);
        const __m512 s01_hi = _mm512_shuffle_f32x4(u[0][q], u[1][q], 0xEE);
        const __m512 s23_lo = _mm512_shuffle_f32x4(u[2][q], u[3][q], 0x44);
        const __m512 s23_hi = _mm512_shuffle_f32x4(u[2][q], u[3][q], 0xEE);
        r[q] = _mm512_shuffle_f32x4(s01_lo, s23_lo, 0x88);
        r[4 + q] = _mm512_shuffle_f32x4(s01_lo, s23_lo, 0xDD);
        r[8 + q] = _mm512_shuffle_f32x4(s01_hi, s23_hi, 0x88);
        r[12 + q] = _mm512_shuffle_f32x4(s01_hi, s23_hi, 0xDD);
    }
}

inline void transpose8(__m512d r[8]) {
    __m512d t[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
    }
    // t[2g + q], 128-bit lane L: column 2L + q of rows 2g, 2g + 1.
    for (int q = 0; q < 2; ++q) {
        const __m512d s01_lo = _mm512_shuffle_f64x2(t[q], t[2 + q], 0x44);
        const __m512d s01_hi = _mm512_shuffle_f64x2(t[q], t[2 + q], 0xEE);
        const __m512d s23_lo = _mm512_shuffle_f64x2(t[4 + q], t[6 + q], 0x44);
        const __m512d s23_hi = _mm512_shuffle_f64x2(t[4 + q], t[6 + q], 0xEE);
        r[q] = _mm512_shuffle_f64x2(s01_lo, s23_lo, 0x88);
        r[2 + q] = _mm512_shuffle_f64x2(s01_lo, s23_lo, 0xDD);
        r[4 + q] = _mm512_shuffle_f64x2(s01_hi, s23_hi, 0x88);
        r[6 + q] = _mm512_shuffle_f64x2(s01_hi, s23_hi, 0xDD);
    }
}

// A block of W consecutive rows p0 .. p0 + W - 1 of a B whose rows are contiguous, ascending
// (rs = 1) or descending (rs = -1): the offset of its lowest address, and where a vector lane q
// (in address order) belongs.
template <size_t W>
inline ptrdiff_t first(size_t p0, ptrdiff_t rs) {
    return rs > 0 ? static_cast<ptrdiff_t>(p0) : -static_cast<ptrdiff_t>(p0 + W - 1);
}
template <size_t W>
inline size_t row(size_t p0, size_t q, ptrdiff_t rs) {
    return rs > 0 ? p0 + q : p0 + W - 1 - q;
}

struct F32Tile {
    static constexpr bool fused = true;
    static constexpr size_t mr = 8, nr = 32;
    static void run(size_t k, const float* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float* b, float alpha,
                    float* c, ptrdiff_t ldc, bool add) {
        __m512 acc[mr][2];
        for (size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
            for (size_t i = 0; i < mr; ++i) {
                const __m512 ai = _mm512_set1_ps(a[static_cast<ptrdiff_t>(i) * a_rs]);
                acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
        const __m512 scale = _mm512_set1_ps(alpha);
        for (size_t i = 0; i < mr; ++i, c += ldc) {
            for (int h = 0; h < 2; ++h) {
                __m512 v = alpha == 1.0f ? acc[i][h] : _mm512_mul_ps(acc[i][h], scale);
                if (add) v = _mm512_add_ps(_mm512_loadu_ps(c + 16 * h), v);
                _mm512_storeu_ps(c + 16 * h, v);
            }
        }
    }
    // Panel packing for any width cols <= nr: masked loads/stores where B's rows are contiguous,
    // 16 x 16 in-register transposes where its columns are.
    static bool pack_b(size_t k, size_t cols, const float* b, ptrdiff_t rs, ptrdiff_t cs, float* panel) {
        const __mmask16 m0 = mask(cols), m1 = mask(cols > 16 ? cols - 16 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm512_storeu_ps(panel, _mm512_maskz_loadu_ps(m0, b));
                _mm512_storeu_ps(panel + 16, _mm512_maskz_loadu_ps(m1, b + 16));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 16 <= k; p0 += 16) {
            for (size_t j0 = 0; j0 < nr; j0 += 16) {
                __m512 r[16];
                for (size_t j = 0; j < 16; ++j) {
                    r[j] = j0 + j < cols ? _mm512_loadu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<16>(p0, rs))
                                         : _mm512_setzero_ps();
                }
                transpose16(r);
                for (size_t q = 0; q < 16; ++q) _mm512_storeu_ps(panel + row<16>(p0, q, rs) * nr + j0, r[q]);
            }
        }
        for (; p0 < k; ++p0) {
            for (size_t j = 0; j < nr; ++j) {
                panel[p0 * nr + j] = j < cols ? b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] : 0.0f;
            }
        }
        return true;
    }
    static bool unpack_b(size_t k, size_t cols, const float* panel, float* b, ptrdiff_t rs, ptrdiff_t cs) {
        const __mmask16 m0 = mask(cols), m1 = mask(cols > 16 ? cols - 16 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm512_mask_storeu_ps(b, m0, _mm512_loadu_ps(panel));
                _mm512_mask_storeu_ps(b + 16, m1, _mm512_loadu_ps(panel + 16));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 16 <= k; p0 += 16) {
            for (size_t j0 = 0; j0 < cols; j0 += 16) {
                __m512 r[16];
                for (size_t q = 0; q < 16; ++q) r[q] = _mm512_loadu_ps(panel + row<16>(p0, q, rs) * nr + j0);
                transpose16(r);
                for (size_t j = 0; j < 16 && j0 + j < cols; ++j) {
                    _mm512_storeu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<16>(p0, rs), r[j]);
                }
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < cols; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] = panel[p0 * nr + j];
        return true;
    }
    static __mmask16 mask(size_t count) {
        return _cvtu32_mask16(count >= 16 ? 0xFFFFu : (1u << count) - 1u);
    }
};

struct F64Tile {
    static constexpr bool fused = true;
    static constexpr size_t mr = 8, nr = 16;
    static void run(size_t k, const double* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const double* b, double alpha,
                    double* c, ptrdiff_t ldc, bool add) {
        __m512d acc[mr][2];
        for (size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_pd();
        for (size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            const __m512d b0 = _mm512_loadu_pd(b), b1 = _mm512_loadu_pd(b + 8);
            for (size_t i = 0; i < mr; ++i) {
                const __m512d ai = _mm512_set1_pd(a[static_cast<ptrdiff_t>(i) * a_rs]);
                acc[i][0] = _mm512_fmadd_pd(ai, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_pd(ai, b1, acc[i][1]);
            }
        }
        const __m512d scale = _mm512_set1_pd(alpha);
        for (size_t i = 0; i < mr; ++i, c += ldc) {
            for (int h = 0; h < 2; ++h) {
                __m512d v = alpha == 1.0 ? acc[i][h] : _mm512_mul_pd(acc[i][h], scale);
                if (add) v = _mm512_add_pd(_mm512_loadu_pd(c + 8 * h), v);
                _mm512_storeu_pd(c + 8 * h, v);
            }
        }
    }
    static bool pack_b(size_t k, size_t cols, const double* b, ptrdiff_t rs, ptrdiff_t cs, double* panel) {
        const __mmask8 m0 = mask(cols), m1 = mask(cols > 8 ? cols - 8 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm512_storeu_pd(panel, _mm512_maskz_loadu_pd(m0, b));
                _mm512_storeu_pd(panel + 8, _mm512_maskz_loadu_pd(m1, b + 8));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < nr; j0 += 8) {
                __m512d r[8];
                for (size_t j = 0; j < 8; ++j) {
                    r[j] = j0 + j < cols ? _mm512_loadu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<8>(p0, rs))
                                         : _mm512_setzero_pd();
                }
                transpose8(r);
                for (size_t q = 0; q < 8; ++q) _mm512_storeu_pd(panel + row<8>(p0, q, rs) * nr + j0, r[q]);
            }
        }
        for (; p0 < k; ++p0) {
            for (size_t j = 0; j < nr; ++j) {
                panel[p0 * nr + j] = j < cols ? b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] : 0.0;
            }
        }
        return true;
    }
    static bool unpack_b(size_t k, size_t cols, const double* panel, double* b, ptrdiff_t rs, ptrdiff_t cs) {
        const __mmask8 m0 = mask(cols), m1 = mask(cols > 8 ? cols - 8 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm512_mask_storeu_pd(b, m0, _mm512_loadu_pd(panel));
                _mm512_mask_storeu_pd(b + 8, m1, _mm512_loadu_pd(panel + 8));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < cols; j0 += 8) {
                __m512d r[8];
                for (size_t q = 0; q < 8; ++q) r[q] = _mm512_loadu_pd(panel + row<8>(p0, q, rs) * nr + j0);
                transpose8(r);
                for (size_t j = 0; j < 8 && j0 + j < cols; ++j) {
                    _mm512_storeu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<8>(p0, rs), r[j]);
                }
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < cols; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] = panel[p0 * nr + j];
        return true;
    }
    static __mmask8 mask(size_t count) { return _cvtu32_mask8(count >= 8 ? 0xFFu : (1u << count) - 1u); }
};

}  // namespace
}  // namespace codl::avx512

#include "../../linalg_blocked.h"

namespace codl::avx512 {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx512
