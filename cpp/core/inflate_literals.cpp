// A DEFLATE decoder for literal-only streams: the Huffman-only byte planes codl writes (a
// float's exponent plane; zlib's Z_HUFFMAN_ONLY, one code per block of 32 Ki symbols), which
// general inflaters decode one symbol per table lookup (libdeflate: ~500 MB/s on an exponent
// plane of 2.6 bits per byte). Here one lookup in a 2^10-entry table yields every whole code
// that fits in the next 10 bits, up to four literals, written with one 4-byte store: the idea
// of multi-symbol Huffman decoding (zstd's HUF_decompress4X2, ZipNN through it), on DEFLATE's
// own codes, so the file stays readable by any zlib.
//
// It decides nothing it is unsure of: a length/distance code, an incomplete or over-subscribed
// code, a truncated or trailed stream, output longer or shorter than raw_size all make it
// return false, and the caller inflates the stream with zlib or libdeflate, whose verdict
// (ok or the exact Status) stands. It returns true only for a valid stream that produced
// exactly raw_size bytes using every input byte. It never reads past in + n nor writes past
// out + raw_size.
#include <algorithm>
#include <cstring>

#include "codl/codl_format.h"

// Words are loaded and literals stored with memcpy in the CPU's byte order: DEFLATE's is little.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "inflate_literals assumes a little-endian CPU"
#endif

namespace codl::format {
namespace {

constexpr int kTableBits = 10;  // five lookups per refill of at least 56 bits
constexpr std::uint32_t kTableSize = 1u << kTableBits;
constexpr int kMaxCodeBits = 15;
constexpr int kLiteralsPerEntry = 4;
constexpr int kEndOfBlock = 256;

// One lookup, packed in 64 bits so that the decode loop shifts by the entry itself:
//   bits 0-7    bits consumed: every literal's code (or the one special code's)
//   bits 8-15   literals (0: a special code the slow path handles: the end of the block or a
//               length code, its symbol in bits 32-47; or a code longer than kTableBits, bits
//               0-7 then 0)
//   bits 16-31  the bits consumed after the first, second, third and fourth literal (4 bits each)
//   bits 32-63  literal i in byte i
// 8 KiB: two streams' tables stay in L1 together. (10 bits measured best: 11 decodes ~3% more
// literals per lookup but a block's table costs twice as much to build, and zlib's writer
// starts a block every 32 Ki symbols; 9 and 10 are level. MiniLM's exponent plane, zlib's
// blocks, two streams interleaved: 1.43 GB/s at 10 bits, 1.11 at 11; one stream 0.95 / 0.86;
// libdeflate 0.51. codl's own writer (deflate_literals) merges blocks: 1.8 GB/s.)
using Entry = std::uint64_t;
constexpr int entry_bits(Entry e) { return static_cast<int>(e & 0xff); }
constexpr int entry_count(Entry e) { return static_cast<int>((e >> 8) & 0xff); }
constexpr int entry_bits_after(Entry e, int literals) {  // literals in 1..4
    return static_cast<int>((e >> (16 + 4 * (literals - 1))) & 0xf);
}
constexpr std::uint32_t entry_literals(Entry e) { return static_cast<std::uint32_t>(e >> 32); }
constexpr Entry make_entry(int bits, int count, std::uint32_t cumulative, std::uint32_t literals) {
    return static_cast<Entry>(bits) | static_cast<Entry>(count) << 8 | static_cast<Entry>(cumulative) << 16 |
           static_cast<Entry>(literals) << 32;
}

// A canonical Huffman code (RFC 1951 3.2.2), for the code-length alphabet, the codes longer
// than kTableBits, and the validity checks.
struct Canonical {
    std::uint16_t count[kMaxCodeBits + 1];
    std::uint16_t symbols[288];
    int max_bits;
    // The first code of each length, and the symbols of shorter codes: a code of length len and
    // value v (read MSB first) is symbols[index[len] + v - first[len]].
    int first[kMaxCodeBits + 2];
    int index[kMaxCodeBits + 2];

