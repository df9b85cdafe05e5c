// The direct convolution kernels of every ISA this CPU runs against the scalar reference (int32
// accumulators and int8 outputs bit-exact), and the entry points against an independent int64
// convolution on unpadded int8 activations with explicit border checks.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/conv.h"
#include "codl/pack.h"
#include "harness.h"

namespace {

using codl::ConvGeometry;
using codl::IsaLevel;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(11);
    return generator;
}

ConvGeometry geometry(std::size_t c, std::size_t h, std::size_t w, std::size_t co, std::size_t k,
                      std::size_t stride, std::size_t pad, std::size_t dilation) {
    ConvGeometry g;
    g.in_c = c;
    g.in_h = h;
    g.in_w = w;
    g.out_c = co;
    g.kernel_h = g.kernel_w = k;
    g.stride_h = g.stride_w = stride;
    g.pad_h = g.pad_w = pad;
    g.dilation_h = g.dilation_w = dilation;
    return g;
}

struct Shape {
    ConvGeometry g;
    std::size_t batch;
    const char* what;
};

// LeNet-5, FashionCNN and CSRNet-like layers, odd sizes, rectangular kernels and strides.
std::vector<Shape> shapes() {
    std::vector<Shape> s = {
        {geometry(1, 28, 28, 6, 5, 1, 2, 1), 1, "lenet conv1"},
        {geometry(6, 14, 14, 16, 5, 1, 0, 1), 2, "lenet conv2"},
        {geometry(1, 28, 28, 32, 3, 1, 1, 1), 3, "fashion conv1"},
        {geometry(32, 14, 14, 64, 3, 1, 1, 1), 1, "fashion conv2"},
        {geometry(32, 13, 11, 24, 3, 1, 2, 2), 2, "csrnet dilated"},
        {geometry(3, 17, 19, 40, 5, 2, 2, 1), 2, "stride 2 odd"},
        {geometry(5, 9, 7, 3, 3, 2, 1, 2), 1, "odd everything"},
        {geometry(7, 5, 6, 33, 1, 1, 0, 1), 3, "1x1"},
        {geometry(2, 4, 4, 17, 4, 3, 3, 1), 1, "stride 3 big pad"},
        {geometry(5, 3, 4, 20, 1, 1, 1, 1), 2, "1x1 padded: rows that read only the border"},
        // Rows of 16 pixels or more: the AMX kernel's tiles (2 x 16 pixels, pairs of 16
        // channels, K chunks of 64 or all channels below 64) and its tails.
        {geometry(128, 3, 33, 20, 3, 1, 1, 1), 1, "amx 2 chunks, 33 pixels"},
        {geometry(64, 4, 40, 48, 3, 2, 1, 2), 1, "amx stride 2 dilation 2, 3 blocks"},
        {geometry(24, 3, 36, 16, 3, 1, 1, 1), 2, "amx K 24"},
        {geometry(96, 2, 18, 16, 1, 1, 0, 1), 1, "96 channels: VNNI"},
        {geometry(40, 3, 20, 24, 1, 1, 0, 1), 1, "amx 1x1, weights resident"},
        {geometry(64, 3, 34, 80, 3, 1, 1, 1), 1, "amx weights past L1: blocks outer"},
        // First layers whose whole patch is too large to fold: one kernel row folded.
        {geometry(3, 12, 40, 16, 9, 1, 4, 1), 2, "9x9 on 3 channels: rows folded"},
        {geometry(2, 13, 11, 8, 7, 1, 3, 2), 1, "7x7 dilated on 2 channels: rows folded"},
        // MCNN's first layers (planar kernels: 20 and 24 channels) and a whole patch of 27.
        {geometry(3, 9, 37, 20, 7, 1, 3, 1), 2, "7x7 on 3 channels to 20"},
        {geometry(3, 11, 18, 24, 5, 2, 2, 1), 1, "5x5 stride 2 on 3 channels to 24"},
        {geometry(3, 10, 19, 13, 3, 1, 2, 2), 2, "3x3 dilated whole patch to 13"},
    };
    ConvGeometry rect = geometry(9, 12, 10, 20, 3, 1, 1, 1);
    rect.kernel_w = 2;
    rect.stride_w = 2;
    rect.pad_h = 0;
    rect.dilation_h = 3;
    s.push_back({rect, 2, "rectangular"});
    return s;
}

std::vector<std::int8_t> random_i8(std::size_t n, int low = -128, int high = 127) {
    std::uniform_int_distribution<int> d(low, high);
    std::vector<std::int8_t> v(n);
    for (auto& x : v) x = static_cast<std::int8_t>(d(rng()));
    return v;
}

// Canonical weights [Cout][KH][KW][Cp], zero past in_c.
std::vector<std::int8_t> random_weights(const ConvGeometry& g, int low, int high) {
    std::vector<std::int8_t> w = random_i8(g.out_c * g.reduction(), low, high);
    const std::size_t cp = g.channels();
    for (std::size_t i = 0; i < w.size(); ++i) {
        if (i % cp >= g.in_c) w[i] = 0;
    }
    return w;
}

// The core's padded images hold the byte 128 (the value 0) on their border, and the row kernels
// may skip the taps that read only border rows (conv.h): the tests' images do the same.
void zero_border(const ConvGeometry& g, std::vector<std::uint8_t>& image) {
    const std::size_t cp = g.channels(), wp = g.padded_w();
    for (std::size_t y = 0; y < g.padded_h(); ++y) {
        for (std::size_t x = 0; x < wp; ++x) {
            const bool inside = y >= g.pad_h && y < g.pad_h + g.in_h && x >= g.pad_w && x < g.pad_w + g.in_w;
            if (!inside) std::fill_n(image.begin() + static_cast<std::ptrdiff_t>((y * wp + x) * cp), cp, std::uint8_t{128});
        }
    }
}

