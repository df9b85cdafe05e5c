// The batched symmetric eigendecomposition, for every ISA this CPU runs: reconstruction
// A = V diag(w) V^T, orthogonality of V, ascending order and the sign convention, eigenvalues
// against an independent cyclic Jacobi in long double, agreement of each ISA with the scalar
// reference, special matrices, NaN/Inf, and bit-identical results for 1 and 2 threads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/sym_eig.h"
#include "harness.h"

namespace {

using codl::IsaLevel;
using codl::SymEigStatus;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(11);
    return generator;
}

template <typename T>
std::vector<T> random_symmetric(std::size_t n, double magnitude = 1.0) {
    std::normal_distribution<double> normal(0.0, magnitude);
    std::vector<T> a(n * n);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j <= i; ++j) a[i * n + j] = a[j * n + i] = static_cast<T>(normal(rng()));
    }
    return a;
}

// X X^T / m for m = n / 2 + 1 columns: positive semidefinite, rank-deficient, clustered
// near-zero eigenvalues, like a K-FAC factor from a small batch.
template <typename T>
std::vector<T> covariance(std::size_t n) {
    const std::size_t m = n / 2 + 1;
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<double> x(n * m);
    for (double& v : x) v = normal(rng());
    std::vector<T> a(n * n);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j <= i; ++j) {
            double s = 0;
            for (std::size_t k = 0; k < m; ++k) s += x[i * m + k] * x[j * m + k];
            a[i * n + j] = a[j * n + i] = static_cast<T>(s / static_cast<double>(m));
        }
    }
    return a;
}

// Q diag(values) Q^T with Q from Householder reflections of random vectors.
template <typename T>
std::vector<T> with_spectrum(const std::vector<double>& values) {
    const std::size_t n = values.size();
    std::vector<double> q(n * n, 0.0);
    for (std::size_t i = 0; i < n; ++i) q[i * n + i] = 1;
    std::normal_distribution<double> normal(0.0, 1.0);
    for (int reflection = 0; reflection < 3; ++reflection) {
        std::vector<double> v(n);
        double norm2 = 0;
        for (double& x : v) {
            x = normal(rng());
            norm2 += x * x;
        }
        for (std::size_t r = 0; r < n; ++r) {
            double dot = 0;
            for (std::size_t k = 0; k < n; ++k) dot += q[r * n + k] * v[k];
            for (std::size_t k = 0; k < n; ++k) q[r * n + k] -= 2 * dot / norm2 * v[k];
        }
    }
    std::vector<T> a(n * n);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j <= i; ++j) {
            double s = 0;
            for (std::size_t k = 0; k < n; ++k) s += q[i * n + k] * values[k] * q[j * n + k];
            a[i * n + j] = a[j * n + i] = static_cast<T>(s);
        }
    }
    return a;
}

