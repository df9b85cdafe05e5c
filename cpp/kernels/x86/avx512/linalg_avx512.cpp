// AVX-512 build of the dense factorizations: the shared GEMM tile of linalg_simd.h over
// vec_avx512.h, then the blocked algorithms of linalg_blocked.h around it.
#include "vec_avx512.h"
#include "../linalg_simd.h"

namespace codl::avx512 {
namespace {
using F32Tile = SimdTile<F32, kGemmTileRows>;
using F64Tile = SimdTile<F64, kGemmTileRows>;
}  // namespace
}  // namespace codl::avx512

#include "../../linalg_blocked.h"

namespace codl::avx512 {
const LinalgKernels linalg_kernels = make_linalg_kernels();
}  // namespace codl::avx512
