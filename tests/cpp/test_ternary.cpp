// The ternary GEMM kernels of every ISA this CPU runs against the scalar reference (integer
// results bit-exact) and against an independent int64 / double computation on unpacked codes.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/pack.h"
#include "codl/ternary.h"
#include "harness.h"

namespace {

using codl::IsaLevel;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(7);
    return generator;
}

const codl::TernaryKernels& ref() { return codl::ref::ternary_kernels; }
const codl::TernaryKernels& of(IsaLevel isa) { return *codl::kernel_table(isa)->ternary; }

std::vector<std::int8_t> random_codes(std::size_t n) {
    std::vector<std::int8_t> codes(n);
    for (auto& c : codes) c = static_cast<std::int8_t>(static_cast<int>(rng()() % 3) - 1);
    return codes;
}

// n rows of k_padded codes packed row by row (each row is whole ternary2 blocks).
std::vector<std::uint8_t> pack_rows(const std::vector<std::int8_t>& codes) {
    std::vector<std::uint8_t> packed(codes.size() / 4);
    CHECK(codl::ref::pack_kernels.pack_ternary2(codes.data(), codes.size(), packed.data()));
    return packed;
}

std::vector<float> random_row(std::size_t k, float magnitude) {
    std::normal_distribution<float> normal(0.0f, magnitude);
    std::vector<float> x(k);
    for (auto& v : x) v = normal(rng());
    return x;
}

TEST_CASE("quantize_row_i8 matches the reference bit for bit, ties and padding included") {
    std::vector<std::size_t> lengths;
    for (std::size_t k = 0; k <= 300; ++k) lengths.push_back(k);
    for (std::size_t k : {1000, 4095, 4096, 4097}) lengths.push_back(k);
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t k : lengths) {
            for (float magnitude : {1e-30f, 1.0f, 3e4f}) {
                std::vector<float> x = random_row(k, magnitude);
                if (k >= 4) {
                    // absmax 127 makes the scale 1, so these are exact ties: nearest even.
                    x[0] = 127.0f; x[1] = 2.5f; x[2] = -3.5f; x[3] = 0.5f;
                }
                const std::size_t kp = codl::ternary_padded_k(k);
                std::vector<std::int8_t> q_ref(kp + 1, 99), q(kp + 1, 99);
                float s_ref = 0, s = 0;
                std::int32_t sum_ref = 0, sum = 0;
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(k);
                CHECK_MSG(ref().quantize_row_i8(x.data(), k, kp, q_ref.data(), &s_ref, &sum_ref), at);
                CHECK_MSG(of(isa).quantize_row_i8(x.data(), k, kp, q.data(), &s, &sum), at);
                CHECK_MSG(q == q_ref && s == s_ref && sum == sum_ref, at);
                CHECK_MSG(q[kp] == 99, at + " wrote past k_padded");
                if (k >= 4 && magnitude == 1.0f) {
                    CHECK_MSG(q[0] == 127 && q[1] == 2 && q[2] == -4 && q[3] == 0, at);
                }
            }
        }
    });
}

TEST_CASE("quantize_row_i8 reports NaN and Inf anywhere in the row") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t k : {1, 7, 16, 33, 300}) {
            for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()}) {
                std::vector<float> x = random_row(k, 1.0f);
                x[rng()() % k] = bad;
                std::vector<std::int8_t> q(codl::ternary_padded_k(k));
                float s;
                std::int32_t sum;
                CHECK_MSG(!of(isa).quantize_row_i8(x.data(), k, q.size(), q.data(), &s, &sum),
                          std::string(codl::isa_name(isa)) + " k=" + std::to_string(k));
            }
        }
    });
}

