// Gradient codecs for compressed communication (codl.comm): the public entry points, which
// check nothing (the bindings do), split the work over threads on block boundaries and call the
// selected ISA's kernels. Payload layouts, all little endian (docs/comm.md draws them):
//
//  int8:     nblocks float32 scales (max|v| / 127 of each block of `block` values), then n int8
//            codes round_half_even(v * (127 / max|v|)); decode code * scale. A block with
//            max|v| < 127 / FLT_MAX (the quotient overflows) gets scale 0 and codes 0.
//  sign:     nblocks float32 scales (mean |v| of the block, EF-SignSGD), then ceil(n / 8) bytes of
//            sign bits, bit i % 8 of byte i / 8 = signbit(v[i]) (pack_signs_f32's order); decode
//            -scale where the bit is set, else +scale. `block` is a multiple of 8.
//  terngrad: nblocks float32 scales s = max|v|, then ceil(n / 4) bytes of 2-bit fields c + 1 in
//            {0, 1, 2}, value i in bits 2 (i % 4) .. 2 (i % 4) + 1 of byte i / 4; decode c * s.
//            `block` is a multiple of 8.
//  qsgd:     nblocks float32 norms ||v||_2, then ceil(n * w / 8) bytes of w-bit fields, w =
//            bits(levels - 1) + 1, LSB first: the level l in 0 .. levels - 1 in the low w - 1
//            bits and the sign in the top bit; decode sign * norm * l / (levels - 1).
//            `block` is a multiple of 8.
//  topk:     uint32 count k, k uint32 indices (strictly increasing), k float32 values.
//
// v = x + error when an error buffer is given (error feedback, fused: error then holds
// v - decode(payload)), else v = x. Stochastic codecs draw u in [0, 1) for value i from the
// counter-based generator below, keyed by (seed, key, step) and the global index i.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codl/kernel_table.h"

