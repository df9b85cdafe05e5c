// Every gradient-codec kernel of every ISA this CPU runs, bit-exact against the scalar
// reference (payload bytes, error buffers, decoded floats) over many lengths, block sizes and
// misaligned starts, with guard bytes behind every output; the public entry points give the
// same bytes at every thread count; top-k sends exactly the k largest magnitudes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "codl/comm.h"
#include "codl/dispatch.h"
#include "harness.h"

namespace {

using codl::CommKernels;
using codl::IsaLevel;

constexpr std::uint8_t kCanary = 0xA5;
constexpr std::size_t kGuard = 64;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(20261127);
    return generator;
}

// Gradient-like values: normal times a log-normal spread, some exact zeros, negative zeros and
// subnormals.
std::vector<float> gradient(std::size_t n) {
    std::normal_distribution<float> normal;
    std::vector<float> x(n);
    for (auto& v : x) {
        const auto pick = rng()() % 32;
        // Tiny values too: 127 / max|v| overflows for a block of them.
        v = pick == 0 ? 0.0f : pick == 1 ? -0.0f : pick == 2 ? normal(rng()) * 1e-39f
                                                            : normal(rng()) * std::exp(normal(rng()));
    }
    return x;
}

std::vector<std::size_t> lengths() {
    std::vector<std::size_t> out;
    for (std::size_t n = 0; n <= 80; ++n) out.push_back(n);
    for (std::size_t n : {127, 128, 129, 511, 512, 513, 1000, 2047, 2048, 2049, 4099, 10001}) out.push_back(n);
    return out;
}

constexpr std::size_t kOffsets[] = {0, 1, 3};

// A copy of `values` starting `offset` elements past a 64-byte boundary, canaries behind.
template <typename T>
struct Guarded {
    Guarded(std::size_t n, std::size_t offset) : n(n), offset(offset) {
        storage.assign((n + offset) * sizeof(T) + kGuard + 64, kCanary);
    }
    T* data() {
        const std::size_t pad = (64 - reinterpret_cast<std::uintptr_t>(storage.data()) % 64) % 64;
        return reinterpret_cast<T*>(storage.data() + pad) + offset;
    }
    void fill(const std::vector<T>& values) {
        if (!values.empty()) std::memcpy(data(), values.data(), values.size() * sizeof(T));
    }
    std::vector<T> get() const {
        std::vector<T> out(n);
        if (n) std::memcpy(out.data(), const_cast<Guarded*>(this)->data(), n * sizeof(T));
        return out;
    }
    bool intact() {
        const auto* end = reinterpret_cast<const std::uint8_t*>(data() + n);
        for (std::size_t i = 0; i < kGuard; ++i) {
            if (end[i] != kCanary) return false;
        }
        return true;
    }
    std::size_t n, offset;
    std::vector<std::uint8_t> storage;
};

template <typename T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

const CommKernels& ref() { return codl::ref::comm_kernels; }
const CommKernels& of(IsaLevel isa) { return *codl::kernel_table(isa)->comm; }

std::string where(IsaLevel isa, std::size_t n, std::size_t block, std::size_t offset, bool ef) {
    return std::string(codl::isa_name(isa)) + " n=" + std::to_string(n) + " block=" +
           std::to_string(block) + " offset=" + std::to_string(offset) + (ef ? " ef" : "");
}

// The block codecs share one shape of test: encode with and without error feedback, compare the
// scales, codes and error; decode the reference payload, plain and accumulating.
struct BlockCodec {
    const char* name;
    std::vector<std::size_t> blocks;
    std::size_t (*code_bytes)(std::size_t n);
    bool (*encode)(const CommKernels&, const float*, float*, std::size_t, std::size_t,
                   std::uint8_t*, std::uint8_t*);
    bool (*decode)(const CommKernels&, const std::uint8_t*, const std::uint8_t*, std::size_t,
                   std::size_t, float*, bool);
};

constexpr std::uint64_t kStream = 0x1234567890ABCDEFull;
constexpr unsigned kLevels[] = {16, 2, 5};
unsigned current_levels = 16;

