// Every packing kernel of every ISA this CPU runs, byte-exact against the scalar reference,
// over many lengths (including ones that are not multiples of a vector or block), pointers
// offset from vector alignment, and guard bytes that must stay untouched.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codl/pack.h"
#include "harness.h"

namespace {

using codl::IsaLevel;
using codl::PackKernels;

constexpr std::size_t kGuardBytes = 64;
constexpr std::uint8_t kCanary = 0xA5;

std::vector<std::size_t> test_lengths() {
    std::vector<std::size_t> lengths;
    for (std::size_t n = 0; n <= 700; ++n) lengths.push_back(n);
    for (std::size_t base : {1024, 1280, 4096, 8000}) {
        for (long delta : {-33, -1, 0, 1, 31, 127, 159, 161}) lengths.push_back(base + delta);
    }
    lengths.push_back(65537);
    return lengths;
}

// Storage for n elements starting `offset` elements in, followed by guard bytes.
template <typename T>
struct Guarded {
    Guarded(std::size_t n, std::size_t offset) : offset(offset), n(n) {
        bytes.assign((offset + n) * sizeof(T) + kGuardBytes + 64, kCanary);
    }
    // A 64-byte boundary, then `offset` elements: misaligned for every vector width.
    T* data() {
        const std::size_t to_boundary = (64 - reinterpret_cast<std::uintptr_t>(bytes.data()) % 64) % 64;
        return reinterpret_cast<T*>(bytes.data() + to_boundary) + offset;
    }
    bool guard_intact(std::size_t used_bytes) {
        const auto* end = reinterpret_cast<const std::uint8_t*>(data()) + used_bytes;
        for (std::size_t i = 0; i < kGuardBytes; ++i) {
            if (end[i] != kCanary) return false;
        }
        return true;
    }
    std::vector<std::uint8_t> bytes;
    std::size_t offset, n;
};

std::mt19937_64& rng() {
    static std::mt19937_64 generator(20261127);
    return generator;
}

std::vector<float> random_floats(std::size_t n) {
    const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(),
                              -std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::denorm_min(),
                              -std::numeric_limits<float>::denorm_min()};
    std::normal_distribution<float> normal;
    std::vector<float> x(n);
    for (std::size_t i = 0; i < n; ++i) {
        x[i] = rng()() % 16 == 0 ? specials[rng()() % 8] : normal(rng());
    }
    return x;
}

std::vector<std::int8_t> random_codes(std::size_t n) {
    std::vector<std::int8_t> codes(n);
    for (auto& c : codes) c = static_cast<std::int8_t>(static_cast<int>(rng()() % 3) - 1);
    return codes;
}

std::vector<std::uint8_t> random_bytes(std::size_t n) {
    std::vector<std::uint8_t> bytes(n);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng()());
    return bytes;
}

// memcmp/memcpy with a null pointer are undefined even for 0 bytes, and empty vectors have one.
bool same_bytes(const void* a, const void* b, std::size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }
void copy_bytes(void* to, const void* from, std::size_t n) {
    if (n) std::memcpy(to, from, n);
}

const PackKernels& ref() { return codl::ref::pack_kernels; }
const PackKernels& of(IsaLevel isa) { return *codl::kernel_table(isa)->pack; }

std::string where(IsaLevel isa, std::size_t n, std::size_t offset) {
    return std::string(codl::isa_name(isa)) + " n=" + std::to_string(n) + " offset=" + std::to_string(offset);
}

// Misalignments tried: whole elements, so pointers stay element-aligned as torch's are.
constexpr std::size_t kOffsets[] = {0, 1, 3, 5};

TEST_CASE("pack_signs_f32 matches the reference") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : test_lengths()) {
            const std::vector<float> x = random_floats(n);
            std::vector<std::uint8_t> expected(codl::packed_signs_bytes(n));
            ref().pack_signs_f32(x.data(), n, expected.data());
            for (std::size_t offset : kOffsets) {
                Guarded<float> in(n, offset);
                copy_bytes(in.data(), x.data(), n * sizeof(float));
                Guarded<std::uint8_t> out(expected.size(), offset);
                of(isa).pack_signs_f32(in.data(), n, out.data());
                CHECK_MSG(same_bytes(out.data(), expected.data(), expected.size()), where(isa, n, offset));
                CHECK_MSG(out.guard_intact(expected.size()), where(isa, n, offset));
            }
        }
    });
}

