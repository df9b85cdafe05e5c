// The sparse (1x4 block) kernels of every ISA this CPU runs against the scalar reference (int32
// results bit for bit, corrupt indices included) and against an independent int64 dense product.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/sparse.h"
#include "harness.h"

namespace {

using codl::IsaLevel;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(11);
    return generator;
}

const codl::SparseKernels& ref() { return codl::ref::sparse_kernels; }

// A pruned n x k int8 weight kept dense (for the int64 oracle) and in 1x4 blocks.
struct Weight {
    std::size_t n, k, k_blocks;
    std::vector<std::int8_t> dense;  // n * k
    std::vector<std::int32_t> row_ptr;
    std::vector<std::uint16_t> cols;
    std::vector<std::int8_t> values;
};

Weight random_weight(std::size_t n, std::size_t k, double density, bool ternary) {
    Weight w{n, k, codl::sparse_blocks(k), std::vector<std::int8_t>(n * k, 0), {0}, {}, {}};
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (auto& v : w.dense) {
        if (u(rng()) < density) {
            int value = ternary ? (rng()() % 2 ? 1 : -1) : static_cast<int>(rng()() % 256) - 128;
            v = static_cast<std::int8_t>(value);
        }
    }
    for (std::size_t j = 0; j < n; ++j) {
        for (std::size_t b = 0; b < w.k_blocks; ++b) {
            std::int8_t block[4] = {0, 0, 0, 0};
            bool any = false;
            for (std::size_t t = 0; t < 4 && 4 * b + t < k; ++t) {
                block[t] = w.dense[j * k + 4 * b + t];
                any = any || block[t] != 0;
            }
            if (!any) continue;
            w.cols.push_back(static_cast<std::uint16_t>(b));
            w.values.insert(w.values.end(), block, block + 4);
        }
        w.row_ptr.push_back(static_cast<std::int32_t>(w.cols.size()));
    }
    return w;
}

// The same weight in the panel layout (codl/sparse.h), built straight from the dense rows.
struct Panels {
    std::vector<std::uint16_t> masks;
    std::vector<std::int32_t> starts;
    std::vector<std::int8_t> values;
};

Panels panels_of(const Weight& w) {
    Panels out;
    const std::size_t panels = codl::sparse_panels(w.n), steps = codl::sparse_steps(w.k_blocks);
    for (std::size_t p = 0; p < panels; ++p) {
        for (std::size_t g = 0; g < steps; ++g) {
            out.starts.push_back(static_cast<std::int32_t>(out.values.size() / 4));
            std::uint16_t mask = 0;
            for (std::size_t lane = 0; lane < 16; ++lane) {
                const std::size_t j = 4 * p + lane / 4, c = 4 * g + lane % 4;
                if (j >= w.n || c >= w.k_blocks) continue;
                std::int8_t block[4] = {0, 0, 0, 0};
                bool any = false;
                for (std::size_t t = 0; t < 4 && 4 * c + t < w.k; ++t) {
                    block[t] = w.dense[j * w.k + 4 * c + t];
                    any = any || block[t] != 0;
                }
                if (!any) continue;
                mask = static_cast<std::uint16_t>(mask | (1u << lane));
                out.values.insert(out.values.end(), block, block + 4);
            }
            out.masks.push_back(mask);
        }
    }
    return out;
}

// m rows of 4 * k_blocks activations repadded to the panel kernels' 16 * steps (zeros after).
std::vector<std::int8_t> panel_rows(const std::vector<std::int8_t>& a, std::size_t m, std::size_t k_blocks) {
    const std::size_t width = 16 * codl::sparse_steps(k_blocks);
    std::vector<std::int8_t> out(m * width, 0);
    for (std::size_t i = 0; i < m; ++i) {
        std::copy(a.begin() + i * 4 * k_blocks, a.begin() + (i + 1) * 4 * k_blocks, out.begin() + i * width);
    }
    return out;
}

