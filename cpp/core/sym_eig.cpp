// Batched symmetric eigendecomposition (the method is described in codl/sym_eig.h). This file
// holds the per-matrix algorithm and the scheduling; the O(n^3) inner loops come from the
// kernel table so each ISA runs its own.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "codl/dispatch.h"
#include "codl/parallel.h"
#include "codl/sym_eig.h"

namespace codl {
namespace {

// The QL iteration gives up after this many sweeps per eigenvalue on average (LAPACK's steqr
// allows 30 n in all).
constexpr int kMaxSweepsPerEigenvalue = 30;
// Matrices at least this large run alone with the threads working inside them; smaller ones
// run one per thread.
constexpr std::size_t kInnerParallelSize = 1024;

// Scratch kept per thread so repeated calls do not allocate once warm.
template <typename T>
struct Workspace {
    std::vector<T> work;   // n x n: the reduced matrix and its reflectors, later a copy of Z^T
    std::vector<T> vecs;   // zeros, two w vectors and y, n each
    std::vector<T> taus;
    std::vector<double> diagonal, offdiagonal;
    std::vector<T> cosines, sines;
    std::vector<RotationRun> runs;
    std::vector<std::size_t> order;
};

template <typename T>
Workspace<T>& workspace() {
    thread_local Workspace<T> instance;
    return instance;
}

// Row i of the n x n row-major buffer.
template <typename T>
T* row(T* base, std::size_t n, std::size_t i) {
    return base + i * n;
}

// Turns x = row[k+1..n) into the Householder vector v (v[k+1] = 1, stored in place) with
// (I - tau v v^T) x = beta e_1; returns tau and writes beta to *beta. tau = 0 means H = I.
template <typename T>
T make_reflector(T* x, std::size_t len, double* beta) {
    const double alpha = x[0];
    double tail = 0;
    for (std::size_t j = 1; j < len; ++j) tail += static_cast<double>(x[j]) * x[j];
    if (tail == 0) {
        *beta = alpha;
        x[0] = 1;
        return 0;
    }
    const double b = -std::copysign(std::sqrt(alpha * alpha + tail), alpha);
    const double scale = 1.0 / (alpha - b);
    for (std::size_t j = 1; j < len; ++j) x[j] = static_cast<T>(x[j] * scale);
    x[0] = 1;
    *beta = b;
    return static_cast<T>((b - alpha) / b);
}

// Householder reduction of the upper-stored n x n matrix `a` to tridiagonal (d, e). Step k's
// reflector v_k ends in row k, columns k+1.. (v_k[k+1] = 1) with its tau in taus[k].
template <typename T>
void tridiagonalize(const SymEigOps<T>& ops, T* a, std::size_t n, Workspace<T>& ws) {
    double* d = ws.diagonal.data();
    double* e = ws.offdiagonal.data();
    T* zeros = ws.vecs.data();
    T* w_prev = zeros + n;
    T* w_cur = w_prev + n;
    T* y = w_cur + n;
    std::fill(zeros, zeros + 4 * n, T(0));
    const T* v_prev = zeros;  // no update is pending before the first step
    for (std::size_t k = 0; k + 1 < n; ++k) {
        T* row_k = row(a, n, k);
        // Row k takes the pending rank-2 update first: its reflector depends on it.
        ops.update_row_symv(row_k + k, n - k, v_prev + k, w_prev + k, v_prev[k], w_prev[k], zeros, T(0), y + k);
        d[k] = row_k[k];
        const T tau = make_reflector(row_k + k + 1, n - k - 1, &e[k]);
        ws.taus[k] = tau;
        const T* v = row_k;  // v[j] for j > k
        const T* u = tau != 0 ? v : zeros;
        std::fill(y + k + 1, y + n, T(0));
        // One pass over the trailing rows: the pending update, then y = A22 v.
        for (std::size_t i = k + 1; i < n; ++i) {
            T* ai = row(a, n, i) + i;
            y[i] += ops.update_row_symv(ai, n - i, v_prev + i, w_prev + i, v_prev[i], w_prev[i], u + i, u[i], y + i);
        }
        // w = tau y - (tau^2 / 2) (y . v) v, so that A22 - v w^T - w v^T = H A22 H.
        double yv = 0;
        for (std::size_t j = k + 1; j < n; ++j) yv += static_cast<double>(y[j]) * u[j];
        const double alpha = -0.5 * static_cast<double>(tau) * static_cast<double>(tau) * yv;
        for (std::size_t j = k + 1; j < n; ++j) w_cur[j] = static_cast<T>(tau * y[j] + alpha * u[j]);
        std::fill(w_cur, w_cur + k + 1, T(0));
        std::swap(w_prev, w_cur);
        v_prev = u;
    }
    // The last row took its final update in the last pass.
    d[n - 1] = row(a, n, n - 1)[n - 1];
    e[n - 1] = 0;
}

// Row i of Q^T = e_i^T H_{n-2} ... H_0 (only H_{i-1} .. H_0 change it), into z.
template <typename T>
void form_q_row(const SymEigOps<T>& ops, const T* reflectors, const T* taus, std::size_t n,
                std::size_t i, T* z) {
    std::fill(z, z + n, T(0));
    z[i] = 1;
    for (std::size_t k = i; k-- > 0;) {
        if (taus[k] != 0) ops.reflect_row(z + k + 1, n - k - 1, reflectors + k * n + k + 1, taus[k]);
    }
}

template <typename T>
void form_q_transposed(const SymEigOps<T>& ops, const T* reflectors, const T* taus, std::size_t n,
                       T* z, int threads) {
    // Rows are independent, so any split gives the same bits; interleave for balance (row i
    // costs about i (n - i / 2)).
    const std::size_t parts = static_cast<std::size_t>(std::max(threads, 1));
    parallel_for(parts, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t part = begin; part < end; ++part) {
            for (std::size_t i = part; i < n; i += parts) form_q_row(ops, reflectors, taus, n, i, z + i * n);
        }
    });
}

