// The dense factorizations of every ISA this CPU runs: the GEMM against the scalar reference and
// a long double product (strided, transposed and reversed views included); Cholesky factors,
// inverses and solves against double (float) or long double (double) residuals; NaN/Inf and
// not-positive-definite statuses; bit-identical results for 1 and 2 threads; symmetric packing.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/linalg.h"
#include "harness.h"

namespace {

using codl::IsaLevel;
using codl::LinalgKernels;
using codl::LinalgStatus;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(11);
    return generator;
}

const LinalgKernels& of(IsaLevel isa) { return *codl::kernel_table(isa)->linalg; }

// Reference arithmetic: double is ample for float results; long double (x87 80-bit on x86) for
// double ones. On aarch64 long double is software quad, slow under qemu, so the largest
// double-reference checks are x86 only.
template <class T>
using Wide = std::conditional_t<std::is_same_v<T, float>, double, long double>;
constexpr bool kFastLongDouble = std::numeric_limits<long double>::digits <= 64;

template <class T>
std::vector<T> normal(std::size_t count) {
    std::normal_distribution<double> dist(0.0, 1.0);
    std::vector<T> v(count);
    for (auto& x : v) x = static_cast<T>(dist(rng()));
    return v;
}

// F = X X^T / n with X n x n: symmetric positive semi-definite, condition number ~n^2 or worse.
// Damping 0.1 keeps it comfortably conditioned.
template <class T>
std::vector<T> spd(std::size_t n) {
    const std::vector<T> x = normal<T>(n * n);
    std::vector<T> f(n * n);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j <= i; ++j) {
            Wide<T> s = 0;
            for (std::size_t p = 0; p < n; ++p) s += static_cast<Wide<T>>(x[i * n + p]) * x[j * n + p];
            f[i * n + j] = f[j * n + i] = static_cast<T>(s / static_cast<Wide<T>>(n));
        }
    }
    return f;
}

template <class T>
constexpr double eps() {
    return std::numeric_limits<T>::epsilon();
}

template <class T>
void gemm_call(const LinalgKernels& k, std::size_t m, std::size_t n, std::size_t kk, T alpha, const T* a,
               std::ptrdiff_t ars, std::ptrdiff_t acs, const T* b, std::ptrdiff_t brs, std::ptrdiff_t bcs, T* c,
               std::ptrdiff_t crs, std::ptrdiff_t ccs) {
    if constexpr (sizeof(T) == 4) {
        k.gemm_f32(m, n, kk, alpha, a, ars, acs, b, brs, bcs, c, crs, ccs);
    } else {
        k.gemm_f64(m, n, kk, alpha, a, ars, acs, b, brs, bcs, c, crs, ccs);
    }
}

// Views of an m x k, k x n and m x n problem in every layout the factorizations use.
struct Layout {
    const char* name;
    bool a_t, b_t, c_t, c_reversed_cols;
};
constexpr Layout kLayouts[] = {{"NN", false, false, false, false},
                               {"TN", true, false, false, false},
                               {"NT", false, true, false, false},
                               {"TT-Ct", true, true, true, false},
                               {"NN-Crev", false, false, false, true},
                               {"NT-Ct-rev", false, true, true, true}};