// Eigenvalues by cyclic Jacobi in long double: slow, simple, independent of the code tested.
template <typename T>
std::vector<long double> jacobi_eigenvalues(const std::vector<T>& input, std::size_t n) {
    std::vector<long double> a(input.begin(), input.end());
    for (int sweep = 0; sweep < 60; ++sweep) {
        long double off = 0, total = 0;
        for (std::size_t i = 0; i < n; ++i) {
            for (std::size_t j = 0; j < n; ++j) {
                total += a[i * n + j] * a[i * n + j];
                if (i != j) off += a[i * n + j] * a[i * n + j];
            }
        }
        if (off <= 1e-36L * total || off == 0) break;
        for (std::size_t p = 0; p < n; ++p) {
            for (std::size_t q = p + 1; q < n; ++q) {
                const long double apq = a[p * n + q];
                if (apq == 0) continue;
                const long double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                const long double t = (theta >= 0 ? 1 : -1) / (std::fabs(theta) + std::sqrt(theta * theta + 1));
                const long double c = 1 / std::sqrt(t * t + 1), s = t * c;
                for (std::size_t k = 0; k < n; ++k) {
                    const long double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (std::size_t k = 0; k < n; ++k) {
                    const long double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    std::vector<long double> w(n);
    for (std::size_t i = 0; i < n; ++i) w[i] = a[i * n + i];
    std::sort(w.begin(), w.end());
    return w;
}

template <typename T>
struct Result {
    std::vector<T> values, vectors;
    SymEigStatus status = SymEigStatus::ok;
};

template <typename T>
void run(const codl::KernelTable& kernels, const codl::SymEigProblem<T>* problems, std::size_t count,
         SymEigStatus* status, int threads) {
    if constexpr (sizeof(T) == 4) {
        codl::sym_eig_f32_with(kernels, problems, count, status, threads);
    } else {
        codl::sym_eig_f64_with(kernels, problems, count, status, threads);
    }
}

template <typename T>
Result<T> decompose(const codl::KernelTable& kernels, const std::vector<T>& a, std::size_t n, int threads = 1) {
    Result<T> r;
    r.values.assign(n, T(-7));
    r.vectors.assign(n * n, T(-7));
    codl::SymEigProblem<T> problem{a.data(), n, r.values.data(), r.vectors.data()};
    run<T>(kernels, &problem, 1, &r.status, threads);
    return r;
}

double frobenius(const std::vector<double>& x) {
    double s = 0;
    for (double v : x) s += v * v;
    return std::sqrt(s);
}

// Checks one decomposition: residual, orthogonality, order, signs; eigenvalues against Jacobi
// for small n. Tolerances grow like n * eps of T.
template <typename T>
void check_decomposition(const std::vector<T>& a, std::size_t n, const Result<T>& r, const std::string& at) {
    CHECK_MSG(r.status == SymEigStatus::ok, at);
    if (r.status != SymEigStatus::ok) return;
    const double eps = std::numeric_limits<T>::epsilon();
    const double tol = 8.0 * (static_cast<double>(n) + 4.0) * eps;
    std::vector<double> residual(n * n), gram(n * n);
    std::vector<double> lower(n * n);
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) lower[i * n + j] = i >= j ? a[i * n + j] : a[j * n + i];
    }
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
            double s = 0, g = 0;
            for (std::size_t k = 0; k < n; ++k) {
                s += static_cast<double>(r.vectors[i * n + k]) * r.values[k] * r.vectors[j * n + k];
                g += static_cast<double>(r.vectors[k * n + i]) * r.vectors[k * n + j];
            }
            residual[i * n + j] = lower[i * n + j] - s;
            gram[i * n + j] = g - (i == j ? 1.0 : 0.0);
        }
    }
    const double norm = frobenius(lower);
    const double rel = norm > 0 ? frobenius(residual) / norm : frobenius(residual);
    CHECK_MSG(rel <= tol, at + " residual " + std::to_string(rel) + " > " + std::to_string(tol));
    double worst_gram = 0;
    for (double g : gram) worst_gram = std::max(worst_gram, std::fabs(g));
    CHECK_MSG(worst_gram <= tol, at + " |V^T V - I| " + std::to_string(worst_gram));
    for (std::size_t i = 1; i < n; ++i) CHECK_MSG(r.values[i - 1] <= r.values[i], at + " not ascending");
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t largest = 0;
        for (std::size_t k = 1; k < n; ++k) {
            if (std::fabs(r.vectors[k * n + i]) > std::fabs(r.vectors[largest * n + i])) largest = k;
        }
        CHECK_MSG(r.vectors[largest * n + i] > 0, at + " sign of vector " + std::to_string(i));
    }
    if (n <= 65) {
        const std::vector<long double> exact = jacobi_eigenvalues(lower, n);
        double spectral = 0;
        for (long double x : exact) spectral = std::max(spectral, static_cast<double>(std::fabs(x)));
        for (std::size_t i = 0; i < n; ++i) {
            const double error = std::fabs(static_cast<double>(r.values[i] - exact[i]));
            CHECK_MSG(error <= tol * std::max(spectral, 1e-300),
                      at + " eigenvalue " + std::to_string(i) + " off by " + std::to_string(error));
        }
    }
}

