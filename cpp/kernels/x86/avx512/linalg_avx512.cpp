// AVX-512 GEMM tiles for the dense factorizations: 8 rows x 2 vectors of C in 16 zmm
// accumulators, one broadcast of A and two loads of B per step of k, explicit FMA.
#include <immintrin.h>

#include <cstddef>

namespace codl::avx512 {
namespace {

struct F32Tile {
    static constexpr std::size_t mr = 8, nr = 32;
    static void run(std::size_t k, const float* a, const float* b, float* c, std::ptrdiff_t ldc, bool add) {
        __m512 acc[mr][2];
        for (std::size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        for (std::size_t p = 0; p < k; ++p, a += mr, b += nr) {
            const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
            for (std::size_t i = 0; i < mr; ++i) {
                const __m512 ai = _mm512_set1_ps(a[i]);
                acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
        for (std::size_t i = 0; i < mr; ++i, c += ldc) {
            if (add) {
                acc[i][0] = _mm512_add_ps(_mm512_loadu_ps(c), acc[i][0]);
                acc[i][1] = _mm512_add_ps(_mm512_loadu_ps(c + 16), acc[i][1]);
            }
            _mm512_storeu_ps(c, acc[i][0]);
            _mm512_storeu_ps(c + 16, acc[i][1]);
        }
    }
};

struct F64Tile {
    static constexpr std::size_t mr = 8, nr = 16;
    static void run(std::size_t k, const double* a, const double* b, double* c, std::ptrdiff_t ldc, bool add) {
        __m512d acc[mr][2];
        for (std::size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_pd();
        for (std::size_t p = 0; p < k; ++p, a += mr, b += nr) {
            const __m512d b0 = _mm512_loadu_pd(b), b1 = _mm512_loadu_pd(b + 8);
            for (std::size_t i = 0; i < mr; ++i) {
                const __m512d ai = _mm512_set1_pd(a[i]);
                acc[i][0] = _mm512_fmadd_pd(ai, b0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_pd(ai, b1, acc[i][1]);
            }
        }
        for (std::size_t i = 0; i < mr; ++i, c += ldc) {
            if (add) {
                acc[i][0] = _mm512_add_pd(_mm512_loadu_pd(c), acc[i][0]);
                acc[i][1] = _mm512_add_pd(_mm512_loadu_pd(c + 8), acc[i][1]);
            }
            _mm512_storeu_pd(c, acc[i][0]);
            _mm512_storeu_pd(c + 8, acc[i][1]);
        }
    }
};

}  // namespace
}  // namespace codl::avx512

#define CODL_LINALG_NAMESPACE avx512
#include "../../linalg_blocked.h"

namespace codl::avx512 {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx512