TEST_CASE("dot_i8_t2 equals the reference and an int64 dot of the unpacked codes") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t kp : {128, 256, 384, 1152, 4096}) {
            for (std::size_t rows = 1; rows <= 9; ++rows) {
                const std::size_t w_rows = 1 + rng()() % 11;
                const std::vector<std::int8_t> codes = random_codes(w_rows * kp);
                const std::vector<std::uint8_t> packed = pack_rows(codes);
                std::vector<std::int8_t> a(rows * kp);
                for (auto& v : a) v = static_cast<std::int8_t>(static_cast<int>(rng()() % 256) - 128);
                std::vector<std::int32_t> sums(rows, 0);
                for (std::size_t r = 0; r < rows; ++r) {
                    for (std::size_t i = 0; i < kp; ++i) sums[r] += a[r * kp + i];
                }
                const std::size_t stride = w_rows + 2;  // gaps that must stay untouched
                std::vector<std::int32_t> got(rows * stride, -1), want(rows * stride, -1);
                ref().dot_i8_t2(a.data(), rows, kp, sums.data(), packed.data(), w_rows, want.data(), stride);
                of(isa).dot_i8_t2(a.data(), rows, kp, sums.data(), packed.data(), w_rows, got.data(), stride);
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(kp) +
                                       " rows=" + std::to_string(rows) + " w_rows=" + std::to_string(w_rows);
                CHECK_MSG(got == want, at);
                for (std::size_t r = 0; r < rows; ++r) {
                    for (std::size_t c = 0; c < w_rows; ++c) {
                        std::int64_t exact = 0;
                        for (std::size_t i = 0; i < kp; ++i) {
                            exact += std::int64_t{a[r * kp + i]} * codes[c * kp + i];
                        }
                        CHECK_MSG(got[r * stride + c] == exact, at);
                    }
                    CHECK_MSG(got[r * stride + w_rows] == -1 && got[r * stride + w_rows + 1] == -1, at);
                }
            }
        }
    });
}

// The AVX-512 tiles keep planes 1 and 3 as their fields times 4 and divide the lanes that sum
// them by 4 at the end: at the extremes (every activation -128 or 127, every code -1 or +1, long
// rows) those lanes hold their largest sums, and each must still come back exact.
TEST_CASE("dot_i8_t2 at the extremes (activations -128 and 127, codes all -1 or all +1, k 16384)") {
    const std::size_t kp = 16384;
    for (const std::int8_t code : {std::int8_t{-1}, std::int8_t{1}}) {
        for (const std::int8_t value : {std::int8_t{-128}, std::int8_t{127}}) {
            const std::size_t rows = 5, w_rows = 9;  // a 4 x 4 tile, and remainders of each
            const std::vector<std::uint8_t> packed = pack_rows(std::vector<std::int8_t>(w_rows * kp, code));
            const std::vector<std::int8_t> a(rows * kp, value);
            const std::vector<std::int32_t> sums(rows, static_cast<std::int32_t>(value) * static_cast<std::int32_t>(kp));
            const std::int32_t exact = static_cast<std::int32_t>(value) * code * static_cast<std::int32_t>(kp);
            codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
                std::vector<std::int32_t> got(rows * w_rows, 0);
                of(isa).dot_i8_t2(a.data(), rows, kp, sums.data(), packed.data(), w_rows, got.data(), w_rows);
                CHECK_MSG(got == std::vector<std::int32_t>(rows * w_rows, exact),
                          std::string(codl::isa_name(isa)) + " code=" + std::to_string(code) +
                              " value=" + std::to_string(value) + " got " + std::to_string(got[0]));
            });
        }
    }
}

