// The .codl format core: field packing and position coding against bit-by-bit references,
// DEFLATE round trips through each backend and across backends, every failure status of
// inflate and of the position decoder, and decode_tensor for each encoding against values
// computed here from the same inputs.
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "codl/codl_format.h"
#include "codl/pack.h"
#include "harness.h"

namespace {

namespace fmt = codl::format;
using Bytes = std::vector<std::uint8_t>;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(6);
    return generator;
}

Bytes random_bytes(std::size_t n, unsigned below = 256) {
    Bytes out(n);
    for (auto& b : out) b = static_cast<std::uint8_t>(rng()() % below);
    return out;
}

// Field i's bit j is bit i*width + j of the stream, LSB first: the definition, bit by bit.
std::uint8_t reference_field(const Bytes& packed, std::size_t i, int width) {
    unsigned v = 0;
    for (int j = 0; j < width; ++j) {
        const std::size_t bit = i * static_cast<std::size_t>(width) + static_cast<std::size_t>(j);
        v |= ((packed[bit / 8] >> (bit % 8)) & 1u) << j;
    }
    return static_cast<std::uint8_t>(v);
}

std::vector<fmt::Backend> backends() {
    std::vector<fmt::Backend> out;
    for (fmt::Backend b : {fmt::Backend::zlib, fmt::Backend::libdeflate}) {
        if (fmt::backend_available(b)) out.push_back(b);
    }
    return out;
}

Bytes deflate(const Bytes& in, fmt::Backend backend, int level = 6) {
    Bytes out(fmt::deflate_bound(in.size()));
    const std::size_t size = fmt::deflate_raw(in.data(), in.size(), out.data(), out.size(), level, backend);
    out.resize(size);
    return out;
}

// Sorted distinct positions below numel, roughly `keep` of them.
std::vector<std::uint64_t> random_positions(std::uint64_t numel, double keep) {
    std::vector<std::uint64_t> positions;
    std::bernoulli_distribution kept(keep);
    for (std::uint64_t p = 0; p < numel; ++p) {
        if (kept(rng())) positions.push_back(p);
    }
    return positions;
}

Bytes encode(const std::vector<std::uint64_t>& positions) {
    Bytes out(positions.size() * fmt::kMaxVarintBytes + 1);
    out.resize(fmt::encode_positions(positions.data(), positions.size(), out.data()));
    return out;
}

TEST_CASE("format: fields of 1 to 8 bits round-trip and match the bit-by-bit layout") {
    for (int width = 1; width <= 8; ++width) {
        for (std::size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 10000}) {
            const Bytes values = random_bytes(n, 1u << width);
            Bytes packed(fmt::packed_field_bytes(n, width) + 8, 0xEE);
            CHECK(fmt::pack_fields(values.data(), n, width, packed.data()));
            CHECK(packed[fmt::packed_field_bytes(n, width)] == 0xEE);  // nothing past the end
            Bytes back(n + 1, 0xEE);
            fmt::unpack_fields(packed.data(), n, width, back.data());
            bool same = back[n] == 0xEE;
            for (std::size_t i = 0; i < n; ++i) {
                same = same && back[i] == values[i] && reference_field(packed, i, width) == values[i];
            }
            CHECK_MSG(same, "width " + std::to_string(width) + ", n " + std::to_string(n));
            // Padding bits of the last byte are zero, so the stream is canonical.
            if (n * width % 8) CHECK((packed[n * width / 8] >> (n * width % 8)) == 0);
        }
    }
    const std::uint8_t too_big[] = {1, 2, 4};
    std::uint8_t out[4];
    CHECK(!fmt::pack_fields(too_big, 3, 2, out));
}

