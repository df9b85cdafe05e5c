// Scalar kernels of the .codl format: b-bit field packing, LEB128 gap coding of sparse
// positions, byte-plane shuffle, and the dequantize-and-scatter loops of the decode path.
//
// They are the reference and also the production path: decoding is bounded by inflate, and
// these loops run at several GB/s of float32 output (see `codl bench formats`), so no SIMD
// variant has been worth its code yet.
#include <algorithm>
#include <climits>
#include <cstring>

#include "codl/codl_format.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the .codl kernels read packed fields as little-endian words"
#endif

namespace codl::format {
namespace {

// Fields are unpacked in chunks that stay in L1 and start on a byte boundary (a multiple of 8
// fields), then consumed by the scatter loops.
constexpr std::size_t kChunkFields = 4096;

template <int W>
void unpack_fields_w(const std::uint8_t* packed, std::size_t n, std::uint8_t* values) {
    static_assert(W >= 1 && W <= 8, "field width");
    if constexpr (W == 8) {
        std::memcpy(values, packed, n);
    } else {
        constexpr std::uint64_t mask = (1u << W) - 1;
        const std::size_t groups = n / 8;  // 8 fields fill exactly W bytes
        for (std::size_t g = 0; g < groups; ++g) {
            std::uint64_t word = 0;
            std::memcpy(&word, packed + g * W, W);
            for (int k = 0; k < 8; ++k) values[g * 8 + k] = static_cast<std::uint8_t>((word >> (k * W)) & mask);
        }
        const std::size_t rest = n - groups * 8;
        if (rest) {
            std::uint64_t word = 0;
            std::memcpy(&word, packed + groups * W, packed_field_bytes(rest, W));
            for (std::size_t k = 0; k < rest; ++k) {
                values[groups * 8 + k] = static_cast<std::uint8_t>((word >> (k * W)) & mask);
            }
        }
    }
}

using UnpackFn = void (*)(const std::uint8_t*, std::size_t, std::uint8_t*);
UnpackFn unpacker(int width) {
    static constexpr UnpackFn table[] = {unpack_fields_w<1>, unpack_fields_w<2>, unpack_fields_w<3>,
                                         unpack_fields_w<4>, unpack_fields_w<5>, unpack_fields_w<6>,
                                         unpack_fields_w<7>, unpack_fields_w<8>};
    return table[width - 1];
}

// Reads LEB128 gaps and turns them into strictly increasing positions below numel.
class PositionReader {
public:
    PositionReader(const std::uint8_t* data, std::size_t size, std::uint64_t numel)
        : cur_(data), end_(data + size), numel_(numel) {}

    Status next(std::uint64_t* position) {
        std::uint64_t gap;
        if (end_ - cur_ >= static_cast<std::ptrdiff_t>(kMaxVarintBytes) && *cur_ < 0x80) {
            gap = *cur_++;  // the common case: a gap below 128
        } else {
            const Status status = read_varint(&gap);
            if (status != Status::ok) return status;
        }
        // next_ <= numel_ always, so this also rejects overflow of next_ + gap.
        if (gap >= numel_ - next_) return Status::positions_range;
        *position = next_ + gap;
        next_ = *position + 1;
        return Status::ok;
    }

    bool exhausted() const { return cur_ == end_; }

private:
    Status read_varint(std::uint64_t* value) {
        std::uint64_t v = 0;
        for (int k = 0; k < static_cast<int>(kMaxVarintBytes); ++k) {
            if (cur_ == end_) return Status::positions_truncated;
            const std::uint8_t byte = *cur_++;
            // The tenth byte carries bit 63 only; anything more would not fit in 64 bits.
            if (k == static_cast<int>(kMaxVarintBytes) - 1 && byte > 1) return Status::positions_range;
            v |= static_cast<std::uint64_t>(byte & 0x7F) << (7 * k);
            if (byte < 0x80) {
                *value = v;
                return Status::ok;
            }
        }
        return Status::positions_range;
    }

    const std::uint8_t* cur_;
    const std::uint8_t* end_;
    std::uint64_t numel_;
    std::uint64_t next_ = 0;  // the smallest position the next one may take
};

// Runs consume(first_value_index, n, fields) over chunks of unpacked fields; stops at the
// first non-ok status.
template <typename Consume>
Status for_each_chunk(const std::uint8_t* packed, int width, std::uint64_t count, Consume&& consume) {
    const UnpackFn unpack = unpacker(width);
    std::uint8_t chunk[kChunkFields];
    for (std::uint64_t begin = 0; begin < count; begin += kChunkFields) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kChunkFields, count - begin));
        unpack(packed + begin / 8 * static_cast<std::uint64_t>(width), n, chunk);
        const Status status = consume(begin, n, chunk);
        if (status != Status::ok) return status;
    }
    return Status::ok;
}