const BlockCodec kCodecs[] = {
    {"int8", {1, 7, 64, 512}, [](std::size_t n) { return n; },
     [](const CommKernels& k, const float* x, float* e, std::size_t n, std::size_t b, std::uint8_t* s,
        std::uint8_t* c) { return k.int8_encode(x, e, n, b, s, reinterpret_cast<std::int8_t*>(c)); },
     [](const CommKernels& k, const std::uint8_t* s, const std::uint8_t* c, std::size_t n, std::size_t b,
        float* out, bool acc) {
         k.int8_decode(s, reinterpret_cast<const std::int8_t*>(c), n, b, out, acc);
         return true;
     }},
    {"sign", {8, 16, 24, 40, 2048}, [](std::size_t n) { return (n + 7) / 8; },
     [](const CommKernels& k, const float* x, float* e, std::size_t n, std::size_t b, std::uint8_t* s,
        std::uint8_t* c) { return k.sign_encode(x, e, n, b, s, c); },
     [](const CommKernels& k, const std::uint8_t* s, const std::uint8_t* c, std::size_t n, std::size_t b,
        float* out, bool acc) {
         k.sign_decode(s, c, n, b, out, acc);
         return true;
     }},
    {"terngrad", {8, 64, 512}, [](std::size_t n) { return (n + 3) / 4; },
     [](const CommKernels& k, const float* x, float* e, std::size_t n, std::size_t b, std::uint8_t* s,
        std::uint8_t* c) { return k.terngrad_encode(x, e, n, b, kStream, 77, s, c); },
     [](const CommKernels& k, const std::uint8_t* s, const std::uint8_t* c, std::size_t n, std::size_t b,
        float* out, bool acc) { return k.terngrad_decode(s, c, n, b, out, acc); }},
    {"qsgd", {8, 64, 512},
     [](std::size_t n) { return (n * codl::qsgd_field_bits(current_levels) + 7) / 8; },
     [](const CommKernels& k, const float* x, float* e, std::size_t n, std::size_t b, std::uint8_t* s,
        std::uint8_t* c) { return k.qsgd_encode(x, e, n, b, current_levels, kStream, 5, s, c); },
     [](const CommKernels& k, const std::uint8_t* s, const std::uint8_t* c, std::size_t n, std::size_t b,
        float* out, bool acc) { return k.qsgd_decode(s, c, n, b, current_levels, out, acc); }},
};

void check_block_codec(const BlockCodec& codec) {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t block : codec.blocks) {
            for (std::size_t n : lengths()) {
                const std::vector<float> x = gradient(n);
                std::vector<float> error0 = gradient(n);
                for (auto& e : error0) e *= 0.25f;
                const std::size_t nblocks = codl::comm_blocks(n, block);
                for (bool ef : {false, true}) {
                    std::vector<std::uint8_t> scales(4 * nblocks), codes(codec.code_bytes(n));
                    std::vector<float> error = error0;
                    const bool ok = codec.encode(ref(), x.data(), ef ? error.data() : nullptr, n,
                                                 block, scales.data(), codes.data());
                    CHECK_MSG(ok, std::string(codec.name) + " ref rejects finite input");
                    for (std::size_t offset : kOffsets) {
                        const std::string at = std::string(codec.name) + " " + where(isa, n, block, offset, ef);
                        Guarded<float> in(n, offset), err(n, offset);
                        in.fill(x);
                        err.fill(error0);
                        Guarded<std::uint8_t> s(scales.size(), offset), c(codes.size(), offset);
                        const bool isa_ok = codec.encode(of(isa), in.data(), ef ? err.data() : nullptr,
                                                         n, block, s.data(), c.data());
                        CHECK_MSG(isa_ok, at);
                        CHECK_MSG(same(s.get(), scales), at + " scales");
                        CHECK_MSG(same(c.get(), codes), at + " codes");
                        CHECK_MSG(same(err.get(), ef ? error : error0), at + " error");
                        CHECK_MSG(s.intact() && c.intact() && err.intact(), at + " guard");
                        // Decode the reference payload, plain and accumulating.
                        for (bool accumulate : {false, true}) {
                            std::vector<float> expected = error0;
                            codec.decode(ref(), scales.data(), codes.data(), n, block, expected.data(),
                                         accumulate);
                            Guarded<float> out(n, offset);
                            out.fill(error0);
                            CHECK_MSG(codec.decode(of(isa), s.data(), c.data(), n, block, out.data(),
                                                   accumulate),
                                      at);
                            CHECK_MSG(same(out.get(), expected), at + (accumulate ? " accumulate" : " decode"));
                            CHECK_MSG(out.intact(), at + " decode guard");
                        }
                    }
                }
            }
        }
    });
}