TEST_CASE("format: positions round-trip as LEB128 gaps") {
    for (double keep : {0.0, 0.01, 0.1, 0.5, 1.0}) {
        const std::uint64_t numel = 20000;
        const auto positions = random_positions(numel, keep);
        const Bytes bytes = encode(positions);
        std::vector<std::uint64_t> back(positions.size());
        CHECK(fmt::decode_positions(bytes.data(), bytes.size(), back.size(), numel, back.data()) == fmt::Status::ok);
        CHECK(back == positions);
    }
    // Gaps of every varint length, up to the largest 64-bit position.
    const std::vector<std::uint64_t> wide = {0, 1, 129, 20000, 1ull << 35, (1ull << 63) + 5, ~0ull - 1, ~0ull};
    const Bytes bytes = encode(wide);
    std::vector<std::uint64_t> back(wide.size());
    CHECK(fmt::decode_positions(bytes.data(), bytes.size(), back.size(), ~0ull, back.data()) ==
          fmt::Status::positions_range);  // ~0ull is not below numel = ~0ull
    CHECK(fmt::decode_positions(bytes.data(), bytes.size() - 1, back.size() - 1, ~0ull, back.data()) ==  // last gap 0: 1 byte
          fmt::Status::ok);
    CHECK(std::vector<std::uint64_t>(back.begin(), back.end() - 1) == std::vector<std::uint64_t>(wide.begin(), wide.end() - 1));
    const std::uint64_t not_increasing[] = {3, 3};
    std::uint8_t out[32];
    CHECK(fmt::encode_positions(not_increasing, 2, out) == SIZE_MAX);
}

TEST_CASE("format: corrupt positions are reported, never read past") {
    const std::vector<std::uint64_t> positions = {5, 300, 301, 9000};
    const Bytes bytes = encode(positions);  // 05, AA 02, 00, 9A 45
    std::uint64_t out[8];
    CHECK(fmt::decode_positions(bytes.data(), bytes.size(), 4, 9000, out) == fmt::Status::positions_range);
    CHECK(fmt::decode_positions(bytes.data(), bytes.size(), 4, 9001, out) == fmt::Status::ok);
    CHECK(fmt::decode_positions(bytes.data(), bytes.size() - 1, 4, 9001, out) == fmt::Status::positions_truncated);
    CHECK(fmt::decode_positions(bytes.data(), bytes.size(), 3, 9001, out) == fmt::Status::positions_trailing);
    CHECK(fmt::decode_positions(bytes.data(), bytes.size(), 5, 9001, out) == fmt::Status::positions_truncated);
    const Bytes eleven_bytes(11, 0xFF);
    CHECK(fmt::decode_positions(eleven_bytes.data(), eleven_bytes.size(), 1, ~0ull, out) == fmt::Status::positions_range);
    // A 64-bit gap that would wrap the running position around.
    const std::vector<std::uint64_t> big = {10, ~0ull - 1};
    Bytes wrap = encode(big);
    wrap[0] = 20;
    CHECK(fmt::decode_positions(wrap.data(), wrap.size(), 2, ~0ull, out) == fmt::Status::positions_range);
}

TEST_CASE("format: byte-plane shuffle round-trips for every item size") {
    for (std::size_t itemsize : {1, 2, 3, 4, 8}) {
        for (std::size_t n : {0, 1, 5, 1000}) {
            const Bytes in = random_bytes(n * itemsize);
            Bytes shuffled(in.size()), back(in.size());
            fmt::shuffle_bytes(in.data(), n, itemsize, shuffled.data());
            bool planes = true;
            for (std::size_t i = 0; i < n; ++i) {
                for (std::size_t b = 0; b < itemsize; ++b) planes = planes && shuffled[b * n + i] == in[i * itemsize + b];
            }
            fmt::unshuffle_bytes(shuffled.data(), n, itemsize, back.data());
            CHECK_MSG(planes && back == in, "itemsize " + std::to_string(itemsize));
        }
    }
}

TEST_CASE("format: CRC32 is the IEEE 802.3 one") {
    const std::string check = "123456789";
    const auto* data = reinterpret_cast<const std::uint8_t*>(check.data());
    CHECK(fmt::crc32(data, check.size()) == 0xCBF43926u);
    CHECK(fmt::crc32(data + 4, 5, fmt::crc32(data, 4)) == 0xCBF43926u);  // incremental
}

