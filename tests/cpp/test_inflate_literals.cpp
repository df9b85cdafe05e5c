// inflate_literals against the general inflaters: zlib's Huffman-only streams of many symbol
// distributions (codes of 1 to 15 bits), hand-written fixed-code and stored blocks mixed in one
// stream, streams it must leave to the fallback (matches, wrong sizes, trailing bytes,
// truncation), and bit flips: whatever it accepts, inflate_raw accepts with the same bytes.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "codl/codl_format.h"
#include "harness.h"

#if CODL_TEST_ZLIB
#include <zlib.h>
#endif

namespace {

namespace fmt = codl::format;
using Bytes = std::vector<std::uint8_t>;

std::mt19937_64& rng() {
    static std::mt19937_64 generator(18);
    return generator;
}

// Bytes whose value v has probability proportional to ratio^v (over `symbols` values): a ratio
// of 0.5 gives codes of 1 to 15 bits, one near 1 the flat distribution of random bytes.
Bytes skewed_bytes(std::size_t n, double ratio, int symbols = 256) {
    std::vector<double> weights(static_cast<std::size_t>(symbols));
    for (int v = 0; v < symbols; ++v) weights[static_cast<std::size_t>(v)] = std::pow(ratio, v);
    std::discrete_distribution<int> pick(weights.begin(), weights.end());
    Bytes out(n);
    for (auto& b : out) b = static_cast<std::uint8_t>(pick(rng()));
    return out;
}

// What the fast path must agree with: the general inflater's verdict and bytes.
bool general_inflate(const Bytes& stream, std::size_t raw_size, Bytes* out) {
    out->assign(raw_size + 1, 0);
    return fmt::inflate_raw(stream.data(), stream.size(), out->data(), raw_size) == fmt::Status::ok;
}

// A build without zlib (the cross build may have none) has no general inflater to compare with:
// there inflate_literals is checked against the bytes alone.
bool have_inflater() {
    return fmt::backend_available(fmt::Backend::zlib) || fmt::backend_available(fmt::Backend::libdeflate);
}

bool fast_inflate(const Bytes& stream, std::size_t raw_size, Bytes* out) {
    out->assign(raw_size, 0xAA);
    return fmt::inflate_literals(stream.data(), stream.size(), out->data(), raw_size);
}

// Raw DEFLATE blocks written bit by bit (RFC 1951): fixed-code literals and stored blocks.
struct BitWriter {
    Bytes bytes;
    std::uint64_t pending = 0;
    int count = 0;
    void put(std::uint32_t value, int bits) {  // LSB first
        pending |= std::uint64_t{value} << count;
        count += bits;
        while (count >= 8) {
            bytes.push_back(static_cast<std::uint8_t>(pending));
            pending >>= 8;
            count -= 8;
        }
    }
    void put_code(std::uint32_t code, int bits) {  // Huffman codes go MSB first
        for (int i = bits - 1; i >= 0; --i) put((code >> i) & 1u, 1);
    }
    void flush_byte() {
        if (count > 0) put(0, 8 - count);
    }
    void fixed_block(const std::uint8_t* data, std::size_t n, bool final) {
        put(final ? 1u : 0u, 1);
        put(1, 2);
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint32_t v = data[i];
            if (v < 144) put_code(0x30 + v, 8);
            else put_code(0x190 + (v - 144), 9);
        }
        put_code(0, 7);  // end of block: symbol 256, seven zero bits
    }
    void stored_block(const std::uint8_t* data, std::size_t n, bool final) {
        put(final ? 1u : 0u, 1);
        put(0, 2);
        flush_byte();
        const std::uint32_t len = static_cast<std::uint32_t>(n);
        put(len & 0xffffu, 16);
        put(~len & 0xffffu, 16);
        for (std::size_t i = 0; i < n; ++i) put(data[i], 8);
    }
};

#if CODL_TEST_ZLIB
// zlib's Z_HUFFMAN_ONLY at level 9 and memLevel 9, as codl's writer calls it.
Bytes huffman_only(const Bytes& in) {
    z_stream zs{};
    CHECK(deflateInit2(&zs, 9, Z_DEFLATED, -15, 9, Z_HUFFMAN_ONLY) == Z_OK);
    Bytes out(deflateBound(&zs, static_cast<uLong>(in.size())) + 16);
    zs.next_in = const_cast<Bytef*>(in.data());
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = out.data();
    zs.avail_out = static_cast<uInt>(out.size());
    CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    out.resize(zs.total_out);
    deflateEnd(&zs);
    return out;
}
#endif

}  // namespace

