// Feature detection: cpuid + xgetbv on x86 (the OS must save the wider registers, not just the
// CPU have them), getauxval(AT_HWCAP) & HWCAP_SVE on Arm Linux.
#include <string>
#include <vector>

#include "codl/dispatch.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define CODL_X86 1
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_SVE
#define HWCAP_SVE (1 << 22)
#endif
#define CODL_ARM64 1
#endif

namespace codl {
namespace {

#if defined(CODL_X86)
std::uint64_t read_xcr0() {
    std::uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

// Linux (5.16+) enables AMX tile data per process, on request: without it the first tile
// instruction raises SIGILL even where XCR0 allows the state.
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}
#endif

CpuFeatures detect() {
    CpuFeatures f;
#if defined(CODL_X86)
    f.arch = "x86_64";
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
    const bool osxsave = (ecx >> 27) & 1;
    f.fma = (ecx >> 12) & 1;
    if (osxsave) {
        const std::uint64_t xcr0 = read_xcr0();
        f.os_saves_ymm = (xcr0 & 0x6) == 0x6;               // SSE and AVX state
        f.os_saves_zmm = f.os_saves_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM0-15, ZMM16-31
        f.os_saves_tiles = (xcr0 & 0x60000) == 0x60000;            // XTILECFG, XTILEDATA
    }
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
        f.avx2 = (ebx >> 5) & 1;
        f.avx512f = (ebx >> 16) & 1;
        f.avx512dq = (ebx >> 17) & 1;
        f.avx512bw = (ebx >> 30) & 1;
        f.avx512vl = (ebx >> 31) & 1;
        f.avx512vnni = (ecx >> 11) & 1;
        f.amx_tile = (edx >> 24) & 1;
        f.amx_int8 = (edx >> 25) & 1;
    }
    if (f.amx_tile && f.amx_int8 && f.os_saves_tiles) f.amx_permitted = request_amx_permission();
#elif defined(CODL_ARM64)
    f.arch = "aarch64";
    f.sve = (getauxval(AT_HWCAP) & HWCAP_SVE) != 0;
#else
    f.arch = "other";
#endif
    return f;
}

}  // namespace

std::vector<std::string> CpuFeatures::names() const {
    std::vector<std::string> out;
    const std::pair<bool, const char*> all[] = {
        {avx2, "avx2"},         {fma, "fma"},           {avx512f, "avx512f"},
        {avx512bw, "avx512bw"}, {avx512dq, "avx512dq"}, {avx512vl, "avx512vl"}, {avx512vnni, "avx512_vnni"},
        {os_saves_ymm, "os_ymm"}, {os_saves_zmm, "os_zmm"}, {amx_tile, "amx_tile"},
        {amx_int8, "amx_int8"}, {os_saves_tiles && amx_permitted, "os_amx"}, {sve, "sve"}};
    for (const auto& [present, name] : all) {
        if (present) out.emplace_back(name);
    }
    if (sve) out.push_back("sve" + std::to_string(sve_vector_bits));
    return out;
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = [] {
        CpuFeatures f = detect();
        // The vector length can only be read by SVE code, so ask the SVE unit when it is built.
#if CODL_HAVE_SVE
        if (f.sve) f.sve_vector_bits = sve::vector_bits();
#endif
        return f;
    }();
    return features;
}

}  // namespace codl