TEST_CASE("comm int8 kernels match the reference") { check_block_codec(kCodecs[0]); }
TEST_CASE("comm sign kernels match the reference") { check_block_codec(kCodecs[1]); }
TEST_CASE("comm terngrad kernels match the reference") { check_block_codec(kCodecs[2]); }
TEST_CASE("comm qsgd kernels match the reference") {
    for (unsigned levels : kLevels) {
        current_levels = levels;
        check_block_codec(kCodecs[3]);
    }
    current_levels = 16;
}

TEST_CASE("comm encoders report NaN and Inf on every ISA") {
    const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                         -std::numeric_limits<float>::infinity()};
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (const BlockCodec& codec : kCodecs) {
            for (std::size_t position : {0, 5, 100, 515}) {
                for (float value : bad) {
                    std::vector<float> x = gradient(600), error(600, 0.0f);
                    x[position] = value;
                    std::vector<std::uint8_t> scales(4 * 600), codes(600);
                    CHECK_MSG(!codec.encode(of(isa), x.data(), nullptr, 600, 64, scales.data(), codes.data()),
                              std::string(codec.name) + " " + codl::isa_name(isa));
                    CHECK_MSG(!codec.encode(of(isa), x.data(), error.data(), 600, 64, scales.data(), codes.data()),
                              std::string(codec.name) + " ef " + codl::isa_name(isa));
                }
            }
        }
        std::vector<float> x = gradient(300), error(300, 0.0f), momentum(300, 0.0f);
        x[257] = std::numeric_limits<float>::quiet_NaN();
        CHECK(!of(isa).topk_accumulate(x.data(), nullptr, nullptr, 0.0f, 300));
        CHECK(!of(isa).topk_accumulate(x.data(), error.data(), momentum.data(), 0.5f, 300));
    });
}

TEST_CASE("comm top-k scans match the reference") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : lengths()) {
            const std::vector<float> x = gradient(n), error0 = gradient(n), momentum0 = gradient(n);
            for (int mode = 0; mode < 3; ++mode) {  // no error, error, error and momentum
                std::vector<float> error = error0, momentum = momentum0;
                float* e = mode ? error.data() : nullptr;
                float* u = mode == 2 ? momentum.data() : nullptr;
                CHECK(ref().topk_accumulate(x.data(), e, u, 0.9f, n));
                for (std::size_t offset : kOffsets) {
                    const std::string at = where(isa, n, 0, offset, mode > 0) + " mode " + std::to_string(mode);
                    Guarded<float> in(n, offset), err(n, offset), mom(n, offset);
                    in.fill(x);
                    err.fill(error0);
                    mom.fill(momentum0);
                    CHECK_MSG(of(isa).topk_accumulate(in.data(), mode ? err.data() : nullptr,
                                                      mode == 2 ? mom.data() : nullptr, 0.9f, n),
                              at);
                    CHECK_MSG(same(err.get(), mode ? error : error0), at + " error");
                    CHECK_MSG(same(mom.get(), mode == 2 ? momentum : momentum0), at + " momentum");
                    CHECK_MSG(err.intact() && mom.intact(), at + " guard");
                }
            }
            for (float threshold : {0.0f, 0.5f, 1.0f, 3.0f, 1e30f}) {
                const std::size_t count = ref().count_at_least(x.data(), n, threshold);
                std::vector<std::uint32_t> expected(count);
                CHECK(ref().gather_at_least(x.data(), n, threshold, 1000, expected.data()) == count);
                for (std::size_t offset : kOffsets) {
                    const std::string at = where(isa, n, 0, offset, false) + " t=" + std::to_string(threshold);
                    Guarded<float> in(n, offset);
                    in.fill(x);
                    CHECK_MSG(of(isa).count_at_least(in.data(), n, threshold) == count, at);
                    Guarded<std::uint32_t> idx(count, offset);
                    CHECK_MSG(of(isa).gather_at_least(in.data(), n, threshold, 1000, idx.data()) == count, at);
                    CHECK_MSG(same(idx.get(), expected), at + " indices");
                    CHECK_MSG(idx.intact(), at + " guard");
                }
            }
        }
    });
}

