// AVX-512 VNNI sparse (1x4 block) kernels: a block is one 32-bit lane of vpdpbusd, which
// multiplies unsigned by signed bytes, so it takes |w| (<= 128 as unsigned) and x negated where
// w < 0 (|x| <= 127, so the negation is exact); vpdpbusd does not saturate, so the int32 sums are
// exact.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "codl/sparse.h"
#include "vnni_avx512.h"

namespace codl::avx512 {
namespace {

inline __m512i dot4(__m512i acc, __m512i x, __m512i w) {
    const __m512i signed_x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    return dpbusd(acc, _mm512_abs_epi8(w), signed_x);
}

// Batch 1 reads the activation 4-tuples of 16 blocks at a time. A gather does it anywhere in the
// row, but this core (Zen 5) retires one 16-lane vpgatherdd per ~20 cycles, which bound the
// kernel. The blocks of a row are in column order, so 16 of them usually fall within 128 block
// columns (at 90% zeros, a third of the blocks are kept: 16 span about 50 columns): from a window
// of q held in 8 registers, 4 vpermi2d and 3 blends fetch them. Groups that do not fit (sparser
// rows, or columns out of order) are gathered; either way every lane reads q[idx].
constexpr std::size_t kWindowBlocks = 128;

__m512i window_or_gather(const std::int8_t* q, __m512i idx, std::size_t base) {
    const __m512i rel = _mm512_sub_epi32(idx, _mm512_set1_epi32(static_cast<int>(base)));
    if (_mm512_cmplt_epu32_mask(rel, _mm512_set1_epi32(static_cast<int>(kWindowBlocks))) != 0xFFFF) {
        return _mm512_i32gather_epi32(idx, q, 4);
    }
    const std::int8_t* w = q + 4 * base;
    __m512i quarter[4];
    for (int i = 0; i < 4; ++i) {
        quarter[i] = _mm512_permutex2var_epi32(_mm512_loadu_si512(w + 128 * i), rel, _mm512_loadu_si512(w + 128 * i + 64));
    }
    const __mmask16 odd_32 = _mm512_test_epi32_mask(rel, _mm512_set1_epi32(32));
    const __m512i low = _mm512_mask_blend_epi32(odd_32, quarter[0], quarter[1]);
    const __m512i high = _mm512_mask_blend_epi32(odd_32, quarter[2], quarter[3]);
    return _mm512_mask_blend_epi32(_mm512_test_epi32_mask(rel, _mm512_set1_epi32(64)), low, high);
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const __m512i last = _mm512_set1_epi32(static_cast<int>(k_blocks - 1));
    const bool windows = k_blocks >= kWindowBlocks;
    // 16 blocks from `at` (those of `mask`; the others get weight 0 and the first block's column).
    auto group = [&](std::size_t at, __mmask16 mask, __m512i acc) {
        __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, cols + at));
        idx = _mm512_min_epu32(_mm512_mask_mov_epi32(_mm512_set1_epi32(cols[at]), mask, idx), last);
        // The window starts at the first block's column rounded down to 16 (a 64-byte line of q)
        // and ends inside q.
        const std::size_t base = std::min<std::size_t>(cols[at] & ~std::size_t{15}, k_blocks - kWindowBlocks);
        const __m512i x = windows ? window_or_gather(q, idx, base) : _mm512_i32gather_epi32(idx, q, 4);
        return dot4(acc, x, _mm512_maskz_loadu_epi32(mask, values + 4 * at));
    };
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        // Groups alternate between two accumulators, so that consecutive vpdpbusd do not wait on
        // each other (an array indexed by the parity went through the stack).
        __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
        for (; p + 32 <= end; p += 32) {
            even = group(p, 0xFFFF, even);
            odd = group(p + 16, 0xFFFF, odd);
        }
        for (; p < end; p += 16) {
            even = group(p, static_cast<__mmask16>(end - p >= 16 ? 0xFFFF : (1u << (end - p)) - 1), even);
        }
        out[j - row_begin] = _mm512_reduce_add_epi32(_mm512_add_epi32(even, odd));
    }
}