TEST_CASE("format: DEFLATE round-trips through each backend and across backends") {
    const auto available = backends();
    if (available.empty()) {
        std::printf("  (built without zlib: the DEFLATE tests do not apply)\n");
        return;
    }
    std::vector<Bytes> inputs = {Bytes{}, Bytes{42}, random_bytes(100000), random_bytes(300000, 3),
                                 Bytes(1 << 20, 7)};
    for (const Bytes& in : inputs) {
        for (fmt::Backend writer : available) {
            for (int level : {0, 1, 6, 9, 12}) {
                const Bytes stream = deflate(in, writer, level);
                CHECK(!stream.empty());
                for (fmt::Backend reader : available) {
                    Bytes out(in.size() + 1, 0xEE);
                    CHECK(fmt::inflate_raw(stream.data(), stream.size(), out.data(), in.size(), reader) == fmt::Status::ok);
                    CHECK(out.back() == 0xEE);
                    out.pop_back();
                    CHECK_MSG(out == in, std::string(fmt::backend_name(writer)) + " -> " + fmt::backend_name(reader));
                }
            }
        }
    }
    // A capacity below the bound is refused, not overrun.
    Bytes small(8);
    const Bytes in = random_bytes(1000);
    CHECK(fmt::deflate_raw(in.data(), in.size(), small.data(), small.size(), 6) == 0);
}

TEST_CASE("format: inflate reports streams that are too long, too short, trailed or corrupt") {
    const Bytes in = random_bytes(50000, 16);
    for (fmt::Backend backend : backends()) {
        const std::string name = fmt::backend_name(backend);
        const Bytes stream = deflate(in, backend);
        Bytes out(in.size() + 64, 0xEE);
        CHECK_MSG(fmt::inflate_raw(stream.data(), stream.size(), out.data(), in.size() - 1, backend) ==
                      fmt::Status::inflate_too_long, name);
        CHECK_MSG(out[in.size() - 1] == 0xEE, name + ": wrote past the bound");
        CHECK_MSG(fmt::inflate_raw(stream.data(), stream.size(), out.data(), in.size() + 1, backend) ==
                      fmt::Status::inflate_too_short, name);
        Bytes trailed = stream;
        trailed.push_back(0);
        CHECK_MSG(fmt::inflate_raw(trailed.data(), trailed.size(), out.data(), in.size(), backend) ==
                      fmt::Status::inflate_trailing, name);
        const fmt::Status truncated = fmt::inflate_raw(stream.data(), stream.size() / 2, out.data(), in.size(), backend);
        CHECK_MSG(truncated == fmt::Status::inflate_too_short || truncated == fmt::Status::inflate_corrupt, name);
        const Bytes garbage = {0xFF, 0xFF, 0xFF, 0xFF};  // block type 3 is reserved
        CHECK_MSG(fmt::inflate_raw(garbage.data(), garbage.size(), out.data(), 10, backend) == fmt::Status::inflate_corrupt, name);
        // Every truncation and every single-bit flip fails cleanly or inflates to the size.
        for (std::size_t cut = 0; cut < stream.size(); cut += 97) {
            fmt::inflate_raw(stream.data(), cut, out.data(), in.size(), backend);
        }
        for (int flip = 0; flip < 300; ++flip) {
            Bytes bad = stream;
            bad[rng()() % bad.size()] ^= static_cast<std::uint8_t>(1u << (rng()() % 8));
            fmt::inflate_raw(bad.data(), bad.size(), out.data(), in.size(), backend);
            CHECK(out[in.size()] == 0xEE);
        }
    }
}

