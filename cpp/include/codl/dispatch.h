// CPU feature detection and the choice of kernel table, made once per process.
#pragma once

#include <string>
#include <vector>

#include "codl/kernel_table.h"

namespace codl {

struct CpuFeatures {
    std::string arch;  // "x86_64", "aarch64" or "other"
    // x86: instruction set bits from cpuid, and whether the OS saves the registers (xgetbv).
    bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512dq = false,
         avx512vl = false, avx512vnni = false, os_saves_ymm = false, os_saves_zmm = false;
    // x86 AMX: the tile and int8 instructions (cpuid), the OS saving tile state (XCR0 bits 17
    // and 18), and this process granted tile data (Linux arch_prctl(ARCH_REQ_XCOMP_PERM),
    // requested once by cpu_features()).
    bool amx_tile = false, amx_int8 = false, os_saves_tiles = false, amx_permitted = false;
    // Arm: HWCAP_SVE from getauxval, and the vector length in bits when present.
    bool sve = false;
    int sve_vector_bits = 0;
    std::vector<std::string> names() const;  // the detected features, for reports
};

const CpuFeatures& cpu_features();

const char* isa_name(IsaLevel isa);
bool parse_isa(const std::string& name, IsaLevel* isa);

bool isa_built(IsaLevel isa);     // compiled into this binary
bool cpu_supports(IsaLevel isa);  // the CPU and OS can run it
std::vector<IsaLevel> built_isas();

// The table of an ISA, or nullptr where it was not built. Tests use this to run every variant.
const KernelTable* kernel_table(IsaLevel isa);

// The best ISA that is both built and supported.
IsaLevel best_isa();

// Select the table used by the codl:: entry points. Returns "" on success, else why not.
std::string select_isa(IsaLevel isa);
// Applies CODL_CPU_DISPATCH when set (else best_isa()). Returns "" on success, else why not.
std::string select_isa_from_environment();

IsaLevel active_isa();
const KernelTable& active_table();

// The compiler that built the core, e.g. "GCC 12.2.0".
std::string compiler_description();

}  // namespace codl