namespace codl {

constexpr std::size_t comm_blocks(std::size_t n, std::size_t block) {
    return (n + block - 1) / block;
}
constexpr std::size_t int8_payload_bytes(std::size_t n, std::size_t block) {
    return 4 * comm_blocks(n, block) + n;
}
constexpr std::size_t sign_payload_bytes(std::size_t n, std::size_t block) {
    return 4 * comm_blocks(n, block) + (n + 7) / 8;
}
constexpr std::size_t terngrad_payload_bytes(std::size_t n, std::size_t block) {
    return 4 * comm_blocks(n, block) + (n + 3) / 4;
}
// Field width of a QSGD code: enough bits for levels - 1, plus the sign.
constexpr unsigned qsgd_field_bits(unsigned levels) {
    unsigned bits = 0;
    while ((1u << bits) < levels) ++bits;
    return bits + 1;
}
constexpr std::size_t qsgd_payload_bytes(std::size_t n, std::size_t block, unsigned levels) {
    return 4 * comm_blocks(n, block) + (n * qsgd_field_bits(levels) + 7) / 8;
}
constexpr std::size_t topk_payload_bytes(std::size_t k) { return 4 + 8 * k; }

// The kernel table: each call covers n values from a block
// boundary (the last block may be partial), writes that range's scales (unaligned: raw bytes)
// and codes, and returns false where v = x + error (or x when error is null) holds NaN or Inf.
// The sign codec's block scale is mean |v|, summed in a fixed order every ISA follows: local
// value i of a block goes to float lane i % 16 (lanes add in index order), then
// ref::sign_block_scale finishes the 16 lanes in double. `first` is the global index of x[0]
// (the counter of the stochastic codecs).
struct CommKernels {
    bool (*int8_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        std::uint8_t* scales, std::int8_t* codes);
    void (*int8_decode)(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                        std::size_t block, float* out, bool accumulate);
    bool (*sign_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        std::uint8_t* scales, std::uint8_t* bits);
    void (*sign_decode)(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                        std::size_t block, float* out, bool accumulate);
    bool (*terngrad_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                            std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                            std::uint8_t* codes);
    bool (*terngrad_decode)(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                            std::size_t block, float* out, bool accumulate);
    bool (*qsgd_encode)(const float* x, float* error, std::size_t n, std::size_t block,
                        unsigned levels, std::uint64_t stream, std::size_t first,
                        std::uint8_t* norms, std::uint8_t* codes);
    bool (*qsgd_decode)(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                        std::size_t block, unsigned levels, float* out, bool accumulate);
    // Top-k: v = error + (momentum ? (u = m * u + x) : x) stored in error (with no error buffer
    // only checked); false where v holds NaN or Inf.
    bool (*topk_accumulate)(const float* x, float* error, float* momentum, float m, std::size_t n);
    // How many |v[i]| >= threshold, and (gather) their indices plus base, in increasing order.
    std::size_t (*count_at_least)(const float* v, std::size_t n, float threshold);
    std::size_t (*gather_at_least)(const float* v, std::size_t n, float threshold,
                                   std::uint32_t base, std::uint32_t* indices);
};

namespace ref {
// mean |v| of a sign block from its 16 lane sums (see CommKernels); 127 / max|v| for an int8
// block (0 for an all-zero block and where the quotient overflows: such a block sends zeros).
float sign_block_scale(const float* lane_sums, std::size_t count);
float int8_inverse_scale(float max_abs);
// QSGD's scalar pieces, shared by every ISA so that all of them follow one order: the block norm
// ||x + error||_2 (error may be null), summed sequentially in double; false where it is not
// finite.
bool qsgd_block_norm(const float* x, const float* error, std::size_t m, float* norm);
// The bit writer: fields of `width` bits appended LSB first at `out`; `pending` holds the bits
// not yet stored. flush_fields stores the last partial byte.
struct FieldWriter {
    std::uint8_t* out;
    unsigned width;
    std::uint64_t pending;
    unsigned pending_bits;
};
void write_fields(FieldWriter& writer, const std::uint32_t* fields, std::size_t count);
void flush_fields(FieldWriter& writer);
}  // namespace ref

// Counter-based generator (splitmix64 finaliser, integer only, so every ISA draws the same
// numbers): stream = mix(mix(mix(seed) ^ key) ^ step); u_i = (mix(stream + i * golden) >> 40)
// * 2^-24, a uniform float in [0, 1) with 24 random bits.
std::uint64_t counter_stream(std::uint64_t seed, std::uint64_t key, std::uint64_t step);
float counter_uniform(std::uint64_t stream, std::uint64_t index);

// Encoders return false when v holds NaN or Inf (or a block sum overflows); the payload and
// error are then partly written. Decoders with accumulate add into out instead of overwriting.
bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* payload, int num_threads = 1);
void int8_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                 bool accumulate, int num_threads = 1);
bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* payload, int num_threads = 1);
void sign_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                 bool accumulate, int num_threads = 1);
bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::uint8_t* payload, int num_threads = 1);
// Returns false when a field holds 0b11, which no code maps to.
bool terngrad_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, float* out,
                     bool accumulate, int num_threads = 1);
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::uint8_t* payload, int num_threads = 1);
// Returns false when a level exceeds levels - 1.
bool qsgd_decode(const std::uint8_t* payload, std::size_t n, std::size_t block, unsigned levels,
                 float* out, bool accumulate, int num_threads = 1);

// Top-k sparsification with a sampled threshold (Deep Gradient Compression, Lin et al. 2018).
// With momentum (DGC's momentum correction) u = momentum_factor * u + x and v = error + u, else
// v = error + x (or x without error). Sends exactly k entries: the threshold is the k-th largest
// |v| of a random sample (`sample` values drawn from `stream`), raised or lowered until at least
// k and at most 4k values reach it (the sample is stratified: one uniform draw per n / sample
// stride), and the k largest of those (ties to the lower index) go out,
// in increasing index order. error and momentum are cleared where sent. Returns false on NaN/Inf.
bool topk_encode(const float* x, float* error, float* momentum, float momentum_factor,
                 std::size_t n, std::size_t k, std::size_t sample, std::uint64_t stream,
                 std::uint8_t* payload, int num_threads = 1);
// Reads the count from the payload; false when it disagrees with payload_bytes, exceeds n, or
// the indices are not strictly increasing below n.
bool topk_decode(const std::uint8_t* payload, std::size_t payload_bytes, std::size_t n,
                 float* out, bool accumulate, int num_threads = 1);

}  // namespace codl