// Applies the recorded rotations to Z^T strip by strip, then forgets them.
template <typename T>
void flush_rotations(const SymEigOps<T>& ops, T* z, std::size_t n, Workspace<T>& ws, int threads) {
    if (ws.runs.empty()) return;
    const std::size_t strips = (n + kSymEigStripWidth - 1) / kSymEigStripWidth;
    parallel_for(strips, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t strip = begin; strip < end; ++strip) {
            const std::size_t column = strip * kSymEigStripWidth;
            ops.rotate_strip(z + column, n, std::min(kSymEigStripWidth, n - column), ws.runs.data(),
                             ws.runs.size(), ws.cosines.data(), ws.sines.data());
        }
    });
    ws.runs.clear();
    ws.cosines.clear();
    ws.sines.clear();
}

// Implicit QL with Wilkinson shifts (the tql2 / tqli scheme) on d[0..n), e[0..n-1) (e[i]
// couples i and i + 1), the rotations applied to the rows of Z^T. False if it did not converge.
template <typename T>
bool tridiagonal_ql(const SymEigOps<T>& ops, T* z, std::size_t n, Workspace<T>& ws, int threads) {
    double* d = ws.diagonal.data();
    double* e = ws.offdiagonal.data();
    const double eps = std::numeric_limits<double>::epsilon();
    // Enough rotations per flush that each strip is reused many times, bounded in memory.
    const std::size_t capacity = std::max<std::size_t>(32 * n, 4096);
    ws.cosines.reserve(capacity + n);
    ws.sines.reserve(capacity + n);
    long long sweeps_left = static_cast<long long>(kMaxSweepsPerEigenvalue) * static_cast<long long>(n);
    for (std::size_t l = 0; l < n; ++l) {
        for (;;) {
            std::size_t m = l;
            for (; m + 1 < n; ++m) {
                const double dd = std::fabs(d[m]) + std::fabs(d[m + 1]);
                if (std::fabs(e[m]) <= eps * dd) break;
            }
            if (m == l) break;
            if (--sweeps_left < 0) return false;
            if (ws.cosines.size() + (m - l) > capacity) flush_rotations(ops, z, n, ws, threads);
            double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            double r = std::hypot(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
            double s = 1, c = 1, p = 0;
            RotationRun run{static_cast<std::uint32_t>(m - 1), 0, ws.cosines.size()};
            bool underflow = false;
            for (std::size_t i = m; i-- > l;) {
                const double f = s * e[i], b = c * e[i];
                r = std::hypot(f, g);
                e[i + 1] = r;
                if (r == 0) {
                    // The sweep splits the matrix early: undo the shift's progress and retry.
                    d[i + 1] -= p;
                    e[m] = 0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                ws.cosines.push_back(static_cast<T>(c));
                ws.sines.push_back(static_cast<T>(s));
                ++run.count;
            }
            if (run.count > 0) ws.runs.push_back(run);
            if (underflow) continue;
            d[l] -= p;
            e[l] = g;
            e[m] = 0;
        }
    }
    flush_rotations(ops, z, n, ws, threads);
    return true;
}

template <typename T>
void fill_nan(const SymEigProblem<T>& p) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::fill(p.eigenvalues, p.eigenvalues + p.n, nan);
    std::fill(p.eigenvectors, p.eigenvectors + p.n * p.n, nan);
}

template <typename T>
SymEigStatus decompose(const SymEigOps<T>& ops, const SymEigProblem<T>& p, int threads) {
    const std::size_t n = p.n;
    if (n == 0) return SymEigStatus::ok;
    const T* a = p.matrix;
    double largest = 0;
    for (std::size_t i = 0; i < n * n; ++i) {
        if (!std::isfinite(a[i])) {
            fill_nan(p);
            return SymEigStatus::non_finite;
        }
    }
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j <= i; ++j) largest = std::max(largest, static_cast<double>(std::fabs(a[i * n + j])));
    }
    // Scale by 2^-exponent (exact) so the largest entry lies in [0.5, 1): no overflow in the
    // squares of the reflectors, no loss to underflow for tiny matrices.
    int exponent = 0;
    if (largest > 0) std::frexp(largest, &exponent);
    const double scale = std::ldexp(1.0, -exponent);

    Workspace<T>& ws = workspace<T>();
    ws.work.resize(n * n);
    ws.vecs.resize(4 * n);
    ws.taus.assign(n, T(0));
    ws.diagonal.assign(n, 0.0);
    ws.offdiagonal.assign(n, 0.0);
    T* work = ws.work.data();
    // Upper storage of the lower triangle: work[j][i] = A[i][j] for i >= j.
    for (std::size_t j = 0; j < n; ++j) {
        for (std::size_t i = j; i < n; ++i) work[j * n + i] = static_cast<T>(a[i * n + j] * scale);
    }
    tridiagonalize(ops, work, n, ws);
    T* z = p.eigenvectors;  // Z^T is built in the output, then transposed through `work`
    form_q_transposed(ops, work, ws.taus.data(), n, z, threads);
    if (!tridiagonal_ql(ops, z, n, ws, threads)) {
        ws.runs.clear();
        ws.cosines.clear();
        ws.sines.clear();
        fill_nan(p);
        return SymEigStatus::no_convergence;
    }

    const double* d = ws.diagonal.data();
    ws.order.resize(n);
    std::iota(ws.order.begin(), ws.order.end(), std::size_t{0});
    std::stable_sort(ws.order.begin(), ws.order.end(), [d](std::size_t x, std::size_t y) { return d[x] < d[y]; });
    std::copy(z, z + n * n, work);
    for (std::size_t i = 0; i < n; ++i) {
        const T* vector = work + ws.order[i] * n;
        std::size_t largest_at = 0;
        for (std::size_t r = 1; r < n; ++r) {
            if (std::fabs(vector[r]) > std::fabs(vector[largest_at])) largest_at = r;
        }
        const T sign = vector[largest_at] < 0 ? T(-1) : T(1);
        for (std::size_t r = 0; r < n; ++r) z[r * n + i] = sign * vector[r];
        p.eigenvalues[i] = static_cast<T>(std::ldexp(d[ws.order[i]], exponent));
    }
    return SymEigStatus::ok;
}

