// The dense factorizations behind codl::damped_cholesky / damped_inverse / cholesky_solve,
// written once and compiled by every ISA translation unit with its own flags and its own GEMM
// micro-kernel (the scalar reference, AVX2, AVX-512, SVE).
//
// The build defines CODL_ISA_NAMESPACE (the ISA namespace, cmake/CodlKernels.cmake); each
// including TU defines, before including,
// the tile types F32Tile / F64Tile in codl::CODL_ISA_NAMESPACE::(anonymous):
//   static constexpr bool fused;                // the ISA has FMA (used by the unblocked loops)
//   static constexpr std::size_t mr, nr;        // register tile: mr rows x nr columns of C
//   static void run(std::size_t k, const T* a, std::ptrdiff_t a_rs, std::ptrdiff_t a_cs,
//                   const T* b, T alpha, T* c, std::ptrdiff_t ldc, bool add);
// computing acc = sum_p a[i * a_rs + p * a_cs] * b[p * nr + j] (p ascending, one accumulator
// per element), acc *= alpha unless alpha is 1, then c[i * ldc + j] = add ? c[..] + acc : acc;
//   static bool pack_b(std::size_t k, std::size_t cols, const T* b, std::ptrdiff_t rs,
//                      std::ptrdiff_t cs, T* panel);
// panel[p * nr + j] = j < cols ? b[p * rs + j * cs] : 0, or false to leave it to plain loops;
//   static bool unpack_b(std::size_t k, std::size_t cols, const T* panel, T* b, std::ptrdiff_t rs,
//                        std::ptrdiff_t cs);
// the inverse for j < cols.
// Everything here has internal linkage: the same template compiled with AVX-512 flags must never
// be merged by the linker with its scalar twin.
//
// Algorithms (LAPACK's, recursive so nearly every flop is a GEMM):
//   potrf  A = L L^T:   L11 = potrf(A11); L21 = A21 L11^-T; A22 -= L21 L21^T; L22 = potrf(A22)
//   trtri  L^-1:        X22 = trtri(L22); X21 = -(X22 L21) L11^-1; X11 = trtri(L11)
//   lauum  Y^T Y:       X11 = lauum(Y11) + Y21^T Y21; X21 = Y22^T Y21; X22 = lauum(Y22)
//   trsm / trmm with a lower triangle on the left; every other case (upper, transposed, right
//   side) is the same routine on a transposed and/or reversed view (strides may be negative).
// Below kBase rows the unblocked loops run on panels of nr columns packed like the GEMM's B
// (so transposed views go through the tile's in-register transposes), vectorized along columns.
//
// Threads only split output columns or rows whose arithmetic does not depend on the split, and
// the recursion never depends on the thread count, so results are bit-identical for any
// num_threads.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "codl/linalg.h"
#include "codl/parallel.h"

#ifndef CODL_ISA_NAMESPACE
#error "CODL_ISA_NAMESPACE is undefined: build kernel files through codl_add_kernel_family"
#endif

