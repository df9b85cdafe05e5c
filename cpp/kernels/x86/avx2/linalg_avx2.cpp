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
    // Panel packing for any width cols <= nr: masked loads/stores where B's rows are contiguous,
    // 8 x 8 in-register transposes where its columns are.
    static bool pack_b(size_t k, size_t cols, const float* b, ptrdiff_t rs, ptrdiff_t cs, float* panel) {
        const __m256i m0 = mask(cols), m1 = mask(cols > 8 ? cols - 8 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_ps(panel, _mm256_maskload_ps(b, m0));
                _mm256_storeu_ps(panel + 8, _mm256_maskload_ps(b + 8, m1));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < nr; j0 += 8) {
                __m256 r[8];
                for (size_t j = 0; j < 8; ++j) {
                    r[j] = j0 + j < cols ? _mm256_loadu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<8>(p0, rs))
                                         : _mm256_setzero_ps();
                }
                transpose8(r);
                for (size_t q = 0; q < 8; ++q) _mm256_storeu_ps(panel + row<8>(p0, q, rs) * nr + j0, r[q]);
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
        const __m256i m0 = mask(cols), m1 = mask(cols > 8 ? cols - 8 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_maskstore_ps(b, m0, _mm256_loadu_ps(panel));
                _mm256_maskstore_ps(b + 8, m1, _mm256_loadu_ps(panel + 8));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 8 <= k; p0 += 8) {
            for (size_t j0 = 0; j0 < cols; j0 += 8) {
                __m256 r[8];
                for (size_t q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(panel + row<8>(p0, q, rs) * nr + j0);
                transpose8(r);
                for (size_t j = 0; j < 8 && j0 + j < cols; ++j) {
                    _mm256_storeu_ps(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<8>(p0, rs), r[j]);
                }
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < cols; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] = panel[p0 * nr + j];
        return true;
    }
    static __m256i mask(size_t count) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
};

struct F64Tile {
    static constexpr bool fused = true;
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
    static bool pack_b(size_t k, size_t cols, const double* b, ptrdiff_t rs, ptrdiff_t cs, double* panel) {
        const __m256i m0 = mask(cols), m1 = mask(cols > 4 ? cols - 4 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_storeu_pd(panel, _mm256_maskload_pd(b, m0));
                _mm256_storeu_pd(panel + 4, _mm256_maskload_pd(b + 4, m1));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 4 <= k; p0 += 4) {
            for (size_t j0 = 0; j0 < nr; j0 += 4) {
                __m256d r[4];
                for (size_t j = 0; j < 4; ++j) {
                    r[j] = j0 + j < cols ? _mm256_loadu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<4>(p0, rs))
                                         : _mm256_setzero_pd();
                }
                transpose4(r);
                for (size_t q = 0; q < 4; ++q) _mm256_storeu_pd(panel + row<4>(p0, q, rs) * nr + j0, r[q]);
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
        const __m256i m0 = mask(cols), m1 = mask(cols > 4 ? cols - 4 : 0);
        if (cs == 1) {
            for (size_t p = 0; p < k; ++p, b += rs, panel += nr) {
                _mm256_maskstore_pd(b, m0, _mm256_loadu_pd(panel));
                _mm256_maskstore_pd(b + 4, m1, _mm256_loadu_pd(panel + 4));
            }
            return true;
        }
        if (rs != 1 && rs != -1) return false;  // rows contiguous, ascending or descending
        size_t p0 = 0;
        for (; p0 + 4 <= k; p0 += 4) {
            for (size_t j0 = 0; j0 < cols; j0 += 4) {
                __m256d r[4];
                for (size_t q = 0; q < 4; ++q) r[q] = _mm256_loadu_pd(panel + row<4>(p0, q, rs) * nr + j0);
                transpose4(r);
                for (size_t j = 0; j < 4 && j0 + j < cols; ++j) {
                    _mm256_storeu_pd(b + static_cast<ptrdiff_t>(j0 + j) * cs + first<4>(p0, rs), r[j]);
                }
            }
        }
        for (; p0 < k; ++p0)
            for (size_t j = 0; j < cols; ++j) b[static_cast<ptrdiff_t>(j) * cs + static_cast<ptrdiff_t>(p0) * rs] = panel[p0 * nr + j];
        return true;
    }
    static __m256i mask(size_t count) {
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x(static_cast<long long>(count)), _mm256_setr_epi64x(0, 1, 2, 3));
    }
};

}  // namespace
}  // namespace codl::avx2

#include "../../linalg_blocked.h"

namespace codl::avx2 {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx2
