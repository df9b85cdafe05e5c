// SVE sparse (1x4 block) kernels, vector-length agnostic: a block is one 32-bit lane of sdot
// (signed by signed bytes, 4 products per lane, exact in int32). Batch 1 gathers the activation
// 4-tuples of a vector of blocks; batched rows take one lane each.
#include <arm_sve.h>

#include "codl/sparse.h"

namespace codl::sve {
namespace {

void gemv_i8_b4(const std::int8_t* q, std::size_t k_blocks, const std::int32_t* row_ptr, std::size_t blocks,
                const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin, std::size_t row_end,
                std::int32_t* out) {
    const std::int32_t* base = reinterpret_cast<const std::int32_t*>(q);
    const std::int32_t* words = reinterpret_cast<const std::int32_t*>(values);
    const std::uint32_t last = static_cast<std::uint32_t>(k_blocks - 1);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t p, end;
        sparse_row_range(row_ptr, blocks, j, &p, &end);
        svint32_t acc = svdup_n_s32(0);
        for (; p < end; p += svcntw()) {
            const svbool_t pg = svwhilelt_b32_u64(p, end);
            const svuint32_t idx = svmin_n_u32_x(pg, svld1uh_u32(pg, cols + p), last);
            const svint32_t x = svld1_gather_u32index_s32(pg, base, idx);
            const svint32_t w = svld1_s32(pg, words + p);
            acc = svdot_s32(acc, svreinterpret_s8_s32(x), svreinterpret_s8_s32(w));
        }
        out[j - row_begin] = static_cast<std::int32_t>(svaddv_s32(svptrue_b32(), acc));
    }
}

void gemm_i8_b4(const std::int8_t* xt, std::size_t rows, std::size_t k_blocks, const std::int32_t* row_ptr,
                std::size_t blocks, const std::uint16_t* cols, const std::int8_t* values, std::size_t row_begin,
                std::size_t row_end, std::int32_t* out) {
    const std::int32_t* x_words = reinterpret_cast<const std::int32_t*>(xt);
    for (std::size_t j = row_begin; j < row_end; ++j) {
        std::size_t begin, end;
        sparse_row_range(row_ptr, blocks, j, &begin, &end);
        std::int32_t* o = out + (j - row_begin) * rows;
        for (std::size_t r0 = 0; r0 < rows; r0 += svcntw()) {
            const svbool_t pg = svwhilelt_b32_u64(r0, rows);
            svint32_t acc = svdup_n_s32(0);
            for (std::size_t p = begin; p < end; ++p) {
                const std::size_t col = cols[p] < k_blocks ? cols[p] : k_blocks - 1;
                std::int32_t word;
                __builtin_memcpy(&word, values + 4 * p, 4);  // values need not be 4-byte aligned
                const svint32_t x = svld1_s32(pg, x_words + col * rows + r0);
                acc = svdot_s32(acc, svreinterpret_s8_s32(x), svreinterpret_s8_s32(svdup_n_s32(word)));
            }
            svst1_s32(pg, o + r0, acc);
        }
    }
}

// Panel layout: a step's 16 lanes (lane 4 * r + t: panel row r, block column 4 * step + t) are
// taken a vector at a time (4, 2 or 1 vectors at 128, 256 or 512 bits; lanes past 16 of a wider
// vector stay inactive). Lane L's kept block is word start + rank, rank the step's mask bits
// below L (svcnt), so one gather expands the vector's blocks into their lanes; lanes whose index
// reaches `blocks` stay inactive: zero, and never read. svld1rq repeats a row's 16 step bytes in
// every 128 bits, which puts column t's activation word under each lane L with L % 4 == t at any
// vector length. Up to 4 activation rows share a gather (ACLE allows no arrays of vectors, hence
// four named accumulators); a row's 4 lanes are summed once a panel, through a small buffer.
void gemm_i8_p4x4(const std::int8_t* q, std::size_t m, std::size_t k_blocks, const std::uint16_t* masks,
                  const std::int32_t* starts, const std::int8_t* values, std::size_t blocks, std::size_t panel_begin,
                  std::size_t panel_end, std::int32_t* out) {
    constexpr std::size_t R = kSparsePanelRows, L = kSparsePanelRows * kSparseStepBlocks;
    static_assert(L <= 16, "a step's lanes are one uint16 mask");
    const std::size_t steps = sparse_steps(k_blocks), row_bytes = 4 * kSparseStepBlocks * steps;
    const std::int32_t* words = reinterpret_cast<const std::int32_t*>(values);
    const auto dot = [](svint32_t acc, const std::int8_t* a, svint32_t w) {
        return svdot_s32(acc, svld1rq_s8(svptrue_b8(), a), svreinterpret_s8_s32(w));
    };
    for (std::size_t p = panel_begin; p < panel_end; ++p) {
        std::int32_t* o = out + (p - panel_begin) * m * R;
        for (std::size_t i0 = 0; i0 < m; i0 += 4) {
            const std::size_t rows = m - i0 < 4 ? m - i0 : 4;
            const std::int8_t* a = q + i0 * row_bytes;
            std::int32_t lanes[4][L];
            for (std::size_t r0 = 0; r0 < L; r0 += svcntw()) {
                const svbool_t pg = svwhilelt_b32_u64(r0, L);
                const svuint32_t bit = svlsl_u32_x(pg, svdup_n_u32(1), svindex_u32(static_cast<std::uint32_t>(r0), 1));
                const svuint32_t below = svsub_n_u32_x(pg, bit, 1);
                // the mask bits of this vector's lanes: a step without any costs no gather
                const std::size_t r1 = r0 + svcntw() < L ? r0 + svcntw() : L;
                const unsigned mine = ((1u << r1) - 1) & ~((1u << r0) - 1);
                svint32_t acc0 = svdup_n_s32(0), acc1 = acc0, acc2 = acc0, acc3 = acc0;
                for (std::size_t g = 0; g < steps; ++g) {
                    const std::size_t s = p * steps + g;
                    if ((masks[s] & mine) == 0) continue;
                    const std::size_t start = sparse_step_start(starts, s, blocks);
                    // kept blocks [start, blocks) exist; a 16-bit mask names at most 16 of them
                    const std::uint32_t avail = static_cast<std::uint32_t>(blocks - start < L ? blocks - start : L);
                    const svuint32_t mask = svdup_n_u32(masks[s]);
                    const svbool_t kept = svcmpne_n_u32(pg, svand_u32_x(pg, mask, bit), 0);
                    const svuint32_t rank = svcnt_u32_x(pg, svand_u32_x(pg, mask, below));
                    const svbool_t live = svcmplt_n_u32(kept, rank, avail);
                    const svint32_t w = svld1_gather_u32index_s32(live, words + start, rank);
                    const std::int8_t* x = a + 16 * g;
                    acc0 = dot(acc0, x, w);
                    if (rows > 1) acc1 = dot(acc1, x + row_bytes, w);
                    if (rows > 2) acc2 = dot(acc2, x + 2 * row_bytes, w);
                    if (rows > 3) acc3 = dot(acc3, x + 3 * row_bytes, w);
                }
                svst1_s32(pg, lanes[0] + r0, acc0);
                svst1_s32(pg, lanes[1] + r0, acc1);
                svst1_s32(pg, lanes[2] + r0, acc2);
                svst1_s32(pg, lanes[3] + r0, acc3);
            }
            for (std::size_t t = 0; t < rows; ++t) {
                for (std::size_t r = 0; r < R; ++r) {
                    const std::int32_t* l = lanes[t] + kSparseStepBlocks * r;
                    o[(i0 + t) * R + r] = l[0] + l[1] + l[2] + l[3];
                }
            }
        }
    }
}

}  // namespace

const SparseKernels sparse_kernels = {gemv_i8_b4, gemm_i8_b4, gemm_i8_p4x4};

}  // namespace codl::sve