template <typename T>
void check_sizes(const std::vector<std::size_t>& sizes, const char* type) {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        const codl::KernelTable& kernels = *codl::kernel_table(isa);
        for (std::size_t n : sizes) {
            for (int kind = 0; kind < 2; ++kind) {
                const std::vector<T> a = kind == 0 ? random_symmetric<T>(n) : covariance<T>(n);
                const std::string at = std::string(codl::isa_name(isa)) + " " + type + " n=" +
                                       std::to_string(n) + (kind == 0 ? " random" : " covariance");
                const Result<T> r = decompose(kernels, a, n);
                check_decomposition(a, n, r, at);
                if (isa != IsaLevel::scalar) {
                    // The ISA's eigenvalues agree with the scalar reference's.
                    const Result<T> reference = decompose(*codl::kernel_table(IsaLevel::scalar), a, n);
                    double spectral = 0;
                    for (T w : reference.values) spectral = std::max(spectral, static_cast<double>(std::fabs(w)));
                    const double tol = 8.0 * (static_cast<double>(n) + 4.0) * std::numeric_limits<T>::epsilon();
                    for (std::size_t i = 0; i < n; ++i) {
                        CHECK_MSG(std::fabs(static_cast<double>(r.values[i]) - reference.values[i]) <= tol * spectral,
                                  at + " differs from scalar at " + std::to_string(i));
                    }
                }
            }
        }
    });
}

std::vector<std::size_t> small_sizes() {
    std::vector<std::size_t> sizes;
    for (std::size_t n = 1; n <= 40; ++n) sizes.push_back(n);
    for (std::size_t n : {63, 64, 65}) sizes.push_back(n);
    return sizes;
}

TEST_CASE("sym_eig float64, sizes 1..40, 63..65, 144, 300: residual, orthogonality, Jacobi eigenvalues") {
    std::vector<std::size_t> sizes = small_sizes();
    sizes.push_back(144);
    if (!codl_test::emulated()) sizes.push_back(300);
    check_sizes<double>(sizes, "f64");
}

TEST_CASE("sym_eig float32, sizes 1..40, 63..65, 144, 577: residual, orthogonality, Jacobi eigenvalues") {
    std::vector<std::size_t> sizes = small_sizes();
    sizes.push_back(144);
    if (!codl_test::emulated()) sizes.push_back(577);
    check_sizes<float>(sizes, "f32");
}

template <typename T>
void check_special(const char* type) {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        const codl::KernelTable& kernels = *codl::kernel_table(isa);
        const std::string at = std::string(codl::isa_name(isa)) + " " + type;
        // Zero matrix: zero eigenvalues, identity vectors.
        for (std::size_t n : {1, 5, 70}) {
            const std::vector<T> zero(n * n, T(0));
            const Result<T> r = decompose(kernels, zero, n);
            CHECK_MSG(r.status == SymEigStatus::ok, at + " zero");
            for (std::size_t i = 0; i < n; ++i) {
                CHECK_MSG(r.values[i] == 0, at + " zero eigenvalue");
                for (std::size_t k = 0; k < n; ++k) CHECK_MSG(r.vectors[i * n + k] == (i == k ? 1 : 0), at + " zero vectors");
            }
        }
        // Diagonal with repeats: eigenvalues exactly the sorted diagonal.
        {
            const std::size_t n = 9;
            const double diag[n] = {3, -1, 3, 0, 2, -1, 3, 7, 0};
            std::vector<T> a(n * n, T(0));
            for (std::size_t i = 0; i < n; ++i) a[i * n + i] = static_cast<T>(diag[i]);
            const Result<T> r = decompose(kernels, a, n);
            std::vector<double> sorted(diag, diag + n);
            std::sort(sorted.begin(), sorted.end());
            for (std::size_t i = 0; i < n; ++i) CHECK_MSG(r.values[i] == sorted[i], at + " diagonal");
            check_decomposition(a, n, r, at + " diagonal");
        }
        // Repeated eigenvalues in a dense matrix, and widely spread ones.
        for (const std::vector<double>& spectrum :
             {std::vector<double>{1, 1, 1, 2, 2, 3, 3, 3, 3, -4, 1, 2},
              std::vector<double>{1e-6, 1e-4, 1e-2, 1, 1e2, 1e4, 1e6, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}}) {
            const std::vector<T> a = with_spectrum<T>(spectrum);
            check_decomposition(a, spectrum.size(), decompose(kernels, a, spectrum.size()), at + " repeated");
        }
        // Extreme scales: the power-of-two scaling keeps them exact relative to the matrix.
        for (double magnitude : {1e-30, 1e30}) {
            const std::size_t n = 33;
            std::vector<T> a = random_symmetric<T>(n);
            for (T& x : a) x = static_cast<T>(x * magnitude);
            check_decomposition(a, n, decompose(kernels, a, n), at + " scale " + std::to_string(magnitude));
        }
        // NaN and Inf anywhere (upper triangle included): status non_finite, NaN outputs.
        for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                      -std::numeric_limits<T>::infinity()}) {
            for (std::size_t n : {1, 4, 50}) {
                std::vector<T> a = random_symmetric<T>(n);
                a[rng()() % (n * n)] = bad;
                const Result<T> r = decompose(kernels, a, n);
                CHECK_MSG(r.status == SymEigStatus::non_finite, at + " non-finite");
                CHECK_MSG(std::all_of(r.values.begin(), r.values.end(), [](T x) { return std::isnan(x); }), at);
                CHECK_MSG(std::all_of(r.vectors.begin(), r.vectors.end(), [](T x) { return std::isnan(x); }), at);
            }
        }
    });
}

