// Scalar reference of the dense factorizations: plain loops for the GEMM tile, no FMA (the
// project builds with -ffp-contract=off), so it is the oracle the SIMD variants are tested
// against and the fallback where no SIMD is built.
#include <cstddef>

namespace codl::ref {
namespace {

template <class T>
struct ScalarTile {
    static constexpr std::size_t mr = 4, nr = 4;
    static void run(std::size_t k, const T* a, const T* b, T* c, std::ptrdiff_t ldc, bool add) {
        T acc[mr][nr] = {};
        for (std::size_t p = 0; p < k; ++p) {
            for (std::size_t i = 0; i < mr; ++i) {
                for (std::size_t j = 0; j < nr; ++j) acc[i][j] += a[p * mr + i] * b[p * nr + j];
            }
        }
        for (std::size_t i = 0; i < mr; ++i) {
            T* row = c + static_cast<std::ptrdiff_t>(i) * ldc;
            for (std::size_t j = 0; j < nr; ++j) row[j] = add ? row[j] + acc[i][j] : acc[i][j];
        }
    }
};
using F32Tile = ScalarTile<float>;
using F64Tile = ScalarTile<double>;

}  // namespace
}  // namespace codl::ref

#define CODL_LINALG_NAMESPACE ref
#include "../linalg_blocked.h"

namespace codl::ref {
extern const LinalgKernels linalg_kernels;
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::ref