template <class T>
void check_gemm(IsaLevel isa, std::size_t m, std::size_t n, std::size_t k, const Layout& layout) {
    const std::vector<T> a = normal<T>(m * k), b = normal<T>(k * n), c0 = normal<T>(m * n);
    // a stored m x k (or k x m when transposed), etc.; element accessors in logical indices.
    const std::ptrdiff_t ars = layout.a_t ? 1 : static_cast<std::ptrdiff_t>(k);
    const std::ptrdiff_t acs = layout.a_t ? static_cast<std::ptrdiff_t>(m) : 1;
    const std::ptrdiff_t brs = layout.b_t ? 1 : static_cast<std::ptrdiff_t>(n);
    const std::ptrdiff_t bcs = layout.b_t ? static_cast<std::ptrdiff_t>(k) : 1;
    std::ptrdiff_t crs = layout.c_t ? 1 : static_cast<std::ptrdiff_t>(n);
    std::ptrdiff_t ccs = layout.c_t ? static_cast<std::ptrdiff_t>(m) : 1;
    std::ptrdiff_t c_origin = 0;
    if (layout.c_reversed_cols) {
        c_origin = static_cast<std::ptrdiff_t>(n - 1) * ccs;
        ccs = -ccs;
    }
    auto c_at = [&](std::size_t i, std::size_t j) {
        return c_origin + static_cast<std::ptrdiff_t>(i) * crs + static_cast<std::ptrdiff_t>(j) * ccs;
    };
    const T alpha = T(-1.5);
    std::vector<T> c = c0, c_ref = c0;
    gemm_call<T>(of(isa), m, n, k, alpha, a.data(), ars, acs, b.data(), brs, bcs, c.data() + c_origin, crs, ccs);
    gemm_call<T>(codl::ref::linalg_kernels, m, n, k, alpha, a.data(), ars, acs, b.data(), brs, bcs,
                 c_ref.data() + c_origin, crs, ccs);
    const std::string at = std::string(codl::isa_name(isa)) + " " + layout.name + " m=" + std::to_string(m) +
                           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " T=" + std::to_string(sizeof(T));
    double worst = 0;
    for (std::size_t i = 0; i < m; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
            long double exact = c0[static_cast<std::size_t>(c_at(i, j))], magnitude = std::fabs(exact);
            for (std::size_t p = 0; p < k; ++p) {
                const long double prod = static_cast<long double>(alpha) * a[static_cast<std::size_t>(
                                                                               static_cast<std::ptrdiff_t>(i) * ars +
                                                                               static_cast<std::ptrdiff_t>(p) * acs)] *
                                         b[static_cast<std::size_t>(static_cast<std::ptrdiff_t>(p) * brs +
                                                                    static_cast<std::ptrdiff_t>(j) * bcs)];
                exact += prod;
                magnitude += std::fabs(prod);
            }
            const std::size_t idx = static_cast<std::size_t>(c_at(i, j));
            // Standard bound for a length-k dot product plus the final addition, both variants.
            const double bound = (static_cast<double>(k) + 2) * eps<T>() * static_cast<double>(magnitude);
            const double err = static_cast<double>(std::fabs(static_cast<long double>(c[idx]) - exact));
            const double err_ref = static_cast<double>(std::fabs(static_cast<long double>(c_ref[idx]) - exact));
            worst = std::max(worst, err / bound);
            CHECK_MSG(err <= bound && err_ref <= bound, at);
            if (err > bound) return;
        }
    }
    (void)worst;
}

TEST_CASE("linalg gemm: every ISA against the scalar reference and long double, all layouts") {
    std::vector<std::size_t> sizes = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 47, 64, 70};
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (const Layout& layout : kLayouts) {
            for (std::size_t i = 0; i < 20; ++i) {
                const std::size_t m = sizes[rng()() % sizes.size()], n = sizes[rng()() % sizes.size()],
                                  k = sizes[rng()() % sizes.size()];
                check_gemm<float>(isa, m, n, k, layout);
                check_gemm<double>(isa, m, n, k, layout);
            }
        }
        // Beyond one k block (256) and one n block (512 / 256), with edges.
        check_gemm<float>(isa, 37, 531, 300, kLayouts[0]);
        check_gemm<double>(isa, 29, 270, 261, kLayouts[2]);
        check_gemm<float>(isa, 131, 77, 513, kLayouts[3]);
    });
}

template <class T>
codl::LinalgResult cholesky(const LinalgKernels& k, const T* in, T* out, std::size_t n, T damping, int threads) {
    if constexpr (sizeof(T) == 4) return k.damped_cholesky_f32(in, out, n, damping, threads);
    else return k.damped_cholesky_f64(in, out, n, damping, threads);
}
template <class T>
codl::LinalgResult inverse(const LinalgKernels& k, const T* in, T* out, std::size_t n, T damping, int threads) {
    if constexpr (sizeof(T) == 4) return k.damped_inverse_f32(in, out, n, damping, threads);
    else return k.damped_inverse_f64(in, out, n, damping, threads);
}
template <class T>
void solve(const LinalgKernels& k, const T* l, std::size_t n, const T* b, T* x, std::size_t m, codl::SolveSide side,
           int threads) {
    if constexpr (sizeof(T) == 4) k.cholesky_solve_f32(l, n, b, x, m, side, threads);
    else k.cholesky_solve_f64(l, n, b, x, m, side, threads);
}

