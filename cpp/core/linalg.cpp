// Batched scheduling of the dense factorizations over the active ISA's kernels, and symmetric
// packing.
//
// A batch mixes sizes (a network's Kronecker factors: many small, a few large). Cost ~ n^3.
// Largest first: while the largest remaining matrix costs at least a thread's fair share of what
// remains, no one-per-thread schedule can balance it, so it runs alone with every thread inside;
// the rest run one per thread, single-threaded inside, claimed dynamically in decreasing size
// (longest-processing-time-first). Which thread runs a matrix never changes its bits.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "codl/dispatch.h"
#include "codl/linalg.h"
#include "codl/parallel.h"

namespace codl {
namespace {

const LinalgKernels& kernels() { return *active_table().linalg; }

double cost(std::size_t n) {
    const double size = static_cast<double>(n);
    return size * size * size;
}

// Calls run(index, threads) for every index in [0, count), sizes[index] giving its cost.
template <class SizeOf, class Run>
void schedule(std::size_t count, int num_threads, SizeOf size_of, Run run) {
    if (count == 0) return;
    num_threads = std::max(num_threads, 1);
    // Reused per calling thread: no allocation per call once it has seen a batch this long.
    thread_local std::vector<std::size_t> order;
    order.resize(count);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return size_of(a) > size_of(b); });
    double remaining = 0;
    for (std::size_t i = 0; i < count; ++i) remaining += cost(size_of(i));
    std::size_t first_shared = 0;
    while (first_shared < count && num_threads > 1) {
        const double largest = cost(size_of(order[first_shared]));
        if (largest * num_threads < remaining) break;
        run(order[first_shared], num_threads);
        remaining -= largest;
        ++first_shared;
    }
    const std::size_t* shared = order.data() + first_shared;
    parallel_tasks(count - first_shared, num_threads, [&](std::size_t task) { run(shared[task], 1); });
}

template <class T, class Kernel>
void run_damped(const DampedJob<T>* jobs, std::size_t count, LinalgResult* results, int num_threads,
                Kernel kernel) {
    schedule(
        count, num_threads, [&](std::size_t i) { return jobs[i].n; },
        [&](std::size_t i, int threads) {
            const DampedJob<T>& job = jobs[i];
            results[i] = kernel(job.input, job.output, job.n, job.damping, threads);
        });
}

template <class T, class Kernel>
void run_solve(const SolveJob<T>* jobs, std::size_t count, SolveSide side, int num_threads, Kernel kernel) {
    // A solve costs n^2 m; scheduled by the cube root so the same rule applies.
    schedule(
        count, num_threads,
        [&](std::size_t i) {
            const double work = static_cast<double>(jobs[i].n) * static_cast<double>(jobs[i].n) *
                                static_cast<double>(std::max<std::size_t>(jobs[i].m, 1));
            return static_cast<std::size_t>(std::cbrt(work));
        },
        [&](std::size_t i, int threads) {
            const SolveJob<T>& job = jobs[i];
            kernel(job.factor, job.n, job.rhs, job.out, job.m, side, threads);
        });
}

template <class T>
void pack(const T* matrix, std::size_t n, T* packed) {
    for (std::size_t i = 0; i < n; ++i) packed = std::copy(matrix + i * n + i, matrix + (i + 1) * n, packed);
}

template <class T>
void unpack(const T* packed, std::size_t n, T* matrix) {
    for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = i; j < n; ++j, ++packed) matrix[i * n + j] = matrix[j * n + i] = *packed;
    }
}

}  // namespace

void damped_cholesky(const DampedJob<float>* jobs, std::size_t count, LinalgResult* results, int num_threads) {
    run_damped(jobs, count, results, num_threads, kernels().damped_cholesky_f32);
}
void damped_cholesky(const DampedJob<double>* jobs, std::size_t count, LinalgResult* results, int num_threads) {
    run_damped(jobs, count, results, num_threads, kernels().damped_cholesky_f64);
}
void damped_inverse(const DampedJob<float>* jobs, std::size_t count, LinalgResult* results, int num_threads) {
    run_damped(jobs, count, results, num_threads, kernels().damped_inverse_f32);
}
void damped_inverse(const DampedJob<double>* jobs, std::size_t count, LinalgResult* results, int num_threads) {
    run_damped(jobs, count, results, num_threads, kernels().damped_inverse_f64);
}
void cholesky_solve(const SolveJob<float>* jobs, std::size_t count, SolveSide side, int num_threads) {
    run_solve(jobs, count, side, num_threads, kernels().cholesky_solve_f32);
}
void cholesky_solve(const SolveJob<double>* jobs, std::size_t count, SolveSide side, int num_threads) {
    run_solve(jobs, count, side, num_threads, kernels().cholesky_solve_f64);
}

void pack_symmetric(const float* matrix, std::size_t n, float* packed) { pack(matrix, n, packed); }
void pack_symmetric(const double* matrix, std::size_t n, double* packed) { pack(matrix, n, packed); }
void unpack_symmetric(const float* packed, std::size_t n, float* matrix) { unpack(packed, n, matrix); }
void unpack_symmetric(const double* packed, std::size_t n, double* matrix) { unpack(packed, n, matrix); }

}  // namespace codl