// Rows [r0, r0 + 16 * V) of one weight row: the block broadcast once to V accumulators of 16
// rows, and consecutive blocks on S = 8 / V such sets, summed at the end: with one set, each
// vpdpbusd waited on the previous block's (its latency, not the core's throughput, bound the
// kernel: 2.5-3x slower at 8 rows).
template <int V>
void gemm_chunk(const std::int8_t* xt, std::size_t rows, std::size_t r0, std::size_t k_blocks, std::size_t p,
                std::size_t end, const std::uint16_t* cols, const std::int8_t* values, std::int32_t* out) {
    constexpr int S = 8 / V;
    __m512i acc[S][V];
    for (int s = 0; s < S; ++s) {
        for (int v = 0; v < V; ++v) acc[s][v] = _mm512_setzero_si512();
    }
    auto block = [&](std::size_t at, __m512i* sums) {
        std::int32_t word;
        __builtin_memcpy(&word, values + 4 * at, 4);
        const __m512i w = _mm512_set1_epi32(word);
        const __m512i magnitude = _mm512_abs_epi8(w);
        const __mmask64 negative = _mm512_movepi8_mask(w);
        const std::size_t col = cols[at] < k_blocks ? cols[at] : k_blocks - 1;
        const std::int8_t* a = xt + (col * rows + r0) * 4;
        for (int v = 0; v < V; ++v) {
            const __m512i x = _mm512_loadu_si512(a + 64 * v);
            sums[v] = dpbusd(sums[v], magnitude, _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x));
        }
    };
    for (; p + S <= end; p += S) {
        for (int s = 0; s < S; ++s) block(p + s, acc[s]);
    }
    for (; p < end; ++p) block(p, acc[0]);
    for (int v = 0; v < V; ++v) {
        __m512i total = acc[0][v];
        for (int s = 1; s < S; ++s) total = _mm512_add_epi32(total, acc[s][v]);
        _mm512_storeu_si512(out + r0 + 16 * v, total);
    }
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        std::size_t r0 = 0;
        for (; r0 + 64 <= rows; r0 += 64) gemm_chunk<4>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 + 32 <= rows; r0 += 32) gemm_chunk<2>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 < rows; r0 += 16) gemm_chunk<1>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
    }
}

// Panel layout: a step's kept blocks are expanded into their lanes (register-form vpexpandd)
// and offset to unsigned, w ^ 0x80 = w + 128, lanes not kept included (they become 128). The
// step's 4 block columns of an activation row, broadcast to the 4 128-bit quarters, are then
// vpdpbusd's signed operand as they are, and every row of the panel carries 128 * sum(q_i)
// extra: one scalar per activation row, subtracted at the end. A step costs a load, an expansion
// and an XOR, shared by the rows of a tile, and a 16-byte broadcast load and a vpdpbusd per row.
// vpexpandd in register form: GCC folds a preceding load into the memory form, which measured
// 1.5x slower in this kernel on Zen 5.
CODL_INLINE __m512i expand_lanes(__mmask16 lanes, __m512i packed) {
    __m512i out;
    __asm__("vpexpandd %1, %0%{%2%}%{z%}" : "=v"(out) : "v"(packed), "Yk"(lanes));
    return out;
}

// Clamped: starts[s] as sparse_step_start says, and the last 15 blocks read through a lane mask
// (lanes at or past `blocks` load zeros). Unclamped: the caller checked that every start of the
// panel is at most blocks - 16.
template <bool Clamped>
CODL_INLINE __m512i panel_step(const std::uint16_t* masks, const std::int32_t* starts, const std::int8_t* values,
                               std::size_t blocks, std::size_t s, __m512i offset) {
    __m512i kept;
    if (Clamped) {
        const std::size_t start = sparse_step_start(starts, s, blocks);
        const std::int8_t* at = values + 4 * start;
        kept = start + 16 <= blocks
                   ? _mm512_loadu_si512(at)
                   : _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << (blocks - start)) - 1), at);
    } else {
        kept = _mm512_loadu_si512(values + 4 * static_cast<std::uint32_t>(starts[s]));
    }
    return _mm512_xor_si512(expand_lanes(masks[s], kept), offset);
}

// Whether every start of steps [first, first + steps), read as unsigned, is at most blocks - 16
// (then no step of the panel needs the clamps): one pass over the starts, which the steps then
// read again from L1.
bool panel_unclamped(const std::int32_t* starts, std::size_t first, std::size_t steps, std::size_t blocks) {
    if (blocks < 16) return false;
    __m512i highest = _mm512_setzero_si512();
    std::size_t g = 0;
    for (; g + 16 <= steps; g += 16) highest = _mm512_max_epu32(highest, _mm512_loadu_si512(starts + first + g));
    const __mmask16 tail = static_cast<__mmask16>((1u << (steps - g)) - 1);
    highest = _mm512_max_epu32(highest, _mm512_maskz_loadu_epi32(tail, starts + first + g));
    return static_cast<std::size_t>(_mm512_reduce_max_epu32(highest)) <= blocks - 16;
}

