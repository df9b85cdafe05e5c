// Batched dense linear algebra for second-order optimizers (K-FAC): damped Cholesky factors,
// damped inverses and Cholesky solves of symmetric positive definite matrices, float32 and
// float64, plus symmetric (upper-triangle) packing.
//
// Matrices are row-major n x n. Inputs are symmetric and only their lower triangle is read
// (both triangles are checked for NaN/Inf; results that overflow are reported, never returned).
// Per-matrix routines are blocked recursively (potrf, trtri, lauum as in LAPACK) so that almost
// all the flops run in a register-blocked GEMM micro-kernel of the active ISA.
//
// Determinism: for a given ISA the results do not depend on num_threads or on how a batch is
// scheduled; threads only split independent output elements.
//
// Translation units compiled with ISA flags include this header: declarations only.
#pragma once

#include <cstddef>

#include "codl/kernel_table.h"

namespace codl {

enum class LinalgStatus : int {
    ok = 0,
    not_positive_definite = 1,  // pivot names the first row whose pivot was not > 0
    non_finite = 2,             // NaN or Inf anywhere in the input (either triangle)
    non_finite_result = 3,      // finite input whose damped diagonal or result overflowed (e.g. the
                                // float32 inverse of 1e-40 I)
};

struct LinalgResult {
    LinalgStatus status = LinalgStatus::ok;
    std::size_t pivot = 0;  // only meaningful for not_positive_definite
};

enum class SolveSide : int {
    left = 0,   // X = (L L^T)^{-1} B, B is n x m
    right = 1,  // X = B (L L^T)^{-1}, B is m x n
};

// One matrix of a batch: input (n x n, lower triangle read) + damping * I.
template <class T>
struct DampedJob {
    const T* input;
    T* output;  // n x n
    std::size_t n;
    T damping;
};

// One solve of a batch: factor is L (n x n lower, as damped_cholesky writes it; the upper
// triangle is not read), rhs and out are n x m (left) or m x n (right). out may equal rhs.
template <class T>
struct SolveJob {
    const T* factor;
    std::size_t n;
    const T* rhs;
    T* out;
    std::size_t m;
};

// The kernels one ISA provides. The GEMM is exposed for other dense routines (eigen solvers).
// A matrix argument is (pointer, row stride, column stride) in elements: element (i, j) is
// p[i * rs + j * cs]; strides may be negative, so transposed and reversed views cost nothing.
struct LinalgKernels {
    // C (m x n) += alpha * A (m x k) * B (k x n).
    void (*gemm_f32)(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                     std::ptrdiff_t a_rs, std::ptrdiff_t a_cs, const float* b, std::ptrdiff_t b_rs,
                     std::ptrdiff_t b_cs, float* c, std::ptrdiff_t c_rs, std::ptrdiff_t c_cs);
    void (*gemm_f64)(std::size_t m, std::size_t n, std::size_t k, double alpha, const double* a,
                     std::ptrdiff_t a_rs, std::ptrdiff_t a_cs, const double* b, std::ptrdiff_t b_rs,
                     std::ptrdiff_t b_cs, double* c, std::ptrdiff_t c_rs, std::ptrdiff_t c_cs);
    // One matrix each; num_threads > 1 splits the large GEMM/TRSM steps (results unchanged).
    // On failure the output is filled with NaN.
    LinalgResult (*damped_cholesky_f32)(const float* input, float* output, std::size_t n,
                                        float damping, int num_threads);
    LinalgResult (*damped_cholesky_f64)(const double* input, double* output, std::size_t n,
                                        double damping, int num_threads);
    LinalgResult (*damped_inverse_f32)(const float* input, float* output, std::size_t n,
                                       float damping, int num_threads);
    LinalgResult (*damped_inverse_f64)(const double* input, double* output, std::size_t n,
                                       double damping, int num_threads);
    void (*cholesky_solve_f32)(const float* factor, std::size_t n, const float* rhs, float* out,
                               std::size_t m, SolveSide side, int num_threads);
    void (*cholesky_solve_f64)(const double* factor, std::size_t n, const double* rhs, double* out,
                               std::size_t m, SolveSide side, int num_threads);
};

// Batched entry points (active ISA). Matrices too large for one thread to finish in its share
// of the batch run one after another with num_threads inside; the rest run one per thread,
// largest first, claimed dynamically. results has `count` entries.
void damped_cholesky(const DampedJob<float>* jobs, std::size_t count, LinalgResult* results,
                     int num_threads);
void damped_cholesky(const DampedJob<double>* jobs, std::size_t count, LinalgResult* results,
                     int num_threads);
void damped_inverse(const DampedJob<float>* jobs, std::size_t count, LinalgResult* results,
                    int num_threads);
void damped_inverse(const DampedJob<double>* jobs, std::size_t count, LinalgResult* results,
                    int num_threads);
void cholesky_solve(const SolveJob<float>* jobs, std::size_t count, SolveSide side, int num_threads);
void cholesky_solve(const SolveJob<double>* jobs, std::size_t count, SolveSide side, int num_threads);

// The upper triangle row by row: packed[k] for (i, j), i <= j, k = i * n - i * (i - 1) / 2 + j - i;
// n * (n + 1) / 2 values. unpack writes both triangles.
constexpr std::size_t packed_symmetric_size(std::size_t n) { return n * (n + 1) / 2; }
void pack_symmetric(const float* matrix, std::size_t n, float* packed);
void pack_symmetric(const double* matrix, std::size_t n, double* packed);
void unpack_symmetric(const float* packed, std::size_t n, float* matrix);
void unpack_symmetric(const double* packed, std::size_t n, double* matrix);

}  // namespace codl
