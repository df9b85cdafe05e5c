// Helpers the AVX-512 VNNI integer kernels share (conv_avx512.cpp, ternary_avx512.cpp).
// Only AVX-512 translation units include it (internal linkage, namespace codl::avx512).
#pragma once

#include <immintrin.h>

// Forces a helper into its caller's loop, for kernels whose speed depends on it: GCC does not
// always inline them, and a called helper puts a tile's sums through memory.
#define CODL_INLINE inline __attribute__((always_inline))

namespace codl::avx512 {
namespace {

// acc += the four u8 x s8 products of each 32-bit lane, in place. Through the intrinsic, GCC 12
// copied each of a tile's accumulators to a fresh register and back on every vpdpbusd (and
// spilled some) in the ternary tiles, which ran at half the speed of this form.
CODL_INLINE __m512i dpbusd(__m512i acc, __m512i unsigned_bytes, __m512i signed_bytes) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(unsigned_bytes), "v"(signed_bytes));
    return acc;
}

CODL_INLINE __m256i dpbusd(__m256i acc, __m256i unsigned_bytes, __m256i signed_bytes) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(unsigned_bytes), "v"(signed_bytes));
    return acc;
}

}  // namespace
}  // namespace codl::avx512