// ||L L^T - A||_F / ||A||_F, A = F + damping I.
template <class T>
double reconstruction_error(const std::vector<T>& f, T damping, const std::vector<T>& l, std::size_t n) {
    Wide<T> err = 0, norm = 0;
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
            Wide<T> s = 0;
            for (std::size_t p = 0; p <= std::min(i, j); ++p) s += static_cast<Wide<T>>(l[i * n + p]) * l[j * n + p];
            const Wide<T> a = static_cast<Wide<T>>(f[i * n + j]) + (i == j ? damping : T(0));
            err += (s - a) * (s - a);
            norm += a * a;
        }
    }
    return static_cast<double>(std::sqrt(err / norm));
}

// ||A X - I||_F / sqrt(n).
template <class T>
double inverse_residual(const std::vector<T>& f, T damping, const std::vector<T>& x, std::size_t n) {
    Wide<T> err = 0;
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
            Wide<T> s = 0;
            for (std::size_t p = 0; p < n; ++p) {
                const Wide<T> a = static_cast<Wide<T>>(f[i * n + p]) + (i == p ? damping : T(0));
                s += a * x[p * n + j];
            }
            s -= i == j ? 1 : 0;
            err += s * s;
        }
    }
    return static_cast<double>(std::sqrt(err / static_cast<Wide<T>>(n)));
}

template <class T>
void check_factorizations(IsaLevel isa, std::size_t n, bool with_inverse_residual) {
    const std::string at = std::string(codl::isa_name(isa)) + " n=" + std::to_string(n) + " T=" + std::to_string(sizeof(T));
    if (n == 0) {
        T nothing = T(0);
        CHECK_MSG(cholesky<T>(of(isa), &nothing, &nothing, 0, T(1), 1).status == LinalgStatus::ok, at);
        CHECK_MSG(inverse<T>(of(isa), &nothing, &nothing, 0, T(1), 1).status == LinalgStatus::ok, at);
        return;
    }
    std::vector<T> f = spd<T>(n);
    // Finite noise in the upper triangle: it must never be read (NaN there is an error, below).
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) f[i * n + j] = T(1e6) * static_cast<T>(1 + (i * 7 + j) % 5);
    std::vector<T> lower = f;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) lower[i * n + j] = f[j * n + i];
    const T damping = T(0.1);
    std::vector<T> l(n * n, T(7)), x(n * n, T(7));
    const codl::LinalgResult rc = cholesky<T>(of(isa), f.data(), l.data(), n, damping, 1);
    CHECK_MSG(rc.status == LinalgStatus::ok, at);
    bool upper_zero = true;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = i + 1; j < n; ++j) upper_zero &= l[i * n + j] == T(0);
    CHECK_MSG(upper_zero, at);
    const double rec = reconstruction_error(lower, damping, l, n);
    CHECK_MSG(rec < 20 * eps<T>() * std::sqrt(static_cast<double>(n) + 1), at + " reconstruction " + std::to_string(rec));

    const codl::LinalgResult ri = inverse<T>(of(isa), f.data(), x.data(), n, damping, 1);
    CHECK_MSG(ri.status == LinalgStatus::ok, at);
    bool symmetric = true;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < i; ++j) symmetric &= x[i * n + j] == x[j * n + i];
    CHECK_MSG(symmetric, at);
    if (with_inverse_residual) {
        // kappa <= ~ (max eigenvalue + 0.1) / 0.1 ~ 40; the bound allows n-proportional growth.
        const double res = inverse_residual(lower, damping, x, n);
        CHECK_MSG(res < 2000 * eps<T>() * (1 + static_cast<double>(n) / 64), at + " inverse residual " + std::to_string(res));
    }

    // Solves on both sides against the factor just computed.
    const std::size_t m = 1 + rng()() % 40;
    for (codl::SolveSide side : {codl::SolveSide::left, codl::SolveSide::right}) {
        const std::vector<T> b = normal<T>(n * m);
        std::vector<T> sol(n * m);
        solve<T>(of(isa), l.data(), n, b.data(), sol.data(), m, side, 1);
        Wide<T> err = 0, norm = 0;
        for (std::size_t r = 0; r < n; ++r) {
            for (std::size_t c = 0; c < m; ++c) {
                // left: (A X)[r, c]; right: (X A)[c, r]
                Wide<T> s = 0;
                for (std::size_t p = 0; p < n; ++p) {
                    const Wide<T> a = static_cast<Wide<T>>(lower[r * n + p]) + (r == p ? damping : T(0));
                    s += a * (side == codl::SolveSide::left ? sol[p * m + c] : sol[c * n + p]);
                }
                const Wide<T> want = side == codl::SolveSide::left ? b[r * m + c] : b[c * n + r];
                err += (s - want) * (s - want);
                norm += want * want;
            }
        }
        const double rel = static_cast<double>(std::sqrt(err / norm));
        CHECK_MSG(rel < 500 * eps<T>() * (1 + static_cast<double>(n) / 64),
                  at + (side == codl::SolveSide::left ? " left" : " right") + " solve " + std::to_string(rel));
    }
}

