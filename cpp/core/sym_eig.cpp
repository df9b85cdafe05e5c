// Batched symmetric eigendecomposition (the method is described in codl/sym_eig.h). This file
// holds the per-matrix algorithm and the scheduling; the O(n^3) inner loops come from the
// kernel table so each ISA runs its own.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
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
// Divide and conquer above this size (its GEMMs beat QL's rotations), QL below and at the
// leaves of the recursion.
constexpr std::size_t kDivideAndConquerSize = 64;
constexpr std::size_t kDivideAndConquerLeaf = 32;

// The ISA's GEMM: C (m x n) += alpha A (m x k) B (k x n) on strided views.
template <typename T>
using GemmFn = void (*)(std::size_t, std::size_t, std::size_t, T, const T*, std::ptrdiff_t, std::ptrdiff_t,
                        const T*, std::ptrdiff_t, std::ptrdiff_t, T*, std::ptrdiff_t, std::ptrdiff_t);

// What one matrix needs from the kernel tables.
template <typename T>
struct Engine {
    const SymEigOps<T>& ops;
    const SecularOps& secular;
    GemmFn<T> gemm;
};

// Reflectors are applied to the rows of S^T in blocks of this many (compact WY).
constexpr std::size_t kReflectorBlock = 32;
// Rows of S^T that go through all the blocks together (their slice stays in L2).
constexpr std::size_t kBackTransformRows = 64;

// The reduction to tridiagonal form runs in panels of kPanel reflectors while more than
// kUnblockedTail rows remain, then unblocked.
constexpr std::size_t kPanel = 32;
constexpr std::size_t kUnblockedTail = 128;

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
    // Divide and conquer: S^T, sorted rows, gathered GEMM operands, and O(n) vectors.
    std::vector<T> dc_s, dc_pre, dc_ua, dc_ub, dc_gather;
    std::vector<double> dc_z, dc_d, dc_zs, dc_dk, dc_z2, dc_tau, dc_zhat, dc_u, dc_shifted, saved_d, saved_e;
    std::vector<std::size_t> dc_perm, dc_kept, dc_deflated, dc_origin, dc_left, dc_right;
    std::vector<int> dc_kind;
    // Back-transformation: per block of reflectors, T (nb x nb) and Y = V T (m x nb); per thread
    // the block's W = X V.
    std::vector<T> wy_t, wy_y, wy_gram, wy_w;
    // Blocked reduction: the panel's [V W] and [W V] (2 nb x n each), y, and 2 nb coefficients.
    std::vector<T> panel_left, panel_right, panel_y, panel_coef, panel_partial;
};

template <typename T>
Workspace<T>& workspace() {
    thread_local Workspace<T> instance;
    return instance;
}