// The AMX kernel works in 16 x 16 tiles of (activation rows, weight rows) and 64-value K steps:
// rows from 1 to 70 cross its forwarding threshold, whole and partial groups of 16 and a second
// 64-row chunk; weight rows not a multiple of 16 leave tile columns empty. Weights and
// activations sit at odd addresses in buffers of exactly their size (a read past them trips
// ASan), and the outputs' stride leaves gaps that must stay untouched.
TEST_CASE("dot_i8_t2 on tile-crossing shapes (rows 1..70, weight rows % 16 != 0) equals the reference") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t kp : {128, 256, 640, 4096}) {
            for (std::size_t rows : {1, 2, 3, 4, 5, 15, 16, 17, 31, 33, 48, 63, 64, 65, 70}) {
                if (kp == 4096 && rows % 2 == 0 && rows != 64) continue;  // keeps the sanitizer run short
                for (std::size_t w_rows : {1, 15, 16, 17, 40}) {
                    const std::vector<std::uint8_t> packed = pack_rows(random_codes(w_rows * kp));
                    std::vector<std::uint8_t> w_buffer(packed.size() + 1);
                    std::copy(packed.begin(), packed.end(), w_buffer.begin() + 1);
                    std::vector<std::int8_t> a_buffer(rows * kp + 1);
                    std::int8_t* a = a_buffer.data() + 1;
                    for (std::size_t i = 0; i < rows * kp; ++i) {
                        a[i] = static_cast<std::int8_t>(static_cast<int>(rng()() % 256) - 128);
                    }
                    std::vector<std::int32_t> sums(rows, 0);
                    for (std::size_t r = 0; r < rows; ++r) {
                        for (std::size_t i = 0; i < kp; ++i) sums[r] += a[r * kp + i];
                    }
                    const std::size_t stride = w_rows + 3;
                    std::vector<std::int32_t> got(rows * stride, -7), want(rows * stride, -7);
                    ref().dot_i8_t2(a, rows, kp, sums.data(), packed.data(), w_rows, want.data(), stride);
                    of(isa).dot_i8_t2(a, rows, kp, sums.data(), w_buffer.data() + 1, w_rows, got.data(), stride);
                    CHECK_MSG(got == want, std::string(codl::isa_name(isa)) + " k=" + std::to_string(kp) +
                                               " rows=" + std::to_string(rows) + " w_rows=" + std::to_string(w_rows));
                }
            }
        }
    });
}

TEST_CASE("ternary_linear_f32: same floats on every ISA and thread count, near a double reference") {
    const std::size_t m = 70, k = 300, n = 37;  // more rows than one activation tile
    const std::size_t kp = codl::ternary_padded_k(k);
    std::vector<float> x(m * k);
    for (std::size_t i = 0; i < m; ++i) {
        const std::vector<float> row = random_row(k, i == 3 ? 0.0f : 1.0f + i);  // row 3 all zero
        std::copy(row.begin(), row.end(), x.begin() + i * k);
    }
    std::vector<std::int8_t> codes(n * kp, 0);
    for (std::size_t j = 0; j < n; ++j) {
        const std::vector<std::int8_t> row = random_codes(k);
        std::copy(row.begin(), row.end(), codes.begin() + j * kp);
    }
    const std::vector<std::uint8_t> packed = pack_rows(codes);
    std::vector<float> alpha(n), bias(n);
    for (std::size_t j = 0; j < n; ++j) {
        alpha[j] = 0.01f * (1 + j);
        bias[j] = 0.5f - 0.03f * j;
    }
    // Independent reference: the reference quantizer, then int64 dots and double arithmetic.
    std::vector<double> expected(m * n);
    for (std::size_t i = 0; i < m; ++i) {
        std::vector<std::int8_t> q(kp);
        float scale;
        std::int32_t sum;
        CHECK(ref().quantize_row_i8(x.data() + i * k, k, kp, q.data(), &scale, &sum));
        for (std::size_t j = 0; j < n; ++j) {
            std::int64_t dot = 0;
            for (std::size_t c = 0; c < kp; ++c) dot += std::int64_t{q[c]} * codes[j * kp + c];
            expected[i * n + j] = double(scale) * alpha[j] * double(dot) + bias[j];
        }
    }
    std::vector<float> first;
    const IsaLevel original = codl::active_isa();
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        CHECK(codl::select_isa(isa).empty());
        for (int threads : {1, 2, 3}) {
            std::vector<float> y(m * n, -7.0f);
            CHECK(codl::ternary_linear_f32(x.data(), m, k, packed.data(), alpha.data(), n, bias.data(), y.data(), threads));
            if (first.empty()) first = y;
            const std::string at = std::string(codl::isa_name(isa)) + " threads=" + std::to_string(threads);
            CHECK_MSG(y == first, at);
            bool close = true;
            for (std::size_t e = 0; e < m * n; ++e) {
                close &= std::fabs(y[e] - expected[e]) <= 1e-5 * std::fabs(expected[e]) + 1e-6;
            }
            CHECK_MSG(close, at);
        }
        const float kept = x[5 * k + 17];
        x[5 * k + 17] = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> y(m * n);
        CHECK(!codl::ternary_linear_f32(x.data(), m, k, packed.data(), alpha.data(), n, nullptr, y.data(), 2));
        x[5 * k + 17] = kept;
    });
    // 0b11 fields (no code maps to them) in weight rows 23 and 30, inside k or in the row padding
    // past k: the validator names the first such row on every thread count.
    const std::size_t row_bytes = kp / 4;
    CHECK(codl::first_invalid_ternary2_row(packed.data(), n, row_bytes, 2) == n);
    for (const std::size_t byte : {std::size_t{10}, row_bytes - 1}) {
        for (const std::uint8_t field : {std::uint8_t{0x03}, std::uint8_t{0x0C}, std::uint8_t{0x30}, std::uint8_t{0xC0}}) {
            std::vector<std::uint8_t> bad = packed;
            bad[30 * row_bytes + 3] |= 0x30;
            bad[23 * row_bytes + byte] |= field;
            for (int threads : {1, 2, 3, 8}) {
                CHECK_MSG(codl::first_invalid_ternary2_row(bad.data(), n, row_bytes, threads) == 23,
                          "threads=" + std::to_string(threads) + " byte=" + std::to_string(byte));
            }
        }
    }
    CHECK(codl::select_isa(original).empty());
}