// m rows of 4 * k_blocks int8 activations in [-127, 127], zero past k.
std::vector<std::int8_t> random_activations(std::size_t m, std::size_t k, std::size_t k_blocks) {
    std::vector<std::int8_t> a(m * k_blocks * 4, 0);
    for (std::size_t i = 0; i < m; ++i) {
        for (std::size_t c = 0; c < k; ++c) {
            a[i * k_blocks * 4 + c] = static_cast<std::int8_t>(static_cast<int>(rng()() % 255) - 127);
        }
        if (k > 0) a[i * k_blocks * 4] = -127;  // the extremes, against -128 weights
    }
    return a;
}

std::vector<std::int8_t> transposed(const std::vector<std::int8_t>& a, std::size_t m, std::size_t rows,
                                    std::size_t k_blocks) {
    std::vector<std::int8_t> xt(rows * k_blocks * 4, 0);
    for (std::size_t b = 0; b < k_blocks; ++b) {
        for (std::size_t r = 0; r < m; ++r) {
            for (std::size_t t = 0; t < 4; ++t) xt[(b * rows + r) * 4 + t] = a[r * k_blocks * 4 + b * 4 + t];
        }
    }
    return xt;
}

std::int64_t dense_dot(const Weight& w, const std::int8_t* a, std::size_t j) {
    std::int64_t total = 0;
    for (std::size_t c = 0; c < w.k; ++c) total += std::int64_t{a[c]} * w.dense[j * w.k + c];
    return total;
}

// Copies of a weight's arrays at an odd offset (values and activations need no alignment).
struct Shifted {
    std::vector<std::int8_t> storage;
    const std::int8_t* data;
    explicit Shifted(const std::vector<std::int8_t>& v) : storage(v.size() + 1) {
        std::copy(v.begin(), v.end(), storage.begin() + 1);
        data = storage.data() + 1;
    }
};

const std::vector<std::size_t> kLengths = {1, 3, 4, 5, 17, 64, 67, 130, 301, 1024};

TEST_CASE("gemv_i8_b4: every ISA equals the reference and the int64 dense product") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
        for (std::size_t k : kLengths) {
            for (double density : {0.0, 0.02, 0.1, 0.5, 1.0}) {
                const std::size_t n = 1 + rng()() % 40;
                const Weight w = random_weight(n, k, density, density == 0.1);
                const std::vector<std::int8_t> a = random_activations(1, k, w.k_blocks);
                const Shifted q(a), values(w.values);
                std::vector<std::int32_t> got(n + 1, 77), want(n + 1, 77);
                const std::size_t begin = n > 2 ? 1 : 0;
                table.sparse->gemv_i8_b4(q.data, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(),
                                         values.data, begin, n, got.data());
                ref().gemv_i8_b4(q.data, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(), values.data,
                                 begin, n, want.data());
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(k) +
                                       " density=" + std::to_string(density);
                CHECK_MSG(got == want, at);
                CHECK_MSG(got[n - begin] == 77, at + " wrote past row_end");
                for (std::size_t j = begin; j < n; ++j) CHECK_MSG(want[j - begin] == dense_dot(w, a.data(), j), at);
            }
        }
    });
}