// sqrt(x^2 + y^2) without std::hypot's cost where the squares neither overflow nor underflow.
double fast_hypot(double x, double y) {
    const double squares = x * x + y * y;
    return squares > 1e-290 && squares < 1e290 ? std::sqrt(squares) : std::hypot(x, y);
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
// Unblocked, from step `first` on (the trailing matrix there fully updated): each step's rank-2
// update is fused with the next step's symmetric matrix-vector product.
template <typename T>
void tridiagonalize_unblocked(const SymEigOps<T>& ops, T* a, std::size_t n, std::size_t first, Workspace<T>& ws) {
    double* d = ws.diagonal.data();
    double* e = ws.offdiagonal.data();
    T* zeros = ws.vecs.data();
    T* w_prev = zeros + n;
    T* w_cur = w_prev + n;
    T* y = w_cur + n;
    std::fill(zeros, zeros + 4 * n, T(0));
    const T* v_prev = zeros;  // no update is pending before the first step
    for (std::size_t k = first; k + 1 < n; ++k) {
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

// y[first..n) = A v over the trailing matrix from row `first` (upper storage, as it was before
// the panel). Large trailing matrices are cut into a fixed number of row ranges of equal work,
// each with its own partial y, summed in range order: threads take whole ranges, and the number
// of ranges depends only on the size, so the bits do not depend on the thread count.
template <typename T>
void symv_upper(const SymEigOps<T>& ops, const T* a, std::size_t n, std::size_t first, const T* v, T* y,
                Workspace<T>& ws, int threads) {
    const std::size_t size = n - first;
    const std::size_t parts = size >= 512 ? 4 : size >= 256 ? 2 : 1;
    if (parts == 1) {
        std::fill(y + first, y + n, T(0));
        for (std::size_t i = first; i < n; ++i) y[i] += ops.symv_row(a + i * n + i, n - i, v + i, v[i], y + i);
        return;
    }
    // Range p starts where the rows below hold a fraction 1 - p / parts of the triangle.
    std::size_t bounds[5];
    for (std::size_t p = 0; p < parts; ++p) {
        const double below = static_cast<double>(size) * std::sqrt(1.0 - static_cast<double>(p) / static_cast<double>(parts));
        bounds[p] = n - std::min(size, static_cast<std::size_t>(below));
    }
    bounds[0] = first;
    bounds[parts] = n;
    ws.panel_partial.resize(parts * n);
    T* partial = ws.panel_partial.data();
    parallel_for(parts, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t p = begin; p < end; ++p) {
            T* yp = partial + p * n;
            std::fill(yp + bounds[p], yp + n, T(0));
            for (std::size_t i = bounds[p]; i < bounds[p + 1]; ++i) {
                yp[i] += ops.symv_row(a + i * n + i, n - i, v + i, v[i], yp + i);
            }
        }
    });
    std::copy(partial + first, partial + n, y + first);
    for (std::size_t p = 1; p < parts; ++p) {
        const T* yp = partial + p * n;
        for (std::size_t c = bounds[p]; c < n; ++c) y[c] += yp[c];
    }
}

// Reflectors k0 .. k0 + nb - 1 of the blocked reduction (LAPACK's latrd, lower): step k updates
// row k with the panel's earlier reflectors only, takes its reflector v, and forms
// w = tau y - (tau^2 / 2) (y . v) v from y = A22 v - V (W^T v) - W (V^T v), A22 being the
// trailing matrix as it was before the panel; the panel ends with the trailing matrix's rank-2nb
// update A22 -= V W^T + W V^T (upper part, GEMMs over row blocks split among threads). Buffers:
// `left` rows q < nb hold v_{k0+q}, rows nb + q hold w_{k0+q}; `right` the same swapped, so
// that V W^T + W V^T = left^T right.
template <typename T>
void reduce_panel(const Engine<T>& engine, T* a, std::size_t n, std::size_t k0, std::size_t nb, Workspace<T>& ws,
                  int threads) {
    const SymEigOps<T>& ops = engine.ops;
    const auto ld = static_cast<std::ptrdiff_t>(n);
    T* left = ws.panel_left.data();
    T* right = ws.panel_right.data();
    T* y = ws.panel_y.data();
    T* coef = ws.panel_coef.data();  // 2 nb
    double* d = ws.diagonal.data();
    double* e = ws.offdiagonal.data();
    for (std::size_t j = 0; j < nb; ++j) {
        const std::size_t k = k0 + j;
        T* row_k = row(a, n, k);
        const std::size_t len = n - k;
        if (j > 0) {
            // row_k[c] -= sum_q left(k, q) right(q, c), c >= k: the panel's earlier updates.
            for (std::size_t q = 0; q < j; ++q) {
                coef[q] = left[q * n + k];
                coef[nb + q] = left[(nb + q) * n + k];
            }
            ops.rows_axpy(row_k + k, len, right + k, n, j, coef);
            ops.rows_axpy(row_k + k, len, right + nb * n + k, n, j, coef + nb);
        }
        d[k] = row_k[k];
        const T tau = make_reflector(row_k + k + 1, len - 1, &e[k]);
        ws.taus[k] = tau;
        const T* v = row_k;  // v[c] for c > k
        const std::size_t tail = len - 1;
        symv_upper(ops, a, n, k + 1, v, y, ws, threads);
        if (j > 0) {
            // coef = left(c > k, q)^T v, then y -= coef^T right: the panel's earlier updates.
            ops.rows_dot(left + k + 1, n, j, tail, v + k + 1, coef);
            ops.rows_dot(left + nb * n + k + 1, n, j, tail, v + k + 1, coef + nb);
            ops.rows_axpy(y + k + 1, tail, right + k + 1, n, j, coef);
            ops.rows_axpy(y + k + 1, tail, right + nb * n + k + 1, n, j, coef + nb);
        }
        double yv = 0;
        for (std::size_t c = k + 1; c < n; ++c) yv += static_cast<double>(y[c]) * v[c];
        const double alpha = -0.5 * static_cast<double>(tau) * static_cast<double>(tau) * yv;
        T* w_left = left + (nb + j) * n;
        T* w_right = right + j * n;
        for (std::size_t c = k + 1; c < n; ++c) w_left[c] = w_right[c] = static_cast<T>(tau * y[c] + alpha * v[c]);
        std::copy(v + k + 1, v + n, left + j * n + k + 1);
        std::copy(v + k + 1, v + n, right + (nb + j) * n + k + 1);
    }
    // A22 -= left^T right on rows and columns from k1 on, upper part: row blocks of kRowBlock
    // rows, each from its own diagonal on.
    constexpr std::size_t kRowBlock = 64;
    const std::size_t k1 = k0 + nb;
    const std::size_t blocks = (n - k1 + kRowBlock - 1) / kRowBlock;
    parallel_for(blocks, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t b = begin; b < end; ++b) {
            const std::size_t r0 = k1 + b * kRowBlock, r1 = std::min(n, r0 + kRowBlock);
            engine.gemm(r1 - r0, n - r0, 2 * nb, T(-1), left + r0, 1, ld, right + r0, ld, 1, row(a, n, r0) + r0, ld, 1);
        }
    });
}