    // False for an over-subscribed or incomplete code (RFC 1951 allows only complete ones for
    // literals; zlib and libdeflate take some incomplete ones, which the fallback then decides).
    bool build(const std::uint8_t* lengths, int n) {
        std::memset(count, 0, sizeof(count));
        for (int s = 0; s < n; ++s) ++count[lengths[s]];
        count[0] = 0;
        int left = 1;
        max_bits = 0;
        for (int len = 1; len <= kMaxCodeBits; ++len) {
            left = (left << 1) - count[len];
            if (left < 0) return false;
            if (count[len]) max_bits = len;
        }
        if (left != 0) return false;
        first[1] = 0;
        index[1] = 0;
        for (int len = 1; len <= kMaxCodeBits; ++len) {
            first[len + 1] = (first[len] + count[len]) << 1;
            index[len + 1] = index[len] + count[len];
        }
        std::uint16_t offsets[kMaxCodeBits + 2];
        offsets[1] = 0;
        for (int len = 1; len <= kMaxCodeBits; ++len) offsets[len + 1] = offsets[len] + count[len];
        for (int s = 0; s < n; ++s) {
            if (lengths[s]) symbols[offsets[lengths[s]]++] = static_cast<std::uint16_t>(s);
        }
        return true;
    }
};

// Input bits LSB first. `available` bits sit in `buffer`; `pos` is the next byte to load.
struct BitReader {
    const std::uint8_t* in;
    std::size_t n;
    std::size_t pos = 0;
    std::uint64_t buffer = 0;
    int available = 0;