TEST_CASE("ternary_gemm_i32 over a 4096 x 4096-class shape equals the int64 reference") {
    const std::size_t m = 6, kp = 1024, n = 70;
    const std::vector<std::int8_t> codes = random_codes(n * kp);
    const std::vector<std::uint8_t> packed = pack_rows(codes);
    std::vector<std::int8_t> a(m * kp);
    for (auto& v : a) v = static_cast<std::int8_t>(static_cast<int>(rng()() % 255) - 127);
    const IsaLevel original = codl::active_isa();
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        CHECK(codl::select_isa(isa).empty());
        std::vector<std::int32_t> out(m * n);
        codl::ternary_gemm_i32(a.data(), m, kp, packed.data(), n, out.data(), 2);
        bool exact = true;
        for (std::size_t i = 0; i < m; ++i) {
            for (std::size_t j = 0; j < n; ++j) {
                std::int64_t dot = 0;
                for (std::size_t c = 0; c < kp; ++c) dot += std::int64_t{a[i * kp + c]} * codes[j * kp + c];
                exact &= out[i * n + j] == dot;
            }
        }
        CHECK_MSG(exact, codl::isa_name(isa));
    });
    CHECK(codl::select_isa(original).empty());
}

// n rows of k_padded codes (a multiple of 160) packed row by row in the base-3 layout.
std::vector<std::uint8_t> pack_rows3(const std::vector<std::int8_t>& codes) {
    std::vector<std::uint8_t> packed(codes.size() / 5);
    CHECK(codl::ref::pack_kernels.pack_ternary3(codes.data(), codes.size(), packed.data()));
    return packed;
}