// The public entry points: the same payload and error at 1, 2 and 3 threads, on every ISA.
TEST_CASE("comm entry points are independent of the thread count") {
    const std::size_t n = 300'007;
    const std::vector<float> x = gradient(n), error0 = gradient(n);
    const IsaLevel saved = codl::active_isa();
    std::vector<std::uint8_t> scalar_payloads[5];
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        codl::select_isa(isa);
        std::vector<std::uint8_t> first[5];
        std::vector<float> first_error[5];
        for (int threads : {1, 2, 3}) {
            const std::string at = std::string(codl::isa_name(isa)) + " threads=" + std::to_string(threads);
            std::vector<std::uint8_t> payloads[5];
            std::vector<float> errors[5];
            for (auto& e : errors) e = error0;
            payloads[0].resize(codl::int8_payload_bytes(n, 512));
            CHECK(codl::int8_encode(x.data(), errors[0].data(), n, 512, payloads[0].data(), threads));
            payloads[1].resize(codl::sign_payload_bytes(n, 2048));
            CHECK(codl::sign_encode(x.data(), errors[1].data(), n, 2048, payloads[1].data(), threads));
            payloads[2].resize(codl::terngrad_payload_bytes(n, 512));
            CHECK(codl::terngrad_encode(x.data(), errors[2].data(), n, 512, 9, payloads[2].data(), threads));
            payloads[3].resize(codl::qsgd_payload_bytes(n, 512, 16));
            CHECK(codl::qsgd_encode(x.data(), errors[3].data(), n, 512, 16, 9, payloads[3].data(), threads));
            payloads[4].resize(codl::topk_payload_bytes(3000));
            CHECK(codl::topk_encode(x.data(), errors[4].data(), nullptr, 0.0f, n, 3000, 3000, 9,
                                    payloads[4].data(), threads));
            for (int c = 0; c < 5; ++c) {
                if (threads == 1) {
                    first[c] = payloads[c];
                    first_error[c] = errors[c];
                } else {
                    CHECK_MSG(same(payloads[c], first[c]), at + " codec " + std::to_string(c));
                    CHECK_MSG(same(errors[c], first_error[c]), at + " error of codec " + std::to_string(c));
                }
            }
            std::vector<float> out(n);
            codl::int8_decode(first[0].data(), n, 512, out.data(), false, threads);
            std::vector<float> expected(n);
            codl::int8_decode(first[0].data(), n, 512, expected.data(), false, 1);
            CHECK_MSG(same(out, expected), at + " int8 decode");
        }
        // Every ISA produces the reference's payloads (the scalar table runs first).
        for (int c = 0; c < 5; ++c) {
            if (isa == IsaLevel::scalar) scalar_payloads[c] = first[c];
            CHECK_MSG(same(first[c], scalar_payloads[c]),
                      std::string(codl::isa_name(isa)) + " codec " + std::to_string(c) + " vs scalar");
        }
    });
    codl::select_isa(saved);
}

