// AVX2 GEMM tiles for the dense factorizations: 6 rows x 2 vectors of C in 12 ymm accumulators,
// one broadcast of A and two loads of B per step of k, explicit FMA.
#include <immintrin.h>

#include <cstddef>

namespace codl::avx2 {
namespace {

struct F32Tile {
    static constexpr std::size_t mr = 6, nr = 16;
    static void run(std::size_t k, const float* a, const float* b, float* c, std::ptrdiff_t ldc, bool add) {
        __m256 acc[mr][2];
        for (std::size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (std::size_t p = 0; p < k; ++p, a += mr, b += nr) {
            const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
            for (std::size_t i = 0; i < mr; ++i) {
                const __m256 ai = _mm256_broadcast_ss(a + i);
                acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
            }
        }
        for (std::size_t i = 0; i < mr; ++i, c += ldc) {
            if (add) {
                acc[i][0] = _mm256_add_ps(_mm256_loadu_ps(c), acc[i][0]);
                acc[i][1] = _mm256_add_ps(_mm256_loadu_ps(c + 8), acc[i][1]);
            }
            _mm256_storeu_ps(c, acc[i][0]);
            _mm256_storeu_ps(c + 8, acc[i][1]);
        }
    }
};

struct F64Tile {
    static constexpr std::size_t mr = 6, nr = 8;
    static void run(std::size_t k, const double* a, const double* b, double* c, std::ptrdiff_t ldc, bool add) {
        __m256d acc[mr][2];
        for (std::size_t i = 0; i < mr; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_pd();
        for (std::size_t p = 0; p < k; ++p, a += mr, b += nr) {
            const __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
            for (std::size_t i = 0; i < mr; ++i) {
                const __m256d ai = _mm256_broadcast_sd(a + i);
                acc[i][0] = _mm256_fmadd_pd(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_pd(ai, b1, acc[i][1]);
            }
        }
        for (std::size_t i = 0; i < mr; ++i, c += ldc) {
            if (add) {
                acc[i][0] = _mm256_add_pd(_mm256_loadu_pd(c), acc[i][0]);
                acc[i][1] = _mm256_add_pd(_mm256_loadu_pd(c + 4), acc[i][1]);
            }
            _mm256_storeu_pd(c, acc[i][0]);
            _mm256_storeu_pd(c + 4, acc[i][1]);
        }
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
