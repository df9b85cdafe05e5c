// AVX2 pieces of the dense factorizations: the GEMM register tile (6 rows x 2 vectors of C in 12
// ymm accumulators; per step of k one broadcast of A per row, read where A lies, and two loads
// of the packed B panel; explicit FMA) and B panel packing with in-register transposes.
#include <immintrin.h>

#include <cstddef>

namespace codl::avx2 {
namespace {

using std::ptrdiff_t;
using std::size_t;

// r[i] = row i of an 8 x 8 block -> r[j] = column j.
inline void transpose8(__m256 r[8]) {
    __m256 t[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[g][q], 128-bit lane L: column 4L + q of rows 4g .. 4g + 3.
    __m256 u[2][4];
    for (int g = 0; g < 2; ++g) {
        const __m256d lo01 = _mm256_castps_pd(t[4 * g]), lo23 = _mm256_castps_pd(t[4 * g + 2]);
        const __m256d hi01 = _mm256_castps_pd(t[4 * g + 1]), hi23 = _mm256_castps_pd(t[4 * g + 3]);
        u[g][0] = _mm256_castpd_ps(_mm256_unpacklo_pd(lo01, lo23));
        u[g][1] = _mm256_castpd_ps(_mm256_unpackhi_pd(lo01, lo23));
        u[g][2] = _mm256_castpd_ps(_mm256_unpacklo_pd(hi01, hi23));
        u[g][3] = _mm256_castpd_ps(_mm256_unpackhi_pd(hi01, hi23));
    }
    for (int q = 0; q < 4; ++q) {
        r[q] = _mm256_permute2f128_ps(u[0][q], u[1][q], 0x20);
        r[4 + q] = _mm256_permute2f128_ps(u[0][q], u[1][q], 0x31);
    }
}

inline void transpose4(__m256d r[4]) {
    const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

struct F32Tile {
    static constexpr size_t mr = 6, nr = 16;
    static void run(size_t k, const float* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float* b, float alpha,
                    float* c, ptrdiff_t ldc, bool add) {
        __m256 acc[mr][2];
        for (size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
            for (size_t i = 0; i < mr; ++i) {
                const __m256 ai = _mm256_broadcast_ss(a + static_cast<ptrdiff_t>(i) * a_rs);
                acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
        const __m256 scale = _mm256_set1_ps(alpha);
        for (size_t i = 0; i < mr; ++i, c += ldc) {
            for (int h = 0; h < 2; ++h) {
                __m256 v = alpha == 1.0f ? acc[i][h] : _mm256_mul_ps(acc[i][h], scale);
                if (add) v = _mm256_add_ps(_mm256_loadu_ps(c + 8 * h), v);
                _mm256_storeu_ps(c + 8 * h, v);
            }
        }
    }
    static bool pack_b(size_t k, const float* b, ptrdiff_t rs, ptrdiff_t cs, float* panel) {
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_ps(panel, _mm256_loadu_ps(b));
                _mm256_storeu_ps(panel + 8, _mm256_loadu_ps(b + 8));
            }
            return true;
        }
        if (rs != 1) return false;
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < nr; j0 += 8) {
                __m256 r[8];
                for (size_t j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + p0);
                transpose8(r);
                for (size_t q = 0; q < 8; ++q) _mm256_storeu_ps(panel + (p0 + q) * nr + j0, r[q]);
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < nr; ++j) panel[p0 * nr + j] = b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0)];
        return true;
    }
    static bool unpack_b(size_t k, const float* panel, float* b, ptrdiff_t rs, ptrdiff_t cs) {
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_ps(b, _mm256_loadu_ps(panel));
                _mm256_storeu_ps(b + 8, _mm256_loadu_ps(panel + 8));
            }
            return true;
        }
        if (rs != 1) return false;
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < nr; j0 += 8) {
                __m256 r[8];
                for (size_t q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(panel + (p0 + q) * nr + j0);
                transpose8(r);
                for (size_t j = 0; j < 8; ++j) _mm256_storeu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + p0, r[j]);
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < nr; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0)] = panel[p0 * nr + j];
        return true;
    }
};

struct F64Tile {
    static constexpr size_t mr = 6, nr = 8;
    static void run(size_t k, const double* a, ptrdiff_t a_rs, ptrdiff_t a_cs, const double* b, double alpha,
                    double* c, ptrdiff_t ldc, bool add) {
        __m256d acc[mr][2];
        for (size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_pd();
        for (size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            const __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
            for (size_t i = 0; i < mr; ++i) {
                const __m256d ai = _mm256_broadcast_sd(a + static_cast<ptrdiff_t>(i) * a_rs);
                acc[i][0] = _mm256_fmadd_pd(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_pd(ai, b1, acc[i][1]);
            }
        }
        const __m256d scale = _mm256_set1_pd(alpha);
        for (size_t i = 0; i < mr; ++i, c += ldc) {
            for (int h = 0; h < 2; ++h) {
                __m256d v = alpha == 1.0 ? acc[i][h] : _mm256_mul_pd(acc[i][h], scale);
                if (add) v = _mm256_add_pd(_mm256_loadu_pd(c + 4 * h), v);
                _mm256_storeu_pd(c + 4 * h, v);
            }
        }
    }
    static bool pack_b(size_t k, const double* b, ptrdiff_t rs, ptrdiff_t cs, double* panel) {
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_pd(panel, _mm256_loadu_pd(b));
                _mm256_storeu_pd(panel + 4, _mm256_loadu_pd(b + 4));
            }
            return true;
        }
        if (rs != 1) return false;
        size_t p0 = 0;
        for (; p0 + 4 <= k; p0 += 4) {
            for (size_t j0 = 0; j0 < nr; j0 += 4) {
                __m256d r[4];
                for (size_t j = 0; j < 4; ++j) r[j] = _mm256_loadu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + p0);
                transpose4(r);
                for (size_t q = 0; q < 4; ++q) _mm256_storeu_pd(panel + (p0 + q) * nr + j0, r[q]);
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < nr; ++j) panel[p0 * nr + j] = b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0)];
        return true;
    }
    static bool unpack_b(size_t k, const double* panel, double* b, ptrdiff_t rs, ptrdiff_t cs) {
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_pd(b, _mm256_loadu_pd(panel));
                _mm256_storeu_pd(b + 4, _mm256_loadu_pd(panel + 4));
            }
            return true;
        }
        if (rs != 1) return false;
        size_t p0 = 0;
        for (; p0 + 4 <= k; p0 += 4) {
            for (size_t j0 = 0; j0 < nr; j0 += 4) {
                __m256d r[4];
                for (size_t q = 0; q < 4; ++q) r[q] = _mm256_loadu_pd(panel + (p0 + q) * nr + j0);
                transpose4(r);
                for (size_t j = 0; j < 4; ++j) _mm256_storeu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + p0, r[j]);
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < nr; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0)] = panel[p0 * nr + j];
        return true;
    }
};

}  // namespace
}  // namespace codl::avx2

#define CODL_LINALG_NAMESPACE avx2
#include "../../linalg_blocked.h"

namespace codl::avx2 {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx2