// The sum of a row of activations (bytes a multiple of 16).
std::int32_t activation_sum(const std::int8_t* q, std::size_t bytes) {
    __m512i acc = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
    std::size_t c = 0;
    for (; c + 64 <= bytes; c += 64) acc = dpbusd(acc, ones, _mm512_loadu_si512(q + c));
    const __mmask16 tail = static_cast<__mmask16>((1u << ((bytes - c) / 4)) - 1);
    acc = dpbusd(acc, ones, _mm512_maskz_loadu_epi32(tail, q + c));
    return _mm512_reduce_add_epi32(acc);
}

// R activation rows against one panel, two steps in flight (two accumulator sets) so that the
// vpdpbusd latency is hidden at R = 1 too.
template <int R, bool Clamped>
CODL_INLINE void panel_rows(const std::int8_t* q, std::size_t row_bytes, const std::int32_t* sums, std::size_t steps,
                            const std::uint16_t* masks, const std::int32_t* starts, const std::int8_t* values,
                            std::size_t blocks, std::size_t p, std::int32_t* out) {
    __m512i acc[2][R];
    for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = _mm512_setzero_si512();
    const __m512i offset = _mm512_set1_epi8(-128);
    const std::size_t first = p * steps;
    const auto step = [&](std::size_t g, __m512i (&a)[R]) {
        const __m512i w = panel_step<Clamped>(masks, starts, values, blocks, first + g, offset);
        for (int r = 0; r < R; ++r) {
            const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + r * row_bytes + 16 * g));
            a[r] = dpbusd(a[r], w, _mm512_broadcast_i32x4(x));
        }
    };
    std::size_t g = 0;
    for (; g + 2 <= steps; g += 2) {
        step(g, acc[0]);
        step(g + 1, acc[1]);
    }
    if (g < steps) step(g, acc[0]);
    for (int r = 0; r < R; ++r) {
        // lane 4 * row + t holds the row's products of the block columns t mod 4
        const __m512i total = _mm512_add_epi32(acc[0][r], acc[1][r]);
        const __m128i rows = _mm_hadd_epi32(_mm_hadd_epi32(_mm512_castsi512_si128(total),
                                                           _mm512_extracti32x4_epi32(total, 1)),
                                            _mm_hadd_epi32(_mm512_extracti32x4_epi32(total, 2),
                                                           _mm512_extracti32x4_epi32(total, 3)));
        const __m128i offsets = _mm_set1_epi32(static_cast<std::int32_t>(128u * static_cast<std::uint32_t>(sums[r])));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * kSparsePanelRows), _mm_sub_epi32(rows, offsets));
    }
}

template <int R>
void panel_tile(const std::int8_t* q, std::size_t row_bytes, const std::int32_t* sums, std::size_t steps,
                const std::uint16_t* masks, const std::int32_t* starts, const std::int8_t* values, std::size_t blocks,
                std::size_t p, bool unclamped, std::int32_t* out) {
    if (unclamped) {
        panel_rows<R, false>(q, row_bytes, sums, steps, masks, starts, values, blocks, p, out);
    } else {
        panel_rows<R, true>(q, row_bytes, sums, steps, masks, starts, values, blocks, p, out);
    }
}

void gemm_i8_p4x4(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                  const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t panel_begin,
                  std::size_t panel_end, std::int32_t* out) {
    constexpr std::size_t kTile = 8;
    const std::size_t steps = sparse_steps(k_blocks), row_bytes = 16 * steps;
    thread_local std::vector<std::int32_t> sums;
    sums.resize(m);
    for (std::size_t i = 0; i < m; ++i) sums[i] = activation_sum(q + i * row_bytes, row_bytes);
    // Panels outer: a panel's steps stay in L1/L2 for every tile of rows.
    for (std::size_t p = panel_begin; p < panel_end; ++p) {
        const bool unclamped = panel_unclamped(starts, p * steps, steps, blocks);
        for (std::size_t i0 = 0; i0 < m; i0 += kTile) {
            const std::int8_t* qi = q + i0 * row_bytes;
            const std::int32_t* si = sums.data() + i0;
            std::int32_t* o = out + ((p - panel_begin) * m + i0) * kSparsePanelRows;
            switch (std::min(kTile, m - i0)) {
#define CODL_PANEL_ROWS(R)                                                                  \
    case R:                                                                                 \
        panel_tile<R>(qi, row_bytes, si, steps, masks, starts, values, blocks, p, unclamped, o); \
        break;
                CODL_PANEL_ROWS(1)
                CODL_PANEL_ROWS(2)
                CODL_PANEL_ROWS(3)
                CODL_PANEL_ROWS(4)
                CODL_PANEL_ROWS(5)
                CODL_PANEL_ROWS(6)
                CODL_PANEL_ROWS(7)
                CODL_PANEL_ROWS(8)
#undef CODL_PANEL_ROWS
            }
        }
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4, gemm_i8_p4x4};

}  // namespace codl::avx512