// A layer's random inputs as the row kernels take them: the padded image (any bytes inside a
// border of 128), weights anywhere in [-128, 127] in the blocked layout, and their sums.
struct RowInputs {
    std::vector<std::uint8_t> image;
    std::vector<std::int8_t> blocked;
    std::vector<std::int32_t> sums;
};

RowInputs random_row_inputs(const ConvGeometry& g) {
    RowInputs inputs{std::vector<std::uint8_t>(g.padded_h() * g.padded_w() * g.channels()),
                     std::vector<std::int8_t>(g.out_c_padded() * g.reduction()),
                     std::vector<std::int32_t>(g.out_c_padded())};
    for (auto& b : inputs.image) b = static_cast<std::uint8_t>(rng()());
    zero_border(g, inputs.image);
    const std::vector<std::int8_t> w = random_weights(g, -128, 127);
    codl::conv_block_weights(g, w.data(), inputs.blocked.data(), inputs.sums.data());
    return inputs;
}

// Independent oracle: int64 sums over the unpadded NHWC input, skipping taps outside it.
std::vector<std::int64_t> oracle(const ConvGeometry& g, std::size_t batch, const std::vector<std::int8_t>& x,
                                 const std::vector<std::int8_t>& w) {
    const std::size_t oh = g.out_h(), ow = g.out_w(), cp = g.channels();
    std::vector<std::int64_t> out(batch * oh * ow * g.out_c);
    for (std::size_t n = 0; n < batch; ++n) {
        for (std::size_t i = 0; i < oh; ++i) {
            for (std::size_t j = 0; j < ow; ++j) {
                for (std::size_t co = 0; co < g.out_c; ++co) {
                    std::int64_t total = 0;
                    for (std::size_t kh = 0; kh < g.kernel_h; ++kh) {
                        const long y = static_cast<long>(i * g.stride_h + kh * g.dilation_h) - static_cast<long>(g.pad_h);
                        if (y < 0 || y >= static_cast<long>(g.in_h)) continue;
                        for (std::size_t kw = 0; kw < g.kernel_w; ++kw) {
                            const long xx = static_cast<long>(j * g.stride_w + kw * g.dilation_w) - static_cast<long>(g.pad_w);
                            if (xx < 0 || xx >= static_cast<long>(g.in_w)) continue;
                            for (std::size_t c = 0; c < g.in_c; ++c) {
                                total += static_cast<std::int64_t>(x[((n * g.in_h + y) * g.in_w + xx) * g.in_c + c]) *
                                         w[((co * g.kernel_h + kh) * g.kernel_w + kw) * cp + c];
                            }
                        }
                    }
                    out[((n * oh + i) * ow + j) * g.out_c + co] = total;
                }
            }
        }
    }
    return out;
}

TEST_CASE("conv_row_i8 matches the reference bit for bit on every shape, extreme values included") {
    for (const Shape& shape : shapes()) {
        const ConvGeometry& g = shape.g;
        const std::size_t co_pad = g.out_c_padded();
        // Any bytes inside the border, extremes included.
        std::vector<std::uint8_t> image(g.padded_h() * g.padded_w() * g.channels());
        for (int extreme = 0; extreme < 2; ++extreme) {
            for (auto& b : image) b = extreme ? (rng()() % 2 ? 255 : 0) : static_cast<std::uint8_t>(rng()());
            zero_border(g, image);
            const std::vector<std::int8_t> w =
                extreme ? random_weights(g, -128, -128) : random_weights(g, -128, 127);
            std::vector<std::int8_t> blocked(co_pad * g.reduction());
            std::vector<std::int32_t> sums(co_pad);
            codl::conv_block_weights(g, w.data(), blocked.data(), sums.data());
            const std::size_t ow = g.out_w();
            for (std::size_t oh : {std::size_t{0}, g.out_h() - 1, g.out_h() / 2}) {
                std::vector<std::int32_t> expected(ow * co_pad + 1, 7);
                codl::ref::conv_kernels.conv_row_i8(g, image.data(), blocked.data(), sums.data(), oh, 0, ow,
                                                    expected.data());
                codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                    // The whole row, and a part of it starting mid-row.
                    std::vector<std::int32_t> acc(ow * co_pad + 1, 7);
                    table.conv->conv_row_i8(g, image.data(), blocked.data(), sums.data(), oh, 0, ow, acc.data());
                    const std::string at = std::string(codl::isa_name(isa)) + " " + shape.what + " oh=" +
                                           std::to_string(oh) + (extreme ? " extreme" : "");
                    CHECK_MSG(acc == expected, at);
                    if (ow > 1) {
                        std::vector<std::int32_t> part((ow - 1) * co_pad + 1, 7);
                        table.conv->conv_row_i8(g, image.data(), blocked.data(), sums.data(), oh, 1, ow - 1,
                                                part.data());
                        CHECK_MSG(std::equal(part.begin(), part.end() - 1, expected.begin() + co_pad), at + " ow0=1");
                        CHECK_MSG(part.back() == 7, at + " wrote past count");
                    }
                });
            }
        }
    }
}

