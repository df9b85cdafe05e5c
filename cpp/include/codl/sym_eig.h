// Batched symmetric eigendecomposition: eigenvalues ascending and eigenvectors as columns, the
// convention of torch.linalg.eigh (A = V diag(w) V^T), for a list of float32 or float64
// matrices of mixed sizes in one call.
//
// Method, per matrix: scale by a power of two (exact) so the largest entry is near 1; reduce
// to tridiagonal form with Householder reflectors (lower triangle, as eigh's default UPLO='L'):
// panels of 32 reflectors as in LAPACK's latrd (a symmetric matrix-vector product per step on
// the trailing matrix, then its rank-64 update by GEMM), the last 128 rows unblocked with each
// step's rank-2 update fused into the next step's product. Above n = 64, divide and conquer on
// the tridiagonal matrix (deflation, a laed4-style secular solver whose sums run in SIMD
// kernels, Loewner's formula, one GEMM per half per merge), then the back-transformation
// Z = Q S by compact-WY blocks of reflectors (two GEMMs per block); at and below n = 64 (and if
// divide and conquer fails) Q^T is formed explicitly and the implicit QL iteration with
// Wilkinson shifts runs in double precision, its rotations applied in batches to column strips
// of Q^T (each strip stays in cache while thousands of rotations stream past). Sort ascending
// and fix signs. Every matrix product runs in the linalg family's GEMM of the same ISA.
//
// Sign convention: each eigenvector's largest-magnitude component (the first one on ties) is
// positive, so results are reproducible; torch.linalg.eigh fixes no sign.
//
// Results are bit-identical for every thread count: each matrix is computed by the same
// sequence of operations whichever thread runs it, and the parts of a large matrix that run in
// parallel split rows, column strips or fixed row ranges whose arithmetic does not depend on the
// split.
//
// This header holds declarations only (ISA translation units include it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"
#include "codl/linalg.h"

namespace codl {

// Per-matrix outcome. The values cross into Python (codl.linalg reads them): keep them.
enum class SymEigStatus : std::int32_t {
    ok = 0,
    no_convergence = 1,  // the QL iteration hit its cap (30 n sweeps); outputs are NaN
    non_finite = 2,      // the input holds NaN or Inf; outputs are NaN
};

// One problem: `matrix` is n x n row-major (only its lower triangle is used, but every entry
// is checked for NaN/Inf); `eigenvalues` receives n values, `eigenvectors` n x n row-major
// with eigenvector i in column i. Outputs must not overlap the input or each other.
template <typename T>
struct SymEigProblem {
    const T* matrix;
    std::size_t n;
    T* eigenvalues;
    T* eigenvectors;
};

// A run of consecutive QL rotations: rotation r (0 <= r < count) acts on rows (top - r,
// top - r + 1) of Z^T with cosine c[first + r] and sine s[first + r]:
//   lo' = c lo - s hi,  hi' = s lo + c hi   (lo = row top - r, hi = row top - r + 1).
struct RotationRun {
    std::uint32_t top;
    std::uint32_t count;
    std::size_t first;
};

// The inner loops, one table per ISA (KernelTable::sym_eig).
template <typename T>
struct SymEigOps {
    // One row of the fused tridiagonalization step, a[0..len) being row i of the trailing
    // matrix from its diagonal on (upper storage) and v, w, u, y indexed alike (so v[0] is the
    // entry of row i): a[j] -= vi w[j] + wi v[j]; then y[j] += ui a[j] for j >= 1; returns
    // sum_{j >= 0} a[j] u[j].
    T (*update_row_symv)(T* a, std::size_t len, const T* v, const T* w, T vi, T wi, const T* u,
                         T ui, T* y);
    // One row of a symmetric matrix-vector product over upper storage, a[0..len) being row i
    // from its diagonal on and u, y indexed alike: y[j] += ui a[j] for j >= 1; returns
    // sum_{j >= 0} a[j] u[j].
    T (*symv_row)(const T* a, std::size_t len, const T* u, T ui, T* y);
    // out[q] = sum_{j < len} rows[q stride + j] x[j] for q < count (the blocked reduction's
    // products with its panel, each row of which holds a reflector or a w vector).
    void (*rows_dot)(const T* rows, std::size_t stride, std::size_t count, std::size_t len, const T* x, T* out);
    // y[j] -= sum_{q < count} coef[q] rows[q stride + j] for j < len.
    void (*rows_axpy)(T* y, std::size_t len, const T* rows, std::size_t stride, std::size_t count, const T* coef);
    // For each of `count` (1 to 4) rows a_r = a + r lda of length len: a_r -= tau (a_r . v) v
    // (rows times a Householder reflector; several rows share each load of v).
    void (*reflect_rows)(T* a, std::size_t lda, std::size_t count, std::size_t len, const T* v, T tau);
    // Applies the runs, in order, to columns [0, width) of rows of Z^T that start at z with
    // stride `stride` (elements). width is at most kSymEigStripWidth.
    void (*rotate_strip)(T* z, std::size_t stride, std::size_t width, const RotationRun* runs,
                         std::size_t num_runs, const T* c, const T* s);
};

// Column strips of Z^T are this many elements wide (a multiple of every ISA's vector length);
// the strip of one matrix of n rows stays in L2 while rotations stream past.
constexpr std::size_t kSymEigStripWidth = 64;

// The divide-and-conquer merge's O(k^2) loops (double precision whatever the matrix type).
struct SecularOps {
    // For j in [0, count): inverse = 1 / ((d[j] - base) - tau), t = numerators[j] inverse;
    // returns in sums[0..3) the sums of t, t inverse and t^2, and writes t to terms[j] unless
    // terms is nullptr. (The secular function and its derivative; an eigenvector and its norm.)
    void (*terms)(const double* d, const double* numerators, std::size_t count, double base, double tau,
                  double* terms, double* sums);
    // prod over i in [0, count) of ((x - shifted[i]) - tau[i]) / (x - poles[i]) (Loewner's
    // formula for the z that makes the computed roots exact).
    double (*ratio_product)(const double* shifted, const double* tau, const double* poles, std::size_t count,
                            double x);
};

struct SymEigKernels {
    SymEigOps<float> f32;
    SymEigOps<double> f64;
    SecularOps secular;
};

// Decomposes problems[0..count) with up to num_threads threads (the active ISA's kernels),
// writing status[i] for each.
void sym_eig_f32(const SymEigProblem<float>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads = 1);
void sym_eig_f64(const SymEigProblem<double>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads = 1);

// The same with a given ISA's kernel table (tests run every ISA through it): its sym_eig row
// loops and its linalg GEMM (C += alpha A B on strided views), in which every O(n^3) matrix
// product of the method runs. Each element's arithmetic does not depend on how C is split among
// threads, which keeps the results bit-identical for any thread count.
void sym_eig_f32_with(const KernelTable& kernels, const SymEigProblem<float>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads = 1);
void sym_eig_f64_with(const KernelTable& kernels, const SymEigProblem<double>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads = 1);

}  // namespace codl
