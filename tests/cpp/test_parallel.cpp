#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "codl/parallel.h"
#include "codl/ternary.h"
#include "harness.h"

namespace {

// Every index exactly once, chunk starts on the alignment, at most num_threads chunks.
void check_cover(std::size_t n, std::size_t align, std::size_t min_chunk, int threads) {
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int> chunks{0};
    std::atomic<bool> aligned{true};
    codl::parallel_for(n, align, min_chunk, threads, [&](std::size_t b, std::size_t e) {
        ++chunks;
        if (b % align != 0) aligned = false;
        for (std::size_t i = b; i < e; ++i) ++hits[i];
    });
    bool once = true;
    for (auto& h : hits) once &= h.load() == 1;
    const std::string at = "n=" + std::to_string(n) + " threads=" + std::to_string(threads);
    CHECK_MSG(once, at);
    CHECK_MSG(aligned, at);
    CHECK_MSG(chunks <= std::max(threads, 1), at);
}

TEST_CASE("parallel_for covers every index once on aligned chunks") {
    for (std::size_t n : {0, 1, 639, 640, 641, 10000, 100003}) {
        for (int threads : {0, 1, 2, 3, 8}) check_cover(n, 640, 100, threads);
    }
}

TEST_CASE("parallel_for keeps small jobs on the calling thread") {
    std::atomic<int> chunks{0};
    codl::parallel_for(1000, 8, 1 << 16, 8, [&](std::size_t, std::size_t) { ++chunks; });
    CHECK(chunks == 1);
}

TEST_CASE("parallel_for: nested and concurrent callers all finish correctly") {
    std::atomic<long> total{0};
    codl::parallel_for(64, 1, 1, 4, [&](std::size_t b, std::size_t e) {
        codl::parallel_for(1000, 1, 1, 4, [&](std::size_t ib, std::size_t ie) {
            total += static_cast<long>((ie - ib) * (e - b));
        });
    });
    CHECK(total == 64 * 1000);
    std::vector<std::thread> callers;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; ++t) {
        callers.emplace_back([&] {
            for (int round = 0; round < 200; ++round) {
                std::atomic<long> sum{0};
                codl::parallel_for(5000, 1, 100, 3, [&](std::size_t b, std::size_t e) {
                    sum += static_cast<long>(e - b);
                });
                if (sum != 5000) ++wrong;
            }
        });
    }
    for (auto& t : callers) t.join();
    CHECK(wrong == 0);
    CHECK(codl::pool_threads_started() >= 1);
}

// Many consecutive jobs of varying sizes: each index runs exactly once, and never from a chunk
// of an earlier job (a late worker claiming with a stale counter would run the wrong job).
void run_jobs(int jobs, int seed, std::atomic<int>& wrong) {
    std::vector<std::atomic<int>> hits(64);
    for (int j = 0; j < jobs; ++j) {
        const std::size_t n = 1 + static_cast<std::size_t>((j * 7919 + seed) % 48);
        const int threads = 2 + (j + seed) % 3;
        for (auto& h : hits) h.store(0, std::memory_order_relaxed);
        std::atomic<int> stale{0};
        const int job = j;
        codl::parallel_for(n, 1, 1, threads, [&, job](std::size_t b, std::size_t e) {
            if (job != j) ++stale;
            for (std::size_t i = b; i < e; ++i) hits[i].fetch_add(1, std::memory_order_relaxed);
        });
        bool once = stale == 0;
        for (std::size_t i = 0; i < hits.size(); ++i) once &= hits[i].load() == (i < n ? 1 : 0);
        if (!once) ++wrong;
    }
}

TEST_CASE("parallel_for: 100000 consecutive jobs, each chunk exactly once") {
    std::atomic<int> wrong{0};
    run_jobs(100000, 0, wrong);
    CHECK(wrong == 0);
}

TEST_CASE("parallel_for: callers on several threads at once (busy pool runs serially) stay exact") {
    std::atomic<int> wrong{0};
    std::vector<std::thread> callers;
    for (int t = 0; t < 4; ++t) callers.emplace_back([&, t] { run_jobs(5000, 11 * t + 1, wrong); });
    for (auto& t : callers) t.join();
    CHECK(wrong == 0);
}

TEST_CASE("parallel_for and parallel_tasks: results do not depend on num_threads") {
    auto value = [](std::size_t i) {
        float v = 1.0f;
        for (std::size_t r = 0; r < 1 + i % 7; ++r) v = v * 1.0001f + static_cast<float>(i) * 0.5f;
        return v;
    };
    std::vector<float> first, first_tasks;
    for (int threads : {0, 1, 2, 3, 8}) {
        std::vector<float> out(5000, -1.0f), tasks(300, -1.0f);
        codl::parallel_for(out.size(), 8, 16, threads, [&](std::size_t b, std::size_t e) {
            for (std::size_t i = b; i < e; ++i) out[i] = value(i);
        });
        codl::parallel_tasks(tasks.size(), threads, [&](std::size_t t) { tasks[t] = value(t * 3); });
        if (first.empty()) {
            first = out;
            first_tasks = tasks;
            for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == value(i));
        }
        CHECK_MSG(out == first, "threads=" + std::to_string(threads));
        CHECK_MSG(tasks == first_tasks, "threads=" + std::to_string(threads));
    }
}