Status finish_positions(const PositionReader& reader) {
    return reader.exhausted() ? Status::ok : Status::positions_trailing;
}

template <std::size_t S>
Status scatter_fixed(const std::uint8_t* values, std::uint64_t count, PositionReader& reader,
                     std::uint8_t* out) {
    for (std::uint64_t i = 0; i < count; ++i) {
        std::uint64_t p;
        const Status status = reader.next(&p);
        if (status != Status::ok) return status;
        std::memcpy(out + p * S, values + i * S, S);
    }
    return Status::ok;
}

}  // namespace

bool pack_fields(const std::uint8_t* values, std::size_t n, int width, std::uint8_t* packed) {
    if (width < 1 || width > 8) return false;
    const unsigned limit = 1u << width;
    std::memset(packed, 0, packed_field_bytes(n, width));
    std::uint64_t bit = 0;
    for (std::size_t i = 0; i < n; ++i, bit += static_cast<std::uint64_t>(width)) {
        const unsigned v = values[i];
        if (v >= limit) return false;
        const std::uint64_t byte = bit / 8;
        const unsigned shift = static_cast<unsigned>(bit % 8);
        packed[byte] = static_cast<std::uint8_t>(packed[byte] | (v << shift));
        if (shift + static_cast<unsigned>(width) > 8) packed[byte + 1] = static_cast<std::uint8_t>(v >> (8 - shift));
    }
    return true;
}

void unpack_fields(const std::uint8_t* packed, std::size_t n, int width, std::uint8_t* values) {
    if (width < 1 || width > 8) return;
    unpacker(width)(packed, n, values);
}

std::size_t encode_positions(const std::uint64_t* positions, std::size_t count, std::uint8_t* out) {
    std::uint8_t* o = out;
    for (std::size_t i = 0; i < count; ++i) {
        if (i > 0 && positions[i] <= positions[i - 1]) return SIZE_MAX;
        std::uint64_t gap = i == 0 ? positions[0] : positions[i] - positions[i - 1] - 1;
        while (gap >= 0x80) {
            *o++ = static_cast<std::uint8_t>(gap | 0x80);
            gap >>= 7;
        }
        *o++ = static_cast<std::uint8_t>(gap);
    }
    return static_cast<std::size_t>(o - out);
}

Status decode_positions(const std::uint8_t* in, std::size_t size, std::size_t count,
                        std::uint64_t numel, std::uint64_t* positions) {
    PositionReader reader(in, size, numel);
    for (std::size_t i = 0; i < count; ++i) {
        const Status status = reader.next(&positions[i]);
        if (status != Status::ok) return status;
    }
    return finish_positions(reader);
}

void shuffle_bytes(const std::uint8_t* in, std::size_t n, std::size_t itemsize, std::uint8_t* out) {
    for (std::size_t b = 0; b < itemsize; ++b) {
        std::uint8_t* plane = out + b * n;
        for (std::size_t i = 0; i < n; ++i) plane[i] = in[i * itemsize + b];
    }
}

void unshuffle_bytes(const std::uint8_t* in, std::size_t n, std::size_t itemsize, std::uint8_t* out) {
    if (itemsize == 4) {
        // Four planes at once: one 32-bit store per element (the common float32 case).
        const std::uint8_t *p0 = in, *p1 = in + n, *p2 = in + 2 * n, *p3 = in + 3 * n;
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint32_t v = static_cast<std::uint32_t>(p0[i]) | static_cast<std::uint32_t>(p1[i]) << 8 |
                                    static_cast<std::uint32_t>(p2[i]) << 16 |
                                    static_cast<std::uint32_t>(p3[i]) << 24;
            std::memcpy(out + 4 * i, &v, 4);
        }
        return;
    }
    if (itemsize == 2) {
        const std::uint8_t *p0 = in, *p1 = in + n;
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint16_t v = static_cast<std::uint16_t>(p0[i] | p1[i] << 8);
            std::memcpy(out + 2 * i, &v, 2);
        }
        return;
    }
    for (std::size_t b = 0; b < itemsize; ++b) {
        const std::uint8_t* plane = in + b * n;
        for (std::size_t i = 0; i < n; ++i) out[i * itemsize + b] = plane[i];
    }
}

