#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "harness.h"

namespace codl_test {
namespace {
int failures_in_current = 0;
}

std::vector<TestCase>& registry() {
    static std::vector<TestCase> tests;
    return tests;
}

const char* current_isa = nullptr;

void record_failure(const char* file, int line, const std::string& what) {
    if (++failures_in_current > 10) return;
    const std::string isa = current_isa ? std::string("[") + current_isa + "] " : "";
    std::printf("  FAIL %s:%d: %s%s\n", file, line, isa.c_str(), what.c_str());
}

std::vector<codl::IsaLevel> runnable_isas() {
    std::vector<codl::IsaLevel> out;
    for (codl::IsaLevel isa : codl::built_isas()) {
        if (codl::cpu_supports(isa)) out.push_back(isa);
    }
    return out;
}

bool emulated() {
    static const bool value = std::getenv("CODL_TEST_EMULATED") != nullptr;
    return value;
}

}  // namespace codl_test

int main(int argc, char** argv) {
    using namespace codl_test;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows in CI logs as it happens
    const char* filter = argc > 1 ? argv[1] : nullptr;
    const codl::CpuFeatures& f = codl::cpu_features();
    std::string features;
    for (const auto& name : f.names()) features += " " + name;
    std::printf("codl C++ tests on %s, features:%s%s\n", f.arch.c_str(), features.c_str(),
                emulated() ? " (emulated: sizes above 260 left out)" : "");
    for (codl::IsaLevel isa : codl::built_isas()) {
        const bool runs = codl::cpu_supports(isa);
        std::printf("  %-7s built, %s\n", codl::isa_name(isa),
                    runs ? "tested here" : "NOT tested: this CPU cannot run it");
    }
    int passed = 0, failed = 0;
    for (const TestCase& test : registry()) {
        if (filter && test.name.find(filter) == std::string::npos) continue;
        failures_in_current = 0;
        const auto start = std::chrono::steady_clock::now();
        test.body();
        const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
        // The time shows which tests dominate a run under emulation (the SVE stage of CI).
        std::printf("%s %s (%.2f s)\n", failures_in_current ? "FAILED" : "ok    ", test.name.c_str(),
                    seconds.count());
        (failures_in_current ? failed : passed)++;
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
