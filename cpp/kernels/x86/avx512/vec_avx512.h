// The AVX-512 vector interface that the shared kernel bodies (cpp/kernels/x86/*.h) are written
// against; the same members as cpp/kernels/x86/avx2/vec_avx2.h, which describes them.
// Only AVX-512 translation units include it (internal linkage, namespace codl::avx512).
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace codl::avx512 {
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
    static V load_n(const T* p, std::size_t count) { return _mm512_maskz_loadu_ps(mask(count), p); }
    static void store_n(T* p, V v, std::size_t count) { _mm512_mask_storeu_ps(p, mask(count), v); }
    static __mmask16 mask(std::size_t count) { return _cvtu32_mask16(count >= width ? 0xFFFFu : (1u << count) - 1u); }
    static void transpose(V r[width]) {
        V t[16];
        for (int i = 0; i < 8; ++i) {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[g][q], 128-bit lane L: column 4L + q of rows 4g .. 4g + 3.
        V u[4][4];
        for (int g = 0; g < 4; ++g) {
            const __m512d lo01 = _mm512_castps_pd(t[4 * g]), lo23 = _mm512_castps_pd(t[4 * g + 2]);
            const __m512d hi01 = _mm512_castps_pd(t[4 * g + 1]), hi23 = _mm512_castps_pd(t[4 * g + 3]);
            u[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
            u[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
            u[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
            u[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
        }
        for (int q = 0; q < 4; ++q) {
            const V s01_lo = _mm512_shuffle_f32x4(u[0][q], u[1][q], 0x44);
            const V s01_hi = _mm512_shuffle_f32x4(u[0][q], u[1][q], 0xEE);
            const V s23_lo = _mm512_shuffle_f32x4(u[2][q], u[3][q], 0x44);
            const V s23_hi = _mm512_shuffle_f32x4(u[2][q], u[3][q], 0xEE);
            r[q] = _mm512_shuffle_f32x4(s01_lo, s23_lo, 0x88);
            r[4 + q] = _mm512_shuffle_f32x4(s01_lo, s23_lo, 0xDD);
            r[8 + q] = _mm512_shuffle_f32x4(s01_hi, s23_hi, 0x88);
            r[12 + q] = _mm512_shuffle_f32x4(s01_hi, s23_hi, 0xDD);
        }
    }
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
    static __mmask8 mask(std::size_t count) { return _cvtu32_mask8(count >= width ? 0xFFu : (1u << count) - 1u); }
    static void transpose(V r[width]) {
        V t[8];
        for (int i = 0; i < 4; ++i) {
            t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
        }
        // t[2g + q], 128-bit lane L: column 2L + q of rows 2g, 2g + 1.
        for (int q = 0; q < 2; ++q) {
            const V s01_lo = _mm512_shuffle_f64x2(t[q], t[2 + q], 0x44);
            const V s01_hi = _mm512_shuffle_f64x2(t[q], t[2 + q], 0xEE);
            const V s23_lo = _mm512_shuffle_f64x2(t[4 + q], t[6 + q], 0x44);
            const V s23_hi = _mm512_shuffle_f64x2(t[4 + q], t[6 + q], 0xEE);
            r[q] = _mm512_shuffle_f64x2(s01_lo, s23_lo, 0x88);
            r[2 + q] = _mm512_shuffle_f64x2(s01_lo, s23_lo, 0xDD);
            r[4 + q] = _mm512_shuffle_f64x2(s01_hi, s23_hi, 0x88);
            r[6 + q] = _mm512_shuffle_f64x2(s01_hi, s23_hi, 0xDD);
        }
    }
};

// Rows of C in the GEMM register tile: 8 rows x 2 vectors = 16 of the 32 zmm registers.
constexpr std::size_t kGemmTileRows = 8;

}  // namespace
}  // namespace codl::avx512