TEST_CASE("conv_rows_requant_i8 on one row equals conv_row_i8 then epilogue_i8 of the reference, bit for bit, on every ISA that fuses") {
    std::uniform_real_distribution<float> scale(-0.002f, 0.002f);
    std::size_t clamped = 0, zero = 0, outputs = 0;
    for (const Shape& shape : shapes()) {
        const ConvGeometry& g = shape.g;
        const std::size_t co_pad = g.out_c_padded(), ow = g.out_w(), n = g.out_c;
        const RowInputs inputs = random_row_inputs(g);
        const std::vector<std::uint8_t>& image = inputs.image;
        const std::vector<std::int8_t>& blocked = inputs.blocked;
        const std::vector<std::int32_t>& sums = inputs.sums;
        std::vector<float> mult(n), bias(n);
        for (std::size_t i = 0; i < n; ++i) {
            mult[i] = scale(rng());
            bias[i] = 1000.0f * scale(rng());
        }
        if (n > 1) bias[1] = std::numeric_limits<float>::quiet_NaN();
        const std::size_t oh = g.out_h() / 2;
        std::vector<std::int32_t> acc(ow * co_pad);
        codl::ref::conv_kernels.conv_row_i8(g, image.data(), blocked.data(), sums.data(), oh, 0, ow, acc.data());
        for (int relu = 0; relu < 2; ++relu) {
            for (int with_bias = 0; with_bias < 2; ++with_bias) {
                const float* b = with_bias ? bias.data() : nullptr;
                std::vector<std::int8_t> expected(ow * n + 1, 9);
                codl::ref::conv_kernels.epilogue_i8(acc.data(), co_pad, ow, n, mult.data(), b, relu, 0.5f, expected.data());
                for (std::size_t i = 0; i < ow * n; ++i) {
                    clamped += expected[i] == 127 || expected[i] == -127;
                    zero += expected[i] == 0;
                }
                outputs += ow * n;
                codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                    if (!table.conv->conv_rows_requant_i8) return;
                    const std::string at = std::string(codl::isa_name(isa)) + " " + shape.what +
                                           " relu=" + std::to_string(relu) + " bias=" + std::to_string(with_bias);
                    std::vector<std::int8_t> q(ow * n + 1, 9);
                    table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), oh, 1, 0, ow, n,
                                                     mult.data(), b, relu, 0.5f, q.data(), ow * n, 0);
                    CHECK_MSG(q == expected, at);
                    if (ow > 1) {  // a part of the row starting mid-row
                        std::vector<std::int8_t> part((ow - 1) * n + 1, 9);
                        table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), oh, 1, 1, ow - 1, n,
                                                         mult.data(), b, relu, 0.5f, part.data(), (ow - 1) * n, 0);
                        CHECK_MSG(std::equal(part.begin(), part.end() - 1, expected.begin() + n), at + " ow0=1");
                        CHECK_MSG(part.back() == 9, at + " wrote past count");
                    }
                });
            }
        }
    }
    // The scales put outputs on both sides of the clamps and of zero, over all the shapes (a
    // small row alone may land all on a clamp).
    CHECK(clamped > 0 && clamped < outputs / 2 && zero < outputs / 2);
}

// Several rows a call: every row of every shape (the first and last read border rows), and a run
// of rows from the second, each row's outputs where they would be, against the reference one row
// at a time; and nothing written past the rows.
TEST_CASE("conv_rows_requant_i8 over many rows equals the reference row by row, also rows a stride apart XOR 0x80, on every ISA that fuses") {
    std::uniform_real_distribution<float> scale(-0.002f, 0.002f);
    std::size_t checked = 0, between = 0, outputs = 0;
    for (const Shape& shape : shapes()) {
        const ConvGeometry& g = shape.g;
        const std::size_t ow = g.out_w(), oh = g.out_h(), n = g.out_c;
        const RowInputs inputs = random_row_inputs(g);
        const std::vector<std::uint8_t>& image = inputs.image;
        const std::vector<std::int8_t>& blocked = inputs.blocked;
        const std::vector<std::int32_t>& sums = inputs.sums;
        std::vector<float> mult(n), bias(n);
        for (std::size_t i = 0; i < n; ++i) {
            mult[i] = 0.05f * scale(rng());
            bias[i] = 10.0f * scale(rng());
        }
        std::vector<std::int8_t> expected(oh * ow * n);
        for (std::size_t row = 0; row < oh; ++row) {
            codl::ref::conv_kernels.conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), row, 1, 0, ow, n,
                                                         mult.data(), bias.data(), true, 0.5f,
                                                         expected.data() + row * ow * n, ow * n, 0);
        }
        for (const std::int8_t v : expected) between += v != 0 && v != 127;
        outputs += expected.size();
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
            if (!table.conv->conv_rows_requant_i8) return;
            const std::string at = std::string(codl::isa_name(isa)) + " " + shape.what;
            std::vector<std::int8_t> q(oh * ow * n + 1, 9);
            table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), 0, oh, 0, ow, n, mult.data(),
                                             bias.data(), true, 0.5f, q.data(), ow * n, 0);
            CHECK_MSG(std::equal(expected.begin(), expected.end(), q.begin()), at + " all rows");
            CHECK_MSG(q.back() == 9, at + " wrote past the rows");
            // Rows a stride apart with bytes between them (a padded image's border), every byte
            // XOR 0x80 (the value plus 128): the rows land where asked and the gaps stay.
            const std::size_t stride = ow * n + 2 * n + 3;
            std::vector<std::int8_t> laid(oh * stride, 9);
            table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), 0, oh, 0, ow, n, mult.data(),
                                             bias.data(), true, 0.5f, laid.data(), stride, 0x80);
            bool rows_match = true, gaps_kept = true;
            for (std::size_t row = 0; row < oh; ++row) {
                for (std::size_t i = 0; i < stride; ++i) {
                    const std::int8_t got = laid[row * stride + i];
                    if (i < ow * n) {
                        rows_match &= static_cast<std::uint8_t>(got) ==
                                      (static_cast<std::uint8_t>(expected[row * ow * n + i]) ^ 0x80u);
                    } else {
                        gaps_kept &= got == 9;
                    }
                }
            }
            CHECK_MSG(rows_match, at + " rows a stride apart, XOR 0x80");
            CHECK_MSG(gaps_kept, at + " wrote between the rows");
            if (oh > 2) {
                std::vector<std::int8_t> part((oh - 2) * ow * n + 1, 9);
                table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), 1, oh - 2, 0, ow, n,
                                                 mult.data(), bias.data(), true, 0.5f, part.data(), ow * n, 0);
                CHECK_MSG(std::equal(part.begin(), part.end() - 1, expected.begin() + ow * n), at + " rows 1 .. oh - 2");
                CHECK_MSG(part.back() == 9, at + " wrote past the run");
            }
            ++checked;
        });
    }
    CHECK(checked > 0);
    CHECK(between > outputs / 4);  // outputs off the clamp and off zero (relu), not a constant
}

