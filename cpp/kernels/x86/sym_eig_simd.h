// The eigendecomposition's inner loops written once over the vector interface of vec_<isa>.h
// (AVX2 and AVX-512 compile it, each with its own flags and in its own namespace
// CODL_ISA_NAMESPACE, which the build defines, so no inline code crosses ISAs). The row kernels
// finish with a masked partial register; the strip rotations' right edge runs the scalar
// reference's arithmetic.
#pragma once

#include <algorithm>
#include <cstddef>

#include "codl/sym_eig.h"

#ifndef CODL_ISA_NAMESPACE
#error "CODL_ISA_NAMESPACE is undefined: build kernel files through codl_add_kernel_family"
#endif

namespace codl::CODL_ISA_NAMESPACE {
namespace {

template <typename Vec>
typename Vec::T update_row_symv(typename Vec::T* a, std::size_t len, const typename Vec::T* v,
                                const typename Vec::T* w, typename Vec::T vi, typename Vec::T wi,
                                const typename Vec::T* u, typename Vec::T ui, typename Vec::T* y) {
    using T = typename Vec::T;
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    if (len == 0) return 0;
    a[0] = a[0] - vi * w[0] - wi * v[0];
    T dot = a[0] * u[0];
    const V vvi = Vec::set1(vi), vwi = Vec::set1(wi), vui = Vec::set1(ui);
    V acc0 = Vec::zero(), acc1 = Vec::zero();
    std::size_t j = 1;
    for (; j + 2 * W <= len; j += 2 * W) {
        V a0 = Vec::load(a + j), a1 = Vec::load(a + j + W);
        a0 = Vec::fnmadd(vvi, Vec::load(w + j), a0);
        a1 = Vec::fnmadd(vvi, Vec::load(w + j + W), a1);
        a0 = Vec::fnmadd(vwi, Vec::load(v + j), a0);
        a1 = Vec::fnmadd(vwi, Vec::load(v + j + W), a1);
        Vec::store(a + j, a0);
        Vec::store(a + j + W, a1);
        acc0 = Vec::fmadd(a0, Vec::load(u + j), acc0);
        acc1 = Vec::fmadd(a1, Vec::load(u + j + W), acc1);
        Vec::store(y + j, Vec::fmadd(vui, a0, Vec::load(y + j)));
        Vec::store(y + j + W, Vec::fmadd(vui, a1, Vec::load(y + j + W)));
    }
    for (; j + W <= len; j += W) {
        V a0 = Vec::load(a + j);
        a0 = Vec::fnmadd(vvi, Vec::load(w + j), a0);
        a0 = Vec::fnmadd(vwi, Vec::load(v + j), a0);
        Vec::store(a + j, a0);
        acc0 = Vec::fmadd(a0, Vec::load(u + j), acc0);
        Vec::store(y + j, Vec::fmadd(vui, a0, Vec::load(y + j)));
    }
    if (j < len) {
        const std::size_t rest = len - j;
        V a0 = Vec::load_n(a + j, rest);
        a0 = Vec::fnmadd(vvi, Vec::load_n(w + j, rest), a0);
        a0 = Vec::fnmadd(vwi, Vec::load_n(v + j, rest), a0);
        Vec::store_n(a + j, a0, rest);
        acc1 = Vec::fmadd(a0, Vec::load_n(u + j, rest), acc1);
        Vec::store_n(y + j, Vec::fmadd(vui, a0, Vec::load_n(y + j, rest)), rest);
    }
    return dot + Vec::sum(Vec::add(acc0, acc1));
}

template <typename Vec>
typename Vec::T symv_row(const typename Vec::T* a, std::size_t len, const typename Vec::T* u, typename Vec::T ui,
                         typename Vec::T* y) {
    using T = typename Vec::T;
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    if (len == 0) return 0;
    const T dot = a[0] * u[0];
    const V vui = Vec::set1(ui);
    V acc0 = Vec::zero(), acc1 = Vec::zero();
    std::size_t j = 1;
    for (; j + 2 * W <= len; j += 2 * W) {
        const V a0 = Vec::load(a + j), a1 = Vec::load(a + j + W);
        acc0 = Vec::fmadd(a0, Vec::load(u + j), acc0);
        acc1 = Vec::fmadd(a1, Vec::load(u + j + W), acc1);
        Vec::store(y + j, Vec::fmadd(vui, a0, Vec::load(y + j)));
        Vec::store(y + j + W, Vec::fmadd(vui, a1, Vec::load(y + j + W)));
    }
    for (; j + W <= len; j += W) {
        const V a0 = Vec::load(a + j);
        acc0 = Vec::fmadd(a0, Vec::load(u + j), acc0);
        Vec::store(y + j, Vec::fmadd(vui, a0, Vec::load(y + j)));
    }
    if (j < len) {
        const std::size_t rest = len - j;
        const V a0 = Vec::load_n(a + j, rest);
        acc1 = Vec::fmadd(a0, Vec::load_n(u + j, rest), acc1);
        Vec::store_n(y + j, Vec::fmadd(vui, a0, Vec::load_n(y + j, rest)), rest);
    }
    return dot + Vec::sum(Vec::add(acc0, acc1));
}

template <typename Vec, std::size_t R>
void rows_dot_fixed(const typename Vec::T* rows, std::size_t stride, std::size_t len, const typename Vec::T* x,
                    typename Vec::T* out) {
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    V acc[R];
    for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::zero();
    std::size_t j = 0;
    for (; j + W <= len; j += W) {
        const V xv = Vec::load(x + j);
        for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::fmadd(Vec::load(rows + r * stride + j), xv, acc[r]);
    }
    if (j < len) {
        const std::size_t rest = len - j;
        const V xv = Vec::load_n(x + j, rest);
        for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::fmadd(Vec::load_n(rows + r * stride + j, rest), xv, acc[r]);
    }
    for (std::size_t r = 0; r < R; ++r) out[r] = Vec::sum(acc[r]);
}

template <typename Vec>
void rows_dot(const typename Vec::T* rows, std::size_t stride, std::size_t count, std::size_t len,
              const typename Vec::T* x, typename Vec::T* out) {
    std::size_t q = 0;
    for (; q + 4 <= count; q += 4) rows_dot_fixed<Vec, 4>(rows + q * stride, stride, len, x, out + q);
    for (; q < count; ++q) rows_dot_fixed<Vec, 1>(rows + q * stride, stride, len, x, out + q);
}

template <typename Vec>
void rows_axpy(typename Vec::T* y, std::size_t len, const typename Vec::T* rows, std::size_t stride,
               std::size_t count, const typename Vec::T* coef) {
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    std::size_t j = 0;
    for (; j + 2 * W <= len; j += 2 * W) {
        V y0 = Vec::load(y + j), y1 = Vec::load(y + j + W);
        for (std::size_t q = 0; q < count; ++q) {
            const V c = Vec::set1(coef[q]);
            y0 = Vec::fnmadd(c, Vec::load(rows + q * stride + j), y0);
            y1 = Vec::fnmadd(c, Vec::load(rows + q * stride + j + W), y1);
        }
        Vec::store(y + j, y0);
        Vec::store(y + j + W, y1);
    }
    for (; j < len; j += W) {
        const std::size_t rest = std::min(W, len - j);
        V y0 = Vec::load_n(y + j, rest);
        for (std::size_t q = 0; q < count; ++q) y0 = Vec::fnmadd(Vec::set1(coef[q]), Vec::load_n(rows + q * stride + j, rest), y0);
        Vec::store_n(y + j, y0, rest);
    }
}

template <typename Vec, std::size_t R>
void reflect_fixed_rows(typename Vec::T* a, std::size_t lda, std::size_t len, const typename Vec::T* v,
                        typename Vec::T tau) {
    using T = typename Vec::T;
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    V acc[R];
    for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::zero();
    std::size_t j = 0;
    for (; j + W <= len; j += W) {
        const V vv = Vec::load(v + j);
        for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::fmadd(Vec::load(a + r * lda + j), vv, acc[r]);
    }
    const std::size_t vector_end = j, rest = len - j;
    if (rest > 0) {
        const V vv = Vec::load_n(v + j, rest);
        for (std::size_t r = 0; r < R; ++r) acc[r] = Vec::fmadd(Vec::load_n(a + r * lda + j, rest), vv, acc[r]);
    }
    V scale[R];
    for (std::size_t r = 0; r < R; ++r) scale[r] = Vec::set1(tau * Vec::sum(acc[r]));
    for (j = 0; j < vector_end; j += W) {
        const V vv = Vec::load(v + j);
        for (std::size_t r = 0; r < R; ++r) {
            T* row = a + r * lda + j;
            Vec::store(row, Vec::fnmadd(scale[r], vv, Vec::load(row)));
        }
    }
    if (rest > 0) {
        const V vv = Vec::load_n(v + j, rest);
        for (std::size_t r = 0; r < R; ++r) {
            T* row = a + r * lda + j;
            Vec::store_n(row, Vec::fnmadd(scale[r], vv, Vec::load_n(row, rest)), rest);
        }
    }
}

template <typename Vec>
void reflect_rows(typename Vec::T* a, std::size_t lda, std::size_t count, std::size_t len,
                  const typename Vec::T* v, typename Vec::T tau) {
    switch (count) {
        case 4: reflect_fixed_rows<Vec, 4>(a, lda, len, v, tau); break;
        case 3: reflect_fixed_rows<Vec, 3>(a, lda, len, v, tau); break;
        case 2: reflect_fixed_rows<Vec, 2>(a, lda, len, v, tau); break;
        default:
            for (std::size_t r = 0; r < count; ++r) reflect_fixed_rows<Vec, 1>(a + r * lda, lda, len, v, tau);
    }
}

// Columns [0, K * width) of the strip: the rotations of a run share a row with the next one,
// so the carried row stays in registers (one load and one store per rotation and register).
template <typename Vec, std::size_t K>
void rotate_columns(typename Vec::T* z, std::size_t stride, const RotationRun* runs,
                    std::size_t num_runs, const typename Vec::T* c, const typename Vec::T* s) {
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    for (std::size_t r = 0; r < num_runs; ++r) {
        const RotationRun& run = runs[r];
        if (run.count == 0) continue;
        typename Vec::T* hi = z + (static_cast<std::size_t>(run.top) + 1) * stride;
        V carried[K];
        for (std::size_t k = 0; k < K; ++k) carried[k] = Vec::load(hi + k * W);
        const typename Vec::T* cs = c + run.first;
        const typename Vec::T* ss = s + run.first;
        for (std::uint32_t q = 0; q < run.count; ++q) {
            typename Vec::T* lo = hi - stride;
            const V vc = Vec::set1(cs[q]), vs = Vec::set1(ss[q]);
            for (std::size_t k = 0; k < K; ++k) {
                const V x = Vec::load(lo + k * W);
                Vec::store(hi + k * W, Vec::fmadd(vs, x, Vec::mul(vc, carried[k])));
                carried[k] = Vec::fnmadd(vs, carried[k], Vec::mul(vc, x));
            }
            hi = lo;
        }
        for (std::size_t k = 0; k < K; ++k) Vec::store(hi + k * W, carried[k]);
    }
}

template <typename Vec>
void rotate_strip(typename Vec::T* z, std::size_t stride, std::size_t width, const RotationRun* runs,
                  std::size_t num_runs, const typename Vec::T* c, const typename Vec::T* s) {
    using T = typename Vec::T;
    constexpr std::size_t W = Vec::width;
    constexpr std::size_t kBlock = 4 * W;
    std::size_t column = 0;
    for (; column + kBlock <= width; column += kBlock) {
        rotate_columns<Vec, 4>(z + column, stride, runs, num_runs, c, s);
    }
    for (; column + W <= width; column += W) rotate_columns<Vec, 1>(z + column, stride, runs, num_runs, c, s);
    if (column == width) return;
    // Columns left over at the right edge of the matrix, as in the reference.
    for (std::size_t r = 0; r < num_runs; ++r) {
        const RotationRun& run = runs[r];
        for (std::uint32_t k = 0; k < run.count; ++k) {
            T* lo = z + (run.top - k) * stride;
            T* hi = lo + stride;
            const T ck = c[run.first + k], sk = s[run.first + k];
            for (std::size_t j = column; j < width; ++j) {
                const T x = lo[j], y = hi[j];
                lo[j] = ck * x - sk * y;
                hi[j] = sk * x + ck * y;
            }
        }
    }
}

// The merge's loops over the poles, `Vec` being the double-precision interface: lane-wise
// partial sums and products, combined at the end; the last count % width poles in scalar code.
template <typename Vec>
void secular_terms(const double* d, const double* numerators, std::size_t count, double base, double tau,
                   double* terms, double* sums) {
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    const V vbase = Vec::set1(base), vtau = Vec::set1(tau), one = Vec::set1(1.0);
    V sum = Vec::zero(), derivative = Vec::zero(), squares = Vec::zero();
    std::size_t j = 0;
    for (; j + W <= count; j += W) {
        const V inverse = Vec::div(one, Vec::sub(Vec::sub(Vec::load(d + j), vbase), vtau));
        const V t = Vec::mul(Vec::load(numerators + j), inverse);
        sum = Vec::add(sum, t);
        derivative = Vec::fmadd(t, inverse, derivative);
        squares = Vec::fmadd(t, t, squares);
        if (terms) Vec::store(terms + j, t);
    }
    double s = Vec::sum(sum), ds = Vec::sum(derivative), sq = Vec::sum(squares);
    for (; j < count; ++j) {
        const double inverse = 1.0 / ((d[j] - base) - tau);
        const double t = numerators[j] * inverse;
        s += t;
        ds += t * inverse;
        sq += t * t;
        if (terms) terms[j] = t;
    }
    sums[0] = s;
    sums[1] = ds;
    sums[2] = sq;
}

template <typename Vec>
double ratio_product(const double* shifted, const double* tau, const double* poles, std::size_t count, double x) {
    using V = typename Vec::V;
    constexpr std::size_t W = Vec::width;
    const V vx = Vec::set1(x);
    V product = Vec::set1(1.0);
    std::size_t i = 0;
    for (; i + W <= count; i += W) {
        const V numerator = Vec::sub(Vec::sub(vx, Vec::load(shifted + i)), Vec::load(tau + i));
        product = Vec::mul(product, Vec::div(numerator, Vec::sub(vx, Vec::load(poles + i))));
    }
    double lanes[W];
    Vec::store(lanes, product);
    double result = 1;
    for (std::size_t l = 0; l < W; ++l) result *= lanes[l];
    for (; i < count; ++i) result *= ((x - shifted[i]) - tau[i]) / (x - poles[i]);
    return result;
}

template <typename Vec>
constexpr SymEigOps<typename Vec::T> ops_for() {
    return {update_row_symv<Vec>, symv_row<Vec>, rows_dot<Vec>, rows_axpy<Vec>, reflect_rows<Vec>, rotate_strip<Vec>};
}

}  // namespace
}  // namespace codl::CODL_ISA_NAMESPACE