TEST_CASE("dot_i8_t3 decodes every byte value as unpack_ternary3 does") {
    // One block whose 32 bytes, across 8 weight rows, take all 256 values: every trit of every
    // byte is checked against the unpacker, on every ISA.
    const std::size_t kp = codl::kTernary3BlockValues, w_rows = 8;
    std::vector<std::uint8_t> packed(w_rows * kp / 5);
    for (std::size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<std::uint8_t>(i);
    std::vector<std::int8_t> codes(w_rows * kp);
    codl::ref::pack_kernels.unpack_ternary3(packed.data(), codes.size(), codes.data());
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        // Activation row e_i (a one at i) picks code i of every weight row.
        for (std::size_t i = 0; i < kp; ++i) {
            std::vector<std::int8_t> a(kp, 0);
            a[i] = 1;
            const std::int32_t sum = 1;
            std::vector<std::int32_t> got(w_rows);
            of(isa).dot_i8_t3(a.data(), 1, kp, &sum, packed.data(), w_rows, got.data(), w_rows);
            for (std::size_t c = 0; c < w_rows; ++c) {
                CHECK_MSG(got[c] == codes[c * kp + i], std::string(codl::isa_name(isa)) + " value " +
                                                           std::to_string(i) + " row " + std::to_string(c));
            }
        }
    });
}

TEST_CASE("dot_i8_t3 equals the reference, the 2-bit kernel and an int64 dot") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t kp : {160, 320, 480, 1120, 4160}) {
            for (std::size_t rows = 1; rows <= 9; ++rows) {
                const std::size_t w_rows = 1 + rng()() % 11;
                const std::vector<std::int8_t> codes = random_codes(w_rows * kp);
                const std::vector<std::uint8_t> packed3 = pack_rows3(codes);
                // The same codes in the 2-bit layout, rows padded to whole 128-value blocks.
                const std::size_t kp2 = codl::ternary_padded_k(kp);
                std::vector<std::int8_t> codes2(w_rows * kp2, 0);
                for (std::size_t c = 0; c < w_rows; ++c) {
                    std::copy(codes.begin() + c * kp, codes.begin() + (c + 1) * kp, codes2.begin() + c * kp2);
                }
                const std::vector<std::uint8_t> packed2 = pack_rows(codes2);
                std::vector<std::int8_t> a(rows * kp), a2(rows * kp2, 0);
                for (auto& v : a) v = static_cast<std::int8_t>(static_cast<int>(rng()() % 256) - 128);
                std::vector<std::int32_t> sums(rows, 0);
                for (std::size_t r = 0; r < rows; ++r) {
                    for (std::size_t i = 0; i < kp; ++i) {
                        sums[r] += a[r * kp + i];
                        a2[r * kp2 + i] = a[r * kp + i];
                    }
                }
                const std::size_t stride = w_rows + 2;  // gaps that must stay untouched
                std::vector<std::int32_t> got(rows * stride, -1), want(rows * stride, -1), two_bit(rows * stride, -1);
                ref().dot_i8_t3(a.data(), rows, kp, sums.data(), packed3.data(), w_rows, want.data(), stride);
                of(isa).dot_i8_t3(a.data(), rows, kp, sums.data(), packed3.data(), w_rows, got.data(), stride);
                of(isa).dot_i8_t2(a2.data(), rows, kp2, sums.data(), packed2.data(), w_rows, two_bit.data(), stride);
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(kp) +
                                       " rows=" + std::to_string(rows) + " w_rows=" + std::to_string(w_rows);
                CHECK_MSG(got == want, at);
                CHECK_MSG(got == two_bit, at);
                for (std::size_t r = 0; r < rows; ++r) {
                    for (std::size_t c = 0; c < w_rows; ++c) {
                        std::int64_t exact = 0;
                        for (std::size_t i = 0; i < kp; ++i) exact += std::int64_t{a[r * kp + i]} * codes[c * kp + i];
                        CHECK_MSG(got[r * stride + c] == exact, at);
                    }
                    CHECK_MSG(got[r * stride + w_rows] == -1 && got[r * stride + w_rows + 1] == -1, at);
                }
            }
        }
    });
}

// The float-activation tolerance: summing K exact products x_k * code_k in float32 in any order
// is within K * 2^-24 * sum |x_k| of the exact sum (Higham, "Accuracy and Stability of
// Numerical Algorithms", 2002, eq. 4.4), so relative to sum_k |x_k| * |alpha| rather than to
// the result, which cancellation can make arbitrarily small. For the K <= 4096 used here the
// worst case is 2.4e-4; the observed errors of random data are far smaller, and 1e-5 is asserted.
constexpr double kFloatActivationTolerance = 1e-5;

