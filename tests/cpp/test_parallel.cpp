#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "codl/parallel.h"
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

}  // namespace