TEST_CASE("comm top-k sends exactly the k largest magnitudes, ties to the lower index") {
    for (std::size_t n : {1, 2, 10, 1000, 100'000, 300'001}) {
        for (std::size_t k : {std::size_t{1}, n / 100 + 1, n / 3 + 1, n}) {
            if (k > n) continue;
            std::vector<float> x = gradient(n);
            // Ties: repeat some magnitudes.
            for (std::size_t i = 0; i + 7 < n; i += 7) x[i + 3] = -x[i];
            std::vector<std::uint32_t> order(n);
            std::iota(order.begin(), order.end(), 0u);
            std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
                return std::fabs(x[a]) > std::fabs(x[b]);
            });
            std::vector<std::uint32_t> expected(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k));
            std::sort(expected.begin(), expected.end());
            for (std::size_t sample : {std::size_t{1}, std::size_t{512}, n}) {
                std::vector<float> error(n, 0.0f);
                std::vector<std::uint8_t> payload(codl::topk_payload_bytes(k));
                CHECK(codl::topk_encode(x.data(), error.data(), nullptr, 0.0f, n, k, sample, 3, payload.data(), 2));
                std::uint32_t count;
                std::memcpy(&count, payload.data(), 4);
                CHECK(count == k);
                std::vector<std::uint32_t> sent(k);
                std::memcpy(sent.data(), payload.data() + 4, 4 * k);
                const std::string at = "n=" + std::to_string(n) + " k=" + std::to_string(k) + " sample=" + std::to_string(sample);
                CHECK_MSG(sent == expected, at);
                std::vector<float> decoded(n);
                CHECK(codl::topk_decode(payload.data(), payload.size(), n, decoded.data(), false, 1));
                bool invariant = true;
                for (std::size_t i = 0; i < n; ++i) invariant = invariant && decoded[i] + error[i] == x[i];
                CHECK_MSG(invariant, at + " decode + error == x");
            }
        }
    }
}

TEST_CASE("comm generator is uniform and keyed") {
    const std::uint64_t stream = codl::counter_stream(1, 2, 3);
    double sum = 0.0;
    int buckets[16] = {};
    const int draws = 160'000;
    for (int i = 0; i < draws; ++i) {
        const float u = codl::counter_uniform(stream, static_cast<std::uint64_t>(i));
        CHECK(u >= 0.0f && u < 1.0f);
        sum += u;
        ++buckets[static_cast<int>(u * 16)];
    }
    CHECK(std::fabs(sum / draws - 0.5) < 0.005);
    double chi2 = 0.0;
    for (int b : buckets) chi2 += (b - draws / 16.0) * (b - draws / 16.0) / (draws / 16.0);
    CHECK_MSG(chi2 < 45.0, "chi-square " + std::to_string(chi2));  // 15 dof, p ~ 1e-4
    CHECK(codl::counter_stream(1, 2, 3) != codl::counter_stream(1, 2, 4));
    CHECK(codl::counter_stream(1, 2, 3) != codl::counter_stream(1, 3, 3));
    CHECK(codl::counter_stream(1, 2, 3) != codl::counter_stream(2, 2, 3));
}

}  // namespace

namespace {

TEST_CASE("comm stochastic decoders reject corrupt fields on every ISA") {
    const std::size_t n = 1000, block = 64;
    const std::vector<float> x = gradient(n);
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t position : {0, 17, 500, 999}) {
            // TernGrad: a 2-bit field 0b11.
            std::vector<std::uint8_t> scales(4 * codl::comm_blocks(n, block)), codes((n + 3) / 4);
            CHECK(ref().terngrad_encode(x.data(), nullptr, n, block, kStream, 0, scales.data(), codes.data()));
            std::vector<float> out(n);
            CHECK(of(isa).terngrad_decode(scales.data(), codes.data(), n, block, out.data(), false));
            codes[position / 4] = static_cast<std::uint8_t>(codes[position / 4] | 3u << (2 * (position % 4)));
            CHECK_MSG(!of(isa).terngrad_decode(scales.data(), codes.data(), n, block, out.data(), false),
                      std::string(codl::isa_name(isa)) + " terngrad at " + std::to_string(position));
            // QSGD with 5 levels: 3 level bits, so level 7 is corrupt (fields are 4 bits wide).
            std::vector<std::uint8_t> qcodes((n * 4 + 7) / 8);
            CHECK(ref().qsgd_encode(x.data(), nullptr, n, block, 5, kStream, 0, scales.data(), qcodes.data()));
            CHECK(of(isa).qsgd_decode(scales.data(), qcodes.data(), n, block, 5, out.data(), false));
            qcodes[position / 2] = static_cast<std::uint8_t>(qcodes[position / 2] | 7u << (4 * (position % 2)));
            CHECK_MSG(!of(isa).qsgd_decode(scales.data(), qcodes.data(), n, block, 5, out.data(), false),
                      std::string(codl::isa_name(isa)) + " qsgd at " + std::to_string(position));
        }
    });
}

}  // namespace