template <typename T>
void tridiagonalize(const Engine<T>& engine, T* a, std::size_t n, Workspace<T>& ws, int threads) {
    std::size_t first = 0;
    if (n > kUnblockedTail) {
        ws.panel_left.resize(2 * kPanel * n);
        ws.panel_right.resize(2 * kPanel * n);
        ws.panel_y.resize(n);
        ws.panel_coef.resize(2 * kPanel);
        for (; n - first > kUnblockedTail; first += kPanel) reduce_panel(engine, a, n, first, kPanel, ws, threads);
    }
    tridiagonalize_unblocked(engine.ops, a, n, first, ws);
}

// Rows [i0, i0 + count) of Q^T, row i being e_i^T H_{n-2} ... H_0 (only H_{i-1} .. H_0 change
// it): reflector k applies to the rows below it, so the block shares each reflector's loads
// once k < i0.
template <typename T>
void form_q_rows(const SymEigOps<T>& ops, const T* reflectors, const T* taus, std::size_t n,
                 std::size_t i0, std::size_t count, T* z) {
    for (std::size_t r = 0; r < count; ++r) {
        std::fill(z + r * n, z + (r + 1) * n, T(0));
        z[r * n + i0 + r] = 1;
    }
    for (std::size_t k = i0 + count - 1; k-- > 0;) {
        if (taus[k] == 0) continue;
        // Rows i > k of the block, i.e. from max(i0, k + 1) on.
        const std::size_t first = std::max(i0, k + 1) - i0;
        ops.reflect_rows(z + first * n + k + 1, n, count - first, n - k - 1, reflectors + k * n + k + 1, taus[k]);
    }
}

template <typename T>
void form_q_transposed(const SymEigOps<T>& ops, const T* reflectors, const T* taus, std::size_t n,
                       T* z, int threads) {
    // Blocks of four rows; blocks are independent, so any split gives the same bits.
    // Interleave them among the threads for balance (row i costs about i (n - i / 2)).
    constexpr std::size_t kRows = 4;
    const std::size_t blocks = (n + kRows - 1) / kRows;
    const std::size_t parts = static_cast<std::size_t>(std::max(threads, 1));
    parallel_for(parts, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t part = begin; part < end; ++part) {
            for (std::size_t b = part; b < blocks; b += parts) {
                const std::size_t i0 = b * kRows;
                form_q_rows(ops, reflectors, taus, n, i0, std::min(kRows, n - i0), z + i0 * n);
            }
        }
    });
}

// Z^T = X Q^T in place, X = S^T holding the tridiagonal matrix's eigenvectors as rows (LAPACK's
// ormtr): Q^T = H_{n-2} ... H_0, applied a block of reflectors at a time from the last block to
// the first. A block B = H_k0 ... H_{k0+nb-1} = I - V T V^T (larft: T upper triangular) acts on
// columns k0 + 1.. of X as X <- X - (X V) (V T)^T: two GEMMs. Each row of X is transformed on
// its own, so threads split rows and no row's arithmetic depends on the split. `reflectors`
// holds v_k in row k from column k + 1 on (v_k[k + 1] = 1) and zeros in columns <= k.
template <typename T>
void back_transform(GemmFn<T> gemm, const T* reflectors, const T* taus, std::size_t n, T* x, Workspace<T>& ws,
                    int threads) {
    if (n < 3) return;  // reflectors n - 2 and on have length 1: tau = 0
    constexpr std::size_t nb = kReflectorBlock;
    const std::size_t count = n - 2;
    const std::size_t blocks = (count + nb - 1) / nb;
    const auto ld = static_cast<std::ptrdiff_t>(n);
    ws.wy_t.assign(blocks * nb * nb, T(0));
    ws.wy_y.assign(blocks * n * nb, T(0));
    ws.wy_gram.resize(nb * nb);
    for (std::size_t b = 0; b < blocks; ++b) {
        const std::size_t k0 = b * nb, kb = std::min(nb, count - k0), m = n - k0 - 1;
        const auto skb = static_cast<std::ptrdiff_t>(kb);
        const T* v = reflectors + k0 * n + k0 + 1;  // V (m x kb): V(i, j) = v[i + j n]
        T* gram = ws.wy_gram.data();
        std::fill(gram, gram + kb * kb, T(0));
        gemm(kb, kb, m, T(1), v, ld, 1, v, 1, ld, gram, skb, 1);
        // T(0:j, j) = -tau_j T(0:j, 0:j) (V^T V)(0:j, j), T(j, j) = tau_j.
        T* t = ws.wy_t.data() + b * nb * nb;
        for (std::size_t j = 0; j < kb; ++j) {
            const double tau = taus[k0 + j];
            for (std::size_t i = 0; i < j; ++i) {
                double sum = 0;
                for (std::size_t l = i; l < j; ++l) sum += static_cast<double>(t[i * kb + l]) * gram[l * kb + j];
                t[i * kb + j] = static_cast<T>(-tau * sum);
            }
            t[j * kb + j] = static_cast<T>(tau);
        }
        gemm(m, kb, kb, T(1), v, 1, ld, t, skb, 1, ws.wy_y.data() + b * n * nb, skb, 1);
    }
    parallel_for(n, 1, 16, threads, [&](std::size_t begin, std::size_t end) {
        std::vector<T>& w = workspace<T>().wy_w;  // this thread's own
        w.resize(kBackTransformRows * nb);
        for (std::size_t r0 = begin; r0 < end; r0 += kBackTransformRows) {
            const std::size_t rows = std::min(kBackTransformRows, end - r0);
            for (std::size_t b = blocks; b-- > 0;) {
                const std::size_t k0 = b * nb, kb = std::min(nb, count - k0), m = n - k0 - 1;
                const auto skb = static_cast<std::ptrdiff_t>(kb);
                const T* v = reflectors + k0 * n + k0 + 1;
                T* xs = x + r0 * n + k0 + 1;
                std::fill(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(rows * kb), T(0));
                gemm(rows, kb, m, T(1), xs, ld, 1, v, 1, ld, w.data(), skb, 1);
                gemm(rows, m, kb, T(-1), w.data(), skb, 1, ws.wy_y.data() + b * n * nb, 1, skb, xs, ld, 1);
            }
        }
    });
}