TEST_CASE("format: dequantize-and-scatter matches the definition, dense and sparse") {
    const std::uint64_t numel = 30000;
    for (int bits : {1, 3, 5, 8}) {
        for (int width : {bits, 8}) {
            for (double keep : {1.0, 0.1}) {
                const bool sparse = keep < 1.0;
                auto positions = sparse ? random_positions(numel, keep) : std::vector<std::uint64_t>{};
                const std::uint64_t count = sparse ? positions.size() : numel;
                const Bytes codes = random_bytes(count, 1u << bits);
                Bytes fields(fmt::packed_field_bytes(count, width));
                CHECK(fmt::pack_fields(codes.data(), count, width, fields.data()));
                const Bytes pos = encode(positions);
                std::vector<float> codebook(1u << bits);
                for (std::size_t k = 0; k < codebook.size(); ++k) codebook[k] = 0.25f * static_cast<float>(k) - 1.0f;
                std::vector<float> scales(100);
                for (std::size_t r = 0; r < scales.size(); ++r) scales[r] = 0.01f * static_cast<float>(r + 1);
                const int offset = 1 << (bits - 1);

                std::vector<float> want_codebook(numel, 0.0f), want_linear(numel, 0.0f);
                for (std::uint64_t i = 0; i < count; ++i) {
                    const std::uint64_t p = sparse ? positions[i] : i;
                    want_codebook[p] = codebook[codes[i]];
                    want_linear[p] = static_cast<float>(static_cast<int>(codes[i]) - offset) * scales[p / (numel / 100)];
                }
                std::vector<float> got(numel, -7.0f);
                const std::uint8_t* pos_data = sparse ? pos.data() : nullptr;
                CHECK(fmt::dequantize_codebook_f32(fields.data(), width, count, codebook.data(), codebook.size(), pos_data,
                                                   pos.size(), numel, got.data()) == fmt::Status::ok);
                CHECK_MSG(std::memcmp(got.data(), want_codebook.data(), numel * 4) == 0,
                          "codebook bits " + std::to_string(bits) + " width " + std::to_string(width));
                std::fill(got.begin(), got.end(), -7.0f);
                CHECK(fmt::dequantize_linear_f32(fields.data(), width, bits, count, scales.data(), scales.size(), pos_data,
                                                 pos.size(), numel, got.data()) == fmt::Status::ok);
                CHECK_MSG(std::memcmp(got.data(), want_linear.data(), numel * 4) == 0,
                          "linear bits " + std::to_string(bits) + " width " + std::to_string(width));
                // A codebook smaller than an index in use is reported.
                if (bits > 1 && count > 100) {
                    CHECK(fmt::dequantize_codebook_f32(fields.data(), width, count, codebook.data(), 1, pos_data, pos.size(),
                                                       numel, got.data()) == fmt::Status::index_range);
                }
            }
        }
    }
}

// A stream as the file stores it: DEFLATE of the bytes, its CRC, its inflated size.
struct Stored {
    Bytes bytes;
    fmt::Stream stream() const {
        fmt::Stream s;
        s.data = bytes.data();
        s.size = bytes.size();
        s.raw_size = raw_size;
        s.crc32 = fmt::crc32(bytes.data(), bytes.size());
        return s;
    }
    std::size_t raw_size = 0;
};

Stored store(const Bytes& raw) {
    Stored s;
    s.bytes = deflate(raw, fmt::Backend::best, 9);
    s.raw_size = raw.size();
    return s;
}