TEST_CASE("gemm_i8_b4: every ISA equals the reference and the int64 dense product") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
        for (std::size_t k : kLengths) {
            for (std::size_t m : {1, 15, 16, 17, 33, 48, 64}) {
                const std::size_t rows = (m + codl::kSparseRowAlign - 1) / codl::kSparseRowAlign * codl::kSparseRowAlign;
                const std::size_t n = 1 + rng()() % 24;
                const Weight w = random_weight(n, k, 0.15, false);
                const std::vector<std::int8_t> a = random_activations(m, k, w.k_blocks);
                const Shifted xt(transposed(a, m, rows, w.k_blocks)), values(w.values);
                std::vector<std::int32_t> got(n * rows + 1, 77), want(n * rows + 1, 77);
                table.sparse->gemm_i8_b4(xt.data, rows, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(),
                                         values.data, 0, n, got.data());
                ref().gemm_i8_b4(xt.data, rows, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(),
                                 values.data, 0, n, want.data());
                const std::string at = std::string(codl::isa_name(isa)) + " k=" + std::to_string(k) +
                                       " m=" + std::to_string(m);
                CHECK_MSG(got == want, at);
                CHECK_MSG(got[n * rows] == 77, at + " wrote past the tile");
                for (std::size_t j = 0; j < n; ++j) {
                    for (std::size_t r = 0; r < m; ++r) {
                        CHECK_MSG(want[j * rows + r] == dense_dot(w, a.data() + r * w.k_blocks * 4, j), at);
                    }
                }
            }
        }
    });
}

TEST_CASE("corrupt row pointers and block columns: kernels clamp alike and the check names the row") {
    const std::size_t k = 64, n = 8;
    Weight w = random_weight(n, k, 0.3, false);
    const std::size_t blocks = w.cols.size();
    CHECK(codl::first_invalid_sparse_row(w.row_ptr.data(), n, w.cols.data(), blocks, w.k_blocks) == n);
    Weight bad = w;
    bad.cols[bad.row_ptr[3]] = 60000;  // row 3 (random_weight at density 0.3 fills every row)
    bad.row_ptr[6] = bad.row_ptr[5] - 1;  // row 5 ends before it starts
    CHECK(codl::first_invalid_sparse_row(bad.row_ptr.data(), n, bad.cols.data(), blocks, w.k_blocks) == 3);
    bad.row_ptr[7] = static_cast<std::int32_t>(blocks) + 1000;  // past the blocks
    bad.row_ptr[2] = -5;
    CHECK(codl::first_invalid_sparse_row(bad.row_ptr.data(), n, bad.cols.data(), blocks, w.k_blocks) == 1);
    Weight short_end = w;
    short_end.row_ptr[n] -= 1;
    CHECK(codl::first_invalid_sparse_row(short_end.row_ptr.data(), n, short_end.cols.data(), blocks, w.k_blocks) ==
          n - 1);
    Weight nonzero_start = w;
    nonzero_start.row_ptr[0] = 1;
    CHECK(codl::first_invalid_sparse_row(nonzero_start.row_ptr.data(), n, nonzero_start.cols.data(), blocks,
                                         w.k_blocks) == 0);
    const std::vector<std::int8_t> a = random_activations(16, k, w.k_blocks);
    const std::vector<std::int8_t> xt = transposed(a, 16, 16, w.k_blocks);
    std::vector<std::int32_t> want(n), want_t(n * 16);
    ref().gemv_i8_b4(a.data(), w.k_blocks, bad.row_ptr.data(), blocks, bad.cols.data(), bad.values.data(), 0, n,
                     want.data());
    ref().gemm_i8_b4(xt.data(), 16, w.k_blocks, bad.row_ptr.data(), blocks, bad.cols.data(), bad.values.data(), 0, n,
                     want_t.data());
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
        std::vector<std::int32_t> got(n), got_t(n * 16);
        table.sparse->gemv_i8_b4(a.data(), w.k_blocks, bad.row_ptr.data(), blocks, bad.cols.data(),
                                 bad.values.data(), 0, n, got.data());
        table.sparse->gemm_i8_b4(xt.data(), 16, w.k_blocks, bad.row_ptr.data(), blocks, bad.cols.data(),
                                 bad.values.data(), 0, n, got_t.data());
        CHECK_MSG(got == want && got_t == want_t, codl::isa_name(isa));
    });
}

