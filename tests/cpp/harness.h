// A small test harness: named test functions, CHECK that records failures with their place,
// and a closing "N passed, N failed" line. Tests that need an ISA the CPU lacks say so.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "codl/dispatch.h"

namespace codl_test {

struct TestCase {
    std::string name;
    std::function<void()> body;
};

std::vector<TestCase>& registry();
void record_failure(const char* file, int line, const std::string& what);

struct Register {
    Register(const char* name, std::function<void()> body) {
        registry().push_back({name, std::move(body)});
    }
};

// The ISAs built into this binary that this CPU can run; the others are reported as not run.
std::vector<codl::IsaLevel> runnable_isas();

// True when CODL_TEST_EMULATED is set (CI's SVE runs under qemu, 20-50x slower than native):
// the few tests with matrices of 288 to 577 rows then leave those sizes out. The native runs
// keep them, and the sizes left under emulation still cross every block edge of the kernels.
bool emulated();

// While a for_each_isa body runs, the ISA it runs on (failures name it); nullptr outside.
extern const char* current_isa;

// The one way a kernel test covers every ISA: body(isa, table) for each runnable ISA, with
// table = *codl::kernel_table(isa) (the ISA's kernels, reference fallbacks included).
template <class Body>
void for_each_isa(Body&& body) {
    for (codl::IsaLevel isa : runnable_isas()) {
        current_isa = codl::isa_name(isa);
        body(isa, *codl::kernel_table(isa));
        current_isa = nullptr;
    }
}

}  // namespace codl_test

#define CODL_CONCAT_(a, b) a##b
#define CODL_CONCAT(a, b) CODL_CONCAT_(a, b)
#define TEST_CASE(name)                                                                   \
    static void CODL_CONCAT(test_, __LINE__)();                                           \
    static codl_test::Register CODL_CONCAT(register_, __LINE__)(name, CODL_CONCAT(test_, __LINE__)); \
    static void CODL_CONCAT(test_, __LINE__)()

#define CHECK_MSG(cond, msg)                                                              \
    do {                                                                                  \
        if (!(cond)) codl_test::record_failure(__FILE__, __LINE__, std::string(#cond) + " -- " + (msg)); \
    } while (0)
#define CHECK(cond) CHECK_MSG(cond, "")
