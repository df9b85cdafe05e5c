// AVX2 sparse (1x4 block) kernels. A block's 4 int8 products are one 32-bit lane of
// pmaddubsw + pmaddwd: pmaddubsw multiplies unsigned by signed bytes, so it takes |w| and x with
// w's sign (psignb); |w| <= 128 and |x| <= 127 keep each pair sum (<= 32512) from saturating,
// so the int32 sums are exact.
#include <immintrin.h>

#include "codl/sparse.h"

namespace codl::avx2 {
namespace {

inline __m256i dot4(__m256i acc, __m256i x, __m256i w, __m256i ones) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
}

inline std::int32_t horizontal_sum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i last = _mm256_set1_epi32(static_cast<int>(k_blocks - 1));
    const int* base = reinterpret_cast<const int*>(q);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        __m256i acc = _mm256_setzero_si256();
        for (; p + 8 <= end; p += 8) {
            __m256i idx = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cols + p)));
            idx = _mm256_min_epu32(idx, last);
            const __m256i x = _mm256_i32gather_epi32(base, idx, 4);
            const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 4 * p));
            acc = dot4(acc, x, w, ones);
        }
        std::int32_t total = horizontal_sum(acc);
        for (; p < end; ++p) {
            const std::int8_t* a = q + 4 * (cols[p] < k_blocks ? cols[p] : k_blocks - 1);
            for (std::size_t t = 0; t < 4; ++t) total += a[t] * values[4 * p + t];
        }
        out[j - row_begin] = total;
    }
}

// Rows [r0, r0 + 8 * V) of one weight row: V accumulators of 8 rows, the block broadcast once.
template <int V>
void gemm_chunk(const std::int8_t* xt, std::size_t rows, std::size_t r0, std::size_t k_blocks, std::size_t p,
                std::size_t end, const std::uint16_t* cols, const std::int8_t* values, std::int32_t* out) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[V];
    for (int v = 0; v < V; ++v) acc[v] = _mm256_setzero_si256();
    for (; p < end; ++p) {
        std::int32_t word;
        __builtin_memcpy(&word, values + 4 * p, 4);
        const __m256i w = _mm256_set1_epi32(word);
        const std::size_t col = cols[p] < k_blocks ? cols[p] : k_blocks - 1;
        const std::int8_t* a = xt + (col * rows + r0) * 4;
        for (int v = 0; v < V; ++v) {
            acc[v] = dot4(acc[v], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 32 * v)), w, ones);
        }
    }
    for (int v = 0; v < V; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r0 + 8 * v), acc[v]);
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        std::size_t r0 = 0;
        for (; r0 + 64 <= rows; r0 += 64) gemm_chunk<8>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 + 32 <= rows; r0 += 32) gemm_chunk<4>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
        for (; r0 < rows; r0 += 16) gemm_chunk<2>(xt, rows, r0, k_blocks, begin, end, cols, values, o);
    }
}

// Panel layout: a step's 16 lanes (lane 4 * r + t: panel row r, block column 4 * step + t) are
// two halves of 8 int32 lanes, rows 0-1 and rows 2-3. Lane j of a half takes the half's kept
// block numbered by the mask byte's set bits below j: AVX2 has no vpexpandd, so a vpermd by this
// table expands, and lanes of clear bits are zeroed after it.
struct PanelExpand {
    std::uint8_t rank[256][8];
};

constexpr PanelExpand make_panel_expand() {
    PanelExpand t{};
    for (int bits = 0; bits < 256; ++bits) {
        int rank = 0;
        for (int j = 0; j < 8; ++j) {
            t.rank[bits][j] = static_cast<std::uint8_t>(rank);
            rank += (bits >> j) & 1;
        }
    }
    return t;
}

constexpr PanelExpand kPanelExpand = make_panel_expand();