namespace codl {
namespace CODL_ISA_NAMESPACE {
namespace {

using std::ptrdiff_t;
using std::size_t;

constexpr size_t kNoFailure = std::numeric_limits<size_t>::max();
// Unblocked below this many rows; recursion splits land on multiples of it. (Measured on Zen 4 for
// a ResNet-20 factor mix: 8 is as fast, 32 is 15% slower, unblocked solves of 32 rows 6% slower.)
constexpr size_t kBase = 16;
// Columns of a right-hand side per thread in a parallel solve are a multiple of this.
constexpr size_t kChunk = 64;
// A parallel step gives each thread at least this many multiply-adds.
constexpr double kMinMacsPerThread = 1 << 19;

template <class T>
struct View {
    T* p;
    ptrdiff_t rs, cs;
    T& operator()(size_t i, size_t j) const {
        return p[static_cast<ptrdiff_t>(i) * rs + static_cast<ptrdiff_t>(j) * cs];
    }
    View at(size_t i, size_t j) const { return {&(*this)(i, j), rs, cs}; }
    View t() const { return {p, cs, rs}; }
    // A rows x cols block read backwards in both directions: an upper triangle becomes lower.
    View reversed(size_t rows, size_t cols) const { return {&(*this)(rows - 1, cols - 1), -rs, -cs}; }
    View reversed_rows(size_t rows) const { return {&(*this)(rows - 1, 0), -rs, cs}; }
    operator View<const T>() const { return {p, rs, cs}; }
};

template <class T>
struct TileOf;
template <>
struct TileOf<float> {
    using type = F32Tile;
};
template <>
struct TileOf<double> {
    using type = F64Tile;
};

// Packing buffers, one set per thread, grown once and reused by every later call.
template <class T>
struct Workspace {
    std::vector<T> a, b;
};
template <class T>
Workspace<T>& workspace() {
    thread_local Workspace<T> buffers;
    return buffers;
}

constexpr size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

// ---- GEMM: C += alpha A B, B packed into panels, A read in place by the ISA's register tile ---

// panel[p * nr + j] = b(p, j) for p < kc, j < cols, zero for cols <= j < nr. The tile may do the
// common layouts (rows or columns of B contiguous) with vector loads and in-register transposes.
template <class T, class Tile>
void pack_b(size_t kc, size_t cols, View<const T> b, T* panel) {
    constexpr size_t nr = Tile::nr;
    if (Tile::pack_b(kc, cols, b.p, b.rs, b.cs, panel)) return;
    for (size_t p = 0; p < kc; ++p) {
        for (size_t j = 0; j < cols; ++j) panel[p * nr + j] = b(p, j);
        for (size_t j = cols; j < nr; ++j) panel[p * nr + j] = T(0);
    }
}

// lower_only: tiles wholly above C's diagonal may be skipped (callers that ignore C's strict
// upper triangle; every element computed has the same arithmetic either way).
template <class T>
void gemm(size_t m, size_t n, size_t k, T alpha, View<const T> a, View<const T> b, View<T> c,
          bool lower_only = false) {
    using Tile = typename TileOf<T>::type;
    constexpr size_t mr = Tile::mr, nr = Tile::nr;
    // A's kc x mr strip stays in L1 while B's kc x nc block streams from L2.
    constexpr size_t kc_max = 256;
    constexpr size_t nc_max = round_up(sizeof(T) == 4 ? 512 : 256, nr);
    if (m == 0 || n == 0 || k == 0) return;
    // The tile writes rows of C: make C's columns contiguous and ascending where they can be
    // (C^T = B^T A^T; columns reversed on both sides). Each element's arithmetic is unchanged.
    if (c.cs != 1 && c.cs != -1 && (c.rs == 1 || c.rs == -1)) {
        gemm<T>(n, m, k, alpha, b.t(), a.t(), c.t());
        return;
    }
    if (c.cs == -1) {
        lower_only = false;
        c = {&c(0, n - 1), c.rs, 1};
        b = {&b(0, n - 1), b.rs, -b.cs};
    }
    Workspace<T>& ws = workspace<T>();
    const size_t b_size = kc_max * round_up(std::min(n, nc_max), nr);
    if (ws.b.size() < b_size) ws.b.resize(b_size);
    if (ws.a.size() < (kc_max + 16) * mr) ws.a.resize((kc_max + 16) * mr);
    T* pb = ws.b.data();
    T edge[mr * nr];
    for (size_t pc = 0; pc < k; pc += kc_max) {
        const size_t kc = std::min(kc_max, k - pc);
        for (size_t jc = 0; jc < n; jc += nc_max) {
            const size_t nc = std::min(nc_max, n - jc);
            for (size_t jr = 0; jr < nc; jr += nr) {
                pack_b<T, Tile>(kc, std::min(nr, nc - jr), b.at(pc, jc + jr), pb + jr * kc);
            }
            for (size_t ir = 0; ir < m; ir += mr) {
                const size_t rows = std::min(mr, m - ir);
                // A strip that meets one B panel only is read where it lies. Otherwise it is
                // copied, contiguous along A's own fast direction: rows of a large matrix sit at
                // multiples of 4 KiB and would fight for the same L1 sets. The last, short strip
                // is padded with zero rows so the tile never reads past A.
                const T* strip = &a(ir, pc);
                ptrdiff_t strip_rs = a.rs, strip_cs = a.cs;
                T* pa = ws.a.data();
                if (rows < mr || (nc > nr && a.cs != 1 && a.cs != -1)) {
                    for (size_t p = 0; p < kc; ++p) {
                        for (size_t i = 0; i < rows; ++i) pa[p * mr + i] = a(ir + i, pc + p);
                        for (size_t i = rows; i < mr; ++i) pa[p * mr + i] = T(0);
                    }
                    strip = pa;
                    strip_rs = 1;
                    strip_cs = static_cast<ptrdiff_t>(mr);
                } else if (nc > nr) {
                    // Row by row; a row stride of kc_max + 16 keeps the rows off the same sets.
                    constexpr size_t stride = kc_max + 16;
                    for (size_t i = 0; i < mr; ++i) {
                        const T* src = &a(ir + i, pc);
                        T* dst = pa + i * stride;
                        if (a.cs == 1) {
                            for (size_t p = 0; p < kc; ++p) dst[p] = src[p];
                        } else {
                            for (size_t p = 0; p < kc; ++p) dst[p] = *(src - static_cast<ptrdiff_t>(p));
                        }
                    }
                    strip = pa;
                    strip_rs = static_cast<ptrdiff_t>(stride);
                    strip_cs = 1;
                }
                // Panels whose first column lies right of the strip's last row are skipped.
                const size_t panels_end = lower_only ? std::min(nc, ir + rows > jc ? ir + rows - jc : 0) : nc;
                for (size_t jr = 0; jr < panels_end; jr += nr) {
                    const size_t cols = std::min(nr, nc - jr);
                    if (rows == mr && cols == nr && c.cs == 1) {
                        Tile::run(kc, strip, strip_rs, strip_cs, pb + jr * kc, alpha, &c(ir, jc + jr), c.rs, true);
                    } else {
                        // Same arithmetic as a full tile (alpha acc, then C + it), element by element.
                        Tile::run(kc, strip, strip_rs, strip_cs, pb + jr * kc, alpha, edge,
                                  static_cast<ptrdiff_t>(nr), false);
                        for (size_t i = 0; i < rows; ++i) {
                            for (size_t j = 0; j < cols; ++j) c(ir + i, jc + jr + j) += edge[i * nr + j];
                        }
                    }
                }
            }
        }
    }
}

// C (lower triangle of n x n) += alpha A A^T, A n x k: one GEMM that skips the tiles above the
// diagonal; tiles across it also write part of C's strict upper triangle (callers never read it).
template <class T>
void syrk_lower(size_t n, size_t k, T alpha, View<const T> a, View<T> c) {
    gemm<T>(n, n, k, alpha, a, a.t(), c, true);
}

template <class T>
void syrk_lower_parallel(size_t n, size_t k, T alpha, View<const T> a, View<T> c, int threads) {
    const double macs = 0.5 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(k);
    if (threads <= 1 || macs < 2 * kMinMacsPerThread) {
        syrk_lower<T>(n, k, alpha, a, c);
        return;
    }
    // Row bands of equal triangle area: band t ends at row n sqrt((t + 1) / bands).
    const size_t bands = static_cast<size_t>(threads);
    size_t bounds[65];
    const size_t used = std::min<size_t>(bands, 64);
    bounds[0] = 0;
    for (size_t t = 1; t <= used; ++t) {
        const double edge = static_cast<double>(n) * std::sqrt(static_cast<double>(t) / static_cast<double>(used));
        bounds[t] = t == used ? n : std::min(n, round_up(static_cast<size_t>(edge), kBase));
        bounds[t] = std::max(bounds[t], bounds[t - 1]);
    }
    parallel_for(used, 1, 1, threads, [&](size_t first, size_t last) {
        for (size_t t = first; t < last; ++t) {
            const size_t r0 = bounds[t], r1 = bounds[t + 1];
            if (r1 == r0) continue;
            gemm<T>(r1 - r0, r0, k, alpha, a.at(r0, 0), a.t(), c.at(r0, 0));
            syrk_lower<T>(r1 - r0, k, alpha, a.at(r0, 0), c.at(r0, r0));
        }
    });
}

// ---- Unblocked kernels on small triangles (k <= kBase) -----------------------------------------

template <class T>
void load_lower(View<const T> l, size_t k, T* out) {
    for (size_t i = 0; i < k; ++i) {
        for (size_t j = 0; j <= i; ++j) out[i * kBase + j] = l(i, j);
    }
}

// A rows x width block of B <-> panel (row stride nr, zero beyond width): the GEMM's B packing,
// and its inverse, so transposed blocks go through the tile's in-register transposes.
template <class T>
void load_panel(size_t rows, size_t width, View<const T> b, T* panel) {
    pack_b<T, typename TileOf<T>::type>(rows, width, b, panel);
}
template <class T>
void store_panel(size_t rows, size_t width, const T* panel, View<T> b) {
    using Tile = typename TileOf<T>::type;
    constexpr size_t nr = Tile::nr;
    if (Tile::unpack_b(rows, width, panel, b.p, b.rs, b.cs)) return;
    for (size_t i = 0; i < rows; ++i)
        for (size_t j = 0; j < width; ++j) b(i, j) = panel[i * nr + j];
}

// a * b + c, fused where the ISA has FMA (then the same instruction as the GEMM tile's).
template <class T>
inline T madd(T a, T b, T c) {
    if constexpr (TileOf<T>::type::fused) {
        return std::fma(a, b, c);
    } else {
        return a * b + c;
    }
}

// B (k x m) = L^-1 B, L lower k x k: forward substitution (b_i - sum_{p<i} l_ip x_p, p ascending,
// times 1 / l_ii), nr columns at a time in a panel.
template <class T>
void trsm_base(View<const T> l, View<T> b, size_t k, size_t m) {
    constexpr size_t w = TileOf<T>::type::nr;
    T lc[kBase * kBase], inverse[kBase];
    T tmp[kBase * w];
    load_lower(l, k, lc);
    for (size_t j = 0; j < k; ++j) inverse[j] = T(1) / lc[j * kBase + j];
    for (size_t c0 = 0; c0 < m; c0 += w) {
        const size_t width = std::min(w, m - c0);
        const View<T> block = b.at(0, c0);
        load_panel<T>(k, width, block, tmp);
        for (size_t j = 0; j < k; ++j) {
            T* xj = tmp + j * w;
            const T d = inverse[j];
            for (size_t x = 0; x < w; ++x) xj[x] *= d;
            for (size_t p = j + 1; p < k; ++p) {
                const T f = -lc[p * kBase + j];
                T* xp = tmp + p * w;
                for (size_t x = 0; x < w; ++x) xp[x] = madd(f, xj[x], xp[x]);
            }
        }
        store_panel<T>(k, width, tmp, block);
    }
}

// B (k x m) = +-L B, L lower, in place (rows from the bottom up, each needing only rows above it).
template <class T>
void trmm_base(View<const T> l, View<T> b, size_t k, size_t m, bool negate) {
    constexpr size_t w = TileOf<T>::type::nr;
    T lc[kBase * kBase];
    T tmp[kBase * w];
    load_lower(l, k, lc);
    if (negate) {
        for (size_t i = 0; i < k; ++i)
            for (size_t j = 0; j <= i; ++j) lc[i * kBase + j] = -lc[i * kBase + j];
    }
    for (size_t c0 = 0; c0 < m; c0 += w) {
        const size_t width = std::min(w, m - c0);
        const View<T> block = b.at(0, c0);
        load_panel<T>(k, width, block, tmp);
        for (size_t i = k; i-- > 0;) {
            T* xi = tmp + i * w;
            const T d = lc[i * kBase + i];
            for (size_t x = 0; x < w; ++x) xi[x] *= d;
            for (size_t p = 0; p < i; ++p) {
                const T f = lc[i * kBase + p];
                const T* xp = tmp + p * w;
                for (size_t x = 0; x < w; ++x) xi[x] = madd(f, xp[x], xi[x]);
            }
        }
        store_panel<T>(k, width, tmp, block);
    }
}

// Cholesky-Banachiewicz on a small diagonal block; returns the failing row or kNoFailure.
template <class T>
size_t potrf_base(View<T> a, size_t k) {
    T lc[kBase * kBase];
    load_lower<T>(a, k, lc);
    for (size_t i = 0; i < k; ++i) {
        for (size_t j = 0; j <= i; ++j) {
            T s = lc[i * kBase + j];
            for (size_t p = 0; p < j; ++p) s -= lc[i * kBase + p] * lc[j * kBase + p];
            if (j < i) {
                lc[i * kBase + j] = s / lc[j * kBase + j];
            } else {
                if (!(s > T(0)) || !std::isfinite(s)) return i;
                lc[i * kBase + i] = std::sqrt(s);
            }
        }
    }
    for (size_t i = 0; i < k; ++i)
        for (size_t j = 0; j <= i; ++j) a(i, j) = lc[i * kBase + j];
    return kNoFailure;
}

template <class T>
void trtri_base(View<T> l, size_t k) {
    T lc[kBase * kBase], x[kBase * kBase];
    load_lower<T>(l, k, lc);
    for (size_t j = 0; j < k; ++j) {
        x[j * kBase + j] = T(1) / lc[j * kBase + j];
        for (size_t i = j + 1; i < k; ++i) {
            T s = T(0);
            for (size_t p = j; p < i; ++p) s += lc[i * kBase + p] * x[p * kBase + j];
            x[i * kBase + j] = -s / lc[i * kBase + i];
        }
    }
    for (size_t i = 0; i < k; ++i)
        for (size_t j = 0; j <= i; ++j) l(i, j) = x[i * kBase + j];
}

// Lower triangle of Y^T Y for lower Y, in place.
template <class T>
void lauum_base(View<T> y, size_t k) {
    T yc[kBase * kBase];
    load_lower<T>(y, k, yc);
    for (size_t i = 0; i < k; ++i) {
        for (size_t j = 0; j <= i; ++j) {
            T s = T(0);
            for (size_t p = i; p < k; ++p) s += yc[p * kBase + i] * yc[p * kBase + j];
            y(i, j) = s;
        }
    }
}

// ---- Recursive triangular routines -------------------------------------------------------------

size_t split(size_t n) { return round_up(n / 2, kBase); }

// B (k x m) = L^-1 B, L lower k x k.
template <class T>
void trsm(View<const T> l, View<T> b, size_t k, size_t m, int threads) {
    if (k == 0 || m == 0) return;
    const double macs = 0.5 * static_cast<double>(k) * static_cast<double>(k) * static_cast<double>(m);
    if (threads > 1 && macs >= 2 * kMinMacsPerThread) {
        const size_t per = std::max<size_t>(
            kChunk, static_cast<size_t>(kMinMacsPerThread / (macs / static_cast<double>(m))));
        parallel_for(m, kChunk, per, threads, [&](size_t begin, size_t end) {
            trsm<T>(l, b.at(0, begin), k, end - begin, 1);
        });
        return;
    }
    if (k <= kBase) {
        trsm_base<T>(l, b, k, m);
        return;
    }
    const size_t k1 = split(k);
    trsm<T>(l, b, k1, m, 1);
    gemm<T>(k - k1, m, k1, T(-1), l.at(k1, 0), b, b.at(k1, 0));
    trsm<T>(l.at(k1, k1), b.at(k1, 0), k - k1, m, 1);
}

// B (k x m) = L B (or -L B), L lower k x k, in place.
template <class T>
void trmm(View<const T> l, View<T> b, size_t k, size_t m, int threads, bool negate = false) {
    if (k == 0 || m == 0) return;
    const double macs = 0.5 * static_cast<double>(k) * static_cast<double>(k) * static_cast<double>(m);
    if (threads > 1 && macs >= 2 * kMinMacsPerThread) {
        const size_t per = std::max<size_t>(
            kChunk, static_cast<size_t>(kMinMacsPerThread / (macs / static_cast<double>(m))));
        parallel_for(m, kChunk, per, threads, [&](size_t begin, size_t end) {
            trmm<T>(l, b.at(0, begin), k, end - begin, 1, negate);
        });
        return;
    }
    if (k <= kBase) {
        trmm_base<T>(l, b, k, m, negate);
        return;
    }
    const size_t k1 = split(k);
    trmm<T>(l.at(k1, k1), b.at(k1, 0), k - k1, m, 1, negate);
    gemm<T>(k - k1, m, k1, negate ? T(-1) : T(1), l.at(k1, 0), b, b.at(k1, 0));
    trmm<T>(l, b, k1, m, 1, negate);
}

// A = L L^T in place (lower triangle); returns the first failing pivot or kNoFailure.
template <class T>
size_t potrf(View<T> a, size_t n, int threads) {
    if (n <= kBase) return potrf_base<T>(a, n);
    const size_t n1 = split(n), n2 = n - n1;
    const size_t first = potrf<T>(a, n1, threads);
    if (first != kNoFailure) return first;
    // L21 = A21 L11^-T, i.e. L11 L21^T = A21^T.
    trsm<T>(a, a.at(n1, 0).t(), n1, n2, threads);
    syrk_lower_parallel<T>(n2, n1, T(-1), a.at(n1, 0), a.at(n1, n1), threads);
    const size_t second = potrf<T>(a.at(n1, n1), n2, threads);
    return second == kNoFailure ? kNoFailure : n1 + second;
}

// L^-1 in place (lower triangle). As LAPACK's trtri: X21 = -(X22 L21) L11^-1, multiplying by the
// already inverted X22 and solving with the original L11 (about twice as accurate in float as
// two solves with the original blocks).
template <class T>
void trtri(View<T> l, size_t n, int threads) {
    if (n <= kBase) {
        trtri_base<T>(l, n);
        return;
    }
    const size_t n1 = split(n), n2 = n - n1;
    const View<T> l21 = l.at(n1, 0);
    trtri<T>(l.at(n1, n1), n2, threads);
    trmm<T>(l.at(n1, n1), l21, n2, n1, threads, true);
    // (-X22 L21) L11^-1: L11^T Z^T = (-X22 L21)^T, an upper solve, i.e. a lower one read backwards.
    trsm<T>(l.t().reversed(n1, n1), l21.t().reversed_rows(n1), n1, n2, threads);
    trtri<T>(l, n1, threads);
}

// Lower triangle of Y^T Y in place, Y lower.
template <class T>
void lauum(View<T> y, size_t n, int threads) {
    if (n <= kBase) {
        lauum_base<T>(y, n);
        return;
    }
    const size_t n1 = split(n), n2 = n - n1;
    const View<T> y21 = y.at(n1, 0), y22 = y.at(n1, n1);
    lauum<T>(y, n1, threads);
    syrk_lower_parallel<T>(n1, n2, T(1), y21.t(), y, threads);
    // Y21 = Y22^T Y21: an upper multiply, i.e. a lower one read backwards.
    trmm<T>(y22.t().reversed(n2, n2), y21.reversed_rows(n2), n2, n1, threads);
    lauum<T>(y22, n2, threads);
}

// ---- Whole-matrix entry points -----------------------------------------------------------------

template <class T>
void fill_nan(T* out, size_t n) {
    std::fill(out, out + n * n, std::numeric_limits<T>::quiet_NaN());
}

// NaN and Inf are the values whose exponent bits are all ones; an integer test vectorizes.
template <class T>
struct FiniteBits {
    using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    static constexpr Bits exponent =
        static_cast<Bits>(sizeof(T) == 4 ? 0x7F800000ull : 0x7FF0000000000000ull);
    // Nonzero if any of values[0..count) is NaN or Inf (an OR-reduction, no early exit).
    static Bits any_non_finite(const T* values, size_t count) {
        Bits bad = 0;
        for (size_t j = 0; j < count; ++j) {
            Bits bits;
            std::memcpy(&bits, values + j, sizeof bits);
            bad |= static_cast<Bits>((bits & exponent) == exponent);
        }
        return bad;
    }
};

// out = lower triangle of input + damping I; false if the input (either triangle: only the lower
// one is read for the result, but an upper-triangle NaN says the matrix is not what the caller
// thinks it is) holds NaN or Inf.
template <class T>
bool load_damped(const T* input, T* out, size_t n, T damping) {
    using Bits = typename FiniteBits<T>::Bits;
    Bits bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const T* row = input + i * n;
        T* dst = out + i * n;
        bad |= FiniteBits<T>::any_non_finite(row, n);
        std::copy(row, row + i + 1, dst);
        dst[i] += damping;
    }
    return bad == 0;
}

// A finite input can still overflow (the inverse of eye * 1e-40 in float32): the result is
// checked, one read pass over the n x n output.
template <class T>
bool all_finite(const T* values, size_t count) {
    return FiniteBits<T>::any_non_finite(values, count) == 0;
}

template <class T>
LinalgResult factor(const T* input, T* out, size_t n, T damping, int threads) {
    if (!load_damped(input, out, n, damping)) {
        fill_nan(out, n);
        return {LinalgStatus::non_finite, 0};
    }
    // A finite diagonal plus a finite damping can overflow (max + max): not the caller's NaN,
    // and no failure of positive definiteness either.
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(out[i * n + i])) {
            fill_nan(out, n);
            return {LinalgStatus::non_finite_result, 0};
        }
    }
    const size_t pivot = potrf<T>(View<T>{out, static_cast<ptrdiff_t>(n), 1}, n, threads);
    if (pivot != kNoFailure) {
        fill_nan(out, n);
        return {LinalgStatus::not_positive_definite, pivot};
    }
    return {};
}