#if CODL_TEST_ZLIB
TEST_CASE("inflate_literals: zlib's Huffman-only streams decode exactly, codes of 1 to 15 bits") {
    const std::size_t sizes[] = {0, 1, 2, 7, 100, 4097, 40000, 300000};
    const double ratios[] = {0.05, 0.5, 0.7, 0.9, 0.97, 1.0};
    for (std::size_t n : sizes) {
        for (double ratio : ratios) {
            const Bytes data = skewed_bytes(n, ratio);
            const Bytes stream = huffman_only(data);
            Bytes fast;
            CHECK_MSG(fast_inflate(stream, n, &fast), "n=" + std::to_string(n) + " ratio=" + std::to_string(ratio));
            CHECK(fast == data);
        }
    }
    // Two symbols only, and one symbol only (zlib then adds a second code).
    for (int symbols : {1, 2}) {
        const Bytes data = skewed_bytes(70000, 0.5, symbols);
        Bytes fast;
        CHECK(fast_inflate(huffman_only(data), data.size(), &fast) && fast == data);
    }
}

TEST_CASE("inflate_literals: streams with matches, wrong sizes, trailing bytes or cut short go to the fallback") {
    const Bytes data = skewed_bytes(50000, 0.8);
    const Bytes stream = huffman_only(data);
    Bytes fast, general;
    CHECK(!fast_inflate(stream, data.size() - 1, &fast));
    CHECK(!general_inflate(stream, data.size() - 1, &general));
    CHECK(!fast_inflate(stream, data.size() + 1, &fast));
    CHECK(!general_inflate(stream, data.size() + 1, &general));
    Bytes trailed = stream;
    trailed.push_back(0);
    CHECK(!fast_inflate(trailed, data.size(), &fast));
    for (std::size_t cut : {std::size_t{0}, std::size_t{1}, stream.size() / 2, stream.size() - 1}) {
        const Bytes cut_stream(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(cut));
        CHECK(!fast_inflate(cut_stream, data.size(), &fast));
    }
    // Ordinary DEFLATE of repetitive bytes uses length/distance codes: never decoded here.
    Bytes repetitive(60000);
    for (std::size_t i = 0; i < repetitive.size(); ++i) repetitive[i] = static_cast<std::uint8_t>(i % 97);
    Bytes lz(fmt::deflate_bound(repetitive.size()));
    lz.resize(fmt::deflate_raw(repetitive.data(), repetitive.size(), lz.data(), lz.size(), 6));
    CHECK(!fast_inflate(lz, repetitive.size(), &fast));
    CHECK(general_inflate(lz, repetitive.size(), &general));
}

TEST_CASE("inflate_literals: whatever it accepts after bit flips, inflate_raw accepts with the same bytes") {
    const Bytes data = skewed_bytes(20000, 0.6);
    const Bytes stream = huffman_only(data);
    std::uniform_int_distribution<std::size_t> where(0, stream.size() * 8 - 1);
    int accepted = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        Bytes corrupt = stream;
        const int flips = 1 + trial % 3;
        for (int f = 0; f < flips; ++f) {
            const std::size_t bit = where(rng());
            corrupt[bit / 8] = static_cast<std::uint8_t>(corrupt[bit / 8] ^ (1u << (bit % 8)));
        }
        Bytes fast, general;
        if (fast_inflate(corrupt, data.size(), &fast)) {
            ++accepted;
            CHECK(general_inflate(corrupt, data.size(), &general));
            general.resize(data.size());
            CHECK(fast == general);
        }
    }
    // A flip inside a literal's code that maps it onto another code of the same length keeps
    // the size: some flips are accepted (and must then agree), most are not.
    CHECK(accepted < 3000);
}
#endif