Bytes as_bytes(const std::vector<float>& v) {
    Bytes out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

TEST_CASE("format: decode_tensor decodes each encoding and names the failing stream") {
    if (backends().empty()) return;
    const std::uint64_t rows = 8, cols = 300, numel = rows * cols;
    // raw float32, shuffled, dense
    std::vector<float> dense(numel);
    for (std::uint64_t i = 0; i < numel; ++i) dense[i] = static_cast<float>(i % 37) * 0.5f - 3.0f;
    Bytes shuffled(numel * 4);
    fmt::shuffle_bytes(as_bytes(dense).data(), numel, 4, shuffled.data());
    fmt::TensorRecord raw;
    raw.numel = raw.count = numel;
    raw.shuffle = true;
    const Stored raw_values = store(shuffled);
    raw.values = raw_values.stream();
    std::vector<float> out(numel);
    fmt::Field failed;
    CHECK(fmt::decode_tensor(raw, out.data(), &failed) == fmt::Status::ok);
    CHECK(out == dense);
    raw.values.crc32 ^= 1;
    CHECK(fmt::decode_tensor(raw, out.data(), &failed) == fmt::Status::crc_mismatch && failed == fmt::Field::values);
    raw.values.crc32 ^= 1;
    raw.values.raw_size -= 4;
    CHECK(fmt::decode_tensor(raw, out.data(), &failed) == fmt::Status::size_mismatch && failed == fmt::Field::values);

    // sparse codebook, 5-bit fields
    const auto positions = random_positions(numel, 0.1);
    const Bytes codes = random_bytes(positions.size(), 32);
    Bytes fields(fmt::packed_field_bytes(codes.size(), 5));
    fmt::pack_fields(codes.data(), codes.size(), 5, fields.data());
    std::vector<float> codebook(20);
    for (std::size_t k = 0; k < codebook.size(); ++k) codebook[k] = static_cast<float>(k) * 0.125f;
    const Stored pos = store(encode(positions)), vals = store(fields), table = store(as_bytes(codebook));
    fmt::TensorRecord cb;
    cb.encoding = fmt::Encoding::codebook;
    cb.numel = numel;
    cb.count = positions.size();
    cb.sparse = true;
    cb.bits = 5;
    cb.width = 5;
    cb.positions = pos.stream();
    cb.values = vals.stream();
    cb.table = table.stream();
    // Indices up to 31 against a 20-entry codebook: reported against the values stream.
    CHECK(fmt::decode_tensor(cb, out.data(), &failed) == fmt::Status::index_range && failed == fmt::Field::values);
    codebook.resize(32);
    for (std::size_t k = 20; k < 32; ++k) codebook[k] = -static_cast<float>(k);
    const Stored table32 = store(as_bytes(codebook));
    cb.table = table32.stream();
    CHECK(fmt::decode_tensor(cb, out.data(), &failed) == fmt::Status::ok);
    std::vector<float> want(numel, 0.0f);
    for (std::size_t i = 0; i < positions.size(); ++i) want[positions[i]] = codebook[codes[i]];
    CHECK(out == want);
    cb.positions.raw_size += 1;
    CHECK(fmt::decode_tensor(cb, out.data(), &failed) == fmt::Status::inflate_too_short && failed == fmt::Field::positions);

    // ternary with per-row scales
    const Bytes trits = random_bytes(numel, 3);
    std::vector<std::int8_t> tcodes(numel);
    for (std::uint64_t i = 0; i < numel; ++i) tcodes[i] = static_cast<std::int8_t>(trits[i]) - 1;
    Bytes packed(codl::packed_ternary2_bytes(numel));
    CHECK(codl::pack_ternary2(tcodes.data(), numel, packed.data()));
    std::vector<float> alpha(rows);
    for (std::uint64_t r = 0; r < rows; ++r) alpha[r] = 0.3f + static_cast<float>(r);
    const Stored tvals = store(packed), talpha = store(as_bytes(alpha));
    fmt::TensorRecord ter;
    ter.encoding = fmt::Encoding::ternary;
    ter.numel = ter.count = numel;
    ter.rows = rows;
    ter.values = tvals.stream();
    ter.table = talpha.stream();
    CHECK(fmt::decode_tensor(ter, out.data(), &failed) == fmt::Status::ok);
    bool same = true;
    for (std::uint64_t i = 0; i < numel; ++i) same = same && out[i] == static_cast<float>(tcodes[i]) * alpha[i / cols];
    CHECK(same);
    Bytes bad_packed = packed;
    bad_packed[3] = 0xFF;  // 0b11 fields
    const Stored bad_tvals = store(bad_packed);
    ter.values = bad_tvals.stream();
    CHECK(fmt::decode_tensor(ter, out.data(), &failed) == fmt::Status::ternary_code && failed == fmt::Field::values);
}


// DEFLATE stored blocks (RFC 1951 3.2.4) of `raw`, the last one final if `final`: the layout codl's
// writer gives the planes that do not compress.
Bytes stored_blocks(const std::uint8_t* raw, std::size_t n, bool final, std::size_t block = 65535) {
    Bytes out;
    for (std::size_t start = 0; start < std::max<std::size_t>(n, 1); start += block) {
        const std::size_t len = std::min(block, n - start);
        const bool last = final && start + block >= n;
        out.push_back(last ? 1 : 0);
        out.push_back(static_cast<std::uint8_t>(len));
        out.push_back(static_cast<std::uint8_t>(len >> 8));
        out.push_back(static_cast<std::uint8_t>(~len));
        out.push_back(static_cast<std::uint8_t>(~len >> 8));
        out.insert(out.end(), raw + start, raw + start + len);
    }
    return out;
}

TEST_CASE("format: shuffled floats whose first planes are stored blocks decode from the file's bytes") {
    if (backends().empty()) return;
    for (const std::size_t itemsize : {2u, 4u, 8u}) {
        for (const std::size_t numel : {1u, 1000u, 70000u}) {
            for (std::size_t stored_planes = 0; stored_planes <= itemsize; ++stored_planes) {
                Bytes dense = random_bytes(numel * itemsize);
                for (std::size_t i = 0; i < numel; ++i) dense[i * itemsize + itemsize - 1] %= 4;  // compressible top byte
                Bytes shuffled(dense.size());
                fmt::shuffle_bytes(dense.data(), numel, itemsize, shuffled.data());
                const std::size_t split = stored_planes * numel;
                const bool all_stored = stored_planes == itemsize;
                Bytes stream = stored_blocks(shuffled.data(), split, all_stored, 1000);
                if (!all_stored) {
                    const Bytes tail = deflate(Bytes(shuffled.begin() + split, shuffled.end()), fmt::Backend::best, 6);
                    stream.insert(stream.end(), tail.begin(), tail.end());
                }
                Stored st;
                st.bytes = stream;
                st.raw_size = shuffled.size();
                fmt::TensorRecord r;
                r.numel = r.count = numel;
                r.itemsize = itemsize;
                r.shuffle = true;
                r.values = st.stream();
                Bytes out(dense.size() + 1, 0xEE);
                fmt::Field failed;
                CHECK(fmt::decode_tensor(r, out.data(), &failed) == fmt::Status::ok);
                CHECK(Bytes(out.begin(), out.end() - 1) == dense);
                CHECK(out.back() == 0xEE);
                // The same stream one byte short, one byte long or with a corrupt tail: the
                // ordinary path's verdict, never a wrong tensor.
                for (const long delta : {-1L, 1L}) {
                    Stored bad = st;
                    if (delta < 0) bad.bytes.pop_back(); else bad.bytes.push_back(0);
                    r.values = bad.stream();
                    const fmt::Status status = fmt::decode_tensor(r, out.data(), &failed);
                    CHECK(status != fmt::Status::ok);
                    CHECK(failed == fmt::Field::values);
                    CHECK(out.back() == 0xEE);
                }
                r.values = st.stream();
                r.values.raw_size += itemsize;  // a size the stream does not have
                r.numel = r.count = numel + 1;
                Bytes bigger((numel + 1) * itemsize);
                CHECK(fmt::decode_tensor(r, bigger.data(), &failed) != fmt::Status::ok);
            }
        }
    }
    // A tail that refers back into the stored bytes: one stored byte 'A', then a fixed-Huffman
    // block copying 3 bytes at distance 1 (bits 1, 01, 0000001, 00000, 0000000). The whole
    // stream inflates to "AAAA"; the tail alone is invalid, so the ordinary path decodes it.
    {
        const Bytes stream = {0x00, 0x01, 0x00, 0xFE, 0xFF, 0x41, 0x03, 0x02, 0x00};
        Stored st;
        st.bytes = stream;
        st.raw_size = 4;
        fmt::TensorRecord r;
        r.numel = r.count = 1;
        r.shuffle = true;
        r.values = st.stream();
        Bytes out(4, 0);
        fmt::Field failed;
        CHECK(fmt::decode_tensor(r, out.data(), &failed) == fmt::Status::ok);
        CHECK(out == Bytes(4, 0x41));
    }
}

TEST_CASE("format: byte planes split and join back, the sign rotated to bit 0 and back") {
    // float32 -1.5 = 0xBFC00000: rotated left by one it is 0x7F800001, so its top byte is the
    // exponent 0x7F and its bit 0 the sign.
    const std::uint8_t minus_one_and_half[4] = {0x00, 0x00, 0xC0, 0xBF};
    std::uint8_t planes[4];
    fmt::split_planes(minus_one_and_half, 1, 4, true, planes);
    CHECK(planes[3] == 0x7F && planes[2] == 0x80 && planes[1] == 0x00 && planes[0] == 0x01);
    for (const std::size_t itemsize : {1u, 2u, 4u, 8u}) {
        for (const bool sign_last : {false, true}) {
            const std::size_t n = 1001;
            const Bytes dense = random_bytes(n * itemsize);
            Bytes split(dense.size()), back(dense.size()), shuffled(dense.size());
            fmt::split_planes(dense.data(), n, itemsize, sign_last, split.data());
            fmt::shuffle_bytes(dense.data(), n, itemsize, shuffled.data());
            if (!sign_last || itemsize == 1) CHECK(split == shuffled);
            std::vector<const std::uint8_t*> pointers;
            for (std::size_t k = 0; k < itemsize; ++k) pointers.push_back(split.data() + k * n);
            fmt::join_planes(pointers.data(), n, itemsize, sign_last, back.data());
            CHECK(back == dense);
        }
    }
}

TEST_CASE("format: decode_planes matches its reference for stored, compressed and mixed planes") {
    if (backends().empty()) return;
    for (const std::size_t itemsize : {2u, 4u, 8u}) {
        for (const std::size_t count : {0u, 1u, 1000u, 70000u, 140001u}) {
            for (const bool sign_last : {false, true}) {
                for (unsigned pattern = 0; pattern < 3; ++pattern) {
                    Bytes dense = random_bytes(count * itemsize);
                    for (std::size_t i = 0; i < count; ++i) dense[i * itemsize + itemsize - 1] %= 4;
                    Bytes split(dense.size());
                    fmt::split_planes(dense.data(), count, itemsize, sign_last, split.data());
                    std::vector<Stored> planes(itemsize);
                    for (std::size_t k = 0; k < itemsize; ++k) {
                        const Bytes plane(split.begin() + k * count, split.begin() + (k + 1) * count);
                        // pattern 0: every plane stored; 1: every plane compressed; 2: alternate,
                        // stored in blocks of 1000 bytes (pieces straddle the blocks).
                        const bool stored = pattern == 0 || (pattern == 2 && k % 2 == 0);
                        planes[k].bytes = stored ? stored_blocks(plane.data(), count, true, pattern == 2 ? 1000 : 65535)
                                                 : deflate(plane, fmt::Backend::best, 1 + static_cast<int>(k));
                        planes[k].raw_size = count;
                    }
                    std::vector<fmt::Stream> streams;
                    for (const Stored& p : planes) streams.push_back(p.stream());
                    Bytes out(dense.size() + 1, 0xEE), ref(dense.size() + 1, 0xEE);
                    std::size_t failed = 99;
                    CHECK(fmt::decode_planes(streams.data(), itemsize, count, sign_last, out.data(), &failed) ==
                          fmt::Status::ok);
                    CHECK(fmt::decode_planes_ref(streams.data(), itemsize, count, sign_last, ref.data(), &failed) ==
                          fmt::Status::ok);
                    CHECK(out == ref);
                    CHECK(Bytes(out.begin(), out.end() - 1) == dense);
                    CHECK(out.back() == 0xEE);
                    if (count == 0) continue;
                    // Faults in the last plane: a CRC, a size, a stream cut short. Both report the
                    // plane, and the output is not touched.
                    const std::size_t last = itemsize - 1;
                    for (int fault = 0; fault < 3; ++fault) {
                        Stored bad = planes[last];
                        std::vector<fmt::Stream> faulty = streams;
                        if (fault == 2) bad.bytes.pop_back();
                        faulty[last] = bad.stream();
                        if (fault == 0) faulty[last].crc32 ^= 1;
                        if (fault == 1) faulty[last].raw_size += 1;
                        Bytes untouched(dense.size(), 0xEE);
                        for (const bool reference : {false, true}) {
                            failed = 99;
                            const auto decode = reference ? fmt::decode_planes_ref : fmt::decode_planes;
                            const fmt::Status status =
                                decode(faulty.data(), itemsize, count, sign_last, untouched.data(), &failed, fmt::Backend::best);
                            CHECK(status != fmt::Status::ok);
                            CHECK(failed == last);
                            if (!reference) CHECK(untouched == Bytes(dense.size(), 0xEE));
                        }
                    }
                }
            }
        }
    }
    std::size_t failed = 0;
    fmt::Stream one[3];
    std::uint8_t out[3];
    CHECK(fmt::decode_planes(one, 3, 1, false, out, &failed) == fmt::Status::bad_request);
}

}  // namespace