Status dequantize_codebook_f32(const std::uint8_t* fields, int width, std::uint64_t count,
                               const float* codebook, std::size_t codebook_size,
                               const std::uint8_t* positions, std::size_t positions_size,
                               std::uint64_t numel, float* out) {
    if (width < 1 || width > 8 || codebook_size == 0 || codebook_size > 256) return Status::bad_request;
    // Every 8-bit field reads a defined entry; indices past the codebook are reported after.
    float table[256] = {};
    std::memcpy(table, codebook, codebook_size * sizeof(float));
    unsigned largest = 0;
    Status status;
    if (positions == nullptr) {
        if (count != numel) return Status::bad_request;
        status = for_each_chunk(fields, width, count, [&](std::uint64_t begin, std::size_t n, const std::uint8_t* f) {
            float* o = out + begin;
            unsigned chunk_largest = 0;
            for (std::size_t k = 0; k < n; ++k) {
                o[k] = table[f[k]];
                chunk_largest = std::max<unsigned>(chunk_largest, f[k]);
            }
            largest = std::max(largest, chunk_largest);
            return Status::ok;
        });
    } else {
        std::memset(out, 0, numel * sizeof(float));
        PositionReader reader(positions, positions_size, numel);
        status = for_each_chunk(fields, width, count, [&](std::uint64_t, std::size_t n, const std::uint8_t* f) {
            for (std::size_t k = 0; k < n; ++k) {
                std::uint64_t p;
                const Status s = reader.next(&p);
                if (s != Status::ok) return s;
                out[p] = table[f[k]];
                largest = std::max<unsigned>(largest, f[k]);
            }
            return Status::ok;
        });
        if (status == Status::ok) status = finish_positions(reader);
    }
    if (status == Status::ok && count > 0 && largest >= codebook_size) return Status::index_range;
    return status;
}

Status dequantize_linear_f32(const std::uint8_t* fields, int width, int bits, std::uint64_t count,
                             const float* scales, std::uint64_t rows,
                             const std::uint8_t* positions, std::size_t positions_size,
                             std::uint64_t numel, float* out) {
    if (width < 1 || width > 8 || bits < 1 || bits > width) return Status::bad_request;
    if (numel == 0) return count == 0 ? Status::ok : Status::bad_request;
    if (rows == 0 || numel % rows != 0) return Status::bad_request;
    const std::uint64_t row_size = numel / rows;
    const int offset = 1 << (bits - 1);
    // Fields of a `width`-bit stream may exceed `bits` bits (a corrupt file); they decode to
    // larger codes, which is harmless, rather than being masked into a plausible value.
    if (positions == nullptr) {
        if (count != numel) return Status::bad_request;
        return for_each_chunk(fields, width, count, [&](std::uint64_t begin, std::size_t n, const std::uint8_t* f) {
            std::uint64_t row = begin / row_size, row_end = (row + 1) * row_size;
            std::size_t k = 0;
            while (k < n) {
                const std::size_t segment = static_cast<std::size_t>(std::min<std::uint64_t>(n - k, row_end - (begin + k)));
                const float scale = scales[row];
                float* o = out + begin + k;
                for (std::size_t j = 0; j < segment; ++j) o[j] = static_cast<float>(static_cast<int>(f[k + j]) - offset) * scale;
                k += segment;
                ++row;
                row_end += row_size;
            }
            return Status::ok;
        });
    }
    std::memset(out, 0, numel * sizeof(float));
    PositionReader reader(positions, positions_size, numel);
    std::uint64_t row = 0, row_end = row_size;
    const Status status = for_each_chunk(fields, width, count, [&](std::uint64_t, std::size_t n, const std::uint8_t* f) {
        for (std::size_t k = 0; k < n; ++k) {
            std::uint64_t p;
            const Status s = reader.next(&p);
            if (s != Status::ok) return s;
            while (p >= row_end) {  // positions increase, so rows are walked once in all
                ++row;
                row_end += row_size;
            }
            out[p] = static_cast<float>(static_cast<int>(f[k]) - offset) * scales[row];
        }
        return Status::ok;
    });
    return status == Status::ok ? finish_positions(reader) : status;
}

Status scatter_raw(const std::uint8_t* values, std::size_t itemsize, std::uint64_t count,
                   const std::uint8_t* positions, std::size_t positions_size, std::uint64_t numel,
                   std::uint8_t* out) {
    std::memset(out, 0, numel * itemsize);
    PositionReader reader(positions, positions_size, numel);
    Status status;
    switch (itemsize) {
        case 1: status = scatter_fixed<1>(values, count, reader, out); break;
        case 2: status = scatter_fixed<2>(values, count, reader, out); break;
        case 4: status = scatter_fixed<4>(values, count, reader, out); break;
        case 8: status = scatter_fixed<8>(values, count, reader, out); break;
        default: return Status::bad_request;
    }
    return status == Status::ok ? finish_positions(reader) : status;
}

}  // namespace codl::format