TEST_CASE("inflate_literals: fixed-code and stored blocks, mixed in one stream") {
    const Bytes a = skewed_bytes(3000, 0.9), b = skewed_bytes(70000, 1.0), c = skewed_bytes(1, 1.0);
    BitWriter w;
    w.fixed_block(a.data(), a.size(), false);
    w.stored_block(b.data(), 65535, false);
    w.stored_block(b.data() + 65535, b.size() - 65535, false);
    w.fixed_block(c.data(), c.size(), false);
    w.stored_block(nullptr, 0, false);
    w.fixed_block(a.data(), 0, true);
    w.flush_byte();
    Bytes expected = a;
    expected.insert(expected.end(), b.begin(), b.end());
    expected.insert(expected.end(), c.begin(), c.end());
    Bytes fast, general;
    CHECK(fast_inflate(w.bytes, expected.size(), &fast) && fast == expected);
    if (have_inflater()) CHECK(general_inflate(w.bytes, expected.size(), &general));
    // A stored block whose NLEN is not LEN's complement is corrupt: left to the fallback.
    BitWriter bad;
    bad.stored_block(c.data(), 1, true);
    bad.bytes[1] ^= 0xff;
    CHECK(!fast_inflate(bad.bytes, 1, &fast));
    // Symbols 286 and 287 have fixed codes but are invalid.
    BitWriter invalid;
    invalid.put(1, 1);
    invalid.put(1, 2);
    invalid.put_code(0xC6, 8);  // 286
    invalid.put_code(0, 7);
    invalid.flush_byte();
    CHECK(!fast_inflate(invalid.bytes, 0, &fast));
}

#if CODL_TEST_ZLIB
TEST_CASE("decode_plane_chunks: chunks of several tensors, Huffman planes in pairs, match the reference") {
    // Chunks of different sizes (an odd number of them, so one Huffman plane decodes alone),
    // exponent-like planes Huffman-only, the others stored, compressed with matches or Huffman:
    // each chunk decodes as decode_planes_ref decodes it alone.
    for (const std::size_t itemsize : {2u, 4u, 8u}) {
        for (const bool sign_last : {false, true}) {
            const std::size_t counts[] = {70000, 1, 40000, 0, 123457};
            const std::size_t n_chunks = sizeof(counts) / sizeof(counts[0]);
            std::vector<Bytes> dense(n_chunks), encoded(n_chunks * itemsize);
            std::vector<fmt::Stream> streams(n_chunks * itemsize);
            for (std::size_t c = 0; c < n_chunks; ++c) {
                const std::size_t count = counts[c];
                dense[c] = skewed_bytes(count * itemsize, 1.0);
                const Bytes top = skewed_bytes(count, 0.6);  // a skewed top byte, like exponents
                for (std::size_t i = 0; i < count; ++i) dense[c][i * itemsize + itemsize - 1] = top[i];
                Bytes split(dense[c].size());
                fmt::split_planes(dense[c].data(), count, itemsize, sign_last, split.data());
                for (std::size_t k = 0; k < itemsize; ++k) {
                    const Bytes plane(split.begin() + static_cast<std::ptrdiff_t>(k * count),
                                      split.begin() + static_cast<std::ptrdiff_t>((k + 1) * count));
                    Bytes& stream = encoded[c * itemsize + k];
                    if (k + 1 == itemsize || (k + c) % 3 == 0) {
                        stream = huffman_only(plane);
                    } else {
                        stream.resize(fmt::deflate_bound(plane.size()));
                        stream.resize(fmt::deflate_raw(plane.data(), plane.size(), stream.data(), stream.size(),
                                                       static_cast<int>(k % 2) * 6));  // stored or LZ77
                    }
                    streams[c * itemsize + k] = {stream.data(), stream.size(), count,
                                                 fmt::crc32(stream.data(), stream.size())};
                }
            }
            std::vector<Bytes> out(n_chunks);
            std::vector<fmt::PlaneChunk> chunks(n_chunks);
            for (std::size_t c = 0; c < n_chunks; ++c) {
                out[c].assign(counts[c] * itemsize + 1, 0xEE);
                chunks[c] = {streams.data() + c * itemsize, counts[c], out[c].data()};
            }
            std::size_t failed_chunk = 99, failed_plane = 99;
            CHECK(fmt::decode_plane_chunks(chunks.data(), n_chunks, itemsize, sign_last, &failed_chunk,
                                           &failed_plane) == fmt::Status::ok);
            for (std::size_t c = 0; c < n_chunks; ++c) {
                Bytes ref(counts[c] * itemsize + 1, 0xEE);
                std::size_t failed = 99;
                CHECK(fmt::decode_planes_ref(streams.data() + c * itemsize, itemsize, counts[c], sign_last, ref.data(),
                                             &failed) == fmt::Status::ok);
                CHECK(out[c] == ref);
                CHECK(Bytes(out[c].begin(), out[c].end() - 1) == dense[c]);
            }
            // A Huffman plane of chunk 2 cut short by a byte (the CRC made to match: the last byte
            // always holds some of the final block's bits): the chunk and plane are named and no
            // chunk's output is written.
            Bytes damaged = encoded[2 * itemsize + itemsize - 1];
            damaged.pop_back();
            std::vector<fmt::Stream> faulty = streams;
            faulty[2 * itemsize + itemsize - 1] = {damaged.data(), damaged.size(), counts[2],
                                                   fmt::crc32(damaged.data(), damaged.size())};
            for (std::size_t c = 0; c < n_chunks; ++c) {
                std::fill(out[c].begin(), out[c].end(), 0xEE);
                chunks[c].planes = faulty.data() + c * itemsize;
            }
            Bytes expected_general;
            const bool still_valid = general_inflate(damaged, counts[2], &expected_general);
            const fmt::Status status = fmt::decode_plane_chunks(chunks.data(), n_chunks, itemsize, sign_last,
                                                                &failed_chunk, &failed_plane);
            CHECK(!still_valid);  // the general inflater rejects it too
            CHECK(status != fmt::Status::ok);
            CHECK(failed_chunk == 2 && failed_plane == itemsize - 1);
            for (std::size_t c = 0; c < n_chunks; ++c) CHECK(out[c] == Bytes(out[c].size(), 0xEE));
        }
    }
}
#endif

