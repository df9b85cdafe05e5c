// Public codec entry points: split the gradient into thread chunks that start on block
// boundaries (so each chunk encodes exactly as the whole would: the stochastic codecs key their
// draws by the global index) and run the active ISA's kernels. Top-k runs its threshold search
// here, on the kernels' count and gather scans.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "codl/comm.h"
#include "codl/dispatch.h"
#include "codl/parallel.h"

namespace codl {
namespace {

// Below this a thread's wake-up costs more than the pass it would share.
constexpr std::size_t kMinValuesPerThread = 1 << 16;

const CommKernels& kernels() { return *active_table().comm; }

std::size_t chunk_align(std::size_t block) {
    // Chunks start on a block and on a byte of every bit-packed layout (8 values).
    std::size_t a = block, b = 8;
    while (b) {
        const std::size_t t = a % b;
        a = b;
        b = t;
    }
    return block / a * 8;
}

template <typename Kernel>
bool run_blocks(std::size_t n, std::size_t block, int num_threads, Kernel kernel) {
    std::atomic<bool> valid{true};
    parallel_for(n, chunk_align(block), kMinValuesPerThread, num_threads,
                 [&](std::size_t begin, std::size_t end) {
                     if (!kernel(begin, end)) valid.store(false, std::memory_order_relaxed);
                 });
    return valid.load();
}

float* offset(float* p, std::size_t by) { return p ? p + by : nullptr; }

}  // namespace

bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* payload, int num_threads) {
    std::uint8_t* scales = payload;
    auto* codes = reinterpret_cast<std::int8_t*>(payload + 4 * comm_blocks(n, block));
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().int8_encode(x + b, offset(error, b), e - b, block, scales + 4 * (b / block),
                                     codes + b);
    });
}

void int8_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                 bool accumulate, int num_threads) {
    const auto* codes = reinterpret_cast<const std::int8_t*>(payload + 4 * comm_blocks(n, block));
    run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        kernels().int8_decode(payload + 4 * (b / block), codes + b, e - b, block, out + b,
                              accumulate);
        return true;
    });
}

bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* payload, int num_threads) {
    std::uint8_t* bits = payload + 4 * comm_blocks(n, block);
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().sign_encode(x + b, offset(error, b), e - b, block,
                                     payload + 4 * (b / block), bits + b / 8);
    });
}

void sign_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                 bool accumulate, int num_threads) {
    const std::uint8_t* bits = payload + 4 * comm_blocks(n, block);
    run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        kernels().sign_decode(payload + 4 * (b / block), bits + b / 8, e - b, block, out + b,
                              accumulate);
        return true;
    });
}

bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::uint8_t* payload, int num_threads) {
    std::uint8_t* codes = payload + 4 * comm_blocks(n, block);
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().terngrad_encode(x + b, offset(error, b), e - b, block, stream, b,
                                         payload + 4 * (b / block), codes + b / 4);
    });
}

bool terngrad_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                     bool accumulate, int num_threads) {
    const std::uint8_t* codes = payload + 4 * comm_blocks(n, block);
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().terngrad_decode(payload + 4 * (b / block), codes + b / 4, e - b, block,
                                         out + b, accumulate);
    });
}

bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::uint8_t* payload, int num_threads) {
    std::uint8_t* codes = payload + 4 * comm_blocks(n, block);
    const unsigned width = qsgd_field_bits(levels);
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().qsgd_encode(x + b, offset(error, b), e - b, block, levels, stream, b,
                                     payload + 4 * (b / block), codes + b * width / 8);
    });
}

bool qsgd_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, unsigned levels,
                 float* out, bool accumulate, int num_threads) {
    const std::uint8_t* codes = payload + 4 * comm_blocks(n, block);
    const unsigned width = qsgd_field_bits(levels);
    return run_blocks(n, block, num_threads, [&](std::size_t b, std::size_t e) {
        return kernels().qsgd_decode(payload + 4 * (b / block), codes + b * width / 8, e - b,
                                     block, levels, out + b, accumulate);
    });
}

