// AVX2 + FMA inner loops of the eigendecomposition: the shared bodies of sym_eig_simd.h over
// vec_avx2.h.
#include "vec_avx2.h"
#include "../sym_eig_simd.h"

namespace codl::avx2 {
const SymEigKernels sym_eig_kernels{ops_for<F32>(), ops_for<F64>(), {secular_terms<F64>, ratio_product<F64>}};
}  // namespace codl::avx2
