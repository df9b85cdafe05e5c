// AVX2 + FMA inner loops of the eigendecomposition (the shared bodies are in sym_eig_simd.inc).
#include <immintrin.h>

#include <algorithm>

#include "codl/sym_eig.h"

namespace codl {
namespace avx2 {
namespace {

struct F32 {
    using T = float;
    using V = __m256;
    static constexpr std::size_t width = 8;
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(T x) { return _mm256_set1_ps(x); }
    static V load(const T* p) { return _mm256_loadu_ps(p); }
    static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static T sum(V v) {
        const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        const __m128 quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        return _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)));
    }
    // The first `count` (< width) lanes; the others read as zero and are not written.
    static V load_n(const T* p, std::size_t count) { return _mm256_maskload_ps(p, mask(count)); }
    static void store_n(T* p, V v, std::size_t count) { _mm256_maskstore_ps(p, mask(count), v); }
    static __m256i mask(std::size_t count) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
};

struct F64 {
    using T = double;
    using V = __m256d;
    static constexpr std::size_t width = 4;
    static V zero() { return _mm256_setzero_pd(); }
    static V set1(T x) { return _mm256_set1_pd(x); }
    static V load(const T* p) { return _mm256_loadu_pd(p); }
    static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
    static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
    static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
    static V add(V a, V b) { return _mm256_add_pd(a, b); }
    static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
    static V div(V a, V b) { return _mm256_div_pd(a, b); }
    static T sum(V v) {
        const __m128d half = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
        return _mm_cvtsd_f64(_mm_add_sd(half, _mm_unpackhi_pd(half, half)));
    }
    static V load_n(const T* p, std::size_t count) { return _mm256_maskload_pd(p, mask(count)); }
    static void store_n(T* p, V v, std::size_t count) { _mm256_maskstore_pd(p, mask(count), v); }
    static __m256i mask(std::size_t count) {
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x(static_cast<long long>(count)), _mm256_setr_epi64x(0, 1, 2, 3));
    }
};

}  // namespace

#include "../sym_eig_simd.inc"

const SymEigKernels sym_eig_kernels{ops_for<F32>(), ops_for<F64>(), {secular_terms<F64>, ratio_product<F64>}};

}  // namespace avx2
}  // namespace codl