TEST_CASE("linalg factorizations: Cholesky, inverse and solves of every ISA, sizes 1..70 and past block edges") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n = 0; n <= 70; ++n) {
            check_factorizations<float>(isa, n, true);
            check_factorizations<double>(isa, n, true);
        }
        for (std::size_t n : {127, 128, 129}) {
            check_factorizations<float>(isa, n, true);
            check_factorizations<double>(isa, n, true);
        }
        if (!codl_test::emulated()) {
            check_factorizations<float>(isa, 300, false);
            if (kFastLongDouble) check_factorizations<double>(isa, 300, false);
        }
    });
}

TEST_CASE("linalg inverse of n=577 (several recursion levels) against a double residual") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        if (isa == IsaLevel::scalar && codl_test::runnable_isas().size() > 1) return;  // slow; others cover it
        check_factorizations<float>(isa, 577, true);
    });
}

template <class T>
void check_failures(IsaLevel isa) {
    const std::string at = std::string(codl::isa_name(isa)) + " T=" + std::to_string(sizeof(T));
    for (std::size_t n : {1, 5, 40, 150}) {
        for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                            -std::numeric_limits<T>::infinity()}) {
            std::vector<T> f = spd<T>(n), out(n * n);
            const std::size_t i = rng()() % n, j = rng()() % (i + 1);
            f[i * n + j] = bad;  // lower triangle: read
            for (bool inv : {false, true}) {
                const codl::LinalgResult r = inv ? inverse<T>(of(isa), f.data(), out.data(), n, T(1), 1)
                                                 : cholesky<T>(of(isa), f.data(), out.data(), n, T(1), 1);
                CHECK_MSG(r.status == LinalgStatus::non_finite, at + " n=" + std::to_string(n));
                CHECK_MSG(std::isnan(out[0]) && std::isnan(out[n * n - 1]), at);
            }
        }
        // Diagonal with one negative entry at row p: not positive definite at exactly p.
        for (std::size_t p : {std::size_t{0}, n / 2, n - 1}) {
            std::vector<T> f(n * n, T(0)), out(n * n);
            for (std::size_t i = 0; i < n; ++i) f[i * n + i] = T(2);
            f[p * n + p] = T(-3);
            for (bool inv : {false, true}) {
                const codl::LinalgResult r = inv ? inverse<T>(of(isa), f.data(), out.data(), n, T(0.5), 1)
                                                 : cholesky<T>(of(isa), f.data(), out.data(), n, T(0.5), 1);
                CHECK_MSG(r.status == LinalgStatus::not_positive_definite && r.pivot == p,
                          at + " n=" + std::to_string(n) + " p=" + std::to_string(p) + " got pivot " + std::to_string(r.pivot));
                CHECK_MSG(std::isnan(out[n * n - 1]), at);
            }
        }
        // A rank-deficient PSD matrix without damping: not PD (the pivot is where it breaks).
        {
            std::vector<T> f(n * n, T(1)), out(n * n);  // all ones: rank 1
            const codl::LinalgResult r = cholesky<T>(of(isa), f.data(), out.data(), n, T(0), 1);
            if (n > 1) CHECK_MSG(r.status == LinalgStatus::not_positive_definite && r.pivot >= 1, at);
        }
        // NaN/Inf in the upper triangle (not read for the result) is still reported.
        if (n > 1) {
            for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
                std::vector<T> f = spd<T>(n), out(n * n);
                const std::size_t j = 1 + rng()() % (n - 1), i = rng()() % j;  // i < j: upper
                f[i * n + j] = bad;
                for (bool inv : {false, true}) {
                    const codl::LinalgResult r = inv ? inverse<T>(of(isa), f.data(), out.data(), n, T(1), 1)
                                                     : cholesky<T>(of(isa), f.data(), out.data(), n, T(1), 1);
                    CHECK_MSG(r.status == LinalgStatus::non_finite, at + " upper n=" + std::to_string(n));
                    CHECK_MSG(std::isnan(out[0]) && std::isnan(out[n * n - 1]), at);
                }
            }
        }
        // A finite input whose inverse overflows (tiny * I): reported, NaN outputs, never Inf.
        {
            const T tiny = sizeof(T) == 4 ? T(1e-40) : T(1e-310);  // subnormal: 1 / tiny > max
            std::vector<T> f(n * n, T(0)), out(n * n);
            for (std::size_t i = 0; i < n; ++i) f[i * n + i] = tiny;
            const codl::LinalgResult r = inverse<T>(of(isa), f.data(), out.data(), n, T(0), 1);
            CHECK_MSG(r.status == LinalgStatus::non_finite_result, at + " tiny n=" + std::to_string(n));
            CHECK_MSG(std::isnan(out[0]) && std::isnan(out[n * n - 1]), at);
            // Its Cholesky factor (sqrt(tiny)) is finite and fine.
            CHECK_MSG(cholesky<T>(of(isa), f.data(), out.data(), n, T(0), 1).status == LinalgStatus::ok, at);
            CHECK_MSG(out[0] == std::sqrt(tiny), at);
        }
        // Damping that overflows the diagonal: the factor would be Inf.
        {
            const T big = std::numeric_limits<T>::max();
            std::vector<T> f(n * n, T(0)), out(n * n);
            for (std::size_t i = 0; i < n; ++i) f[i * n + i] = big;
            const codl::LinalgResult r = cholesky<T>(of(isa), f.data(), out.data(), n, big, 1);
            CHECK_MSG(r.status == LinalgStatus::non_finite_result, at + " big n=" + std::to_string(n));
            CHECK_MSG(std::isnan(out[0]) && std::isnan(out[n * n - 1]), at);
        }
    }
}