// One half's 8 lanes from its kept blocks, words base .. base + popcount(bits) of values. Never
// reads at or past word `blocks`: near the end a masked load zeroes those lanes, which is the
// reference's "a kept block whose index reaches blocks counts as zeros". No branch on bits == 0:
// at 80-93% zeros a half is empty about half the time, unpredictably, and the zeroing covers it.
inline __m256i expand_half(const std::int8_t* values, std::size_t base, std::size_t blocks, unsigned bits) {
    if (base >= blocks) return _mm256_setzero_si256();
    const int* src = reinterpret_cast<const int*>(values + 4 * base);
    __m256i w;
    if (base + 8 <= blocks) {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    } else {  // 1 to 7 words left
        const __m256i left = _mm256_set1_epi32(static_cast<int>(blocks - base));
        w = _mm256_maskload_epi32(src, _mm256_cmpgt_epi32(left, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    }
    const __m128i ranks = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kPanelExpand.rank[bits]));
    const __m256i idx = _mm256_cvtepu8_epi32(ranks);
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
    return _mm256_and_si256(_mm256_permutevar8x32_epi32(w, idx), keep);
}

// Activation rows [i0, i0 + T) against panel p: a step's blocks are expanded (and their |w|
// taken) once for the T rows; T <= 4 keeps the 2T accumulators in the 16 ymm registers. A row's
// 16 step bytes (block columns 4g .. 4g + 3) broadcast to both 128-bit halves put column t under
// lanes t and 4 + t of each half, as the layout wants.
template <int T>
void panel_tile(const std::int8_t* q, std::size_t row_bytes, std::size_t i0, std::size_t steps,
                const std::uint16_t* masks, const std::int32_t* starts, const std::int8_t* values, std::size_t blocks,
                std::size_t p, std::int32_t* o) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[T][2];
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    const std::int8_t* a = q + i0 * row_bytes;
    for (std::size_t g = 0; g < steps; ++g) {
        const std::size_t s = p * steps + g;
        const unsigned mask = masks[s];
        const std::size_t start = sparse_step_start(starts, s, blocks);
        const unsigned lo = mask & 0xFFu, hi = mask >> 8;
        const __m256i w[2] = {expand_half(values, start, blocks, lo),
                              expand_half(values, start + __builtin_popcount(lo), blocks, hi)};
        const __m256i aw[2] = {_mm256_abs_epi8(w[0]), _mm256_abs_epi8(w[1])};
        for (int t = 0; t < T; ++t) {
            const __m256i x = _mm256_broadcastsi128_si256(
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + t * row_bytes + 16 * g)));
            for (int h = 0; h < 2; ++h) {
                const __m256i pairs = _mm256_maddubs_epi16(aw[h], _mm256_sign_epi8(x, w[h]));
                acc[t][h] = _mm256_add_epi32(acc[t][h], _mm256_madd_epi16(pairs, ones));
            }
        }
    }
    // hadd twice leaves row 0, 2 in the low 128 bits and row 1, 3 in the high ones
    for (int t = 0; t < T; ++t) {
        __m256i sum = _mm256_hadd_epi32(acc[t][0], acc[t][1]);
        sum = _mm256_hadd_epi32(sum, sum);
        const __m128i rows = _mm_unpacklo_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + (i0 + t) * kSparsePanelRows), rows);
    }
}

void gemm_i8_p4x4(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                  const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t panel_begin,
                  std::size_t panel_end, std::int32_t* out) {
    static_assert(kSparsePanelRows == 4 && kSparseStepBlocks == 4, "a step is two halves of 2 rows x 4 columns");
    const std::size_t steps = sparse_steps(k_blocks), row_bytes = 16 * steps;
    for (std::size_t p = panel_begin; p < panel_end; ++p) {
        std::int32_t* o = out + (p - panel_begin) * m * kSparsePanelRows;
        std::size_t i = 0;
        for (; i + 4 <= m; i += 4) panel_tile<4>(q, row_bytes, i, steps, masks, starts, values, blocks, p, o);
        switch (m - i) {
            case 3: panel_tile<3>(q, row_bytes, i, steps, masks, starts, values, blocks, p, o); break;
            case 2: panel_tile<2>(q, row_bytes, i, steps, masks, starts, values, blocks, p, o); break;
            case 1: panel_tile<1>(q, row_bytes, i, steps, masks, starts, values, blocks, p, o); break;
            default: break;
        }
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4, gemm_i8_p4x4};

}  // namespace codl::avx2