// The planar kernels read the image in channel planes: the same outputs as the pixel-layout
// reference from the same bytes, for every channel count up to the kernels' limit (each one a
// different number of accumulators and transpose tail), rows that are not a multiple of 16 pixels
// and runs that start mid-row.
TEST_CASE("conv_row_planar_requant_i8 equals the pixel-layout reference bit for bit, 1 to 64 channels, every ISA that has it") {
    std::uniform_real_distribution<float> scale(-0.002f, 0.002f);
    struct Case {
        std::size_t c, h, w, kh, kw, stride_h, dilation, pad_w;
    };
    // Folded first layers (kernel_w 1) and layers over int8 images (kernel_w > 1, padded).
    const Case cases[] = {{28, 9, 37, 9, 1, 1, 1, 0}, {4, 3, 16, 1, 1, 1, 1, 0},  {24, 7, 21, 7, 1, 2, 1, 0},
                          {16, 6, 50, 3, 1, 1, 2, 0}, {12, 1, 5, 1, 1, 1, 1, 0},  {20, 5, 19, 5, 5, 1, 1, 2},
                          {8, 7, 33, 3, 3, 2, 2, 2},  {40, 3, 17, 3, 2, 1, 1, 0}};
    std::size_t checked = 0;
    for (const Case& k : cases) {
        for (std::size_t co = 1; co <= 64; co += co < 28 ? 1 : 3) {
            ConvGeometry g = geometry(k.c, k.h, k.w, co, 1, 1, 0, 1);
            g.kernel_h = k.kh;
            g.kernel_w = k.kw;
            g.stride_h = k.stride_h;
            g.dilation_h = g.dilation_w = k.dilation;
            g.pad_w = k.pad_w;
            CHECK(codl::conv_planes_layout(g));
            const std::size_t cp = g.channels(), groups = cp / 4, plane_w = codl::conv_plane_width(g);
            const std::size_t co_pad = g.out_c_padded(), ow = g.out_w();
            std::vector<std::uint8_t> image(g.padded_h() * g.padded_w() * cp), planes(codl::conv_planes_bytes(g), 0);
            for (auto& b : image) b = static_cast<std::uint8_t>(rng()());
            for (std::size_t y = 0; y < g.padded_h(); ++y)
                for (std::size_t x = 0; x < g.padded_w(); ++x)
                    for (std::size_t ch = 0; ch < cp; ++ch)
                        planes[((y * groups + ch / 4) * plane_w + x) * 4 + ch % 4] = image[(y * g.padded_w() + x) * cp + ch];
            const std::vector<std::int8_t> w = random_weights(g, -128, 127);
            std::vector<std::int8_t> blocked(co_pad * g.reduction());
            std::vector<std::int32_t> sums(co_pad);
            codl::conv_block_weights(g, w.data(), blocked.data(), sums.data());
            std::vector<float> mult(co), bias(co);
            for (std::size_t i = 0; i < co; ++i) {
                mult[i] = scale(rng());
                bias[i] = 1000.0f * scale(rng());
            }
            if (co > 2) bias[2] = std::numeric_limits<float>::quiet_NaN();
            const std::size_t oh = g.out_h() - 1;
            for (int relu = 0; relu < 2; ++relu) {
                std::vector<std::int8_t> expected(ow * co + 1, 9);
                codl::ref::conv_kernels.conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), oh, 1, 0, ow, co,
                                                             mult.data(), bias.data(), relu, 0.5f, expected.data(),
                                                             ow * co, 0);
                codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                    if (!table.conv->conv_row_planar_requant_i8 || co > table.conv->planar_max_channels) return;
                    const std::string at = std::string(codl::isa_name(isa)) + " c=" + std::to_string(k.c) +
                                           " k=" + std::to_string(k.kh) + "x" + std::to_string(k.kw) + " co=" + std::to_string(co) +
                                           " relu=" + std::to_string(relu);
                    std::vector<std::int8_t> q(ow * co + 1, 9);
                    table.conv->conv_row_planar_requant_i8(g, planes.data(), blocked.data(), sums.data(), oh, 0, ow, co,
                                                           mult.data(), bias.data(), relu, 0.5f, q.data(), 0);
                    CHECK_MSG(q == expected, at);
                    std::vector<std::int8_t> flipped(ow * co + 1, 9);
                    table.conv->conv_row_planar_requant_i8(g, planes.data(), blocked.data(), sums.data(), oh, 0, ow, co,
                                                           mult.data(), bias.data(), relu, 0.5f, flipped.data(), 0x80);
                    bool all_flipped = flipped.back() == 9;
                    for (std::size_t i = 0; i < ow * co; ++i) {
                        all_flipped &= static_cast<std::uint8_t>(flipped[i]) == (static_cast<std::uint8_t>(q[i]) ^ 0x80u);
                    }
                    CHECK_MSG(all_flipped, at + " XOR 0x80");
                    if (ow > 3) {  // a run from pixel 3: plane loads not on a 16-pixel boundary
                        std::vector<std::int8_t> part((ow - 3) * co + 1, 9);
                        table.conv->conv_row_planar_requant_i8(g, planes.data(), blocked.data(), sums.data(), oh, 3,
                                                               ow - 3, co, mult.data(), bias.data(), relu, 0.5f,
                                                               part.data(), 0);
                        CHECK_MSG(std::equal(part.begin(), part.end() - 1, expected.begin() + 3 * co), at + " ow0=3");
                        CHECK_MSG(part.back() == 9, at + " wrote past count");
                    }
                    ++checked;
                });
            }
        }
    }
    CHECK(checked > 0);  // the reference has the kernel, so at least it ran
}