    // At least 56 bits when 8 bytes remain; near the end, whatever is left.
    void refill() {
        if (n - pos >= 8) {
            std::uint64_t word;
            std::memcpy(&word, in + pos, 8);
            buffer |= word << available;
            pos += static_cast<std::size_t>((63 - available) >> 3);
            available |= 56;
            return;
        }
        while (available <= 56 && pos < n) {
            buffer |= std::uint64_t{in[pos++]} << available;
            available += 8;
        }
    }
    // Reads `count` bits (count <= 32); false when the stream has fewer.
    bool read(int count, std::uint32_t* value) {
        if (available < count) refill();
        if (available < count) return false;
        *value = static_cast<std::uint32_t>(buffer & ((std::uint64_t{1} << count) - 1));
        buffer >>= count;
        available -= count;
        return true;
    }
    void consume(int count) {
        buffer >>= count;
        available -= count;
    }
    // Drops the bits up to the next byte boundary; the next byte to read is then `byte()`.
    void align() {
        consume(available & 7);
    }
    std::size_t byte() const { return pos - static_cast<std::size_t>(available >> 3); }
    void seek(std::size_t byte) {
        pos = byte;
        buffer = 0;
        available = 0;
    }
};

// Decodes one symbol of a canonical code bit by bit (codes are sent MSB first): the slow path.
bool decode_canonical(BitReader* bits, const Canonical& code, int* symbol) {
    int first = 0, index = 0, value = 0;
    for (int len = 1; len <= code.max_bits; ++len) {
        std::uint32_t bit;
        if (!bits->read(1, &bit)) return false;
        value |= static_cast<int>(bit);
        const int count = code.count[len];
        if (value - first < count) {
            *symbol = code.symbols[index + value - first];
            return true;
        }
        index += count;
        first = (first + count) << 1;
        value <<= 1;
    }
    return false;
}

// A code longer than kTableBits: its first kTableBits bits at once, then one bit at a time.
bool decode_long(BitReader* bits, const Canonical& code, int* symbol) {
    // The caller refilled: fewer bits than the code's length means the stream is cut short.
    if (bits->available <= kTableBits) return false;
    int value = 0;
    for (int i = 0; i < kTableBits; ++i) value = value << 1 | static_cast<int>((bits->buffer >> i) & 1u);
    for (int len = kTableBits + 1; len <= code.max_bits && len <= bits->available; ++len) {
        value = value << 1 | static_cast<int>((bits->buffer >> (len - 1)) & 1u);
        if (value - code.first[len] < code.count[len]) {
            *symbol = code.symbols[code.index[len] + value - code.first[len]];
            bits->consume(len);
            return true;
        }
    }
    return false;
}

std::uint32_t reverse_bits(std::uint32_t code, int length) {
    std::uint32_t out = 0;
    for (int i = 0; i < length; ++i) out |= ((code >> i) & 1u) << (length - 1 - i);
    return out;
}

// The lookup table of a complete literal/length code.
void build_table(const std::uint8_t* lengths, int n, Entry* table) {
    // Single codes first: every index whose low `len` bits are a code's (bit-reversed) value.
    std::uint16_t next_code[kMaxCodeBits + 2] = {};
    std::uint16_t count[kMaxCodeBits + 1] = {};
    for (int s = 0; s < n; ++s) ++count[lengths[s]];
    count[0] = 0;
    int code = 0;
    for (int len = 1; len <= kMaxCodeBits; ++len) {
        code = (code + count[len - 1]) << 1;
        next_code[len] = static_cast<std::uint16_t>(code);
    }
    std::memset(table, 0, kTableSize * sizeof(Entry));  // zero: a code longer than kTableBits
    for (int s = 0; s < n; ++s) {
        const int len = lengths[s];
        if (len == 0) continue;
        const std::uint32_t reversed = reverse_bits(next_code[len]++, len);
        if (len > kTableBits) continue;
        const Entry single = s < kEndOfBlock ? make_entry(len, 1, static_cast<std::uint32_t>(len), static_cast<std::uint32_t>(s))
                                             : make_entry(len, 0, 0, static_cast<std::uint32_t>(s));
        for (std::uint32_t i = reversed; i < kTableSize; i += 1u << len) table[i] = single;
    }
    // Then each literal entry i extended by the literals that follow its first code within
    // kTableBits: they are the first literals of entry i >> len (already final, i >> len < i),
    // as many as end within the bits left. Index 0 (a run of the all-zero code) is its own
    // continuation: it is extended one literal at a time. The loop has no data-dependent
    // branch: it runs for every entry of every block (a branchy one cost 30% of the decode).
    if (entry_count(table[0]) == 1) {
        const Entry e = table[0];
        const int first_bits = entry_bits(e);
        std::uint32_t literals = entry_literals(e), cumulative = static_cast<std::uint32_t>(first_bits);
        int bits = first_bits, count = 1;
        while (count < kLiteralsPerEntry && bits + first_bits <= kTableBits) {
            literals |= (entry_literals(e) & 0xffu) << (8 * count);
            bits += first_bits;
            cumulative |= static_cast<std::uint32_t>(bits) << (4 * count);
            ++count;
        }
        table[0] = make_entry(bits, count, cumulative, literals);
    }
    for (std::uint32_t i = 1; i < kTableSize; ++i) {
        const Entry e = table[i];
        const std::uint64_t first_bits = e & 0xff;
        const Entry next = table[i >> first_bits];
        const std::uint64_t budget = kTableBits - first_bits;
        const std::uint64_t available = (next >> 8) & 0xff;  // 0 to 4; at most 3 are taken
        const std::uint64_t ends = (next >> 16) & 0xfff;      // where its first three literals end
        const std::uint64_t take = (available >= 1 && (ends & 0xf) <= budget) +
                                   (available >= 2 && ((ends >> 4) & 0xf) <= budget) +
                                   (available >= 3 && ((ends >> 8) & 0xf) <= budget);
        const std::uint64_t literal_mask = (std::uint64_t{1} << (8 * take)) - 1;
        const std::uint64_t literals = (e >> 32 & 0xff) | ((next >> 32) & literal_mask) << 8;
        // Each taken end moves by first_bits and stays within 4 bits (at most kTableBits).
        const std::uint64_t end_mask = (std::uint64_t{1} << (4 * take)) - 1;
        const std::uint64_t moved = (ends & end_mask) + first_bits * (0x111 & end_mask);
        const std::uint64_t bits = first_bits + (((ends << 4) >> (4 * take)) & 0xf);
        const Entry extended = bits | (1 + take) << 8 | (first_bits | moved << 4) << 16 | literals << 32;
        table[i] = ((e >> 8) & 0xff) == 1 ? extended : e;
    }
}

// The 19 code-length codes' order (RFC 1951 3.2.7).
constexpr std::uint8_t kCodeLengthOrder[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

// Reads a dynamic block's code lengths; false for anything this decoder does not take.
bool read_dynamic_lengths(BitReader* bits, std::uint8_t* literal_lengths, int* literal_count) {
    std::uint32_t hlit, hdist, hclen;
    if (!bits->read(5, &hlit) || !bits->read(5, &hdist) || !bits->read(4, &hclen)) return false;
    const int nlit = static_cast<int>(hlit) + 257, ndist = static_cast<int>(hdist) + 1;
    if (nlit > 286 || ndist > 30) return false;
    std::uint8_t code_lengths[19] = {};
    for (std::uint32_t i = 0; i < hclen + 4; ++i) {
        std::uint32_t v;
        if (!bits->read(3, &v)) return false;
        code_lengths[kCodeLengthOrder[i]] = static_cast<std::uint8_t>(v);
    }
    Canonical lengths_code;
    if (!lengths_code.build(code_lengths, 19)) return false;
    std::uint8_t lengths[286 + 30];
    int filled = 0;
    while (filled < nlit + ndist) {
        int symbol;
        if (!decode_canonical(bits, lengths_code, &symbol)) return false;
        if (symbol < 16) {
            lengths[filled++] = static_cast<std::uint8_t>(symbol);
            continue;
        }
        std::uint32_t extra;
        int repeat;
        std::uint8_t value = 0;
        if (symbol == 16) {
            if (filled == 0 || !bits->read(2, &extra)) return false;
            value = lengths[filled - 1];
            repeat = 3 + static_cast<int>(extra);
        } else if (symbol == 17) {
            if (!bits->read(3, &extra)) return false;
            repeat = 3 + static_cast<int>(extra);
        } else {
            if (!bits->read(7, &extra)) return false;
            repeat = 11 + static_cast<int>(extra);
        }
        if (filled + repeat > nlit + ndist) return false;
        std::memset(lengths + filled, value, static_cast<std::size_t>(repeat));
        filled += repeat;
    }
    // The distance code is never used by literals, but must be one zlib takes: complete, or
    // one code or none (zlib's and libdeflate's rule for a literal-only block).
    const std::uint8_t* dist = lengths + nlit;
    int dist_codes = 0;
    for (int i = 0; i < ndist; ++i) dist_codes += dist[i] != 0;
    if (dist_codes > 1) {
        Canonical check;
        if (!check.build(dist, ndist)) return false;
    } else if (dist_codes == 1) {
        for (int i = 0; i < ndist; ++i) {
            if (dist[i] != 0 && dist[i] != 1) return false;
        }
    }
    std::memcpy(literal_lengths, lengths, static_cast<std::size_t>(nlit));
    *literal_count = nlit;
    return literal_lengths[kEndOfBlock] != 0;
}

void fixed_lengths(std::uint8_t* lengths) {
    for (int s = 0; s < 288; ++s) lengths[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
}

// One stream's decoding, resumable one step at a time so that two streams can be interleaved.
class Decoder {
public:
    enum class State { block, done, failed };

    Decoder(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size)
        : bits_{in, n}, cursor_(out), end_(out + raw_size) {
        next_block();
    }

    State state() const { return state_; }
    // True when the stream is finished and valid: exactly raw_size bytes, every input byte used.
    bool succeeded() const { return state_ == State::done; }

    // Room for a round of five lookups: 8 input bytes to refill from, 20 output bytes to write.
    bool fast_ready() const {
        return state_ == State::block && bits_.n - bits_.pos >= 8 && end_ - cursor_ >= 5 * kLiteralsPerEntry;
    }
    void refill() { bits_.refill(); }
    Entry lookup() const { return table_[bits_.buffer & (kTableSize - 1)]; }
    // Writes a lookup's literals (all four bytes; `count` of them kept) and consumes their bits.
    void take(Entry e) {
        const std::uint32_t literals = entry_literals(e);
        std::memcpy(cursor_, &literals, 4);
        cursor_ += entry_count(e);
        bits_.consume(entry_bits(e));
    }

    // Fast rounds until a special code or the stream's last bytes.
    void run_fast() {
        while (fast_ready()) {
            refill();
            for (int k = 0; k < 5; ++k) {
                const Entry e = lookup();
                if (entry_count(e) == 0) return;
                take(e);
            }
        }
    }

    // One code the slow way: a literal, the end of a block (then the next block's header), a
    // code longer than the table, or the stream's last bytes.
    void step() {
        if (state_ != State::block) return;
        if (bits_.available < kMaxCodeBits) bits_.refill();
        const Entry e = lookup();
        int symbol;
        if (entry_bits(e) != 0) {
            const int first_bits = entry_count(e) ? entry_bits_after(e, 1) : entry_bits(e);
            if (bits_.available < first_bits) return fail();
            symbol = static_cast<int>(entry_count(e) ? entry_literals(e) & 0xffu : entry_literals(e));
            bits_.consume(first_bits);
        } else if (!decode_long(&bits_, code_, &symbol)) {
            return fail();
        }
        if (symbol == kEndOfBlock) return final_ ? finish() : next_block();
        if (symbol > kEndOfBlock || cursor_ == end_) return fail();  // a length code, or too long
        *cursor_++ = static_cast<std::uint8_t>(symbol);
    }

    // To the end of the stream alone.
    void run() {
        while (state_ == State::block) {
            run_fast();
            step();
        }
    }

private:
    void fail() { state_ = State::failed; }

    void finish() {
        bits_.align();
        state_ = cursor_ == end_ && bits_.byte() == bits_.n ? State::done : State::failed;
    }

    // Reads block headers, copying stored blocks, up to a Huffman block (its table built) or the
    // end of the stream.
    void next_block() {
        for (;;) {
            std::uint32_t header;
            if (!bits_.read(3, &header)) return fail();
            final_ = header & 1u;
            const std::uint32_t type = header >> 1;
            if (type == 0) {  // stored: LEN, NLEN, then LEN bytes
                bits_.align();
                std::size_t at = bits_.byte();
                const std::uint8_t* in = bits_.in;
                if (bits_.n - at < 4) return fail();
                const std::uint32_t len = in[at] | in[at + 1] << 8, nlen = in[at + 2] | in[at + 3] << 8;
                if ((len ^ 0xffffu) != nlen) return fail();
                at += 4;
                if (bits_.n - at < len || static_cast<std::size_t>(end_ - cursor_) < len) return fail();
                if (len) std::memcpy(cursor_, in + at, len);  // an empty output may be null
                cursor_ += len;
                bits_.seek(at + len);
                if (final_) return finish();
                continue;
            }
            int literal_count;
            if (type == 1) {
                fixed_lengths(lengths_);
                literal_count = 288;  // 286 and 287 have codes but are invalid: only 0-256 decode
            } else if (type == 2) {
                if (!read_dynamic_lengths(&bits_, lengths_, &literal_count)) return fail();
            } else {
                return fail();
            }
            // Consecutive blocks of a plane sometimes send the same code: the table is then kept.
            if (literal_count != built_count_ ||
                std::memcmp(lengths_, built_lengths_, static_cast<std::size_t>(literal_count)) != 0) {
                if (!code_.build(lengths_, literal_count)) return fail();
                build_table(lengths_, literal_count, table_);
                std::memcpy(built_lengths_, lengths_, static_cast<std::size_t>(literal_count));
                built_count_ = literal_count;
            }
            state_ = State::block;
            return;
        }
    }

    BitReader bits_;
    std::uint8_t* cursor_;
    std::uint8_t* const end_;
    State state_ = State::block;
    bool final_ = false;
    Entry table_[kTableSize];
    Canonical code_;
    std::uint8_t lengths_[288];
    std::uint8_t built_lengths_[288];  // the code table_ holds (built_count_ 0: none yet)
    int built_count_ = 0;
};

// Two streams in one loop: each lookup waits on the one before it in its own stream (a load,
// then a shift: ~8 cycles), so alternating two streams' lookups keeps both chains in flight.
void run_pair(Decoder& a, Decoder& b) {
    while (a.state() == Decoder::State::block && b.state() == Decoder::State::block) {
        while (a.fast_ready() && b.fast_ready()) {
            a.refill();
            b.refill();
            int k = 0;
            for (; k < 5; ++k) {
                const Entry ea = a.lookup(), eb = b.lookup();
                if (entry_count(ea) == 0 || entry_count(eb) == 0) break;
                a.take(ea);
                b.take(eb);
            }
            if (k < 5) break;
        }
        // A special code in either (or the last bytes): one slow step each; a step on an
        // ordinary literal only decodes it.
        a.step();
        b.step();
    }
    a.run();
    b.run();
}

}  // namespace

bool inflate_literals(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size) {
    Decoder decoder(in, n, out, raw_size);
    decoder.run();
    return decoder.succeeded();
}

void inflate_literals(const LiteralStream* streams, std::size_t count, bool* succeeded) {
    std::size_t i = 0;
    for (; i + 1 < count; i += 2) {
        const LiteralStream &a = streams[i], &b = streams[i + 1];
        Decoder first(a.in, a.size, a.out, a.raw_size), second(b.in, b.size, b.out, b.raw_size);
        run_pair(first, second);
        succeeded[i] = first.succeeded();
        succeeded[i + 1] = second.succeeded();
    }
    if (i < count) succeeded[i] = inflate_literals(streams[i].in, streams[i].size, streams[i].out, streams[i].raw_size);
}

}  // namespace codl::format