namespace {

Bytes deflate_literals(const Bytes& in, std::size_t block_bytes = fmt::kLiteralBlockBytes) {
    // Blocks below 1024 bytes may outgrow deflate_bound: give them room.
    Bytes out(fmt::deflate_bound(in.size()) + 8 * (in.size() / std::max<std::size_t>(block_bytes, 1) + 1));
    const std::size_t size = fmt::deflate_literals(in.data(), in.size(), out.data(), out.size(), block_bytes);
    CHECK(size > 0);
    out.resize(size);
    return out;
}

}  // namespace

TEST_CASE("deflate_literals: every inflater reads it back, Huffman or stored blocks, codes limited to 15 bits") {
    const std::size_t sizes[] = {0, 1, 2, 1000, 65535, 65536, 300001, 1 << 20};
    const double ratios[] = {0.05, 0.5, 0.9, 1.0};  // 0.5: unlimited Huffman codes reach 255 bits
    for (std::size_t n : sizes) {
        for (double ratio : ratios) {
            const Bytes data = skewed_bytes(n, ratio);
            for (std::size_t block : {std::size_t{1000}, std::size_t{65536}, fmt::kLiteralBlockBytes}) {
                const Bytes stream = deflate_literals(data, block);
                Bytes fast, general;
                if (have_inflater()) {
                    CHECK_MSG(general_inflate(stream, n, &general),
                              "n=" + std::to_string(n) + " ratio=" + std::to_string(ratio));
                    general.resize(n);
                    CHECK(general == data);
                }
                CHECK(fast_inflate(stream, n, &fast) && fast == data);
                // Never more than storing the bytes costs: 5 bytes per stored block of at most
                // 64 KiB - 1, within each block of `block` bytes.
                const std::size_t blocks = (n + block - 1) / block, per_block = (block + 65534) / 65535;
                CHECK_MSG(stream.size() <= n + 5 * (blocks * per_block + 1),
                          std::to_string(n) + " " + std::to_string(block) + " -> " + std::to_string(stream.size()));
            }
        }
    }
    for (int symbols : {1, 2}) {  // one symbol in use still gets a complete two-code code
        const Bytes data = skewed_bytes(100000, 0.5, symbols);
        Bytes fast;
        CHECK(fast_inflate(deflate_literals(data), data.size(), &fast) && fast == data);
    }
    // Too little room: 0, never a write past the end.
    const Bytes data = skewed_bytes(50000, 0.9);
    Bytes small(100, 0xEE);
    CHECK(fmt::deflate_literals(data.data(), data.size(), small.data(), 99, fmt::kLiteralBlockBytes) == 0);
    CHECK(small[99] == 0xEE);
}

#if CODL_TEST_ZLIB
TEST_CASE("deflate_literals: no larger than zlib's Huffman-only coding of the same bytes") {
    // Skewed bytes like a float's exponent plane, drifting so that per-block codes matter.
    Bytes data;
    for (int piece = 0; piece < 16; ++piece) {
        const Bytes part = skewed_bytes(65536, 0.3 + 0.04 * piece);
        data.insert(data.end(), part.begin(), part.end());
    }
    const std::size_t ours = deflate_literals(data).size(), zlib = huffman_only(data).size();
    CHECK_MSG(ours <= zlib + zlib / 200, std::to_string(ours) + " vs zlib " + std::to_string(zlib));
}
#endif