TEST_CASE("conv_row_i8 and conv_rows_requant_i8: every row width from 1 to 29 pixels, one to seven channel blocks") {
    // Kernels cut a row into tiles of several pixels and a last tile of the rest: every
    // remainder of every tile size, for tiles of one, two and four blocks of 16 channels and
    // their mixes (112 channels: 4 + 2 + 1 blocks).
    std::vector<float> mult(112, 0.001f);
    for (std::size_t co : {std::size_t{16}, std::size_t{32}, std::size_t{48}, std::size_t{64}, std::size_t{112}}) {
        for (std::size_t width = 1; width <= 29; ++width) {
            const ConvGeometry g = geometry(8, 3, width, co, 3, 1, 1, 1);
            std::vector<std::uint8_t> image(g.padded_h() * g.padded_w() * g.channels());
            for (auto& b : image) b = static_cast<std::uint8_t>(rng()());
            zero_border(g, image);
            const std::vector<std::int8_t> w = random_weights(g, -128, 127);
            std::vector<std::int8_t> blocked(co * g.reduction());
            std::vector<std::int32_t> sums(co);
            codl::conv_block_weights(g, w.data(), blocked.data(), sums.data());
            std::vector<std::int32_t> expected(width * co);
            codl::ref::conv_kernels.conv_row_i8(g, image.data(), blocked.data(), sums.data(), 1, 0, width, expected.data());
            std::vector<std::int8_t> expected_q(width * co);
            codl::ref::conv_kernels.epilogue_i8(expected.data(), co, width, co, mult.data(), nullptr, false, 1.0f,
                                                expected_q.data());
            codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                const std::string at = std::string(codl::isa_name(isa)) + " co=" + std::to_string(co) +
                                       " width=" + std::to_string(width);
                std::vector<std::int32_t> acc(width * co);
                table.conv->conv_row_i8(g, image.data(), blocked.data(), sums.data(), 1, 0, width, acc.data());
                CHECK_MSG(acc == expected, at);
                if (table.conv->conv_rows_requant_i8) {
                    std::vector<std::int8_t> q(width * co);
                    table.conv->conv_rows_requant_i8(g, image.data(), blocked.data(), sums.data(), 1, 1, 0, width, co,
                                                     mult.data(), nullptr, false, 1.0f, q.data(), width * co, 0);
                    CHECK_MSG(q == expected_q, at + " requantized");
                }
            });
        }
    }
}

TEST_CASE("conv epilogues equal the reference bit for bit on every ISA, NaN, signed zeros and tails included") {
    std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{15}, std::size_t{16},
                          std::size_t{33}, std::size_t{64}, std::size_t{70}}) {
        // Three pixels whose sums sit acc_stride apart (the kernels' padded channel count).
        const std::size_t pixels = 3, stride = (n + 15) / 16 * 16;
        std::vector<std::int32_t> acc(pixels * stride);
        std::vector<float> mult(n), bias(n);
        for (auto& a : acc) a = static_cast<std::int32_t>(rng()() % 20001) - 10000;
        for (std::size_t i = 0; i < n; ++i) {
            mult[i] = scale(rng());
            bias[i] = 10.0f * scale(rng());
        }
        acc[0] = 0;  // 0 * negative multiplier: -0.0 without a bias
        mult[0] = -0.25f;
        if (n > 3) {
            bias[1] = std::numeric_limits<float>::quiet_NaN();
            acc[2] = 1 << 30;  // far past the int8 range: clamps
            mult[2] = 1.0f;
            bias[3] = 0.5f * 0.1f;  // a tie after scaling: half to even
            acc[3] = 0;
        }
        for (int relu = 0; relu < 2; ++relu) {
            for (int with_bias = 0; with_bias < 2; ++with_bias) {
                const float* b = with_bias ? bias.data() : nullptr;
                std::vector<float> y_ref(pixels * n + 1, 9.0f);
                std::vector<std::int8_t> q_ref(pixels * n + 1, 9);
                codl::ref::conv_kernels.epilogue_f32(acc.data(), stride, pixels, n, mult.data(), b, relu, y_ref.data());
                codl::ref::conv_kernels.epilogue_i8(acc.data(), stride, pixels, n, mult.data(), b, relu, 10.0f,
                                                    q_ref.data());
                CHECK(y_ref.back() == 9.0f && q_ref.back() == 9);
                codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
                    std::vector<float> y(pixels * n + 1, 9.0f);
                    std::vector<std::int8_t> q(pixels * n + 1, 9);
                    table.conv->epilogue_f32(acc.data(), stride, pixels, n, mult.data(), b, relu, y.data());
                    table.conv->epilogue_i8(acc.data(), stride, pixels, n, mult.data(), b, relu, 10.0f, q.data());
                    const std::string at = std::string(codl::isa_name(isa)) + " n=" + std::to_string(n) +
                                           " relu=" + std::to_string(relu) + " bias=" + std::to_string(with_bias);
                    CHECK_MSG(std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(float)) == 0, at + " f32");
                    CHECK_MSG(q == q_ref, at + " i8");
                });
            }
        }
    }
}

