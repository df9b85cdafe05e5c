// The AVX2 + FMA vector interface that the shared kernel bodies (cpp/kernels/x86/*.h) are
// written against, one struct per element type (docs/kernel_registry.md explains the choice):
//   using T (element), using V (register), width; zero(), set1(x), load(p), store(p, v),
//   fmadd(a, b, c) = a * b + c, fnmadd(a, b, c) = c - a * b, mul, add, sub, div (a op b), sum(v),
//   load_n(p, count) / store_n(p, v, count): the first min(count, width) lanes (masked; the
//   others read as zero and are not written), transpose(r): r[i] = row i of a width x width
//   block becomes r[j] = column j.
// Only AVX2 translation units include it (internal linkage, namespace codl::avx2).
#pragma once

#include <immintrin.h>

#include <cstddef>

namespace codl::avx2 {
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
    static V load_n(const T* p, std::size_t count) { return _mm256_maskload_ps(p, mask(count)); }
    static void store_n(T* p, V v, std::size_t count) { _mm256_maskstore_ps(p, mask(count), v); }
    static __m256i mask(std::size_t count) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count < width ? count : width)),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static void transpose(V r[width]) {
        V t[8];
        for (int i = 0; i < 4; ++i) {
            t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // u[g][q], 128-bit lane L: column 4L + q of rows 4g .. 4g + 3.
        V u[2][4];
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
        return _mm256_cmpgt_epi64(_mm256_set1_epi64x(static_cast<long long>(count < width ? count : width)),
                                  _mm256_setr_epi64x(0, 1, 2, 3));
    }
    static void transpose(V r[width]) {
        const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
        const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
        r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
        r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
        r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
        r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
};

// Rows of C in the GEMM register tile: 6 rows x 2 vectors = 12 of the 16 ymm registers.
constexpr std::size_t kGemmTileRows = 6;

}  // namespace
}  // namespace codl::avx2