namespace {

// Scratch reused across calls (per thread), so steady-state top-k allocates nothing.
struct TopkScratch {
    std::vector<float> sample;
    std::vector<std::uint32_t> candidates;
    std::vector<std::uint64_t> keys;
    std::vector<std::size_t> chunk_counts, chunk_starts;
};
TopkScratch& topk_scratch() {
    thread_local TopkScratch scratch;
    return scratch;
}

// Fixed chunks for the count and gather scans, so the gather knows where each chunk writes.
struct Chunks {
    std::size_t size, count;
};
Chunks scan_chunks(std::size_t n, int num_threads) {
    const std::size_t threads = num_threads < 1 ? 1 : static_cast<std::size_t>(num_threads);
    std::size_t size = (n + threads - 1) / threads;
    size = std::max(size, kMinValuesPerThread);
    return {size, (n + size - 1) / size};
}

std::size_t count_scan(const float* v, std::size_t n, float threshold, const Chunks& chunks,
                       std::vector<std::size_t>& counts, int num_threads) {
    counts.assign(chunks.count, 0);
    parallel_tasks(chunks.count, num_threads, [&](std::size_t c) {
        const std::size_t begin = c * chunks.size, end = std::min(n, begin + chunks.size);
        counts[c] = kernels().count_at_least(v + begin, end - begin, threshold);
    });
    std::size_t total = 0;
    for (std::size_t c : counts) total += c;
    return total;
}

}  // namespace