TEST_CASE("quantize_u8 equals the reference bit for bit on every ISA: ties, clamps and tails") {
    std::uniform_real_distribution<float> value(-300.0f, 300.0f);
    for (std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{9}, std::size_t{16}, std::size_t{37}}) {
        std::vector<float> x(n);
        for (auto& v : x) v = value(rng());
        x[0] = 2.5f;  // ties at inverse 1: half to even
        if (n > 2) x[1] = -3.5f, x[2] = 1e9f;
        std::vector<std::uint8_t> expected(n + 1, 7);
        codl::ref::conv_kernels.quantize_u8(x.data(), n, 1.0f, expected.data());
        CHECK(expected[0] == 130);
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable& table) {
            std::vector<std::uint8_t> q(n + 1, 7);
            table.conv->quantize_u8(x.data(), n, 1.0f, q.data());
            CHECK_MSG(q == expected, std::string(codl::isa_name(isa)) + " n=" + std::to_string(n));
        });
    }
}

TEST_CASE("conv2d_i32 equals an int64 convolution over the unpadded input on every ISA and thread count") {
    const IsaLevel original = codl::active_isa();
    for (const Shape& shape : shapes()) {
        const ConvGeometry& g = shape.g;
        const std::vector<std::int8_t> x = random_i8(shape.batch * g.in_h * g.in_w * g.in_c);
        const std::vector<std::int8_t> w = random_weights(g, -127, 127);
        const std::vector<std::int64_t> expected = oracle(g, shape.batch, x, w);
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
            CHECK(codl::select_isa(isa).empty());
            for (int threads : {1, 2, 3}) {
                std::vector<std::int32_t> acc(expected.size(), 7);
                codl::conv2d_i32(g, shape.batch, x.data(), w.data(), acc.data(), threads);
                bool same = true;
                for (std::size_t i = 0; i < acc.size(); ++i) same &= acc[i] == expected[i];
                CHECK_MSG(same, std::string(shape.what) + " threads=" + std::to_string(threads));
            }
        });
    }
    CHECK(codl::select_isa(original).empty());
}

// The float epilogue and the int8 requantization computed here from the oracle's sums, the
// way conv.h states them.
TEST_CASE("conv2d: float and int8 outputs, ternary and int8 weights, agree with the stated epilogue on every ISA") {
    const IsaLevel original = codl::active_isa();
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const Shape& shape : shapes()) {
        const ConvGeometry& g = shape.g;
        const std::size_t batch = shape.batch, oh = g.out_h(), ow = g.out_w(), co_n = g.out_c;
        std::vector<float> x(batch * g.in_c * g.in_h * g.in_w);  // NCHW
        for (auto& v : x) v = normal(rng());
        // The quantization as stated: absmax per tensor, nearest even.
        float absmax = 0.0f;
        for (float v : x) absmax = std::max(absmax, std::fabs(v));
        const float inverse = 127.0f / absmax, scale = absmax / 127.0f;
        std::vector<std::int8_t> q(x.size());  // NHWC
        for (std::size_t n = 0; n < batch; ++n)
            for (std::size_t c = 0; c < g.in_c; ++c)
                for (std::size_t i = 0; i < g.in_h * g.in_w; ++i)
                    q[(n * g.in_h * g.in_w + i) * g.in_c + c] =
                        static_cast<std::int8_t>(std::nearbyint(x[(n * g.in_c + c) * g.in_h * g.in_w + i] * inverse));
        for (bool ternary : {false, true}) {
            const std::vector<std::int8_t> w = ternary ? random_weights(g, -1, 1) : random_weights(g, -127, 127);
            std::vector<std::uint8_t> packed(codl::packed_ternary2_bytes(w.size()));
            if (ternary) CHECK(codl::pack_ternary2(w.data(), w.size(), packed.data()));
            std::vector<float> w_scale(co_n), bias(co_n);
            for (std::size_t co = 0; co < co_n; ++co) {
                w_scale[co] = 0.01f + 0.001f * static_cast<float>(co);
                bias[co] = 0.1f * normal(rng());
            }
            const std::vector<std::int64_t> sums = oracle(g, batch, q, w);
            const float out_scale = 0.05f;
            codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
                CHECK(codl::select_isa(isa).empty());
                for (int threads : {1, 2}) {
                    for (bool relu : {false, true}) {
                        codl::ConvArgs a;
                        a.g = g;
                        a.batch = batch;
                        a.x = x.data();
                        a.weights = ternary ? codl::ConvWeights::ternary2 : codl::ConvWeights::i8;
                        a.w = ternary ? static_cast<const void*>(packed.data()) : static_cast<const void*>(w.data());
                        a.w_scale = w_scale.data();
                        a.bias = bias.data();
                        a.relu = relu;
                        float used = 0.0f;
                        a.used_input_scale = &used;
                        std::vector<float> nchw(batch * co_n * oh * ow), nhwc(nchw.size());
                        std::vector<std::int8_t> q_out(nchw.size());
                        a.output = codl::ConvOutput::f32_nchw;
                        a.out = nchw.data();
                        CHECK(codl::conv2d(a, threads) == codl::ConvStatus::ok);
                        a.output = codl::ConvOutput::f32_nhwc;
                        a.out = nhwc.data();
                        CHECK(codl::conv2d(a, threads) == codl::ConvStatus::ok);
                        a.output = codl::ConvOutput::i8_nhwc;
                        a.output_scale = out_scale;
                        a.out = q_out.data();
                        CHECK(codl::conv2d(a, threads) == codl::ConvStatus::ok);
                        CHECK(used == scale);
                        bool f_ok = true, q_ok = true;
                        for (std::size_t n = 0; n < batch; ++n) {
                            for (std::size_t p = 0; p < oh * ow; ++p) {
                                for (std::size_t co = 0; co < co_n; ++co) {
                                    const std::size_t at = (n * oh * ow + p) * co_n + co;
                                    float y = static_cast<float>(sums[at]) * (scale * w_scale[co]) + bias[co];
                                    if (relu) y = std::max(y, 0.0f);
                                    f_ok &= nhwc[at] == y && nchw[(n * co_n + co) * oh * ow + p] == y;
                                    const float r = std::min(std::max(y * (1.0f / out_scale), -127.0f), 127.0f);
                                    q_ok &= q_out[at] == static_cast<std::int8_t>(std::nearbyint(r));
                                }
                            }
                        }
                        const std::string at = std::string(shape.what) + (ternary ? " ternary" : " int8") +
                                               " threads=" + std::to_string(threads) + (relu ? " relu" : "");
                        CHECK_MSG(f_ok, at + " float");
                        CHECK_MSG(q_ok, at + " int8");
                    }
                }
            });
        }
    }
    CHECK(codl::select_isa(original).empty());
}

