// The kernel tables of the ISAs built into this binary, and the choice among them.
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "codl/dispatch.h"

namespace codl {
namespace {

constexpr const char* kIsaNames[kNumIsaLevels] = {"scalar", "avx2", "avx512", "sve", "amx"};

// The tables, generated from codl/kernel_families.def. The build defines CODL_VARIANT_<isa>_<family>
// as 1 where cpp/kernels/.../<family>_<isa>.cpp exists and 0 where it does not; a family without
// a variant for an ISA runs the reference there. This is the only place that falls back.
#define CODL_FAMILY_OF_1(isa, name) &isa::name##_kernels
#define CODL_FAMILY_OF_0(isa, name) &ref::name##_kernels
// amx extends avx512: a family without an amx variant runs its avx512 one (whose own fallback is
// the reference), since the amx level requires everything avx512 does.
#define CODL_AMX_FALLBACK_1(name) &avx512::name##_kernels
#define CODL_AMX_FALLBACK_0(name) &ref::name##_kernels
#define CODL_AMX_FALLBACK_(built, name) CODL_AMX_FALLBACK_##built(name)
#define CODL_AMX_FALLBACK(built, name) CODL_AMX_FALLBACK_(built, name)
#define CODL_AMX_OF_1(name) &amx::name##_kernels
#define CODL_AMX_OF_0(name) CODL_AMX_FALLBACK(CODL_VARIANT_avx512_##name, name)
#define CODL_AMX_OF_(built, name) CODL_AMX_OF_##built(name)
#define CODL_AMX_OF(built, name) CODL_AMX_OF_(built, name)
#define CODL_FAMILY_OF_(built, isa, name) CODL_FAMILY_OF_##built(isa, name)
#define CODL_FAMILY_OF(built, isa, name) CODL_FAMILY_OF_(built, isa, name)

const KernelTable kScalarTable{
    IsaLevel::scalar,
#define CODL_KERNEL_FAMILY(name, Table) &ref::name##_kernels,
#include "codl/kernel_families.def"
};
#if CODL_HAVE_AVX2
const KernelTable kAvx2Table{
    IsaLevel::avx2,
#define CODL_KERNEL_FAMILY(name, Table) CODL_FAMILY_OF(CODL_VARIANT_avx2_##name, avx2, name),
#include "codl/kernel_families.def"
};
#endif
#if CODL_HAVE_AVX512
const KernelTable kAvx512Table{
    IsaLevel::avx512,
#define CODL_KERNEL_FAMILY(name, Table) CODL_FAMILY_OF(CODL_VARIANT_avx512_##name, avx512, name),
#include "codl/kernel_families.def"
};
#endif
#if CODL_HAVE_AMX
const KernelTable kAmxTable{
    IsaLevel::amx,
#define CODL_KERNEL_FAMILY(name, Table) CODL_AMX_OF(CODL_VARIANT_amx_##name, name),
#include "codl/kernel_families.def"
};
#endif
#if CODL_HAVE_SVE
const KernelTable kSveTable{
    IsaLevel::sve,
#define CODL_KERNEL_FAMILY(name, Table) CODL_FAMILY_OF(CODL_VARIANT_sve_##name, sve, name),
#include "codl/kernel_families.def"
};
#endif

const KernelTable* table_of(IsaLevel isa) {
    switch (isa) {
        case IsaLevel::scalar: return &kScalarTable;
#if CODL_HAVE_AVX2
        case IsaLevel::avx2: return &kAvx2Table;
#endif
#if CODL_HAVE_AVX512
        case IsaLevel::avx512: return &kAvx512Table;
#endif
#if CODL_HAVE_SVE
        case IsaLevel::sve: return &kSveTable;
#endif
#if CODL_HAVE_AMX
        case IsaLevel::amx: return &kAmxTable;
#endif
        default: return nullptr;
    }
}

std::atomic<const KernelTable*>& active() {
    static std::atomic<const KernelTable*> table{table_of(best_isa())};
    return table;
}

std::string missing_features(IsaLevel isa) {
    const CpuFeatures& f = cpu_features();
    std::string missing;
    auto need = [&missing](bool have, const char* name) {
        if (!have) missing += missing.empty() ? name : std::string(", ") + name;
    };
    switch (isa) {
        case IsaLevel::scalar: break;
        case IsaLevel::avx2:
            need(f.avx2, "avx2");
            need(f.fma, "fma");
            need(f.os_saves_ymm, "OS support for YMM state");
            break;
        case IsaLevel::avx512:
            need(f.avx512f, "avx512f");
            need(f.avx512bw, "avx512bw");
            need(f.avx512dq, "avx512dq");
            need(f.avx512vl, "avx512vl");
            need(f.avx512vnni, "avx512_vnni");
            need(f.os_saves_zmm, "OS support for ZMM state");
            break;
        case IsaLevel::sve: need(f.sve, "sve"); break;
        case IsaLevel::amx:
            missing = missing_features(IsaLevel::avx512);
            need(f.amx_tile, "amx_tile");
            need(f.amx_int8, "amx_int8");
            need(f.os_saves_tiles, "OS support for AMX tile state");
            need(f.amx_permitted, "permission for AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM)");
            break;
    }
    return missing;
}

}  // namespace

const char* isa_name(IsaLevel isa) { return kIsaNames[static_cast<int>(isa)]; }

bool parse_isa(const std::string& name, IsaLevel* isa) {
    for (int i = 0; i < kNumIsaLevels; ++i) {
        if (name == kIsaNames[i]) {
            *isa = static_cast<IsaLevel>(i);
            return true;
        }
    }
    return false;
}

bool isa_built(IsaLevel isa) { return table_of(isa) != nullptr; }

bool cpu_supports(IsaLevel isa) { return missing_features(isa).empty(); }

std::vector<IsaLevel> built_isas() {
    std::vector<IsaLevel> out;
    for (int i = 0; i < kNumIsaLevels; ++i) {
        if (isa_built(static_cast<IsaLevel>(i))) out.push_back(static_cast<IsaLevel>(i));
    }
    return out;
}

const KernelTable* kernel_table(IsaLevel isa) { return table_of(isa); }

IsaLevel best_isa() {
    for (IsaLevel isa : {IsaLevel::amx, IsaLevel::avx512, IsaLevel::avx2, IsaLevel::sve}) {
        if (isa_built(isa) && cpu_supports(isa)) return isa;
    }
    return IsaLevel::scalar;
}

std::string select_isa(IsaLevel isa) {
    if (!isa_built(isa)) {
        std::string built;
        for (IsaLevel b : built_isas()) built += std::string(built.empty() ? "" : ", ") + isa_name(b);
        return std::string("the ") + isa_name(isa) + " kernels are not built into this codl (built: " +
               built + ")";
    }
    const std::string missing = missing_features(isa);
    if (!missing.empty()) {
        return std::string("this CPU cannot run the ") + isa_name(isa) + " kernels: it lacks " + missing;
    }
    active().store(table_of(isa));
    return "";
}

std::string select_isa_from_environment() {
    const char* forced = std::getenv("CODL_CPU_DISPATCH");
    if (forced == nullptr || *forced == '\0') return select_isa(best_isa());
    IsaLevel isa;
    if (!parse_isa(forced, &isa)) {
        return std::string("CODL_CPU_DISPATCH=") + forced +
               " is not a dispatch level; expected one of scalar, avx2, avx512, sve, amx";
    }
    const std::string error = select_isa(isa);
    return error.empty() ? "" : "CODL_CPU_DISPATCH=" + std::string(forced) + ": " + error;
}

IsaLevel active_isa() { return active().load()->isa; }

const KernelTable& active_table() { return *active().load(); }

std::string compiler_description() {
#if defined(__clang__)
    return "Clang " __clang_version__;
#elif defined(__GNUC__)
    return "GCC " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
           std::to_string(__GNUC_PATCHLEVEL__);
#else
    return "unknown";
#endif
}

}  // namespace codl
