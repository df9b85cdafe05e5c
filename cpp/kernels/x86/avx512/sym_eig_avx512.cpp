// AVX-512 inner loops of the eigendecomposition (the shared bodies are in sym_eig_simd.inc).
#include <immintrin.h>

#include <algorithm>

#include "codl/sym_eig.h"

namespace codl {
namespace avx512 {
namespace {

struct F32 {
    using T = float;
    using V = __m512;
    static constexpr std::size_t width = 16;
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(T x) { return _mm512_set1_ps(x); }
    static V load(const T* p) { return _mm512_loadu_ps(p); }
    static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
    static V div(V a, V b) { return _mm512_div_ps(a, b); }
    static T sum(V v) { return _mm512_reduce_add_ps(v); }
    // The first `count` (< width) lanes; the others read as zero and are not written.
    static V load_n(const T* p, std::size_t count) { return _mm512_maskz_loadu_ps(mask(count), p); }
    static void store_n(T* p, V v, std::size_t count) { _mm512_mask_storeu_ps(p, mask(count), v); }
    static __mmask16 mask(std::size_t count) { return static_cast<__mmask16>((1u << count) - 1); }
};

struct F64 {
    using T = double;
    using V = __m512d;
    static constexpr std::size_t width = 8;
    static V zero() { return _mm512_setzero_pd(); }
    static V set1(T x) { return _mm512_set1_pd(x); }
    static V load(const T* p) { return _mm512_loadu_pd(p); }
    static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
    static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
    static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
    static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
    static V add(V a, V b) { return _mm512_add_pd(a, b); }
    static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
    static V div(V a, V b) { return _mm512_div_pd(a, b); }
    static T sum(V v) { return _mm512_reduce_add_pd(v); }
    static V load_n(const T* p, std::size_t count) { return _mm512_maskz_loadu_pd(mask(count), p); }
    static void store_n(T* p, V v, std::size_t count) { _mm512_mask_storeu_pd(p, mask(count), v); }
    static __mmask8 mask(std::size_t count) { return static_cast<__mmask8>((1u << count) - 1); }
};

}  // namespace

#include "../sym_eig_simd.inc"

const SymEigKernels sym_eig_kernels{ops_for<F32>(), ops_for<F64>(), {secular_terms<F64>, ratio_product<F64>}};

}  // namespace avx512
}  // namespace codl