TEST_CASE("dot_f32_t2 is within the float tolerance of a double sum on every ISA") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t kp : {128, 256, 384, 1152, 4096}) {
            for (std::size_t rows = 1; rows <= 9; ++rows) {
                const std::size_t w_rows = 1 + rng()() % 11;
                const std::vector<std::int8_t> codes = random_codes(w_rows * kp);
                const std::vector<std::uint8_t> packed = pack_rows(codes);
                const std::vector<float> x = random_row(rows * kp, 3.0f);
                const std::size_t stride = w_rows + 2;
                std::vector<float> got(rows * stride, -1.0f), want(rows * stride, -1.0f);
                ref().dot_f32_t2(x.data(), rows, kp, packed.data(), w_rows, want.data(), stride);
                of(isa).dot_f32_t2(x.data(), rows, kp, packed.data(), w_rows, got.data(), stride);
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(kp) +
                                       " rows=" + std::to_string(rows) + " w_rows=" + std::to_string(w_rows);
                for (std::size_t r = 0; r < rows; ++r) {
                    double magnitude = 0;
                    for (std::size_t i = 0; i < kp; ++i) magnitude += std::fabs(double(x[r * kp + i]));
                    for (std::size_t c = 0; c < w_rows; ++c) {
                        double exact = 0;
                        for (std::size_t i = 0; i < kp; ++i) exact += double(x[r * kp + i]) * codes[c * kp + i];
                        const double bound = kFloatActivationTolerance * magnitude;
                        CHECK_MSG(std::fabs(got[r * stride + c] - exact) <= bound, at);
                        CHECK_MSG(std::fabs(want[r * stride + c] - exact) <= bound, at + " (reference)");
                    }
                    CHECK_MSG(got[r * stride + w_rows] == -1.0f && got[r * stride + w_rows + 1] == -1.0f, at);
                }
                // Zero codes add nothing: zeroing the slots they skip changes no bit of the sum.
                if (rows == 1 && w_rows == 1) {
                    std::vector<float> skipped = x;
                    for (std::size_t i = 0; i < kp; ++i) {
                        if (codes[i] == 0) skipped[i] = 0.0f;
                    }
                    float clean = 0, again = 0;
                    of(isa).dot_f32_t2(skipped.data(), 1, kp, packed.data(), 1, &clean, 1);
                    of(isa).dot_f32_t2(x.data(), 1, kp, packed.data(), 1, &again, 1);
                    CHECK_MSG(clean == again, at + " zero codes changed the sum");
                }
            }
        }
    });
}

// Shared by the layer tests: m rows of x, n weight rows of k codes, alphas and biases.
struct LayerCase {
    std::size_t m, k, n;
    std::vector<float> x, alpha, bias;
    std::vector<std::int8_t> codes;  // n rows of k
};

LayerCase layer_case(std::size_t m, std::size_t k, std::size_t n) {
    LayerCase c{m, k, n, {}, std::vector<float>(n), std::vector<float>(n), random_codes(n * k)};
    for (std::size_t i = 0; i < m; ++i) {
        const std::vector<float> row = random_row(k, i == 3 ? 0.0f : 1.0f + i);  // row 3 all zero
        c.x.insert(c.x.end(), row.begin(), row.end());
    }
    for (std::size_t j = 0; j < n; ++j) {
        c.alpha[j] = 0.01f * (1 + j);
        c.bias[j] = 0.5f - 0.03f * j;
    }
    return c;
}

std::vector<std::uint8_t> packed_layer(const LayerCase& c, std::size_t kp, bool base3) {
    std::vector<std::int8_t> rows(c.n * kp, 0);
    for (std::size_t j = 0; j < c.n; ++j) std::copy(c.codes.begin() + j * c.k, c.codes.begin() + (j + 1) * c.k, rows.begin() + j * kp);
    return base3 ? pack_rows3(rows) : pack_rows(rows);
}