TEST_CASE("parallel_for: a caller whose workers never come runs every chunk and returns") {
    // Start the workers, then hold them (as when the system never schedules them): the caller
    // claims every chunk itself and returns without waiting for them. The old pool waited for
    // each worker to acknowledge the job, so this call would never have returned.
    codl::parallel_for(8, 1, 1, 4, [](std::size_t, std::size_t) {});
    CHECK(codl::pool_threads_started() >= 3);
    codl::pool_hold_workers(true);
    const std::thread::id caller = std::this_thread::get_id();
    for (int round = 0; round < 1000; ++round) {
        std::atomic<int> chunks{0}, elsewhere{0};
        std::vector<std::atomic<int>> hits(8);
        codl::parallel_for(8, 1, 1, 4, [&](std::size_t b, std::size_t e) {
            ++chunks;
            if (std::this_thread::get_id() != caller) ++elsewhere;
            for (std::size_t i = b; i < e; ++i) ++hits[i];
        });
        bool once = true;
        for (auto& h : hits) once &= h.load() == 1;
        CHECK_MSG(chunks == 4 && elsewhere == 0 && once, "round " + std::to_string(round));
    }
    codl::pool_hold_workers(false);
}

TEST_CASE("parallel_for: sleeping workers are woken and run chunks alongside the caller") {
    // Two chunks that each wait for the other to start can only finish on two threads at once:
    // the caller holds one, so a worker must wake and claim the other. Pauses between some
    // rounds let the workers pass their spin and sleep, so both wake-up paths are exercised;
    // a lost wake-up would hang here.
    for (int round = 0; round < 300; ++round) {
        if (round % 10 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::atomic<int> started{0};
        std::set<std::thread::id> ids;
        std::mutex ids_mutex;
        codl::parallel_for(2, 1, 1, 2, [&](std::size_t, std::size_t) {
            {
                std::lock_guard<std::mutex> lock(ids_mutex);
                ids.insert(std::this_thread::get_id());
            }
            ++started;
            while (started.load() < 2) std::this_thread::yield();
        });
        CHECK_MSG(ids.size() == 2, "round " + std::to_string(round));
    }
}

TEST_CASE("ternary_linear_f32: one region for quantization and GEMM, same floats on every thread count") {
    // Enough rows (m * k) that quantization splits into blocks too, shared by the region's
    // chunks; each output row must equal the same row computed alone (one row, no pool).
    const std::size_t m = 20000, k = 32, n = 9;
    const std::size_t kp = codl::ternary_padded_k(k);
    std::vector<float> x(m * k);
    std::uint32_t state = 12345;
    for (float& v : x) {
        state = state * 1664525u + 1013904223u;
        v = static_cast<float>(static_cast<std::int32_t>(state >> 8) % 2001 - 1000) / 250.0f;
    }
    std::vector<std::uint8_t> packed(n * kp / 4);
    for (std::size_t b = 0; b < packed.size(); ++b) {
        std::uint8_t byte = 0;
        for (int f = 0; f < 4; ++f) byte |= static_cast<std::uint8_t>(((b * 7 + f * 3) % 3) << (2 * f));
        packed[b] = byte;  // fields 0, 1, 2: never the invalid 0b11
    }
    std::vector<float> alpha(n), bias(n);
    for (std::size_t j = 0; j < n; ++j) {
        alpha[j] = 0.02f * (1 + j);
        bias[j] = 0.25f * j - 1.0f;
    }
    std::vector<float> alone(m * n);
    for (std::size_t i = 0; i < m; ++i) {
        CHECK(codl::ternary_linear_f32(x.data() + i * k, 1, k, packed.data(), alpha.data(), n, bias.data(),
                                       alone.data() + i * n, 1));
    }
    for (int threads : {1, 2, 3, 8}) {
        std::vector<float> y(m * n, -7.0f);
        CHECK(codl::ternary_linear_f32(x.data(), m, k, packed.data(), alpha.data(), n, bias.data(), y.data(), threads));
        CHECK_MSG(y == alone, "threads=" + std::to_string(threads));
    }
    // A NaN in a late row block is still found, whichever thread quantizes that block.
    x[(m - 3) * k + 5] = std::numeric_limits<float>::quiet_NaN();
    for (int threads : {1, 2, 3}) {
        std::vector<float> y(m * n, -7.0f);
        CHECK_MSG(!codl::ternary_linear_f32(x.data(), m, k, packed.data(), alpha.data(), n, nullptr, y.data(), threads),
                  "threads=" + std::to_string(threads));
    }
}


TEST_CASE("move_off_cpu moves the calling thread to another allowed CPU and keeps its mask") {
    CHECK(!codl::move_off_cpu(-1));
#if defined(__linux__)
    // On a thread of its own: the test's main thread keeps whatever it had.
    std::thread([] {
        cpu_set_t before;
        CHECK(sched_getaffinity(0, sizeof before, &before) == 0);
        const int cpu = codl::current_cpu();
        CHECK(cpu >= 0);
        if (CPU_COUNT(&before) < 2) {
            CHECK(!codl::move_off_cpu(cpu));  // nowhere to go
            return;
        }
        CHECK(codl::move_off_cpu(cpu));
        CHECK_MSG(codl::current_cpu() != cpu, "still on cpu " + std::to_string(cpu));
        cpu_set_t after;
        CHECK(sched_getaffinity(0, sizeof after, &after) == 0);
        CHECK(CPU_EQUAL(&before, &after));
        // A CPU outside the mask is refused.
        cpu_set_t only;
        CPU_ZERO(&only);
        CPU_SET(codl::current_cpu(), &only);
        CHECK(sched_setaffinity(0, sizeof only, &only) == 0);
        CHECK(!codl::move_off_cpu(codl::current_cpu()));
        CHECK(!codl::move_off_cpu(cpu == codl::current_cpu() ? cpu + 1 : cpu));
    }).join();
#else
    CHECK(codl::current_cpu() == -1);
    CHECK(!codl::move_off_cpu(0));
#endif
}

}  // namespace
