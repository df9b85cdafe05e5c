// AVX2 build of the dense factorizations: the shared GEMM tile of linalg_simd.h over
// vec_avx2.h, then the blocked algorithms of linalg_blocked.h around it.
#include "vec_avx2.h"
#include "../linalg_simd.h"

namespace codl::avx2 {
namespace {
using F32Tile = SimdTile<F32, kGemmTileRows>;
using F64Tile = SimdTile<F64, kGemmTileRows>;
}  // namespace
}  // namespace codl::avx2

#include "../../linalg_blocked.h"

namespace codl::avx2 {
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx2
