// The function table that runtime dispatch selects from: one pointer per kernel family of
// codl/kernel_families.def, each to a table of function pointers that the family's header
// (codl/<family>.h) declares. Each ISA translation unit defines its family's table; where an ISA
// has no variant of a family, the dispatch table points at the reference (cpp/dispatch).
//
// Translation units compiled with ISA flags include this header, so it holds declarations and
// constants only: an inline function here could be emitted with AVX2 instructions and then be
// picked by the linker for scalar callers.
#pragma once

namespace codl {

// amx is avx512 plus Intel AMX tiles (amx_tile, amx_int8): a family without an amx variant runs
// its avx512 one there (cpp/dispatch), not the reference.
enum class IsaLevel : int { scalar = 0, avx2 = 1, avx512 = 2, sve = 3, amx = 4 };
constexpr int kNumIsaLevels = 5;

#define CODL_KERNEL_FAMILY(name, Table) struct Table;
#include "codl/kernel_families.def"

struct KernelTable {
    IsaLevel isa;
#define CODL_KERNEL_FAMILY(name, Table) const Table* name;
#include "codl/kernel_families.def"
};

// Every family's table in every ISA namespace. Only those whose files are built are defined;
// the dispatch tables name only those (the build says which, cmake/CodlKernels.cmake).
#define CODL_KERNEL_FAMILY(name, Table) extern const Table name##_kernels;
namespace ref {
#include "codl/kernel_families.def"
}
#define CODL_KERNEL_FAMILY(name, Table) extern const Table name##_kernels;
namespace avx2 {
#include "codl/kernel_families.def"
}
#define CODL_KERNEL_FAMILY(name, Table) extern const Table name##_kernels;
namespace avx512 {
#include "codl/kernel_families.def"
}
#define CODL_KERNEL_FAMILY(name, Table) extern const Table name##_kernels;
namespace sve {
#include "codl/kernel_families.def"
int vector_bits();  // the SVE vector length this process runs with
}
#define CODL_KERNEL_FAMILY(name, Table) extern const Table name##_kernels;
namespace amx {
#include "codl/kernel_families.def"
}

}  // namespace codl