// The AVX-512 batch-1 kernel fetches a group of 16 blocks from a 128-column window of the
// activations when the group fits in it, and gathers it otherwise. Long rows whose blocks are out
// of column order, repeat a column, or name columns past the row (clamped) must give what the
// reference gives, at every density from windows always fitting to never, in the batch-1 kernel
// and in the batched one.
TEST_CASE("gemv_i8_b4, gemm_i8_b4: long rows with block columns out of order, repeated or out of range") {
    const std::size_t n = 12, k = 4 * 700;
    for (double density : {1.0, 0.1, 0.03}) {
        Weight w = random_weight(n, k, density, false);
        const std::vector<std::int8_t> a = random_activations(1, k, w.k_blocks);
        for (std::size_t j = 0; j < n; ++j) {
            const std::size_t begin = w.row_ptr[j], end = w.row_ptr[j + 1];
            if (end - begin < 40) continue;
            if (j % 3 == 0) std::reverse(w.cols.begin() + begin, w.cols.begin() + end);  // values stay put
            if (j % 3 == 1) {
                w.cols[begin + 5] = 60000;  // clamped to the last column
                w.cols[begin + 20] = w.cols[begin + 3];
            }
            if (j % 3 == 2) std::swap(w.cols[begin + 1], w.cols[end - 2]);  // one group spans the row
        }
        std::vector<std::int32_t> want(n);
        ref().gemv_i8_b4(a.data(), w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(), w.values.data(), 0,
                         n, want.data());
        // and the batched kernel
        const std::vector<std::int8_t> xt = transposed(random_activations(64, k, w.k_blocks), 64, 64, w.k_blocks);
        std::vector<std::int32_t> want_t(n * 64);
        ref().gemm_i8_b4(xt.data(), 64, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(), w.values.data(), 0,
                         n, want_t.data());
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
            std::vector<std::int32_t> got(n, -1), got_t(n * 64, -1);
            table.sparse->gemv_i8_b4(a.data(), w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(),
                                     w.values.data(), 0, n, got.data());
            table.sparse->gemm_i8_b4(xt.data(), 64, w.k_blocks, w.row_ptr.data(), w.cols.size(), w.cols.data(),
                                     w.values.data(), 0, n, got_t.data());
            CHECK_MSG(got == want, std::string(codl::isa_name(isa)) + " density=" + std::to_string(density));
            CHECK_MSG(got_t == want_t,
                      std::string(codl::isa_name(isa)) + " batched, density=" + std::to_string(density));
        });
    }
}

TEST_CASE("gemm_i8_p4x4: every ISA equals the reference and the int64 dense product") {
    for (std::size_t n : {1, 4, 5, 19}) {
        for (std::size_t k : kLengths) {
            for (double density : {0.02, 0.1, 0.3, 1.0}) {
                const Weight w = random_weight(n, k, density, density == 0.3);
                const Panels pw = panels_of(w);
                const std::size_t panels = codl::sparse_panels(n), blocks = pw.values.size() / 4;
                CHECK(codl::first_invalid_sparse_panel(pw.masks.data(), pw.starts.data(), n, w.k_blocks, blocks) ==
                      panels);
                const Shifted values(pw.values);
                for (std::size_t m : {1, 2, 3, 4, 5, 9, 17}) {
                    const std::vector<std::int8_t> a = random_activations(m, k, w.k_blocks);
                    const std::vector<std::int8_t> qa = panel_rows(a, m, w.k_blocks);
                    std::vector<std::int32_t> want(panels * m * 4, -1);
                    ref().gemm_i8_p4x4(qa.data(), m, w.k_blocks, pw.masks.data(), pw.starts.data(), values.data,
                                       blocks, 0, panels, want.data());
                    for (std::size_t i = 0; i < m; ++i) {
                        for (std::size_t j = 0; j < panels * 4; ++j) {
                            const std::int64_t dense = j < n ? dense_dot(w, a.data() + i * w.k_blocks * 4, j) : 0;
                            CHECK(want[((j / 4) * m + i) * 4 + j % 4] == dense);
                        }
                    }
                    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                        // one panel range that starts past 0, as a thread's share does
                        const std::size_t begin = panels / 2;
                        std::vector<std::int32_t> got((panels - begin) * m * 4, -1);
                        table.sparse->gemm_i8_p4x4(qa.data(), m, w.k_blocks, pw.masks.data(), pw.starts.data(),
                                                   values.data, blocks, begin, panels, got.data());
                        const std::string at = std::string(codl::isa_name(isa)) + " n=" + std::to_string(n) +
                                               " k=" + std::to_string(k) + " m=" + std::to_string(m) +
                                               " density=" + std::to_string(density);
                        CHECK_MSG(std::equal(got.begin(), got.end(), want.begin() + begin * m * 4), at);
                    });
                }
            }
        }
    }
}