template <class T>
LinalgResult damped_cholesky(const T* input, T* out, size_t n, T damping, int threads) {
    const LinalgResult result = factor(input, out, n, damping, threads);
    if (result.status != LinalgStatus::ok) return result;
    for (size_t i = 0; i < n; ++i) std::fill(out + i * n + i + 1, out + (i + 1) * n, T(0));
    if (!all_finite(out, n * n)) {
        fill_nan(out, n);
        return {LinalgStatus::non_finite_result, 0};
    }
    return result;
}

// Copies the lower triangle onto the upper one: bands of nr rows, each block left of the
// diagonal transposed through a B panel (the tile's in-register transposes).
template <class T>
void mirror_lower(T* a, size_t n) {
    constexpr size_t w = TileOf<T>::type::nr;
    constexpr size_t depth = 256;
    T panel[depth * w];
    const ptrdiff_t ld = static_cast<ptrdiff_t>(n);
    for (size_t i0 = 0; i0 < n; i0 += w) {
        const size_t rows = std::min(w, n - i0);
        // Block rows i0.. (width `rows`) x columns j0.. (depth) -> upper rows j0.., columns i0..
        for (size_t j0 = 0; j0 < i0; j0 += depth) {
            const size_t cols = std::min(depth, i0 - j0);
            load_panel<T>(cols, rows, View<const T>{a + i0 * n + j0, 1, ld}, panel);
            store_panel<T>(cols, rows, panel, View<T>{a + j0 * n + i0, ld, 1});
        }
        for (size_t i = i0; i < i0 + rows; ++i)
            for (size_t j = i0; j < i; ++j) a[j * n + i] = a[i * n + j];
    }
}