TEST_CASE("ternary3_linear_f32 gives the 2-bit path's floats bit for bit on every ISA and thread count") {
    for (std::size_t k : {1, 159, 160, 161, 300, 1000}) {
        const LayerCase c = layer_case(70, k, 37);
        const std::vector<std::uint8_t> packed2 = packed_layer(c, codl::ternary_padded_k(k), false);
        const std::vector<std::uint8_t> packed3 = packed_layer(c, codl::ternary3_padded_k(k), true);
        const IsaLevel original = codl::active_isa();
        std::vector<float> want(c.m * c.n);
        CHECK(codl::select_isa(IsaLevel::scalar).empty());
        CHECK(codl::ternary_linear_f32(c.x.data(), c.m, k, packed2.data(), c.alpha.data(), c.n, c.bias.data(), want.data(), 1));
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
            CHECK(codl::select_isa(isa).empty());
            for (int threads : {1, 2, 3}) {
                std::vector<float> y(c.m * c.n, -7.0f);
                CHECK(codl::ternary3_linear_f32(c.x.data(), c.m, k, packed3.data(), c.alpha.data(), c.n, c.bias.data(), y.data(), threads));
                CHECK_MSG(y == want, std::string(codl::isa_name(isa)) + " k=" + std::to_string(k) + " threads=" + std::to_string(threads));
            }
            std::vector<float> x = c.x;
            x[5 * k + k / 2] = std::numeric_limits<float>::infinity();
            std::vector<float> y(c.m * c.n);
            CHECK(!codl::ternary3_linear_f32(x.data(), c.m, k, packed3.data(), c.alpha.data(), c.n, nullptr, y.data(), 2));
        });
        CHECK(codl::select_isa(original).empty());
    }
}

TEST_CASE("ternary_linear_f32act: fixed per ISA across thread counts, near a double reference") {
    for (std::size_t k : {1, 127, 128, 129, 300, 1000}) {
        for (std::size_t m : {1, 5, 70}) {
            const LayerCase c = layer_case(m, k, 37);
            const std::vector<std::uint8_t> packed = packed_layer(c, codl::ternary_padded_k(k), false);
            const IsaLevel original = codl::active_isa();
            codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
                CHECK(codl::select_isa(isa).empty());
                std::vector<float> first;
                for (int threads : {1, 2, 3}) {
                    std::vector<float> y(m * c.n, -7.0f);
                    CHECK(codl::ternary_linear_f32act(c.x.data(), m, k, packed.data(), c.alpha.data(), c.n, c.bias.data(), y.data(), threads));
                    if (first.empty()) first = y;
                    const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(k) +
                                           " m=" + std::to_string(m) + " threads=" + std::to_string(threads);
                    CHECK_MSG(y == first, at);
                    bool close = true;
                    for (std::size_t i = 0; i < m; ++i) {
                        double magnitude = 0;
                        for (std::size_t t = 0; t < k; ++t) magnitude += std::fabs(double(c.x[i * k + t]));
                        for (std::size_t j = 0; j < c.n; ++j) {
                            double exact = 0;
                            for (std::size_t t = 0; t < k; ++t) exact += double(c.x[i * k + t]) * c.codes[j * k + t];
                            exact = exact * c.alpha[j] + c.bias[j];
                            // One more rounding each for the scale and the bias.
                            const double bound = kFloatActivationTolerance * magnitude * c.alpha[j] + 1e-7 * std::fabs(exact);
                            close &= std::fabs(y[i * c.n + j] - exact) <= bound;
                        }
                    }
                    CHECK_MSG(close, at);
                }
                std::vector<float> x = c.x;
                x[(m - 1) * k + k / 2] = std::numeric_limits<float>::quiet_NaN();
                std::vector<float> y(m * c.n);
                CHECK(!codl::ternary_linear_f32act(x.data(), m, k, packed.data(), c.alpha.data(), c.n, nullptr, y.data(), 2));
            });
            CHECK(codl::select_isa(original).empty());
        }
    }
}

}  // namespace
