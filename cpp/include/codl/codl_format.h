// The .codl model format's core (docs/format.md has the file layout): raw DEFLATE streams
// (RFC 1951) through zlib or libdeflate, which read each other's streams; the bit packing,
// position coding and byte-plane shuffle of stored tensors; and the decode path that turns one
// tensor's streams into its dense values (inflate, unpack, dequantize, scatter).
//
// Nothing here trusts its input: every decoder is told the exact size its output must have
// and fails with a Status, never reading or writing outside the buffers it was given.
#pragma once

#include <cstddef>
#include <cstdint>

namespace codl::format {

enum class Status : int {
    ok = 0,
    crc_mismatch,         // the stream's CRC32 differs from the one recorded
    inflate_corrupt,      // not a valid raw DEFLATE stream
    inflate_too_long,     // the stream inflates to more than the recorded size
    inflate_too_short,    // the stream ends before the recorded size
    inflate_trailing,     // bytes follow the end of the DEFLATE stream
    positions_truncated,  // a position's varint is cut short
    positions_range,      // a position falls at or past the tensor's end (or overflows)
    positions_trailing,   // bytes follow the last position
    index_range,          // a codebook index is not below the codebook's size
    ternary_code,         // a 2-bit ternary field holds 0b11
    size_mismatch,        // a stream's size disagrees with what the tensor needs
    no_codec,             // built without zlib: the caller must inflate
    bad_request,          // the caller passed an impossible combination (a bug, not the file)
};
const char* status_message(Status status);

// ---- DEFLATE ------------------------------------------------------------------------------
enum class Backend : int { best = 0, zlib = 1, libdeflate = 2 };

bool backend_available(Backend backend);
const char* backend_name(Backend backend);  // "zlib", "libdeflate"; best names what it picks
// Largest raw DEFLATE output of n input bytes, for any level of any backend.
std::size_t deflate_bound(std::size_t n);
// Raw DEFLATE of in[0, n) into out[0, capacity) at `level` (0-12; zlib stops at 9). Returns
// the compressed size, or 0 if the backend is missing or capacity < deflate_bound(n).
std::size_t deflate_raw(const std::uint8_t* in, std::size_t n, std::uint8_t* out,
                        std::size_t capacity, int level, Backend backend = Backend::best);
// Inflates exactly raw_size bytes into out: ok only if the stream is valid, produces exactly
// raw_size bytes and uses every input byte. Never writes past out + raw_size.
Status inflate_raw(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size,
                   Backend backend = Backend::best);
std::uint32_t crc32(const std::uint8_t* data, std::size_t n, std::uint32_t crc = 0);
// Literal-only DEFLATE of in[0, n) (cpp/core/deflate_literals.cpp): pieces of block_bytes,
// each merged into the block before it when one code for both costs no more bits; each block
// one order-0 Huffman code of at most 15 bits, or stored blocks where those are not larger. Any zlib inflates it; inflate_literals decodes
// it fast. Returns the size written into out[0, capacity), 0 if it does not fit (with blocks of
// 1024 bytes or more, deflate_bound(n) always does). Needs no zlib.
constexpr std::size_t kLiteralBlockBytes = std::size_t{1} << 15;
std::size_t deflate_literals(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t capacity,
                             std::size_t block_bytes = kLiteralBlockBytes);
// The fast path for the literal-only streams codl writes for byte planes (Huffman-only, stored
// or fixed blocks; cpp/core/inflate_literals.cpp): several literals per table lookup. True only
// when the stream is valid and inflates to exactly raw_size bytes using every input byte; false
// for anything else (a length code, a corrupt or odd stream), and the caller then inflates it
// with inflate_raw, whose Status stands. Needs no zlib. Never reads or writes out of bounds.
bool inflate_literals(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t raw_size);
// Several streams, decoded two at a time in one interleaved loop (one stream's lookups wait on
// each other; two streams' do not): succeeded[i] as inflate_literals' result for stream i.
struct LiteralStream {
    const std::uint8_t* in;
    std::size_t size;
    std::uint8_t* out;
    std::size_t raw_size;
};
void inflate_literals(const LiteralStream* streams, std::size_t count, bool* succeeded);

// A fresh output buffer is mostly page faults: with 4 KB pages, faulting in 90 MB took 38-46 ms
// here against 9-11 ms with 2 MB pages (more than decoding it). Asks for transparent huge pages
// on the buffer's 2 MB-aligned interior, before it is first written, if it holds at least
// `at_least` bytes. Only a hint (Linux; a no-op elsewhere or where THP is off).
void advise_huge_pages(void* data, std::size_t size, std::size_t at_least = std::size_t{4} << 21);

// ---- kernels (scalar references in cpp/kernels/generic/bitpack_ref.cpp) -------------------
// Fields of `width` bits (1..8), LSB first: field i occupies bits [i*width, (i+1)*width) of
// the little-endian bit string; padding bits of the last byte are 0.
constexpr std::size_t packed_field_bytes(std::size_t n, int width) {
    return (n * static_cast<std::size_t>(width) + 7) / 8;
}
// Returns false if a value does not fit in `width` bits.
bool pack_fields(const std::uint8_t* values, std::size_t n, int width, std::uint8_t* packed);
void unpack_fields(const std::uint8_t* packed, std::size_t n, int width, std::uint8_t* values);

// Sparse positions, strictly increasing, as LEB128 varints of gaps: the first position itself,
// then (p[i] - p[i-1] - 1). At most kMaxVarintBytes bytes per position.
constexpr std::size_t kMaxVarintBytes = 10;
// Returns the bytes written (out must hold count * kMaxVarintBytes), or SIZE_MAX if the
// positions are not strictly increasing.
std::size_t encode_positions(const std::uint64_t* positions, std::size_t count, std::uint8_t* out);
// Exactly `count` positions, each < numel, using every byte of in[0, size).
Status decode_positions(const std::uint8_t* in, std::size_t size, std::size_t count,
                        std::uint64_t numel, std::uint64_t* positions);

// Byte-plane shuffle of n elements of `itemsize` bytes: plane b holds byte b of every element
// (floats' sign/exponent bytes then sit together, which DEFLATE compresses far better).
void shuffle_bytes(const std::uint8_t* in, std::size_t n, std::size_t itemsize, std::uint8_t* out);
void unshuffle_bytes(const std::uint8_t* in, std::size_t n, std::size_t itemsize, std::uint8_t* out);

// ---- one tensor ----------------------------------------------------------------------------
enum class Encoding : int { raw = 0, codebook = 1, linear = 2, ternary = 3 };

struct Stream {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;      // bytes at data
    std::size_t raw_size = 0;  // bytes it inflates to
    std::uint32_t crc32 = 0;   // of the `size` stored bytes
};

// ---- format 2: byte planes in streams of their own -------------------------------------------
// A dense float tensor is stored in chunks of elements; a chunk's `itemsize` byte planes are each a
// DEFLATE stream of its own (plane k: byte k of every element, `count` bytes). With `sign_last` each
// element's bits were rotated left by one first: the sign moves to bit 0, so the top plane of a
// float32 or bfloat16 is exactly its 8 exponent bits (ZipNN's bit reordering), which an order-0
// Huffman code takes to their entropy, and the planes below hold mantissa bits (and the sign).
//
// split_planes: in[count * itemsize] -> planes[itemsize * count], plane k at planes + k * count.
void split_planes(const std::uint8_t* in, std::size_t count, std::size_t itemsize, bool sign_last,
                  std::uint8_t* planes);
// Joins the planes back: out[count * itemsize]. (split_planes' inverse; planes[k] has count bytes.)
void join_planes(const std::uint8_t* const* planes, std::size_t count, std::size_t itemsize, bool sign_last,
                 std::uint8_t* out);
// Decodes one chunk: every plane's CRC32 is checked and every plane inflated (raw_size must be
// `count`) before out is written. Planes that are DEFLATE stored blocks only are copied from the
// stream's bytes in cache-sized pieces; the others are inflated into a scratch buffer. On failure
// *failed_plane names the plane and out is untouched. itemsize is 2, 4 or 8.
Status decode_planes(const Stream* planes, std::size_t itemsize, std::size_t count, bool sign_last,
                     std::uint8_t* out, std::size_t* failed_plane, Backend backend = Backend::best);
// Several chunks in one call, of one tensor or of several (the same itemsize and sign_last):
// chunk c's `itemsize` planes decode into its `count` elements at its `out`. The Huffman-coded
// planes of different chunks are decoded two at a time (inflate_literals' interleaved loop,
// ~1.5x one at a time). Every check of every chunk passes before any out is written; on
// failure *failed_chunk and *failed_plane name the stream.
struct PlaneChunk {
    const Stream* planes;  // itemsize streams
    std::size_t count;
    std::uint8_t* out;     // count * itemsize bytes
};
Status decode_plane_chunks(const PlaneChunk* chunks, std::size_t n_chunks, std::size_t itemsize, bool sign_last,
                           std::size_t* failed_chunk, std::size_t* failed_plane, Backend backend = Backend::best);
// The reference decode_planes is tested against: every plane inflated whole, then joined byte by
// byte and rotated back one bit at a time.
Status decode_planes_ref(const Stream* planes, std::size_t itemsize, std::size_t count, bool sign_last,
                         std::uint8_t* out, std::size_t* failed_plane, Backend backend = Backend::best);

// What a tensor's header says, already checked for consistency by the caller (the Python
// reader): the decoder re-checks every size it relies on and reports size_mismatch.
struct TensorRecord {
    Encoding encoding = Encoding::raw;
    std::uint64_t numel = 0;
    std::uint64_t count = 0;  // stored values: numel, or the kept ones when sparse
    bool sparse = false;
    std::size_t itemsize = 4;  // raw: bytes per element of the dtype
    bool shuffle = false;      // raw: the values stream is byte-plane shuffled
    int bits = 0;              // codebook: index bits; linear: code = field - 2^(bits-1)
    int width = 8;             // codebook/linear: bits per stored field, bits <= width <= 8
    std::uint64_t rows = 1;    // linear/ternary: channels along dimension 0 (numel % rows == 0)
    bool compressed = true;    // false: streams hold the inflated bytes (size == raw_size)
    Stream positions, values, table;
};

// Which stream a failure concerns, for the error message.
enum class Field : int { none = 0, positions = 1, values = 2, table = 3 };
const char* field_name(Field field);

// Decodes a tensor into out: numel * itemsize bytes for raw, numel float32 otherwise. CRCs are
// checked before inflating. On failure `*failed` names the stream and out is unspecified.
Status decode_tensor(const TensorRecord& record, void* out, Field* failed,
                     Backend backend = Backend::best);

// The scatter kernels decode_tensor ends with (exposed for tests and benchmarks). `fields` are
// packed at `width` bits; `positions` (sparse only) are the varint stream; out is zeroed first
// when sparse. Return index_range, positions_* or ok.
Status dequantize_codebook_f32(const std::uint8_t* fields, int width, std::uint64_t count,
                               const float* codebook, std::size_t codebook_size,
                               const std::uint8_t* positions, std::size_t positions_size,
                               std::uint64_t numel, float* out);
// value = (field - 2^(bits-1)) * scales[flat position / (numel / rows)]
Status dequantize_linear_f32(const std::uint8_t* fields, int width, int bits, std::uint64_t count,
                             const float* scales, std::uint64_t rows,
                             const std::uint8_t* positions, std::size_t positions_size,
                             std::uint64_t numel, float* out);
// Raw elements of `itemsize` bytes scattered to their positions in a zeroed out.
Status scatter_raw(const std::uint8_t* values, std::size_t itemsize, std::uint64_t count,
                   const std::uint8_t* positions, std::size_t positions_size, std::uint64_t numel,
                   std::uint8_t* out);

}  // namespace codl::format