TEST_CASE("unpack_signs_f32 matches the reference and ignores padding bits") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : test_lengths()) {
            const std::vector<std::uint8_t> bits = random_bytes(codl::packed_signs_bytes(n));
            std::vector<float> expected(n);
            ref().unpack_signs_f32(bits.data(), n, expected.data());
            for (std::size_t offset : kOffsets) {
                Guarded<std::uint8_t> in(bits.size(), offset);
                copy_bytes(in.data(), bits.data(), bits.size());
                Guarded<float> out(n, offset);
                of(isa).unpack_signs_f32(in.data(), n, out.data());
                CHECK_MSG(same_bytes(out.data(), expected.data(), n * sizeof(float)),
                          where(isa, n, offset));
                CHECK_MSG(out.guard_intact(n * sizeof(float)), where(isa, n, offset));
            }
        }
    });
}

using PackFn = bool (*)(const std::int8_t*, std::size_t, std::uint8_t*);

void check_ternary_pack(PackFn PackKernels::*fn, std::size_t (*bytes_for)(std::size_t), const char* name) {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : test_lengths()) {
            std::vector<std::int8_t> codes = random_codes(n);
            std::vector<std::uint8_t> expected(bytes_for(n));
            CHECK_MSG((ref().*fn)(codes.data(), n, expected.data()), std::string(name) + " ref rejects valid codes");
            for (std::size_t offset : kOffsets) {
                Guarded<std::int8_t> in(n, offset);
                copy_bytes(in.data(), codes.data(), n);
                Guarded<std::uint8_t> out(expected.size(), offset);
                const bool valid = (of(isa).*fn)(in.data(), n, out.data());
                CHECK_MSG(valid, std::string(name) + " " + where(isa, n, offset));
                CHECK_MSG(same_bytes(out.data(), expected.data(), expected.size()),
                          std::string(name) + " " + where(isa, n, offset));
                CHECK_MSG(out.guard_intact(expected.size()), std::string(name) + " " + where(isa, n, offset));
            }
            if (n == 0) continue;
            // One invalid code anywhere (in a block or in the tail) must be reported.
            for (std::int8_t bad : {2, -2, 3, 127, -128}) {
                std::vector<std::int8_t> corrupt = codes;
                corrupt[rng()() % n] = bad;
                std::vector<std::uint8_t> out(expected.size() + kGuardBytes, kCanary);
                CHECK_MSG(!(of(isa).*fn)(corrupt.data(), n, out.data()),
                          std::string(name) + " accepted code " + std::to_string(bad) + " " + where(isa, n, 0));
                CHECK(out[expected.size()] == kCanary);
            }
        }
    });
}

std::size_t ternary2_bytes(std::size_t n) { return codl::packed_ternary2_bytes(n); }
std::size_t ternary3_bytes(std::size_t n) { return codl::packed_ternary3_bytes(n); }

TEST_CASE("pack_ternary2 matches the reference and rejects invalid codes") {
    check_ternary_pack(&PackKernels::pack_ternary2, ternary2_bytes, "pack_ternary2");
}

TEST_CASE("pack_ternary3 matches the reference and rejects invalid codes") {
    check_ternary_pack(&PackKernels::pack_ternary3, ternary3_bytes, "pack_ternary3");
}

TEST_CASE("unpack_ternary2 matches the reference and reports 0b11 fields") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : test_lengths()) {
            for (bool with_invalid : {false, true}) {
                std::vector<std::uint8_t> packed = random_bytes(codl::packed_ternary2_bytes(n));
                if (!with_invalid) {
                    for (auto& b : packed) {  // turn every 0b11 field into 0b10
                        for (int k = 0; k < 4; ++k) {
                            if (((b >> (2 * k)) & 3) == 3) b = static_cast<std::uint8_t>(b & ~(1 << (2 * k)));
                        }
                    }
                }
                std::vector<std::int8_t> expected(n);
                const bool expected_valid = ref().unpack_ternary2(packed.data(), n, expected.data());
                if (!with_invalid) CHECK_MSG(expected_valid, "ref rejects valid fields");
                for (std::size_t offset : kOffsets) {
                    Guarded<std::uint8_t> in(packed.size(), offset);
                    copy_bytes(in.data(), packed.data(), packed.size());
                    Guarded<std::int8_t> out(n, offset);
                    const bool valid = of(isa).unpack_ternary2(in.data(), n, out.data());
                    CHECK_MSG(valid == expected_valid, where(isa, n, offset));
                    CHECK_MSG(same_bytes(out.data(), expected.data(), n), where(isa, n, offset));
                    CHECK_MSG(out.guard_intact(n), where(isa, n, offset));
                }
            }
        }
    });
}