TEST_CASE("linalg statuses: NaN/Inf in either triangle, overflowing results, not positive definite at the right pivot") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        check_failures<float>(isa);
        check_failures<double>(isa);
    });
}

TEST_CASE("linalg batches: results bit-identical for 1 and 2 threads, any schedule") {
    std::vector<std::size_t> sizes = {577, 3, 64, 300, 129, 1, 16, 65, 260, 0, 33};
    if (codl_test::emulated()) {
        sizes.erase(std::remove_if(sizes.begin(), sizes.end(), [](std::size_t n) { return n > 260; }), sizes.end());
    }
    std::vector<std::vector<float>> inputs;
    for (std::size_t n : sizes) inputs.push_back(spd<float>(n));
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        CHECK(codl::select_isa(isa).empty());
        std::vector<std::vector<float>> out1, out2, chol1, chol2;
        for (int threads : {1, 2}) {
            std::vector<std::vector<float>>& inv = threads == 1 ? out1 : out2;
            std::vector<std::vector<float>>& chol = threads == 1 ? chol1 : chol2;
            std::vector<codl::DampedJob<float>> jobs, chol_jobs;
            inv.clear();
            chol.clear();
            for (std::size_t i = 0; i < sizes.size(); ++i) {
                inv.emplace_back(sizes[i] * sizes[i]);
                chol.emplace_back(sizes[i] * sizes[i]);
            }
            for (std::size_t i = 0; i < sizes.size(); ++i) {
                jobs.push_back({inputs[i].data(), inv[i].data(), sizes[i], 0.05f});
                chol_jobs.push_back({inputs[i].data(), chol[i].data(), sizes[i], 0.05f});
            }
            std::vector<codl::LinalgResult> results(sizes.size());
            codl::damped_inverse(jobs.data(), jobs.size(), results.data(), threads);
            for (const auto& r : results) CHECK(r.status == LinalgStatus::ok);
            codl::damped_cholesky(chol_jobs.data(), chol_jobs.size(), results.data(), threads);
            for (const auto& r : results) CHECK(r.status == LinalgStatus::ok);
            // The largest matrix alone: its steps run on both threads.
            const std::size_t largest = static_cast<std::size_t>(
                std::max_element(sizes.begin(), sizes.end()) - sizes.begin());
            const std::size_t n_big = sizes[largest];
            std::vector<float> big(n_big * n_big);
            const codl::DampedJob<float> single{inputs[largest].data(), big.data(), n_big, 0.05f};
            codl::LinalgResult r;
            codl::damped_inverse(&single, 1, &r, threads);
            CHECK(r.status == LinalgStatus::ok);
            CHECK_MSG(std::memcmp(big.data(), inv[largest].data(), big.size() * sizeof(float)) == 0,
                      std::string(codl::isa_name(isa)) + " alone vs in a batch");
        }
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            if (sizes[i] == 0) continue;  // memcmp may not take the null pointers of empty vectors
            CHECK_MSG(std::memcmp(out1[i].data(), out2[i].data(), out1[i].size() * sizeof(float)) == 0,
                      std::string(codl::isa_name(isa)) + " inverse n=" + std::to_string(sizes[i]));
            CHECK_MSG(std::memcmp(chol1[i].data(), chol2[i].data(), chol1[i].size() * sizeof(float)) == 0,
                      std::string(codl::isa_name(isa)) + " cholesky n=" + std::to_string(sizes[i]));
        }
        // Solves: a large right-hand side split across threads, on the largest factor of at
        // most 300 rows (300 natively, 260 under emulation).
        std::size_t at = 0;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            if (sizes[i] <= 300 && sizes[i] > sizes[at]) at = i;
        }
        const std::size_t n = sizes[at], m = 700;
        const std::vector<float> b = normal<float>(n * m);
        std::vector<float> x1(n * m), x2(n * m);
        for (codl::SolveSide side : {codl::SolveSide::left, codl::SolveSide::right}) {
            const codl::SolveJob<float> j1{chol1[at].data(), n, b.data(), x1.data(), m};
            const codl::SolveJob<float> j2{chol1[at].data(), n, b.data(), x2.data(), m};
            codl::cholesky_solve(&j1, 1, side, 1);
            codl::cholesky_solve(&j2, 1, side, 2);
            CHECK_MSG(std::memcmp(x1.data(), x2.data(), x1.size() * sizeof(float)) == 0,
                      std::string(codl::isa_name(isa)) + " solve");
        }
    });
    codl::select_isa(codl::best_isa());
}