// Layers over a previous layer's int8 output whose channel counts take the planar kernel (fewer
// than 32, or not a multiple of 16) and two that do not, against the oracle's requantization.
TEST_CASE("conv2d: int8 NHWC in and out, planar and pixel kernels, agree with the stated epilogue on every ISA") {
    struct Case {
        ConvGeometry g;
        const char* what;
    };
    ConvGeometry strided = geometry(20, 14, 23, 20, 5, 1, 2, 1);
    strided.stride_h = 2;
    const Case cases[] = {{geometry(20, 16, 21, 40, 5, 1, 2, 1), "MCNN 20 -> 40, 5x5"},
                          {geometry(40, 9, 18, 20, 5, 1, 2, 1), "MCNN 40 -> 20"},
                          {geometry(16, 11, 35, 8, 7, 1, 3, 1), "MCNN 16 -> 8, 7x7"},
                          {geometry(6, 7, 9, 10, 3, 1, 1, 2), "dilated, 6 channels"},
                          {strided, "stride_h 2"},
                          {geometry(24, 8, 20, 48, 3, 1, 1, 1), "48: pixel kernel"},
                          {geometry(20, 8, 20, 12, 3, 2, 1, 1), "stride_w 2: pixel kernel"}};
    const IsaLevel original = codl::active_isa();
    for (const Case& k : cases) {
        const ConvGeometry& g = k.g;
        const std::size_t batch = 2, co_n = g.out_c, pixels = batch * g.out_h() * g.out_w();
        const std::vector<std::int8_t> x = random_i8(batch * g.in_h * g.in_w * g.in_c, -127, 127);
        const std::vector<std::int8_t> w = random_weights(g, -1, 1);
        const std::vector<std::int64_t> sums = oracle(g, batch, x, w);
        std::vector<float> w_scale(co_n), bias(co_n);
        for (std::size_t co = 0; co < co_n; ++co) {
            w_scale[co] = 0.02f + 0.001f * static_cast<float>(co);
            bias[co] = 0.05f * static_cast<float>(static_cast<int>(co % 7) - 3);
        }
        const float in_scale = 0.02f, out_scale = 0.04f;
        std::vector<std::int8_t> expected(pixels * co_n);
        for (std::size_t i = 0; i < expected.size(); ++i) {
            const std::size_t co = i % co_n;
            const float y = std::max(static_cast<float>(sums[i]) * (in_scale * w_scale[co]) + bias[co], 0.0f);
            expected[i] = static_cast<std::int8_t>(std::nearbyint(std::min(std::max(y * (1.0f / out_scale), -127.0f), 127.0f)));
        }
        codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
            CHECK(codl::select_isa(isa).empty());
            for (int threads : {1, 2}) {
                codl::ConvArgs a;
                a.g = g;
                a.batch = batch;
                a.input = codl::ConvInput::i8_nhwc;
                a.x = x.data();
                a.input_scale = in_scale;
                a.w = w.data();
                a.w_scale = w_scale.data();
                a.bias = bias.data();
                a.relu = true;
                a.output = codl::ConvOutput::i8_nhwc;
                a.output_scale = out_scale;
                std::vector<std::int8_t> q(expected.size() + 1, 9);
                a.out = q.data();
                float used = 0.0f;
                a.used_input_scale = &used;
                CHECK(codl::conv2d(a, threads) == codl::ConvStatus::ok);
                const std::string at = std::string(codl::isa_name(isa)) + " " + k.what + " threads=" + std::to_string(threads);
                CHECK_MSG(std::equal(expected.begin(), expected.end(), q.begin()), at);
                CHECK_MSG(q.back() == 9, at + " wrote past the output");
                CHECK_MSG(used == in_scale, at + " input scale");
            }
        });
    }
    CHECK(codl::select_isa(original).empty());
}

