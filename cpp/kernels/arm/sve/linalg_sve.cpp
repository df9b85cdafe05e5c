// SVE build of the dense factorizations. The GEMM tile is the portable loop nest with a
// 16-wide inner dimension, which GCC vectorizes for SVE at any vector length; a hand-written
// vector-length-agnostic svmla tile is future work.
#include <cstddef>

namespace codl::sve {
namespace {

template <class T>
struct LoopTile {
    static constexpr std::size_t mr = 4, nr = 16;
    static void run(std::size_t k, const T* a, const T* b, T* c, std::ptrdiff_t ldc, bool add) {
        T acc[mr][nr] = {};
        for (std::size_t p = 0; p < k; ++p) {
            for (std::size_t i = 0; i < mr; ++i) {
                const T ai = a[p * mr + i];
                for (std::size_t j = 0; j < nr; ++j) acc[i][j] += ai * b[p * nr + j];
            }
        }
        for (std::size_t i = 0; i < mr; ++i) {
            T* row = c + static_cast<std::ptrdiff_t>(i) * ldc;
            for (std::size_t j = 0; j < nr; ++j) row[j] = add ? row[j] + acc[i][j] : acc[i][j];
        }
    }
};
using F32Tile = LoopTile<float>;
using F64Tile = LoopTile<double>;

}  // namespace
}  // namespace codl::sve

#define CODL_LINALG_NAMESPACE sve
#include "../../linalg_blocked.h"

namespace codl::sve {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::sve