TEST_CASE("sym_eig special matrices: zero, diagonal, repeated and spread eigenvalues, extreme scales, NaN/Inf") {
    check_special<float>("f32");
    check_special<double>("f64");
}

template <typename T>
void check_threads() {
    // Under emulation 200 and 288 shrink to 100 and 130: still more than one block of work.
    const bool small = codl_test::emulated();
    const std::vector<std::size_t> sizes = {27, 144, 145, 16, 64, 10, small ? 100u : 200u, 0, 1, 33, small ? 130u : 288u, 5};
    std::vector<std::vector<T>> mats;
    for (std::size_t n : sizes) mats.push_back(covariance<T>(n));
    mats[4][3] = std::numeric_limits<T>::quiet_NaN();  // one failure must not disturb the rest
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        const codl::KernelTable& kernels = *codl::kernel_table(isa);
        std::vector<std::vector<T>> values[2], vectors[2];
        std::vector<SymEigStatus> status[2];
        for (int t = 0; t < 2; ++t) {
            std::vector<codl::SymEigProblem<T>> problems;
            status[t].assign(sizes.size(), SymEigStatus::ok);
            for (std::size_t i = 0; i < sizes.size(); ++i) {
                values[t].emplace_back(sizes[i]);
                vectors[t].emplace_back(sizes[i] * sizes[i]);
            }
            for (std::size_t i = 0; i < sizes.size(); ++i) {
                problems.push_back({mats[i].data(), sizes[i], values[t][i].data(), vectors[t][i].data()});
            }
            run<T>(kernels, problems.data(), problems.size(), status[t].data(), t + 1);
        }
        const std::string at = codl::isa_name(isa);
        CHECK_MSG(status[0] == status[1], at);
        CHECK_MSG(status[0][4] == SymEigStatus::non_finite, at);
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            if (i != 4) CHECK_MSG(status[0][i] == SymEigStatus::ok, at);
            if (i == 4) continue;
            CHECK_MSG(values[0][i] == values[1][i] && vectors[0][i] == vectors[1][i],
                      at + " batch result of n=" + std::to_string(sizes[i]) + " depends on threads");
        }
        // A matrix alone runs with the threads inside it (the reduction's symmetric products
        // cut into 2 and then 4 row ranges above 256 and 512 rows): still the same bits.
        const std::vector<T> big = covariance<T>(520);
        const Result<T> one = decompose(kernels, big, 520, 1), two = decompose(kernels, big, 520, 2);
        CHECK_MSG(one.values == two.values && one.vectors == two.vectors, at + " single matrix depends on threads");
    });
}

TEST_CASE("sym_eig results are bit-identical for 1 and 2 threads") {
    check_threads<float>();
    check_threads<double>();
}

}  // namespace