bool topk_encode(const float* x, float* error, float* momentum, float momentum_factor,
                 std::size_t n, std::size_t k, std::size_t sample, std::uint64_t stream,
                 std::uint8_t* payload, int num_threads) {
    const CommKernels& kern = kernels();
    std::atomic<bool> finite{true};
    parallel_for(n, 16, kMinValuesPerThread, num_threads, [&](std::size_t b, std::size_t e) {
        if (!kern.topk_accumulate(x + b, offset(error, b), offset(momentum, b), momentum_factor,
                                  e - b)) {
            finite.store(false, std::memory_order_relaxed);
        }
    });
    if (!finite.load()) return false;
    const float* v = error ? error : x;
    k = std::min(k, n);
    const auto count32 = static_cast<std::uint32_t>(k);
    std::memcpy(payload, &count32, 4);
    if (k == 0) return true;

    TopkScratch& scratch = topk_scratch();
    std::vector<std::uint32_t>& candidates = scratch.candidates;
    float threshold = 0.0f;  // |v| >= 0 holds for all: the fallback that takes everything
    if (k < n) {
        // DGC: the k-th largest of a random sample estimates the threshold (Lin et al. 2018,
        // section 3); its other order statistics are the later guesses.
        const std::size_t s = std::max<std::size_t>(1, std::min(sample, n));
        std::vector<float>& magnitudes = scratch.sample;
        magnitudes.resize(s);
        // Stratified: one uniform position in each of s equal strides, so the reads run forward
        // through memory (prefetched) instead of missing the cache at random.
        const double stride = static_cast<double>(n) / static_cast<double>(s);
        for (std::size_t j = 0; j < s; ++j) {
            const double position =
                (static_cast<double>(j) + static_cast<double>(counter_uniform(stream, j))) * stride;
            magnitudes[j] = std::fabs(v[std::min(static_cast<std::size_t>(position), n - 1)]);
        }
        // The r-th largest of the sample by selection, not a sort (a sort of a 1% sample of
        // 25M values cost more than the scans); each call leaves the sample a permutation.
        auto rank_value = [&magnitudes](std::size_t r) {
            std::nth_element(magnitudes.begin(), magnitudes.begin() + static_cast<std::ptrdiff_t>(r - 1),
                             magnitudes.end(), std::greater<float>());
            return magnitudes[r - 1];
        };
        // Ranks into the sample: `too_high` gave fewer than k values at or above its
        // threshold, `too_low` more than 4k; bisect between them (rank s + 1 means threshold 0).
        constexpr std::size_t kNone = ~std::size_t{0};
        std::size_t rank = std::max<std::size_t>(1, (k * s + n - 1) / n);
        std::size_t too_high = 0, too_low = kNone, total = 0;
        const Chunks chunks = scan_chunks(n, num_threads);
        for (;;) {
            threshold = rank <= s ? rank_value(rank) : 0.0f;
            total = count_scan(v, n, threshold, chunks, scratch.chunk_counts, num_threads);
            if (total < k) {
                too_high = rank;
                rank = too_low == kNone ? std::min(2 * rank, s + 1)
                                        : std::max(rank + 1, (rank + too_low) / 2);
            } else if (total > 4 * k && rank > 1) {
                const std::size_t lower = too_high ? (too_high + rank) / 2 : rank / 2;
                if (lower <= too_high) break;  // the next rank up gave too few: accept this one
                too_low = rank;
                rank = lower;
            } else {
                break;
            }
        }
        candidates.resize(total);
        std::vector<std::size_t>& starts = scratch.chunk_starts;
        starts.resize(chunks.count);
        for (std::size_t c = 0, at = 0; c < chunks.count; ++c) {
            starts[c] = at;
            at += scratch.chunk_counts[c];
        }
        parallel_tasks(chunks.count, num_threads, [&](std::size_t c) {
            const std::size_t begin = c * chunks.size, end = std::min(n, begin + chunks.size);
            kern.gather_at_least(v + begin, end - begin, threshold,
                                 static_cast<std::uint32_t>(begin), candidates.data() + starts[c]);
        });
        if (total > k) {
            // Exactly k: the k largest |v|, ties to the lower index, kept in index order. Keys
            // sort as (magnitude, then lower index) and sit in one contiguous array, so the
            // selection does not chase v at random (the bits of a finite |v| order as it does).
            auto key_of = [v](std::uint32_t i) {
                std::uint32_t bits;
                std::memcpy(&bits, &v[i], sizeof bits);
                return static_cast<std::uint64_t>(bits & 0x7FFFFFFFu) << 32 | (0xFFFFFFFFu - i);
            };
            std::vector<std::uint64_t>& keys = scratch.keys;
            keys.resize(total);
            for (std::size_t j = 0; j < total; ++j) keys[j] = key_of(candidates[j]);
            std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k - 1),
                             keys.end(), std::greater<std::uint64_t>());
            const std::uint64_t kth = keys[k - 1];
            std::size_t kept = 0;
            for (std::size_t j = 0; j < total; ++j) {
                if (key_of(candidates[j]) >= kth) candidates[kept++] = candidates[j];
            }
            candidates.resize(kept);
        }
    } else {
        candidates.resize(n);
        for (std::size_t i = 0; i < n; ++i) candidates[i] = static_cast<std::uint32_t>(i);
    }
    std::memcpy(payload + 4, candidates.data(), 4 * k);
    std::uint8_t* values = payload + 4 + 4 * k;
    for (std::size_t j = 0; j < k; ++j) {
        const std::uint32_t i = candidates[j];
        std::memcpy(values + 4 * j, &v[i], 4);
        if (error) error[i] = 0.0f;
        if (momentum) momentum[i] = 0.0f;
    }
    return true;
}

bool topk_decode(const std::uint8_t* payload, std::size_t payload_bytes, std::size_t n,
                 float* out, bool accumulate, int num_threads) {
    if (payload_bytes < 4) return false;
    std::uint32_t count;
    std::memcpy(&count, payload, 4);
    if (count > n || payload_bytes != topk_payload_bytes(count)) return false;
    const std::uint8_t* indices = payload + 4;
    const std::uint8_t* values = indices + 4 * static_cast<std::size_t>(count);
    std::uint32_t previous = 0;
    for (std::size_t j = 0; j < count; ++j) {
        std::uint32_t i;
        std::memcpy(&i, indices + 4 * j, 4);
        if (i >= n || (j > 0 && i <= previous)) return false;
        previous = i;
    }
    if (!accumulate) {
        parallel_for(n, 16, kMinValuesPerThread, num_threads, [&](std::size_t b, std::size_t e) {
            std::memset(out + b, 0, 4 * (e - b));
        });
    }
    for (std::size_t j = 0; j < count; ++j) {
        std::uint32_t i;
        float value;
        std::memcpy(&i, indices + 4 * j, 4);
        std::memcpy(&value, values + 4 * j, 4);
        out[i] = accumulate ? out[i] + value : value;
    }
    return true;
}

}  // namespace codl
