// The .codl format's DEFLATE codec (zlib, and libdeflate where the build found it) and the
// per-tensor decode path. CODL_HAVE_ZLIB / CODL_HAVE_LIBDEFLATE come from CMakeLists.txt;
// without either, the codec reports no_codec and the Python reader inflates with its zlib.
#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "codl/codl_format.h"
#include "codl/pack.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if CODL_HAVE_ZLIB
#include <zlib.h>
#endif
#if CODL_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

namespace codl::format {
namespace {

// zlib counts in `uInt`: feed it at most this much per call.
constexpr std::size_t kZlibChunk = std::size_t{1} << 30;

Backend resolve(Backend backend) {
    if (backend != Backend::best) return backend;
#if CODL_HAVE_LIBDEFLATE
    return Backend::libdeflate;
#else
    return Backend::zlib;
#endif
}

#if CODL_HAVE_ZLIB
std::size_t zlib_deflate(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t capacity,
                         int level) {
    z_stream zs{};
    // windowBits -15: a raw RFC 1951 stream, no zlib header or Adler-32 trailer.
    if (deflateInit2(&zs, std::min(level, 9), Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
    std::size_t in_left = n, out_used = 0;
    int ret = Z_OK;
    while (ret == Z_OK) {
        const std::size_t in_chunk = std::min(in_left, kZlibChunk);
        const std::size_t out_chunk = std::min(capacity - out_used, kZlibChunk);
        zs.next_in = const_cast<Bytef*>(in + (n - in_left));
        zs.avail_in = static_cast<uInt>(in_chunk);
        zs.next_out = out + out_used;
        zs.avail_out = static_cast<uInt>(out_chunk);
        ret = deflate(&zs, in_chunk == in_left ? Z_FINISH : Z_NO_FLUSH);
        in_left -= in_chunk - zs.avail_in;
        out_used += out_chunk - zs.avail_out;
        if (ret == Z_BUF_ERROR && out_used < capacity) ret = Z_OK;  // needs another round
        if (out_used == capacity && ret != Z_STREAM_END) break;
    }
    deflateEnd(&zs);
    return ret == Z_STREAM_END ? out_used : 0;
}

Status zlib_inflate(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size) {
    z_stream zs{};
    if (inflateInit2(&zs, -15) != Z_OK) return Status::inflate_corrupt;
    std::size_t in_left = n, out_left = raw_size;
    const std::uint8_t* ip = in;
    std::uint8_t* op = out;
    std::uint8_t probe;  // once out is full: one byte more means the stream is too long
    Status status;
    for (;;) {
        const bool probing = out_left == 0;
        const std::size_t in_chunk = std::min(in_left, kZlibChunk);
        const std::size_t out_chunk = probing ? 1 : std::min(out_left, kZlibChunk);
        zs.next_in = const_cast<Bytef*>(ip);
        zs.avail_in = static_cast<uInt>(in_chunk);
        zs.next_out = probing ? &probe : op;
        zs.avail_out = static_cast<uInt>(out_chunk);
        const int ret = inflate(&zs, Z_NO_FLUSH);
        const std::size_t used_in = in_chunk - zs.avail_in, used_out = out_chunk - zs.avail_out;
        ip += used_in;
        in_left -= used_in;
        if (probing && used_out) {
            status = Status::inflate_too_long;
            break;
        }
        op += used_out;
        out_left -= used_out;
        if (ret == Z_STREAM_END) {
            status = out_left ? Status::inflate_too_short : in_left ? Status::inflate_trailing : Status::ok;
            break;
        }
        if (ret != Z_OK && ret != Z_BUF_ERROR) {
            status = Status::inflate_corrupt;
            break;
        }
        if (used_in == 0 && used_out == 0) {  // no progress: the input ran out mid-stream
            status = Status::inflate_too_short;
            break;
        }
    }
    inflateEnd(&zs);
    return status;
}
#endif

#if CODL_HAVE_LIBDEFLATE
struct DecompressorDeleter {
    void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};
struct CompressorDeleter {
    void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
};

Status libdeflate_inflate(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size) {
    // One decompressor per thread, reused: it is a few KB of tables.
    thread_local std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> decompressor(
        libdeflate_alloc_decompressor());
    if (!decompressor) return Status::inflate_corrupt;
    std::size_t used_in = 0, produced = 0;
    const libdeflate_result result = libdeflate_deflate_decompress_ex(decompressor.get(), in, n, out, raw_size,
                                                                      &used_in, &produced);
    switch (result) {
        case LIBDEFLATE_SUCCESS:
            if (produced != raw_size) return Status::inflate_too_short;
            return used_in == n ? Status::ok : Status::inflate_trailing;
        case LIBDEFLATE_INSUFFICIENT_SPACE: return Status::inflate_too_long;
        default: return Status::inflate_corrupt;
    }
}
#endif

[[maybe_unused]] std::uint32_t software_crc32(const std::uint8_t* data, std::size_t n, std::uint32_t crc) {
    static const auto table = [] {
        struct Table {
            std::uint32_t v[256];
        } t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t.v[i] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) crc = table.v[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

// Uninitialised scratch (always filled completely before it is read), kept by the thread for
// its next call: a fresh buffer is page faults, ~0.7 ms per MB on the machines measured (a
// chunk pair's 2 MB of exponent planes cost more to fault in than to decode). One buffer of up
// to kKeptScratch bytes stays with each thread.
constexpr std::size_t kKeptScratch = std::size_t{16} << 20;

struct KeptScratch {
    std::unique_ptr<std::uint8_t[]> data;
    std::size_t size = 0;
};
thread_local KeptScratch kept_scratch;

class Scratch {
public:
    Scratch() = default;
    explicit Scratch(std::size_t n) {
        n = std::max<std::size_t>(n, 1);
        if (kept_scratch.data && kept_scratch.size >= n) {
            data_ = std::move(kept_scratch.data);
            size_ = kept_scratch.size;
            kept_scratch.size = 0;
        } else {
            data_.reset(new std::uint8_t[n]);
            size_ = n;
        }
    }
    Scratch(Scratch&&) = default;
    Scratch& operator=(Scratch&& other) noexcept {
        data_ = std::move(other.data_);
        size_ = other.size_;
        return *this;
    }
    ~Scratch() {
        if (data_ && size_ <= kKeptScratch && size_ > kept_scratch.size) {
            kept_scratch.data = std::move(data_);
            kept_scratch.size = size_;
        }
    }
    std::uint8_t* get() const { return data_.get(); }

private:
    std::unique_ptr<std::uint8_t[]> data_;
    std::size_t size_ = 0;
};

bool multiply_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* product) {
    return __builtin_mul_overflow(a, b, product);
}

// ---- dense shuffled floats straight from the file -----------------------------------------
// codl's writer stores the byte planes that do not compress (the low mantissa bytes) as DEFLATE
// stored blocks at the start of the values stream, then the compressible planes as one
// compressed run that refers to nothing before it. Inflating the stored blocks is a copy into a
// scratch buffer the size of the tensor (page faults, then a second pass to unshuffle it). This
// path unshuffles the stored bytes from the file itself, inflates only the compressed tail into
// a scratch of its own size, and unshuffles both into the output in cache-sized chunks.
//
// It is an optimisation, never a second parser with its own verdicts: it takes only streams
// whose every piece checks out (stored blocks with LEN == ~NLEN inside the stream and inside
// raw_size, a tail that inflates alone to exactly the remaining bytes using every input byte);
// anything else (a tail that refers back into the stored bytes, a corrupt stream) returns false
// and the caller decodes the ordinary way, which reports the error.
struct Segment {
    std::size_t raw_offset;  // where its bytes sit in the inflated stream
    const std::uint8_t* data;
    std::size_t size;
};

bool leading_stored_blocks(const std::uint8_t* in, std::size_t n, std::size_t raw_size, std::vector<Segment>* segments,
                           std::size_t* consumed, std::size_t* produced, bool* final) {
    std::size_t pos = 0, raw = 0;
    *final = false;
    while (pos < n) {
        const std::uint8_t head = in[pos];
        if (head & 6) break;  // BTYPE != 00: the first compressed block, byte-aligned
        if (n - pos < 5) return false;
        const std::size_t len = in[pos + 1] | std::size_t{in[pos + 2]} << 8;
        const std::size_t nlen = in[pos + 3] | std::size_t{in[pos + 4]} << 8;
        if ((len ^ nlen) != 0xFFFF || n - pos - 5 < len || raw_size - raw < len) return false;
        if (len) segments->push_back({raw, in + pos + 5, len});
        raw += len;
        pos += 5 + len;
        if (head & 1) {
            *final = true;
            break;
        }
    }
    *consumed = pos;
    *produced = raw;
    return true;
}

// Copies raw bytes [offset, offset + size) of the segmented stream to dst; *cursor remembers
// the segment of the last call (reads advance).
void copy_raw(const std::vector<Segment>& segments, std::size_t* cursor, std::size_t offset, std::size_t size,
              std::uint8_t* dst) {
    std::size_t k = *cursor;
    while (segments[k].raw_offset + segments[k].size <= offset) ++k;
    *cursor = k;
    while (size) {
        const Segment& seg = segments[k];
        const std::size_t skip = offset - seg.raw_offset;
        const std::size_t take = std::min(size, seg.size - skip);
        std::memcpy(dst, seg.data + skip, take);
        dst += take;
        offset += take;
        size -= take;
        ++k;
    }
}

bool decode_shuffled_from_file(const Stream& s, std::size_t count, std::size_t itemsize, std::uint8_t* out,
                               Backend backend) {
    std::vector<Segment> segments;
    std::size_t consumed = 0, produced = 0;
    bool final = false;
    if (!leading_stored_blocks(s.data, s.size, s.raw_size, &segments, &consumed, &produced, &final)) return false;
    if (segments.empty() && !final) return false;  // nothing stored: the ordinary path is as good
    Scratch tail;
    if (final) {
        if (consumed != s.size || produced != s.raw_size) return false;
    } else {
        const std::size_t rest = s.raw_size - produced;
        if (rest == 0) return false;  // a compressed block producing nothing: not codl's layout
        tail = Scratch(rest);
        if (inflate_raw(s.data + consumed, s.size - consumed, tail.get(), rest, backend) != Status::ok) return false;
        segments.push_back({produced, tail.get(), rest});
    }
    // Chunks of elements small enough that their planes stay in L1/L2 while they are unshuffled.
    constexpr std::size_t kChunk = 8192;
    std::unique_ptr<std::uint8_t[]> planes(new std::uint8_t[kChunk * itemsize]);
    std::vector<std::size_t> cursors(itemsize, 0);
    for (std::size_t first = 0; first < count; first += kChunk) {
        const std::size_t m = std::min(kChunk, count - first);
        for (std::size_t b = 0; b < itemsize; ++b) {
            copy_raw(segments, &cursors[b], b * count + first, m, planes.get() + b * m);
        }
        unshuffle_bytes(planes.get(), m, itemsize, out + first * itemsize);
    }
    return true;
}

}  // namespace

void advise_huge_pages([[maybe_unused]] void* data, [[maybe_unused]] std::size_t size,
                       [[maybe_unused]] std::size_t at_least) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr std::uintptr_t kHugePage = std::uintptr_t{1} << 21;
    if (size < at_least) return;
    const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
    const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(data) + size) & ~(kHugePage - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

const char* status_message(Status status) {
    switch (status) {
        case Status::ok: return "ok";
        case Status::crc_mismatch: return "CRC32 mismatch (the stored bytes are corrupt)";
        case Status::inflate_corrupt: return "not a valid raw DEFLATE stream";
        case Status::inflate_too_long: return "the DEFLATE stream inflates to more than its recorded size";
        case Status::inflate_too_short: return "the DEFLATE stream ends before its recorded size";
        case Status::inflate_trailing: return "bytes follow the end of the DEFLATE stream";
        case Status::positions_truncated: return "a position's varint is cut short";
        case Status::positions_range: return "a position falls outside the tensor";
        case Status::positions_trailing: return "bytes follow the last position";
        case Status::index_range: return "a codebook index is not below the codebook size";
        case Status::ternary_code: return "a 2-bit ternary field holds 0b11, which is no code";
        case Status::size_mismatch: return "the stream's size disagrees with the tensor's";
        case Status::no_codec: return "codl was built without zlib: no DEFLATE codec in the core";
        case Status::bad_request: return "impossible decode request";
    }
    return "unknown status";
}

const char* field_name(Field field) {
    switch (field) {
        case Field::none: return "";
        case Field::positions: return "positions";
        case Field::values: return "values";
        case Field::table: return "table";
    }
    return "";
}

bool backend_available(Backend backend) {
    switch (resolve(backend)) {
#if CODL_HAVE_ZLIB
        case Backend::zlib: return true;
#endif
#if CODL_HAVE_LIBDEFLATE
        case Backend::libdeflate: return true;
#endif
        default: return false;
    }
}

const char* backend_name(Backend backend) {
    if (!backend_available(backend)) return "none";
    return resolve(backend) == Backend::libdeflate ? "libdeflate" : "zlib";
}

std::size_t deflate_bound(std::size_t n) {
    // Above both zlib's conservative bound for any parameters (n + n/8 + n/64 + 5) and
    // libdeflate's (n + 5 bytes per block of at least ~10 KB + 9).
    return n + (n >> 3) + (n >> 6) + 64;
}

// Parameters go unused in a build without a codec.
std::size_t deflate_raw([[maybe_unused]] const std::uint8_t* in, std::size_t n, [[maybe_unused]] std::uint8_t* out,
                        std::size_t capacity, int level, Backend backend) {
    if (capacity < deflate_bound(n) || level < 0 || level > 12 || !backend_available(backend)) return 0;
    switch (resolve(backend)) {
#if CODL_HAVE_LIBDEFLATE
        case Backend::libdeflate: {
            std::unique_ptr<libdeflate_compressor, CompressorDeleter> compressor(libdeflate_alloc_compressor(level));
            if (!compressor) return 0;
            return libdeflate_deflate_compress(compressor.get(), in, n, out, capacity);
        }
#endif
#if CODL_HAVE_ZLIB
        case Backend::zlib: return zlib_deflate(in, n, out, capacity, level);
#endif
        default: return 0;
    }
}

Status inflate_raw([[maybe_unused]] const std::uint8_t* in, [[maybe_unused]] std::size_t n,
                   [[maybe_unused]] std::uint8_t* out, [[maybe_unused]] std::size_t raw_size, Backend backend) {
    if (!backend_available(backend)) return Status::no_codec;
    switch (resolve(backend)) {
#if CODL_HAVE_LIBDEFLATE
        case Backend::libdeflate: return libdeflate_inflate(in, n, out, raw_size);
#endif
#if CODL_HAVE_ZLIB
        case Backend::zlib: return zlib_inflate(in, n, out, raw_size);
#endif
        default: return Status::no_codec;
    }
}

std::uint32_t crc32(const std::uint8_t* data, std::size_t n, std::uint32_t crc) {
#if CODL_HAVE_LIBDEFLATE
    return libdeflate_crc32(crc, data, n);  // carry-less multiply: several GB/s
#elif CODL_HAVE_ZLIB
    uLong c = crc;
    for (std::size_t done = 0; done < n;) {
        const std::size_t chunk = std::min(n - done, kZlibChunk);
        c = ::crc32(c, data + done, static_cast<uInt>(chunk));
        done += chunk;
    }
    return static_cast<std::uint32_t>(c);
#else
    return software_crc32(data, n, crc);
#endif
}

Status decode_tensor(const TensorRecord& r, void* out, Field* failed, Backend backend) {
    *failed = Field::none;
    auto fail = [&](Field field, Status status) {
        *failed = field;
        return status;
    };
    // Sizes the header implies, checked before anything is allocated or inflated.
    if (r.count > r.numel || (!r.sparse && r.count != r.numel)) return fail(Field::values, Status::size_mismatch);
    if (r.sparse) {
        std::uint64_t most = 0;  // each position takes 1 to kMaxVarintBytes bytes
        if (r.positions.raw_size < r.count ||
            (!multiply_overflows(r.count, kMaxVarintBytes, &most) && r.positions.raw_size > most)) {
            return fail(Field::positions, Status::size_mismatch);
        }
    }
    std::uint64_t values_bytes = 0, table_bytes = 0, out_bytes = 0;
    switch (r.encoding) {
        case Encoding::raw:
            if (r.itemsize == 0 || r.itemsize > 8 || (r.itemsize & (r.itemsize - 1))) return Status::bad_request;
            if (multiply_overflows(r.count, r.itemsize, &values_bytes) ||
                multiply_overflows(r.numel, r.itemsize, &out_bytes)) {
                return fail(Field::values, Status::size_mismatch);
            }
            break;
        case Encoding::codebook:
        case Encoding::linear: {
            const bool codebook = r.encoding == Encoding::codebook;
            if (r.width < 1 || r.width > 8 || r.bits < 1 || r.bits > r.width) return Status::bad_request;
            if (r.count >> 60) return fail(Field::values, Status::size_mismatch);
            values_bytes = packed_field_bytes(r.count, r.width);
            if (codebook) {
                const std::uint64_t entries = r.table.raw_size / 4;
                if (r.table.raw_size % 4 || entries == 0 || entries > (std::uint64_t{1} << r.bits)) {
                    return fail(Field::table, Status::size_mismatch);
                }
                table_bytes = r.table.raw_size;
            } else {
                if (r.numel > 0 && (r.rows == 0 || r.numel % r.rows)) return Status::bad_request;
                if (multiply_overflows(r.rows, 4, &table_bytes)) return fail(Field::table, Status::size_mismatch);
            }
            if (multiply_overflows(r.numel, 4, &out_bytes)) return fail(Field::values, Status::size_mismatch);
            break;
        }
        case Encoding::ternary:
            if (r.sparse) return Status::bad_request;
            if (r.numel > 0 && (r.rows == 0 || r.numel % r.rows)) return Status::bad_request;
            values_bytes = packed_ternary2_bytes(r.numel);
            if (multiply_overflows(r.rows, 4, &table_bytes) || multiply_overflows(r.numel, 4, &out_bytes)) {
                return fail(Field::table, Status::size_mismatch);
            }
            break;
        default: return Status::bad_request;
    }
    if (r.values.raw_size != values_bytes) return fail(Field::values, Status::size_mismatch);
    if (r.encoding != Encoding::raw && r.table.raw_size != table_bytes) return fail(Field::table, Status::size_mismatch);

    advise_huge_pages(out, out_bytes);
    // Every stream is checked and inflated before the output is touched.
    struct Inflated {
        const std::uint8_t* data = nullptr;
        Scratch owned;
    };
    bool values_crc_checked = false;  // set by the shuffled fast path below
    auto inflate_stream = [&](const Stream& s, Field field, Inflated* result, std::uint8_t* destination) -> Status {
        if (!r.compressed) {
            if (s.size != s.raw_size) return fail(field, Status::size_mismatch);
            result->data = s.data;
            return Status::ok;
        }
        const bool checked = values_crc_checked && &s == &r.values;
        if (!checked && crc32(s.data, s.size) != s.crc32) return fail(field, Status::crc_mismatch);
        if (destination == nullptr) {
            result->owned = Scratch(s.raw_size);
            destination = result->owned.get();
        }
        const Status status = inflate_raw(s.data, s.size, destination, s.raw_size, backend);
        if (status != Status::ok) return fail(field, status);
        result->data = destination;
        return Status::ok;
    };

    Inflated positions, values, table;
    Status status;
    if (r.sparse && (status = inflate_stream(r.positions, Field::positions, &positions, nullptr)) != Status::ok) {
        return status;
    }
    if (r.encoding != Encoding::raw &&
        (status = inflate_stream(r.table, Field::table, &table, nullptr)) != Status::ok) {
        return status;
    }
    // Dense shuffled floats: the stored planes are unshuffled from the file, only the
    // compressed tail is inflated (falls through to the ordinary path if that does not apply).
    if (r.encoding == Encoding::raw && !r.sparse && r.shuffle && r.itemsize > 1 && r.compressed && r.count > 0) {
        if (crc32(r.values.data, r.values.size) != r.values.crc32) return fail(Field::values, Status::crc_mismatch);
        values_crc_checked = true;
        if (decode_shuffled_from_file(r.values, r.count, r.itemsize, static_cast<std::uint8_t*>(out), backend)) {
            return Status::ok;
        }
    }
    // Dense raw values without a shuffle inflate straight into the output.
    const bool direct = r.encoding == Encoding::raw && !r.sparse && !r.shuffle && r.compressed;
    if ((status = inflate_stream(r.values, Field::values, &values, direct ? static_cast<std::uint8_t*>(out) : nullptr)) !=
        Status::ok) {
        return status;
    }

    const std::uint8_t* pos = r.sparse ? positions.data : nullptr;
    const std::size_t pos_size = r.sparse ? r.positions.raw_size : 0;
    switch (r.encoding) {
        case Encoding::raw: {
            const std::uint8_t* v = values.data;
            Scratch unshuffled;
            if (r.shuffle && r.itemsize > 1) {
                std::uint8_t* target = static_cast<std::uint8_t*>(out);
                if (r.sparse) {
                    unshuffled = Scratch(values_bytes);
                    target = unshuffled.get();
                }
                unshuffle_bytes(v, r.count, r.itemsize, target);
                v = target;
            }
            if (!r.sparse) {
                if (v != out) std::memcpy(out, v, out_bytes);
                return Status::ok;
            }
            status = scatter_raw(v, r.itemsize, r.count, pos, pos_size, r.numel, static_cast<std::uint8_t*>(out));
            return status == Status::ok ? status : fail(Field::positions, status);
        }
        case Encoding::codebook: {
            // The codebook is copied out of the byte stream: it need not be float-aligned.
            float codebook[256];
            std::memcpy(codebook, table.data, table_bytes);
            status = dequantize_codebook_f32(values.data, r.width, r.count, codebook, table_bytes / 4, pos,
                                             pos_size, r.numel, static_cast<float*>(out));
            return status == Status::ok ? status : fail(status == Status::index_range ? Field::values : Field::positions, status);
        }
        case Encoding::linear: {
            std::unique_ptr<float[]> scales(new float[std::max<std::uint64_t>(r.rows, 1)]);
            std::memcpy(scales.get(), table.data, table_bytes);
            status = dequantize_linear_f32(values.data, r.width, r.bits, r.count, scales.get(), r.rows, pos,
                                           pos_size, r.numel, static_cast<float*>(out));
            return status == Status::ok ? status : fail(Field::positions, status);
        }
        case Encoding::ternary: {
            if (r.numel == 0) return Status::ok;
            std::unique_ptr<std::int8_t[]> codes(new std::int8_t[r.numel]);
            if (!unpack_ternary2(values.data, r.numel, codes.get())) return fail(Field::values, Status::ternary_code);
            const std::uint64_t row_size = r.numel / r.rows;
            float* o = static_cast<float*>(out);
            for (std::uint64_t row = 0; row < r.rows; ++row) {
                float alpha;
                std::memcpy(&alpha, table.data + 4 * row, 4);
                const std::int8_t* c = codes.get() + row * row_size;
                float* orow = o + row * row_size;
                for (std::uint64_t j = 0; j < row_size; ++j) orow[j] = static_cast<float>(c[j]) * alpha;
            }
            return Status::ok;
        }
    }
    return Status::bad_request;
}

// ---- format 2: byte planes ------------------------------------------------------------------
namespace {

template <typename T>
T rotate_left(T v, int k) {
    constexpr int bits = 8 * sizeof(T);
    return static_cast<T>(static_cast<T>(v << k) | static_cast<T>(v >> (bits - k)));
}

template <typename T>
void split_typed(const std::uint8_t* in, std::size_t count, bool sign_last, std::uint8_t* planes) {
    constexpr std::size_t size = sizeof(T);
    for (std::size_t i = 0; i < count; ++i) {
        T v;
        std::memcpy(&v, in + i * size, size);
        if (sign_last) v = rotate_left<T>(v, 1);
        for (std::size_t k = 0; k < size; ++k) planes[k * count + i] = static_cast<std::uint8_t>(v >> (8 * k));
    }
}

// One 16/32/64-bit store per element from the planes (the loops vectorise).
template <typename T>
void join_typed(const std::uint8_t* const* planes, std::size_t count, bool sign_last, std::uint8_t* out) {
    constexpr std::size_t size = sizeof(T);
    constexpr int back = 8 * size - 1;  // rotating right by one is rotating left by bits - 1
    if constexpr (size == 2) {
        const std::uint8_t *p0 = planes[0], *p1 = planes[1];
        for (std::size_t i = 0; i < count; ++i) {
            T v = static_cast<T>(p0[i] | p1[i] << 8);
            if (sign_last) v = rotate_left<T>(v, back);
            std::memcpy(out + size * i, &v, size);
        }
    } else if constexpr (size == 4) {
        const std::uint8_t *p0 = planes[0], *p1 = planes[1], *p2 = planes[2], *p3 = planes[3];
        for (std::size_t i = 0; i < count; ++i) {
            T v = static_cast<T>(p0[i]) | static_cast<T>(p1[i]) << 8 | static_cast<T>(p2[i]) << 16 |
                  static_cast<T>(p3[i]) << 24;
            if (sign_last) v = rotate_left<T>(v, back);
            std::memcpy(out + size * i, &v, size);
        }
    } else {
        for (std::size_t i = 0; i < count; ++i) {
            T v = 0;
            for (std::size_t k = 0; k < size; ++k) v |= static_cast<T>(planes[k][i]) << (8 * k);
            if (sign_last) v = rotate_left<T>(v, back);
            std::memcpy(out + size * i, &v, size);
        }
    }
}

bool plane_itemsize(std::size_t itemsize) { return itemsize == 2 || itemsize == 4 || itemsize == 8; }

}  // namespace

void split_planes(const std::uint8_t* in, std::size_t count, std::size_t itemsize, bool sign_last,
                  std::uint8_t* planes) {
    switch (itemsize) {
        case 2: return split_typed<std::uint16_t>(in, count, sign_last, planes);
        case 4: return split_typed<std::uint32_t>(in, count, sign_last, planes);
        case 8: return split_typed<std::uint64_t>(in, count, sign_last, planes);
        default: shuffle_bytes(in, count, itemsize, planes);  // no rotation below 2 bytes
    }
}

void join_planes(const std::uint8_t* const* planes, std::size_t count, std::size_t itemsize, bool sign_last,
                 std::uint8_t* out) {
    switch (itemsize) {
        case 2: return join_typed<std::uint16_t>(planes, count, sign_last, out);
        case 4: return join_typed<std::uint32_t>(planes, count, sign_last, out);
        case 8: return join_typed<std::uint64_t>(planes, count, sign_last, out);
        default:
            for (std::size_t i = 0; i < count; ++i) {
                for (std::size_t k = 0; k < itemsize; ++k) out[i * itemsize + k] = planes[k][i];
            }
    }
}

Status decode_planes(const Stream* planes, std::size_t itemsize, std::size_t count, bool sign_last,
                     std::uint8_t* out, std::size_t* failed_plane, Backend backend) {
    const PlaneChunk chunk{planes, count, out};
    std::size_t failed_chunk = 0;
    return decode_plane_chunks(&chunk, 1, itemsize, sign_last, &failed_chunk, failed_plane, backend);
}

Status decode_plane_chunks(const PlaneChunk* chunks, std::size_t n_chunks, std::size_t itemsize, bool sign_last,
                           std::size_t* failed_chunk, std::size_t* failed_plane, Backend backend) {
    *failed_chunk = 0;
    *failed_plane = 0;
    if (!plane_itemsize(itemsize)) return Status::bad_request;
    auto fail = [&](std::size_t c, std::size_t k, Status status) {
        *failed_chunk = c;
        *failed_plane = k;
        return status;
    };
    for (std::size_t c = 0; c < n_chunks; ++c) {
        for (std::size_t k = 0; k < itemsize; ++k) {
            if (chunks[c].planes[k].raw_size != chunks[c].count) return fail(c, k, Status::size_mismatch);
        }
    }
    for (std::size_t c = 0; c < n_chunks; ++c) {
        for (std::size_t k = 0; k < itemsize; ++k) {
            const Stream& s = chunks[c].planes[k];
            if (crc32(s.data, s.size) != s.crc32) return fail(c, k, Status::crc_mismatch);
        }
    }
    // Each plane as segments: a stored-only stream's blocks in place, or its inflated bytes.
    std::vector<std::vector<Segment>> segments(n_chunks * itemsize);
    std::vector<std::size_t> inflated;  // planes (c * itemsize + k) that need the scratch, in order
    std::size_t scratch_bytes = 0;
    for (std::size_t p = 0; p < segments.size(); ++p) {
        const Stream& s = chunks[p / itemsize].planes[p % itemsize];
        std::size_t consumed = 0, produced = 0;
        bool final = false;
        if (leading_stored_blocks(s.data, s.size, s.raw_size, &segments[p], &consumed, &produced, &final) && final &&
            consumed == s.size && produced == s.raw_size) {
            continue;
        }
        segments[p].clear();
        inflated.push_back(p);
        scratch_bytes += s.raw_size;
    }
    // The Huffman-coded planes (in practice each chunk's exponent plane) two at a time through
    // inflate_literals' interleaved loop; whatever it does not take, zlib or libdeflate inflates
    // and judges.
    Scratch buffer(scratch_bytes);
    std::vector<LiteralStream> streams(inflated.size());
    for (std::size_t j = 0, offset = 0; j < inflated.size(); ++j) {
        const Stream& s = chunks[inflated[j] / itemsize].planes[inflated[j] % itemsize];
        streams[j] = {s.data, s.size, buffer.get() + offset, s.raw_size};
        offset += s.raw_size;
    }
    std::unique_ptr<bool[]> decoded(new bool[std::max<std::size_t>(inflated.size(), 1)]);
    inflate_literals(streams.data(), streams.size(), decoded.get());
    for (std::size_t j = 0; j < inflated.size(); ++j) {
        const std::size_t p = inflated[j];
        const LiteralStream& s = streams[j];
        if (!decoded[j]) {
            const Status status = inflate_raw(s.in, s.size, s.out, s.raw_size, backend);
            if (status != Status::ok) return fail(p / itemsize, p % itemsize, status);
        }
        segments[p].push_back({0, s.out, s.raw_size});
    }
    // Pieces of elements small enough that their planes stay in L1 while they are joined.
    constexpr std::size_t kPiece = 8192;
    std::unique_ptr<std::uint8_t[]> piece(new std::uint8_t[kPiece * itemsize]);
    std::vector<std::size_t> cursors(itemsize);
    const std::uint8_t* pointers[8];
    for (std::size_t c = 0; c < n_chunks; ++c) {
        const std::size_t count = chunks[c].count;
        const std::vector<Segment>* chunk_segments = segments.data() + c * itemsize;
        std::fill(cursors.begin(), cursors.end(), 0);
        for (std::size_t first = 0; first < count; first += kPiece) {
            const std::size_t m = std::min(kPiece, count - first);
            for (std::size_t k = 0; k < itemsize; ++k) {
                const std::vector<Segment>& segs = chunk_segments[k];
                std::size_t i = cursors[k];
                while (segs[i].raw_offset + segs[i].size <= first) ++i;  // the segments cover [0, count)
                cursors[k] = i;
                if (first + m <= segs[i].raw_offset + segs[i].size) {  // inside one segment: read in place
                    pointers[k] = segs[i].data + (first - segs[i].raw_offset);
                    continue;
                }
                copy_raw(segs, &cursors[k], first, m, piece.get() + k * m);
                pointers[k] = piece.get() + k * m;
            }
            join_planes(pointers, m, itemsize, sign_last, chunks[c].out + first * itemsize);
        }
    }
    return Status::ok;
}

Status decode_planes_ref(const Stream* planes, std::size_t itemsize, std::size_t count, bool sign_last,
                         std::uint8_t* out, std::size_t* failed_plane, Backend backend) {
    *failed_plane = 0;
    if (!plane_itemsize(itemsize)) return Status::bad_request;
    std::vector<std::vector<std::uint8_t>> bytes(itemsize);
    for (std::size_t k = 0; k < itemsize; ++k) {
        *failed_plane = k;
        if (planes[k].raw_size != count) return Status::size_mismatch;
        if (crc32(planes[k].data, planes[k].size) != planes[k].crc32) return Status::crc_mismatch;
        bytes[k].resize(std::max<std::size_t>(count, 1));
        const Status status = inflate_raw(planes[k].data, planes[k].size, bytes[k].data(), count, backend);
        if (status != Status::ok) return status;
    }
    *failed_plane = 0;
    for (std::size_t i = 0; i < count; ++i) {
        std::uint64_t v = 0;
        for (std::size_t k = 0; k < itemsize; ++k) v |= std::uint64_t{bytes[k][i]} << (8 * k);
        if (sign_last) {  // the sign comes back from bit 0 to the top bit
            const std::uint64_t sign = v & 1;
            v = (v >> 1) | (sign << (8 * itemsize - 1));
        }
        for (std::size_t k = 0; k < itemsize; ++k) out[i * itemsize + k] = static_cast<std::uint8_t>(v >> (8 * k));
    }
    return Status::ok;
}

}  // namespace codl::format
