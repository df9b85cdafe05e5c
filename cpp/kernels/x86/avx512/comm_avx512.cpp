// avx512 gradient codec kernels (work in progress: forwarders to the reference).
#include <immintrin.h>

#include <cstring>

#include "codl/kernel_table.h"

namespace codl::avx512 {
namespace {
bool int8_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::int8_t* codes) {
    return ref::comm_kernels.int8_encode(x, error, n, block, scales, codes);
}
void int8_decode(const std::uint8_t* scales, const std::int8_t* codes, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    ref::comm_kernels.int8_decode(scales, codes, n, block, out, accumulate);
}
bool sign_encode(const float* x, float* error, std::size_t n, std::size_t block,
                 std::uint8_t* scales, std::uint8_t* bits) {
    return ref::comm_kernels.sign_encode(x, error, n, block, scales, bits);
}
void sign_decode(const std::uint8_t* scales, const std::uint8_t* bits, std::size_t n,
                 std::size_t block, float* out, bool accumulate) {
    ref::comm_kernels.sign_decode(scales, bits, n, block, out, accumulate);
}
bool topk_accumulate(const float* x, float* error, float* momentum, float m, std::size_t n) {
    return ref::comm_kernels.topk_accumulate(x, error, momentum, m, n);
}
std::size_t count_at_least(const float* v, std::size_t n, float threshold) {
    return ref::comm_kernels.count_at_least(v, n, threshold);
}
std::size_t gather_at_least(const float* v, std::size_t n, float threshold, std::uint32_t base,
                            std::uint32_t* indices) {
    return ref::comm_kernels.gather_at_least(v, n, threshold, base, indices);
}

// Forwarders to the scalar reference for the kernels this ISA does not speed up.
bool terngrad_encode(const float* x, float* error, std::size_t n, std::size_t block,
                     std::uint64_t stream, std::size_t first, std::uint8_t* scales,
                     std::uint8_t* codes) {
    return ref::comm_kernels.terngrad_encode(x, error, n, block, stream, first, scales, codes);
}
bool terngrad_decode(const std::uint8_t* scales, const std::uint8_t* codes, std::size_t n,
                     std::size_t block, float* out, bool accumulate) {
    return ref::comm_kernels.terngrad_decode(scales, codes, n, block, out, accumulate);
}
bool qsgd_encode(const float* x, float* error, std::size_t n, std::size_t block, unsigned levels,
                 std::uint64_t stream, std::size_t first, std::uint8_t* norms,
                 std::uint8_t* codes) {
    return ref::comm_kernels.qsgd_encode(x, error, n, block, levels, stream, first, norms, codes);
}
bool qsgd_decode(const std::uint8_t* norms, const std::uint8_t* codes, std::size_t n,
                 std::size_t block, unsigned levels, float* out, bool accumulate) {
    return ref::comm_kernels.qsgd_decode(norms, codes, n, block, levels, out, accumulate);
}

}  // namespace

const CommKernels comm_kernels{int8_encode,     int8_decode,     sign_encode,    sign_decode,
                               terngrad_encode, terngrad_decode, qsgd_encode,    qsgd_decode,
                               topk_accumulate, count_at_least,  gather_at_least};

}  // namespace codl::avx512