TEST_CASE("corrupt panel masks and starts: kernels clamp alike and the check names the panel") {
    const std::size_t n = 14, k = 4 * 50;  // 4 panels (the last with 2 rows), 13 steps (the last with 2 columns)
    const Weight w = random_weight(n, k, 0.2, false);
    const Panels good = panels_of(w);
    const std::size_t blocks = good.values.size() / 4, kb = w.k_blocks, steps = codl::sparse_steps(kb);
    const auto first_invalid = [&](const Panels& p) {
        return codl::first_invalid_sparse_panel(p.masks.data(), p.starts.data(), n, kb, blocks);
    };
    Panels bad = good;
    bad.starts[steps + 7] += 1;  // panel 1: a start that is not the count before it
    CHECK(first_invalid(bad) == 1);
    Panels past_rows = good;
    past_rows.masks[3 * steps + 3] |= 0x0100;  // lane 8: row 14 of a weight with 14
    CHECK(first_invalid(past_rows) == 3);
    Panels past_columns = good;
    past_columns.masks[steps - 1] |= 0x0008;  // lane 3 of the last step: block column 51 of 50
    CHECK(first_invalid(past_columns) == 0);
    Panels short_total = good;
    const std::uint16_t dropped = short_total.masks[2 * steps + 1];
    short_total.masks[2 * steps + 1] = 0;  // fewer blocks kept than `blocks`: the starts after follow
    for (std::size_t s = 2 * steps + 2; s < 4 * steps; ++s) {
        short_total.starts[s] = short_total.starts[s - 1] + __builtin_popcount(short_total.masks[s - 1]);
    }
    CHECK(first_invalid(short_total) == (dropped ? 3u : 4u));
    // wild starts (negative, past the end), full masks reading past the values and naming rows
    // and columns past the weight's: clamped alike; panel 2 only has starts in range, out of
    // order (the AVX-512 kernel's unclamped path)
    bad.starts[3] = -1000;
    bad.starts[steps + 9] = static_cast<std::int32_t>(blocks) - 2;
    bad.masks[steps + 9] = 0xFFFF;
    bad.starts[2 * steps - 1] = 1 << 30;
    bad.masks[2 * steps + 5] = 0xFFFF;
    bad.starts[2 * steps + 4] = 0;
    bad.masks[steps - 1] = 0xFFFF;
    const std::vector<std::int8_t> a = panel_rows(random_activations(3, k, kb), 3, kb);
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
        for (std::size_t m : {1, 3}) {
            std::vector<std::int32_t> want(4 * m * 4), got(4 * m * 4, -1);
            ref().gemm_i8_p4x4(a.data(), m, kb, bad.masks.data(), bad.starts.data(), bad.values.data(), blocks, 0, 4,
                               want.data());
            table.sparse->gemm_i8_p4x4(a.data(), m, kb, bad.masks.data(), bad.starts.data(), bad.values.data(),
                                       blocks, 0, 4, got.data());
            CHECK_MSG(got == want, std::string(codl::isa_name(isa)) + " m=" + std::to_string(m));
        }
    });
}