template <typename T>
void run_batch(const SymEigOps<T>& ops, const SymEigProblem<T>* problems, std::size_t count,
               SymEigStatus* status, int num_threads) {
    if (count == 0) return;
    const int threads = std::max(num_threads, 1);
    // Largest first, so the small ones fill in around them.
    std::vector<std::size_t> order(count);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [problems](std::size_t x, std::size_t y) { return problems[x].n > problems[y].n; });
    std::size_t first_small = 0;
    while (first_small < count &&
           (problems[order[first_small]].n >= kInnerParallelSize || count == 1)) {
        const std::size_t index = order[first_small++];
        status[index] = decompose(ops, problems[index], threads);
    }
    std::atomic<std::size_t> next{first_small};
    parallel_for(static_cast<std::size_t>(threads), 1, 1, threads, [&](std::size_t, std::size_t) {
        for (std::size_t taken; (taken = next.fetch_add(1)) < count;) {
            const std::size_t index = order[taken];
            status[index] = decompose(ops, problems[index], 1);
        }
    });
}

}  // namespace

void sym_eig_f32_with(const SymEigKernels& kernels, const SymEigProblem<float>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads) {
    run_batch(kernels.f32, problems, count, status, num_threads);
}

void sym_eig_f64_with(const SymEigKernels& kernels, const SymEigProblem<double>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads) {
    run_batch(kernels.f64, problems, count, status, num_threads);
}

const SymEigKernels* sym_eig_kernels(IsaLevel isa) {
    switch (isa) {
        case IsaLevel::scalar: return &ref::sym_eig_kernels;
#if CODL_HAVE_AVX2
        case IsaLevel::avx2: return &avx2::sym_eig_kernels;
#endif
#if CODL_HAVE_AVX512
        case IsaLevel::avx512: return &avx512::sym_eig_kernels;
#endif
#if CODL_HAVE_SVE
        // No SVE variant yet: the scalar loops (the x86 variants show where one would pay).
        case IsaLevel::sve: return &ref::sym_eig_kernels;
#endif
        default: return nullptr;
    }
}

void sym_eig_f32(const SymEigProblem<float>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads) {
    sym_eig_f32_with(*sym_eig_kernels(active_isa()), problems, count, status, num_threads);
}

void sym_eig_f64(const SymEigProblem<double>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads) {
    sym_eig_f64_with(*sym_eig_kernels(active_isa()), problems, count, status, num_threads);
}

}  // namespace codl
