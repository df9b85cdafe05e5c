// SVE build of the dense factorizations. The GEMM tile is the portable loop nest with a
// 16-wide inner dimension, which GCC vectorizes for SVE at any vector length; a hand-written
// vector-length-agnostic svmla tile is future work.
#include <cstddef>

namespace codl::sve {
namespace {

template <class T>
struct LoopTile {
    static constexpr bool fused = true;
    static constexpr std::size_t mr = 4, nr = 16;
    static void run(std::size_t k, const T* a, std::ptrdiff_t a_rs, std::ptrdiff_t a_cs, const T* b, T alpha, T* c,
                    std::ptrdiff_t ldc, bool add) {
        T acc[mr][nr] = {};
        for (std::size_t p = 0; p < k; ++p, a += a_cs, b += nr) {
            for (std::size_t i = 0; i < mr; ++i) {
                const T ai = a[static_cast<std::ptrdiff_t>(i) * a_rs];
                for (std::size_t j = 0; j < nr; ++j) acc[i][j] += ai * b[j];
            }
        }
        for (std::size_t i = 0; i < mr; ++i) {
            T* row = c + static_cast<std::ptrdiff_t>(i) * ldc;
            for (std::size_t j = 0; j < nr; ++j) {
                const T v = alpha == T(1) ? acc[i][j] : acc[i][j] * alpha;
                row[j] = add ? row[j] + v : v;
            }
        }
    }
    static bool pack_b(std::size_t, std::size_t, const T*, std::ptrdiff_t, std::ptrdiff_t, T*) { return false; }
    static bool unpack_b(std::size_t, std::size_t, const T*, T*, std::ptrdiff_t, std::ptrdiff_t) { return false; }
};
using F32Tile = LoopTile<float>;
using F64Tile = LoopTile<double>;

}  // namespace
}  // namespace codl::sve

#include "../../linalg_blocked.h"

namespace codl::sve {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::sve
