// Scalar reference of the eigendecomposition's inner loops: plain loops in the order the
// header states, the oracle the SIMD variants are tested against.
#include "codl/sym_eig.h"

namespace codl {
namespace {

template <typename T>
T update_row_symv(T* a, std::size_t len, const T* v, const T* w, T vi, T wi, const T* u, T ui, T* y) {
    T dot = 0;
    for (std::size_t j = 0; j < len; ++j) {
        a[j] = a[j] - vi * w[j] - wi * v[j];
        dot += a[j] * u[j];
        if (j > 0) y[j] += ui * a[j];
    }
    return dot;
}

template <typename T>
T symv_row(const T* a, std::size_t len, const T* u, T ui, T* y) {
    T dot = 0;
    for (std::size_t j = 0; j < len; ++j) {
        dot += a[j] * u[j];
        if (j > 0) y[j] += ui * a[j];
    }
    return dot;
}

template <typename T>
void rows_dot(const T* rows, std::size_t stride, std::size_t count, std::size_t len, const T* x, T* out) {
    for (std::size_t q = 0; q < count; ++q) {
        T dot = 0;
        for (std::size_t j = 0; j < len; ++j) dot += rows[q * stride + j] * x[j];
        out[q] = dot;
    }
}

template <typename T>
void rows_axpy(T* y, std::size_t len, const T* rows, std::size_t stride, std::size_t count, const T* coef) {
    for (std::size_t j = 0; j < len; ++j) {
        T value = y[j];
        for (std::size_t q = 0; q < count; ++q) value -= coef[q] * rows[q * stride + j];
        y[j] = value;
    }
}

template <typename T>
void reflect_rows(T* a, std::size_t lda, std::size_t count, std::size_t len, const T* v, T tau) {
    for (std::size_t r = 0; r < count; ++r) {
        T* row = a + r * lda;
        T dot = 0;
        for (std::size_t j = 0; j < len; ++j) dot += row[j] * v[j];
        const T scale = tau * dot;
        for (std::size_t j = 0; j < len; ++j) row[j] -= scale * v[j];
    }
}

template <typename T>
void rotate_strip(T* z, std::size_t stride, std::size_t width, const RotationRun* runs,
                  std::size_t num_runs, const T* c, const T* s) {
    for (std::size_t r = 0; r < num_runs; ++r) {
        const RotationRun& run = runs[r];
        for (std::uint32_t k = 0; k < run.count; ++k) {
            T* lo = z + (run.top - k) * stride;
            T* hi = lo + stride;
            const T ck = c[run.first + k], sk = s[run.first + k];
            for (std::size_t j = 0; j < width; ++j) {
                const T x = lo[j], y = hi[j];
                lo[j] = ck * x - sk * y;
                hi[j] = sk * x + ck * y;
            }
        }
    }
}

void secular_terms(const double* d, const double* numerators, std::size_t count, double base, double tau,
                   double* terms, double* sums) {
    double sum = 0, derivative = 0, squares = 0;
    for (std::size_t j = 0; j < count; ++j) {
        const double inverse = 1.0 / ((d[j] - base) - tau);
        const double t = numerators[j] * inverse;
        sum += t;
        derivative += t * inverse;
        squares += t * t;
        if (terms) terms[j] = t;
    }
    sums[0] = sum;
    sums[1] = derivative;
    sums[2] = squares;
}

double ratio_product(const double* shifted, const double* tau, const double* poles, std::size_t count, double x) {
    double product = 1;
    for (std::size_t i = 0; i < count; ++i) product *= ((x - shifted[i]) - tau[i]) / (x - poles[i]);
    return product;
}

}  // namespace

namespace ref {
const SymEigKernels sym_eig_kernels{
    {update_row_symv<float>, symv_row<float>, rows_dot<float>, rows_axpy<float>, reflect_rows<float>,
     rotate_strip<float>},
    {update_row_symv<double>, symv_row<double>, rows_dot<double>, rows_axpy<double>, reflect_rows<double>,
     rotate_strip<double>},
    {secular_terms, ratio_product},
};
}  // namespace ref

}  // namespace codl