TEST_CASE("unpack_ternary2 rejects 0b11 in the padding fields of the last byte") {
    // n = 130: one whole block (32 bytes) and a tail byte holding values 128, 129
    // in slots 0, 1 and padding in slots 2, 3.
    const std::size_t n = 130;
    std::vector<std::int8_t> codes(n, 1);
    std::vector<std::uint8_t> packed(codl::packed_ternary2_bytes(n));
    CHECK(codl::pack_ternary2(codes.data(), n, packed.data(), 1));
    CHECK(packed.back() == 0x5A);  // fields 0b10, 0b10, then padding code 0 (0b01) twice
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (const std::uint8_t padding : {std::uint8_t{0x3}, std::uint8_t{0xC}, std::uint8_t{0xF}}) {
            std::vector<std::uint8_t> bad = packed;
            bad.back() = static_cast<std::uint8_t>((bad.back() & 0x0F) | (padding << 4));
            std::vector<std::int8_t> out(n);
            CHECK_MSG(!of(isa).unpack_ternary2(bad.data(), n, out.data()), codl::isa_name(isa));
            CHECK_MSG(!codl::unpack_ternary2(bad.data(), n, out.data(), 2), codl::isa_name(isa));
        }
        std::vector<std::int8_t> out(n);
        CHECK_MSG(of(isa).unpack_ternary2(packed.data(), n, out.data()) && out == codes, codl::isa_name(isa));
    });
}

TEST_CASE("unpack_ternary3 matches the reference on arbitrary bytes") {
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        for (std::size_t n : test_lengths()) {
            const std::vector<std::uint8_t> packed = random_bytes(codl::packed_ternary3_bytes(n));
            std::vector<std::int8_t> expected(n);
            ref().unpack_ternary3(packed.data(), n, expected.data());
            for (std::size_t offset : kOffsets) {
                Guarded<std::uint8_t> in(packed.size(), offset);
                copy_bytes(in.data(), packed.data(), packed.size());
                Guarded<std::int8_t> out(n, offset);
                of(isa).unpack_ternary3(in.data(), n, out.data());
                CHECK_MSG(same_bytes(out.data(), expected.data(), n), where(isa, n, offset));
                CHECK_MSG(out.guard_intact(n), where(isa, n, offset));
            }
        }
    });
}

TEST_CASE("ternary3: all 243 trit combinations encode as ceil(v*256/243) and round-trip") {
    // 8 blocks of 160 values give 256 bytes; byte j of the stream holds combination j % 243.
    const std::size_t n = 8 * codl::kTernary3BlockValues;
    std::vector<std::int8_t> codes(n);
    for (std::size_t byte = 0; byte < 256; ++byte) {
        unsigned digits = byte % 243;
        for (int slot = 4; slot >= 0; --slot, digits /= 3) {
            const std::size_t block = byte / 32, j = byte % 32;
            codes[block * 160 + slot * 32 + j] = static_cast<std::int8_t>(static_cast<int>(digits % 3) - 1);
        }
    }
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        std::vector<std::uint8_t> packed(codl::packed_ternary3_bytes(n));
        CHECK(of(isa).pack_ternary3(codes.data(), n, packed.data()));
        for (unsigned byte = 0; byte < 256; ++byte) {
            const unsigned v = byte % 243;
            const unsigned expected = (v * 256 + 242) / 243;
            CHECK_MSG(packed[byte] == expected, std::string(codl::isa_name(isa)) + " combination " + std::to_string(v));
        }
        std::vector<std::int8_t> back(n);
        of(isa).unpack_ternary3(packed.data(), n, back.data());
        CHECK_MSG(back == codes, codl::isa_name(isa));
    });
}