TEST_CASE("linalg symmetric packing: upper triangle row by row, unpack mirrors") {
    for (std::size_t n : {0, 1, 2, 7, 64}) {
        std::vector<double> a = normal<double>(n * n), packed(codl::packed_symmetric_size(n)), back(n * n);
        codl::pack_symmetric(a.data(), n, packed.data());
        std::size_t k = 0;
        bool layout = true;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = i; j < n; ++j) layout &= packed[k++] == a[i * n + j];
        CHECK(layout);
        codl::unpack_symmetric(packed.data(), n, back.data());
        bool mirrored = true;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j) mirrored &= back[i * n + j] == a[std::min(i, j) * n + std::max(i, j)];
        CHECK(mirrored);
        std::vector<float> af(n * n), pf(codl::packed_symmetric_size(n)), bf(n * n);
        for (std::size_t i = 0; i < n * n; ++i) af[i] = static_cast<float>(a[i]);
        codl::pack_symmetric(af.data(), n, pf.data());
        codl::unpack_symmetric(pf.data(), n, bf.data());
        bool same = true;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = i; j < n; ++j) same &= bf[j * n + i] == af[i * n + j];
        CHECK(same);
    }
}

}  // namespace

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "codl/parallel.h"

namespace {

TEST_CASE("parallel_tasks runs every task once, on at most num_threads threads, nested calls too") {
    for (int threads : {1, 2, 3}) {
        for (std::size_t count : {0, 1, 2, 5, 100}) {
            std::vector<std::atomic<int>> runs(count);
            std::mutex mutex;
            std::set<std::thread::id> seen;
            codl::parallel_tasks(count, threads, [&](std::size_t task) {
                runs[task].fetch_add(1);
                // A nested call runs on the calling thread.
                std::atomic<int> inner{0};
                codl::parallel_tasks(3, threads, [&](std::size_t) { inner.fetch_add(1); });
                CHECK(inner.load() == 3);
                std::lock_guard<std::mutex> lock(mutex);
                seen.insert(std::this_thread::get_id());
            });
            bool once = true;
            for (auto& r : runs) once &= r.load() == 1;
            CHECK_MSG(once, "threads=" + std::to_string(threads) + " count=" + std::to_string(count));
            CHECK(seen.size() <= static_cast<std::size_t>(threads));
        }
    }
}

}  // namespace