TEST_CASE("sparse_linear_f32 and sparse_gemm_i32 agree across ISAs, batch sizes and threads") {
    const IsaLevel original = codl::active_isa();
    for (std::size_t m : {1, 2, 3, 4, 20, 64, 65, 150}) {
        const std::size_t k = 1 + rng()() % 300, n = 1 + rng()() % 100;
        const Weight w = random_weight(n, k, 0.1, false);
        const Panels pw = panels_of(w);
        std::vector<float> x(m * k), scale(n), bias(n);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (auto& v : x) v = normal(rng());
        for (auto& v : scale) v = 0.01f + std::abs(normal(rng()));
        for (auto& v : bias) v = normal(rng());
        const std::vector<std::int8_t> a = random_activations(m, k, w.k_blocks);
        std::vector<float> y_ref(m * n);
        std::vector<std::int32_t> dots_ref(m * n);
        CHECK(codl::select_isa(IsaLevel::scalar).empty());
        CHECK(codl::sparse_linear_f32(x.data(), m, k, w.row_ptr.data(), w.cols.data(), w.values.data(),
                                      w.cols.size(), scale.data(), n, bias.data(), y_ref.data(), 1));
        codl::sparse_gemm_i32(a.data(), m, w.k_blocks, w.row_ptr.data(), w.cols.data(), w.values.data(),
                              w.cols.size(), n, dots_ref.data(), 1);
        for (std::size_t i = 0; i < m; ++i) {
            for (std::size_t j = 0; j < n; ++j) {
                CHECK(dots_ref[i * n + j] == dense_dot(w, a.data() + i * w.k_blocks * 4, j));
            }
        }
        for (IsaLevel isa : codl_test::runnable_isas()) {
            CHECK(codl::select_isa(isa).empty());
            for (int threads : {1, 3}) {
                std::vector<float> y(m * n);
                std::vector<std::int32_t> dots(m * n);
                CHECK(codl::sparse_linear_f32(x.data(), m, k, w.row_ptr.data(), w.cols.data(), w.values.data(),
                                              w.cols.size(), scale.data(), n, bias.data(), y.data(), threads));
                codl::sparse_gemm_i32(a.data(), m, w.k_blocks, w.row_ptr.data(), w.cols.data(), w.values.data(),
                                      w.cols.size(), n, dots.data(), threads);
                const std::string at = std::string(codl::isa_name(isa)) + " m=" + std::to_string(m) +
                                       " threads=" + std::to_string(threads);
                CHECK_MSG(y == y_ref, at);
                CHECK_MSG(dots == dots_ref, at);
                std::fill(y.begin(), y.end(), 0.0f);
                std::fill(dots.begin(), dots.end(), 0);
                CHECK(codl::sparse_panel_linear_f32(x.data(), m, k, pw.masks.data(), pw.starts.data(),
                                                    pw.values.data(), pw.values.size() / 4, scale.data(), n,
                                                    bias.data(), y.data(), threads));
                codl::sparse_panel_gemm_i32(panel_rows(a, m, w.k_blocks).data(), m, w.k_blocks, pw.masks.data(),
                                            pw.starts.data(), pw.values.data(), pw.values.size() / 4, n, dots.data(),
                                            threads);
                CHECK_MSG(y == y_ref, at + " panels");
                CHECK_MSG(dots == dots_ref, at + " panels");
            }
        }
        x[m * k / 2] = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> y(m * n);
        CHECK(!codl::sparse_linear_f32(x.data(), m, k, w.row_ptr.data(), w.cols.data(), w.values.data(),
                                       w.cols.size(), scale.data(), n, nullptr, y.data(), 2));
        CHECK(!codl::sparse_panel_linear_f32(x.data(), m, k, pw.masks.data(), pw.starts.data(), pw.values.data(),
                                             pw.values.size() / 4, scale.data(), n, nullptr, y.data(), 2));
    }
    CHECK(codl::select_isa(original).empty());
}

}  // namespace