TEST_CASE("reference known answers") {
    // signs: bit i of byte i/8 is the sign bit, -0.0 and -NaN included.
    const float x[10] = {-1.0f, 2.0f, -0.0f, 0.0f, 5.0f, 6.0f, 7.0f, -std::numeric_limits<float>::quiet_NaN(), 1.0f, -3.0f};
    std::uint8_t bits[2];
    ref().pack_signs_f32(x, 10, bits);
    CHECK(bits[0] == 0x85);
    CHECK(bits[1] == 0x02);
    // ternary2 tail: 4 consecutive values per byte, field c + 1 at bits 2k; padding code 0.
    const std::int8_t codes[5] = {-1, 0, 1, 1, -1};
    std::uint8_t packed2[2];
    CHECK(ref().pack_ternary2(codes, 5, packed2));
    CHECK(packed2[0] == (0 | 1 << 2 | 2 << 4 | 2 << 6));
    CHECK(packed2[1] == (0 | 1 << 2 | 1 << 4 | 1 << 6));
    // ternary3: v = sum (c + 1) * 3^(4 - k) stored as ceil(v * 256 / 243).
    const std::int8_t all_minus[5] = {-1, -1, -1, -1, -1}, all_zero[5] = {0, 0, 0, 0, 0},
                      all_plus[5] = {1, 1, 1, 1, 1};
    std::uint8_t b;
    CHECK(ref().pack_ternary3(all_minus, 5, &b) && b == 0);
    CHECK(ref().pack_ternary3(all_zero, 5, &b) && b == 128);
    CHECK(ref().pack_ternary3(all_plus, 5, &b) && b == 255);
    // whole ternary2 block: value 32k + j of the block sits in byte j at bits 2k.
    std::vector<std::int8_t> block(128, 0);
    block[32 * 3 + 7] = 1;  // slot 3 of byte 7
    std::uint8_t packed_block[32];
    CHECK(ref().pack_ternary2(block.data(), 128, packed_block));
    CHECK(packed_block[7] == (1 | 1 << 2 | 1 << 4 | 2 << 6));
    CHECK(packed_block[6] == 0x55);
}

TEST_CASE("threaded entry points equal the reference for every ISA and thread count") {
    const std::size_t n = 3 * (1 << 16) + 640 * 5 + 77;  // several chunks and a tail
    const std::vector<float> x = random_floats(n);
    const std::vector<std::int8_t> codes = random_codes(n);
    std::vector<std::uint8_t> signs_ref(codl::packed_signs_bytes(n)), t2_ref(codl::packed_ternary2_bytes(n)),
        t3_ref(codl::packed_ternary3_bytes(n));
    ref().pack_signs_f32(x.data(), n, signs_ref.data());
    ref().pack_ternary2(codes.data(), n, t2_ref.data());
    ref().pack_ternary3(codes.data(), n, t3_ref.data());
    const IsaLevel original = codl::active_isa();
    codl_test::for_each_isa([&](IsaLevel isa, const codl::KernelTable&) {
        CHECK(codl::select_isa(isa).empty());
        for (int threads : {1, 2, 3, 4}) {
            const std::string at = where(isa, n, 0) + " threads=" + std::to_string(threads);
            std::vector<std::uint8_t> signs(signs_ref.size()), t2(t2_ref.size()), t3(t3_ref.size());
            codl::pack_signs_f32(x.data(), n, signs.data(), threads);
            CHECK_MSG(signs == signs_ref, at);
            CHECK_MSG(codl::pack_ternary2(codes.data(), n, t2.data(), threads), at);
            CHECK_MSG(t2 == t2_ref, at);
            CHECK_MSG(codl::pack_ternary3(codes.data(), n, t3.data(), threads), at);
            CHECK_MSG(t3 == t3_ref, at);
            std::vector<std::int8_t> back2(n), back3(n);
            CHECK_MSG(codl::unpack_ternary2(t2.data(), n, back2.data(), threads), at);
            codl::unpack_ternary3(t3.data(), n, back3.data(), threads);
            CHECK_MSG(back2 == codes && back3 == codes, at);
            std::vector<float> unpacked(n);
            codl::unpack_signs_f32(signs.data(), n, unpacked.data(), threads);
            bool signs_right = true;
            for (std::size_t i = 0; i < n; ++i) signs_right &= unpacked[i] == (std::signbit(x[i]) ? -1.0f : 1.0f);
            CHECK_MSG(signs_right, at);
            std::vector<std::int8_t> corrupt = codes;
            corrupt[n - 1000] = 5;  // in the last chunk: its result must not be lost
            CHECK_MSG(!codl::pack_ternary2(corrupt.data(), n, t2.data(), threads), at);
            CHECK_MSG(!codl::pack_ternary3(corrupt.data(), n, t3.data(), threads), at);
        }
    });
    CHECK(codl::select_isa(original).empty());
}

TEST_CASE("dispatch: names parse, unbuilt or unsupported levels are refused with a reason") {
    for (int i = 0; i < codl::kNumIsaLevels; ++i) {
        IsaLevel parsed;
        const auto isa = static_cast<IsaLevel>(i);
        CHECK(codl::parse_isa(codl::isa_name(isa), &parsed) && parsed == isa);
        const std::string error = codl::select_isa(isa);
        CHECK_MSG(error.empty() == (codl::isa_built(isa) && codl::cpu_supports(isa)), error);
    }
    IsaLevel unused;
    CHECK(!codl::parse_isa("avx3", &unused));
    CHECK(codl::select_isa(codl::best_isa()).empty());
    CHECK(codl::active_isa() == codl::best_isa());
}

}  // namespace