TEST_CASE("conv2d: int8 NHWC input chains, float NHWC input matches NCHW, bad inputs are reported") {
    const ConvGeometry g = geometry(6, 9, 8, 10, 3, 1, 1, 1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> nchw(2 * 6 * 9 * 8), nhwc(nchw.size());
    for (std::size_t n = 0; n < 2; ++n)
        for (std::size_t c = 0; c < 6; ++c)
            for (std::size_t i = 0; i < 72; ++i) {
                const float v = normal(rng());
                nchw[(n * 6 + c) * 72 + i] = v;
                nhwc[(n * 72 + i) * 6 + c] = v;
            }
    const std::vector<std::int8_t> w = random_weights(g, -127, 127);
    std::vector<float> w_scale(10, 0.02f);
    const std::size_t out_n = 2 * 10 * g.out_h() * g.out_w();
    codl::ConvArgs a;
    a.g = g;
    a.batch = 2;
    a.w = w.data();
    a.w_scale = w_scale.data();
    a.output = codl::ConvOutput::f32_nhwc;
    std::vector<float> from_nchw(out_n), from_nhwc(out_n), from_i8(out_n);
    a.x = nchw.data();
    a.input_scale = 0.03f;  // a calibrated scale clamps what lies beyond it
    a.out = from_nchw.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    a.input = codl::ConvInput::f32_nhwc;
    a.x = nhwc.data();
    a.out = from_nhwc.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    CHECK(from_nchw == from_nhwc);
    std::vector<std::int8_t> q(nhwc.size());
    for (std::size_t i = 0; i < q.size(); ++i) {
        q[i] = static_cast<std::int8_t>(std::nearbyint(std::min(std::max(nhwc[i] / 0.03f, -127.0f), 127.0f)));
    }
    a.input = codl::ConvInput::i8_nhwc;
    a.x = q.data();
    a.out = from_i8.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    // x / 0.03 and x * (1 / 0.03) may round apart on a few values: compare with the products.
    std::vector<std::int8_t> q2(nhwc.size());
    for (std::size_t i = 0; i < q.size(); ++i) {
        q2[i] = static_cast<std::int8_t>(std::nearbyint(std::min(std::max(nhwc[i] * (1.0f / 0.03f), -127.0f), 127.0f)));
    }
    a.x = q2.data();
    a.out = from_i8.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    CHECK(from_i8 == from_nhwc);

    a.input_scale = 0.0f;
    CHECK(codl::conv2d(a) == codl::ConvStatus::bad_scale);
    a.input = codl::ConvInput::f32_nhwc;
    a.x = nhwc.data();
    nhwc[5] = std::numeric_limits<float>::quiet_NaN();
    CHECK(codl::conv2d(a) == codl::ConvStatus::nonfinite_input);
    nhwc[5] = std::numeric_limits<float>::infinity();
    CHECK(codl::conv2d(a) == codl::ConvStatus::nonfinite_input);
    nhwc[5] = 0.0f;
    a.output = codl::ConvOutput::i8_nhwc;
    a.output_scale = 0.0f;
    CHECK(codl::conv2d(a) == codl::ConvStatus::bad_scale);
    a.output = codl::ConvOutput::f32_nhwc;
    std::vector<std::int8_t> codes = random_weights(g, -1, 1);
    std::vector<std::uint8_t> packed(codl::packed_ternary2_bytes(codes.size()));
    CHECK(codl::pack_ternary2(codes.data(), codes.size(), packed.data()));
    packed[packed.size() / 2] |= 0xC0;  // a field 0b11
    a.weights = codl::ConvWeights::ternary2;
    a.w = packed.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::invalid_ternary_code);
}

TEST_CASE("conv2d: quantization rounds half to even and clamps, on input and requantized output") {
    // A 1x1 convolution with weight 1 and scales 1 passes the quantized input through.
    const ConvGeometry g = geometry(1, 1, 9, 1, 1, 1, 0, 1);
    const std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 126.5f, 200.0f, -300.0f, 3.49f};
    const std::vector<float> expected = {0, 2, 2, 0, -2, 126, 127, -127, 3};
    const std::vector<std::int8_t> w = {1, 0, 0, 0};
    const float one = 1.0f;
    codl::ConvArgs a;
    a.g = g;
    a.x = x.data();
    a.input = codl::ConvInput::f32_nhwc;
    a.input_scale = 1.0f;
    a.w = w.data();
    a.w_scale = &one;
    std::vector<float> y(9);
    a.output = codl::ConvOutput::f32_nhwc;
    a.out = y.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    CHECK(y == expected);
    // Requantizing with scale 0.5 doubles: 2 * (k + 0.5) never ties, so use a bias of 0.25.
    const float bias = 0.25f;
    a.bias = &bias;
    a.output = codl::ConvOutput::i8_nhwc;
    a.output_scale = 0.5f;
    std::vector<std::int8_t> q(9);
    a.out = q.data();
    CHECK(codl::conv2d(a) == codl::ConvStatus::ok);
    // (v + 0.25) * 2: 0.5 -> 0, 4.5 -> 4, 4.5 -> 4, 0.5 -> 0, -3.5 -> -4, 253 -> 127, 254.5 -> 127, clamp, 6.5 -> 6
    const std::vector<std::int8_t> expected_q = {0, 4, 4, 0, -4, 127, 127, -127, 6};
    CHECK(q == expected_q);
}

TEST_CASE("maxpool2x2_i8_nhwc takes the maximum of each window, odd sizes floored, any thread count") {
    for (std::size_t h : {1, 2, 5, 28}) {
        for (std::size_t w : {2, 3, 14}) {
            for (std::size_t c : {1, 6, 33}) {
                const std::size_t batch = 2;
                const std::vector<std::int8_t> x = random_i8(batch * h * w * c);
                std::vector<std::int8_t> expected(batch * (h / 2) * (w / 2) * c);
                for (std::size_t n = 0; n < batch; ++n)
                    for (std::size_t i = 0; i < h / 2; ++i)
                        for (std::size_t j = 0; j < w / 2; ++j)
                            for (std::size_t ch = 0; ch < c; ++ch) {
                                int m = -128;
                                for (std::size_t di = 0; di < 2; ++di)
                                    for (std::size_t dj = 0; dj < 2; ++dj)
                                        m = std::max<int>(m, x[((n * h + 2 * i + di) * w + 2 * j + dj) * c + ch]);
                                expected[((n * (h / 2) + i) * (w / 2) + j) * c + ch] = static_cast<std::int8_t>(m);
                            }
                for (int threads : {1, 2}) {
                    std::vector<std::int8_t> y(expected.size() + 1, 5);
                    codl::maxpool2x2_i8_nhwc(x.data(), batch, h, w, c, y.data(), threads);
                    CHECK(std::equal(expected.begin(), expected.end(), y.begin()) && y.back() == 5);
                }
            }
        }
    }
}

}  // namespace