// Applies the recorded rotations to Z^T strip by strip, then forgets them.
template <typename T>
void flush_rotations(const SymEigOps<T>& ops, T* z, std::size_t n, std::size_t stride, Workspace<T>& ws,
                     int threads) {
    if (ws.runs.empty()) return;
    const std::size_t strips = (n + kSymEigStripWidth - 1) / kSymEigStripWidth;
    parallel_for(strips, 1, 1, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t strip = begin; strip < end; ++strip) {
            const std::size_t column = strip * kSymEigStripWidth;
            ops.rotate_strip(z + column, stride, std::min(kSymEigStripWidth, n - column), ws.runs.data(),
                             ws.runs.size(), ws.cosines.data(), ws.sines.data());
        }
    });
    ws.runs.clear();
    ws.cosines.clear();
    ws.sines.clear();
}

// Implicit QL with Wilkinson shifts (the tql2 / tqli scheme) on d[0..n), e[0..n) (e[i]
// couples i and i + 1; e[n - 1] is scratch), the rotations applied to the n rows of Z^T (n
// columns, row stride `stride`). False if it did not converge.
template <typename T>
bool tridiagonal_ql(const SymEigOps<T>& ops, double* d, double* e, std::size_t n, T* z, std::size_t stride,
                    Workspace<T>& ws, int threads) {
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
            if (--sweeps_left < 0) {
                ws.runs.clear();
                ws.cosines.clear();
                ws.sines.clear();
                return false;
            }
            if (ws.cosines.size() + (m - l) > capacity) flush_rotations(ops, z, n, stride, ws, threads);
            double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            double r = fast_hypot(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
            double s = 1, c = 1, p = 0;
            RotationRun run{static_cast<std::uint32_t>(m - 1), 0, ws.cosines.size()};
            bool underflow = false;
            for (std::size_t i = m; i-- > l;) {
                const double f = s * e[i], b = c * e[i];
                r = fast_hypot(f, g);
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
    flush_rotations(ops, z, n, stride, ws, threads);
    return true;
}


// ---- Divide and conquer on the tridiagonal matrix (Cuppen; deflation and the secular
// equation as in LAPACK's stedc/laed4, eigenvectors through Loewner's formula as Gu and
// Eisenstat, so they are orthogonal to working precision). Eigenvectors are kept as rows of
// S^T (row stride n) so that every update streams contiguous rows, and the O(n^3) part of each
// merge is one GEMM per half.

template <typename T>
void parallel_gemm(GemmFn<T> gemm, std::size_t m, std::size_t n, std::size_t k, const T* a, std::size_t lda,
                   const T* b, std::size_t ldb, T* c, std::size_t ldc, int threads) {
    if (m == 0 || n == 0) return;
    const std::size_t min_rows = std::max<std::size_t>(8, (std::size_t{1} << 19) / std::max<std::size_t>(n * k, 1));
    parallel_for(m, 8, min_rows, threads, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
        if (k == 0) return;
        const auto sa = static_cast<std::ptrdiff_t>(lda), sb = static_cast<std::ptrdiff_t>(ldb),
                   sc = static_cast<std::ptrdiff_t>(ldc);
        gemm(end - begin, n, k, T(1), a + begin * lda, sa, 1, b, sb, 1, c + begin * ldc, sc, 1);
    });
}

// One root of 1 + rho sum_j z_j^2 / (d_j - lambda) = 0, d ascending and distinct, rho > 0: the
// i-th, in (d_i, d_{i+1}) (or (d_{k-1}, d_{k-1} + rho |z|^2) for the last), returned as an
// origin index and an offset tau from d[origin] so that d_j - lambda = (d_j - d_origin) - tau
// is accurate near the poles. Two-pole rational steps (the "middle way" of LAPACK's laed4)
// safeguarded by bisection.
void secular_root(const SecularOps& secular, const double* d, const double* z2, std::size_t k, double rho,
                  std::size_t i, std::size_t* origin_out, double* tau_out) {
    const double eps = std::numeric_limits<double>::epsilon();
    const bool last = i + 1 == k;
    std::size_t origin = i;
    double lo, hi;
    if (!last) {
        const double half = (d[i + 1] - d[i]) / 2;
        double sums[3];
        secular.terms(d, z2, k, d[i], half, nullptr, sums);
        if (1 + rho * sums[0] >= 0) {
            lo = 0;
            hi = half;
        } else {
            origin = i + 1;
            lo = -half;
            hi = 0;
        }
    } else {
        double total = 0;
        for (std::size_t j = 0; j < k; ++j) total += z2[j];
        lo = 0;
        hi = rho * total;
    }
    const double base = d[origin];
    double tau = (lo + hi) / 2;
    for (int iteration = 0; iteration < 200; ++iteration) {
        // The poles up to i and those above, each with its derivative.
        double below[3], above[3];
        secular.terms(d, z2, i + 1, base, tau, nullptr, below);
        secular.terms(d + i + 1, z2 + i + 1, k - i - 1, base, tau, nullptr, above);
        double psi = below[0], dpsi = below[1], phi = above[0], dphi = above[1];
        psi *= rho;
        dpsi *= rho;
        phi *= rho;
        dphi *= rho;
        const double f = 1 + psi + phi;
        if (std::fabs(f) <= 8 * static_cast<double>(k) * eps * (1 + std::fabs(psi) + std::fabs(phi))) break;
        if (f < 0) {
            lo = tau;
        } else {
            hi = tau;
        }
        if (hi - lo <= 2 * eps * std::max(std::fabs(lo), std::fabs(hi))) break;
        const double di = (d[i] - base) - tau;
        double eta;
        if (!last) {
            const double dn = (d[i + 1] - base) - tau;
            const double a = f - di * dpsi - dn * dphi, b = di * di * dpsi, c = dn * dn * dphi;
            const double qb = a * (di + dn) + b + c, qc = a * di * dn + b * dn + c * di;
            const double root = std::sqrt(std::max(qb * qb - 4 * a * qc, 0.0));
            eta = qb > 0 ? 2 * qc / (qb + root) : (a != 0 ? (qb - root) / (2 * a) : 0.0);
        } else {
            const double a = f - di * dpsi, b = di * di * dpsi;
            eta = a != 0 ? di + b / a : 0.0;
        }
        double next = tau + eta;
        if (!(next > lo && next < hi)) next = (lo + hi) / 2;
        if (next == tau) break;
        tau = next;
    }
    *origin_out = origin;
    *tau_out = tau;
}

template <typename T>
struct DivideAndConquer {
    const SymEigOps<T>& ops;
    const SecularOps& secular;
    GemmFn<T> gemm;
    double* d;
    double* e;
    std::size_t n;
    T* s;  // rows are eigenvectors (S^T), row stride n
    Workspace<T>& ws;
    int threads;

    T* row_of(std::size_t r) { return s + r * n; }

    bool solve(std::size_t lo, std::size_t hi) {
        const std::size_t m = hi - lo;
        if (m <= kDivideAndConquerLeaf) {
            for (std::size_t r = lo; r < hi; ++r) {
                std::fill(row_of(r) + lo, row_of(r) + hi, T(0));
                row_of(r)[r] = 1;
            }
            e[hi - 1] = 0;
            return tridiagonal_ql(ops, d + lo, e + lo, m, row_of(lo) + lo, n, ws, 1);
        }
        const std::size_t mid = lo + m / 2;
        const double rho = e[mid - 1];
        d[mid - 1] -= std::fabs(rho);
        d[mid] -= std::fabs(rho);
        e[mid - 1] = 0;
        if (!solve(lo, mid) || !solve(mid, hi)) return false;
        return merge(lo, mid, hi, rho);
    }

    bool merge(std::size_t lo, std::size_t mid, std::size_t hi, double rho) {
        const std::size_t m = hi - lo, m1 = mid - lo;
        const double eps = std::numeric_limits<double>::epsilon();
        std::vector<double>& z = ws.dc_z;
        std::vector<double>& dd = ws.dc_d;
        std::vector<std::size_t>& perm = ws.dc_perm;
        std::vector<int>& kind = ws.dc_kind;  // 1: lives in the first half, 3: second, 2: both
        z.resize(m);
        dd.resize(m);
        perm.resize(m);
        kind.resize(m);
        const double sign = rho >= 0 ? 1.0 : -1.0;
        double norm2 = 0;
        for (std::size_t j = 0; j < m; ++j) {
            z[j] = j < m1 ? static_cast<double>(row_of(lo + j)[mid - 1]) : sign * static_cast<double>(row_of(lo + j)[mid]);
            norm2 += z[j] * z[j];
        }
        const double r = std::fabs(rho) * norm2;
        const double inv_norm = 1.0 / std::sqrt(norm2);
        std::iota(perm.begin(), perm.end(), std::size_t{0});
        std::stable_sort(perm.begin(), perm.end(), [&](std::size_t x, std::size_t y) { return d[lo + x] < d[lo + y]; });
        T* pre = ws.dc_pre.data();  // sorted copies of the rows, m wide
        std::vector<double>& zs = ws.dc_zs;
        zs.resize(m);
        double dmax = 0, zmax = 0;
        for (std::size_t c = 0; c < m; ++c) {
            dd[c] = d[lo + perm[c]];
            zs[c] = z[perm[c]] * inv_norm;
            kind[c] = perm[c] < m1 ? 1 : 3;
            // A child's rows are zero outside its own block (the buffer holds stale values there).
            const T* source = row_of(lo + perm[c]);
            T* target = pre + c * m;
            if (perm[c] < m1) {
                std::copy(source + lo, source + mid, target);
                std::fill(target + m1, target + m, T(0));
            } else {
                std::fill(target, target + m1, T(0));
                std::copy(source + mid, source + hi, target + m1);
            }
            dmax = std::max(dmax, std::fabs(dd[c]));
            zmax = std::max(zmax, std::fabs(zs[c]));
        }
        const double tol = 8 * eps * std::max(dmax, r * zmax);
        std::vector<std::size_t>& kept = ws.dc_kept;
        std::vector<std::size_t>& deflated = ws.dc_deflated;
        kept.clear();
        deflated.clear();
        std::size_t previous = m;  // none
        for (std::size_t c = 0; c < m; ++c) {
            if (r * std::fabs(zs[c]) <= tol) {
                deflated.push_back(c);
                continue;
            }
            if (previous != m) {
                const double t = fast_hypot(zs[previous], zs[c]);
                const double cs = zs[c] / t, sn = zs[previous] / t;
                if (std::fabs((dd[c] - dd[previous]) * cs * sn) <= tol) {
                    // Close poles: a rotation zeroes z[previous], whose pair then deflates.
                    T* x = pre + previous * m;
                    T* y = pre + c * m;
                    const T tc = static_cast<T>(cs), ts = static_cast<T>(sn);
                    for (std::size_t j = 0; j < m; ++j) {
                        const T xj = x[j], yj = y[j];
                        x[j] = tc * xj - ts * yj;
                        y[j] = ts * xj + tc * yj;
                    }
                    const double dp = dd[previous] * cs * cs + dd[c] * sn * sn;
                    dd[c] = dd[previous] * sn * sn + dd[c] * cs * cs;
                    dd[previous] = dp;
                    zs[c] = t;
                    zs[previous] = 0;
                    if (kind[previous] != kind[c]) kind[previous] = kind[c] = 2;
                    deflated.push_back(previous);
                    previous = c;
                    continue;
                }
                kept.push_back(previous);
            }
            previous = c;
        }
        if (previous != m) kept.push_back(previous);

        const std::size_t k = kept.size();
        std::vector<double>& dk = ws.dc_dk;
        std::vector<double>& z2 = ws.dc_z2;
        std::vector<double>& taus = ws.dc_tau;
        std::vector<std::size_t>& origins = ws.dc_origin;
        dk.resize(k);
        z2.resize(k);
        taus.resize(k);
        origins.resize(k);
        for (std::size_t j = 0; j < k; ++j) {
            dk[j] = dd[kept[j]];
            z2[j] = zs[kept[j]] * zs[kept[j]];
        }
        if (k == 1) {
            origins[0] = 0;
            taus[0] = r * z2[0];
        } else {
            // Each root on its own: any split among threads gives the same bits.
            parallel_for(k, 1, 64, threads, [&](std::size_t begin, std::size_t end) {
                for (std::size_t i = begin; i < end; ++i) {
                    secular_root(secular, dk.data(), z2.data(), k, r, i, &origins[i], &taus[i]);
                }
            });
        }
        std::vector<double>& shifted = ws.dc_shifted;  // the origin pole of each root
        shifted.resize(k);
        for (std::size_t i = 0; i < k; ++i) shifted[i] = dk[origins[i]];
        // d_j - lambda_i, accurately.
        auto delta = [&](std::size_t j, std::size_t i) { return (dk[j] - dk[origins[i]]) - taus[i]; };
        // Loewner: the z for which the computed roots are exact eigenvalues.
        std::vector<double>& zhat = ws.dc_zhat;
        zhat.resize(k);
        parallel_for(k, 1, 64, threads, [&](std::size_t begin, std::size_t end) {
            for (std::size_t j = begin; j < end; ++j) {
                const double x = dk[j];
                const double product = -delta(j, j) *
                                       secular.ratio_product(shifted.data(), taus.data(), dk.data(), j, x) *
                                       secular.ratio_product(shifted.data() + j + 1, taus.data() + j + 1,
                                                             dk.data() + j + 1, k - j - 1, x);
                zhat[j] = std::copysign(std::sqrt(std::fabs(product) / r), zs[kept[j]]);
            }
        });
        // Gather the kept rows by the half they live in, so each half is one GEMM over only
        // the rows that are nonzero there.
        std::vector<std::size_t>& left = ws.dc_left;
        std::vector<std::size_t>& right = ws.dc_right;
        left.clear();
        right.clear();
        for (std::size_t j = 0; j < k; ++j) {
            if (kind[kept[j]] != 3) left.push_back(j);
            if (kind[kept[j]] != 1) right.push_back(j);
        }
        T* u_left = ws.dc_ua.data();
        T* u_right = ws.dc_ub.data();
        parallel_for(k, 1, 64, threads, [&](std::size_t begin, std::size_t end) {
            std::vector<double>& u = workspace<T>().dc_u;  // this thread's own
            u.resize(k);
            for (std::size_t i = begin; i < end; ++i) {
                double sums[3];
                secular.terms(dk.data(), zhat.data(), k, shifted[i], taus[i], u.data(), sums);
                const double inv = 1.0 / std::sqrt(sums[2]);
                for (std::size_t q = 0; q < left.size(); ++q) u_left[i * left.size() + q] = static_cast<T>(u[left[q]] * inv);
                for (std::size_t q = 0; q < right.size(); ++q) {
                    u_right[i * right.size() + q] = static_cast<T>(u[right[q]] * inv);
                }
            }
        });
        T* gathered = ws.dc_gather.data();
        // Left columns [lo, mid): rows i of the result = sum_q u_left[i][q] pre[kept[left[q]]].
        for (std::size_t q = 0; q < left.size(); ++q) {
            std::copy(pre + kept[left[q]] * m, pre + kept[left[q]] * m + m1, gathered + q * m1);
        }
        parallel_gemm(gemm, k, m1, left.size(), u_left, left.size(), gathered, m1, row_of(lo) + lo, n, threads);
        for (std::size_t q = 0; q < right.size(); ++q) {
            std::copy(pre + kept[right[q]] * m + m1, pre + kept[right[q]] * m + m, gathered + q * (m - m1));
        }
        parallel_gemm(gemm, k, m - m1, right.size(), u_right, right.size(), gathered, m - m1, row_of(lo) + mid, n,
                      threads);
        if (left.empty()) {
            for (std::size_t i = 0; i < k; ++i) std::fill(row_of(lo + i) + lo, row_of(lo + i) + mid, T(0));
        }
        if (right.empty()) {
            for (std::size_t i = 0; i < k; ++i) std::fill(row_of(lo + i) + mid, row_of(lo + i) + hi, T(0));
        }
        for (std::size_t i = 0; i < k; ++i) d[lo + i] = dk[origins[i]] + taus[i];
        for (std::size_t q = 0; q < deflated.size(); ++q) {
            const std::size_t c = deflated[q];
            d[lo + k + q] = dd[c];
            std::copy(pre + c * m, pre + c * m + m, row_of(lo + k + q) + lo);
        }
        return true;
    }
};

// Integer views of the floats: |x| orders like its bit pattern with the sign bit cleared, and
// NaN/Inf are the patterns whose exponent bits are all ones (loops the compiler vectorizes).
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

template <typename T>
Bits<T> to_bits(T x) {
    Bits<T> bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
}

template <typename T>
T from_bits(Bits<T> bits) {
    T x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

template <typename T>
constexpr Bits<T> kExponentMask = static_cast<Bits<T>>(sizeof(T) == 4 ? 0x7f800000ull : 0x7ff0000000000000ull);
template <typename T>
constexpr Bits<T> kMagnitudeMask = static_cast<Bits<T>>(~(Bits<T>{1} << (8 * sizeof(T) - 1)));

template <typename T>
bool all_finite(const T* x, std::size_t count) {
    Bits<T> non_finite = 0;
    for (std::size_t i = 0; i < count; ++i) non_finite |= (to_bits(x[i]) & kExponentMask<T>) == kExponentMask<T>;
    return non_finite == 0;
}

// The bits of max |x[i]| (finite x).
template <typename T>
Bits<T> largest_magnitude_bits(const T* x, std::size_t count) {
    Bits<T> largest = 0;
    for (std::size_t i = 0; i < count; ++i) largest = std::max(largest, to_bits(x[i]) & kMagnitudeMask<T>);
    return largest;
}

template <typename T>
void fill_nan(const SymEigProblem<T>& p) {
    const T nan = std::numeric_limits<T>::quiet_NaN();
    std::fill(p.eigenvalues, p.eigenvalues + p.n, nan);
    std::fill(p.eigenvectors, p.eigenvectors + p.n * p.n, nan);
}

template <typename T>
SymEigStatus decompose(const Engine<T>& engine, const SymEigProblem<T>& p, int threads) {
    const std::size_t n = p.n;
    if (n == 0) return SymEigStatus::ok;
    const T* a = p.matrix;
    if (!all_finite(a, n * n)) {
        fill_nan(p);
        return SymEigStatus::non_finite;
    }
    Bits<T> largest_bits = 0;
    for (std::size_t i = 0; i < n; ++i) largest_bits = std::max(largest_bits, largest_magnitude_bits(a + i * n, i + 1));
    const double largest = std::fabs(from_bits<T>(largest_bits));
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
    // Upper storage of the lower triangle: work[j][i] = A[i][j] for i >= j, by tiles that stay
    // in L1 (a column of A is n elements apart).
    constexpr std::size_t kTile = 32;
    for (std::size_t i0 = 0; i0 < n; i0 += kTile) {
        for (std::size_t j0 = 0; j0 <= i0; j0 += kTile) {
            const std::size_t i1 = std::min(n, i0 + kTile), j1 = std::min(n, j0 + kTile);
            for (std::size_t j = j0; j < j1; ++j) {
                for (std::size_t i = std::max(i0, j); i < i1; ++i) work[j * n + i] = static_cast<T>(a[i * n + j] * scale);
            }
        }
    }
    tridiagonalize(engine, work, n, ws, threads);
    T* z = p.eigenvectors;
    double* d = ws.diagonal.data();
    double* e = ws.offdiagonal.data();
    const T* vectors = work;  // Z^T, rows are eigenvectors
    bool solved = false;
    if (n > kDivideAndConquerSize) {
        ws.saved_d.assign(d, d + n);
        ws.saved_e.assign(e, e + n);
        for (auto* buffer : {&ws.dc_s, &ws.dc_pre, &ws.dc_ua, &ws.dc_ub, &ws.dc_gather}) buffer->resize(n * n);
        DivideAndConquer<T> dc{engine.ops, engine.secular, engine.gemm, d, e, n, ws.dc_s.data(), ws, threads};
        solved = dc.solve(0, n);
        if (solved) {
            // Row k keeps only its reflector (its diagonal is in d already).
            for (std::size_t k = 0; k < n; ++k) std::fill(work + k * n, work + k * n + k + 1, T(0));
            back_transform(engine.gemm, work, ws.taus.data(), n, ws.dc_s.data(), ws, threads);
            vectors = ws.dc_s.data();
        } else {
            std::copy(ws.saved_d.begin(), ws.saved_d.end(), d);
            std::copy(ws.saved_e.begin(), ws.saved_e.end(), e);
        }
    }
    if (!solved) {
        // Q^T is built in the output, the rotations turn it into Z^T, which goes to `work`.
        form_q_transposed(engine.ops, work, ws.taus.data(), n, z, threads);
        if (!tridiagonal_ql(engine.ops, d, e, n, z, n, ws, threads)) {
            fill_nan(p);
            return SymEigStatus::no_convergence;
        }
        std::copy(z, z + n * n, work);
    }

    ws.order.resize(n);
    std::iota(ws.order.begin(), ws.order.end(), std::size_t{0});
    std::stable_sort(ws.order.begin(), ws.order.end(), [d](std::size_t x, std::size_t y) { return d[x] < d[y]; });
    // Columns of the output in groups of kTile: each row of the group is one contiguous write.
    T signs[kTile];
    for (std::size_t i0 = 0; i0 < n; i0 += kTile) {
        const std::size_t count = std::min(kTile, n - i0);
        for (std::size_t c = 0; c < count; ++c) {
            const T* vector = vectors + ws.order[i0 + c] * n;
            const Bits<T> peak = largest_magnitude_bits(vector, n);
            std::size_t largest_at = 0;
            while (std::fabs(vector[largest_at]) != std::fabs(from_bits<T>(peak))) ++largest_at;
            signs[c] = vector[largest_at] < 0 ? T(-1) : T(1);
            p.eigenvalues[i0 + c] = static_cast<T>(std::ldexp(d[ws.order[i0 + c]], exponent));
        }
        for (std::size_t r = 0; r < n; ++r) {
            T* out = z + r * n + i0;
            for (std::size_t c = 0; c < count; ++c) out[c] = signs[c] * vectors[ws.order[i0 + c] * n + r];
        }
    }
    return SymEigStatus::ok;
}

template <typename T>
void run_batch(const Engine<T>& engine, const SymEigProblem<T>* problems, std::size_t count,
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
        status[index] = decompose(engine, problems[index], threads);
    }
    std::atomic<std::size_t> next{first_small};
    parallel_for(static_cast<std::size_t>(threads), 1, 1, threads, [&](std::size_t, std::size_t) {
        for (std::size_t taken; (taken = next.fetch_add(1)) < count;) {
            const std::size_t index = order[taken];
            status[index] = decompose(engine, problems[index], 1);
        }
    });
}

}  // namespace

void sym_eig_f32_with(const KernelTable& kernels, const SymEigProblem<float>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads) {
    run_batch(Engine<float>{kernels.sym_eig->f32, kernels.sym_eig->secular, kernels.linalg->gemm_f32}, problems,
              count, status, num_threads);
}

void sym_eig_f64_with(const KernelTable& kernels, const SymEigProblem<double>* problems,
                      std::size_t count, SymEigStatus* status, int num_threads) {
    run_batch(Engine<double>{kernels.sym_eig->f64, kernels.sym_eig->secular, kernels.linalg->gemm_f64}, problems,
              count, status, num_threads);
}

void sym_eig_f32(const SymEigProblem<float>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads) {
    sym_eig_f32_with(active_table(), problems, count, status, num_threads);
}

void sym_eig_f64(const SymEigProblem<double>* problems, std::size_t count, SymEigStatus* status,
                 int num_threads) {
    sym_eig_f64_with(active_table(), problems, count, status, num_threads);
}

}  // namespace codl