template <class T>
LinalgResult damped_inverse(const T* input, T* out, size_t n, T damping, int threads) {
    const LinalgResult result = factor(input, out, n, damping, threads);
    if (result.status != LinalgStatus::ok) return result;
    const View<T> a{out, static_cast<ptrdiff_t>(n), 1};
    trtri<T>(a, n, threads);
    lauum<T>(a, n, threads);
    mirror_lower(out, n);
    if (!all_finite(out, n * n)) {
        fill_nan(out, n);
        return {LinalgStatus::non_finite_result, 0};
    }
    return result;
}

template <class T>
void cholesky_solve(const T* factor_data, size_t n, const T* rhs, T* out, size_t m, SolveSide side,
                    int threads) {
    if (out != rhs) std::copy(rhs, rhs + n * m, out);
    if (n == 0 || m == 0) return;
    const View<const T> l{factor_data, static_cast<ptrdiff_t>(n), 1};
    // Right side: X (L L^T) = B is (L L^T) X^T = B^T, the left solve on the transposed view.
    const View<T> b = side == SolveSide::left ? View<T>{out, static_cast<ptrdiff_t>(m), 1}
                                              : View<T>{out, 1, static_cast<ptrdiff_t>(n)};
    trsm<T>(l, b, n, m, threads);
    trsm<T>(l.t().reversed(n, n), b.reversed_rows(n), n, m, threads);
}

template <class T>
void gemm_entry(size_t m, size_t n, size_t k, T alpha, const T* a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                const T* b, ptrdiff_t b_rs, ptrdiff_t b_cs, T* c, ptrdiff_t c_rs, ptrdiff_t c_cs) {
    gemm<T>(m, n, k, alpha, View<const T>{a, a_rs, a_cs}, View<const T>{b, b_rs, b_cs},
            View<T>{c, c_rs, c_cs});
}

constexpr LinalgKernels make_linalg_kernels() {
    return {&gemm_entry<float>,          &gemm_entry<double>,          &damped_cholesky<float>,
            &damped_cholesky<double>,    &damped_inverse<float>,       &damped_inverse<double>,
            &cholesky_solve<float>,      &cholesky_solve<double>};
}

}  // namespace
}  // namespace CODL_ISA_NAMESPACE
}  // namespace codl
