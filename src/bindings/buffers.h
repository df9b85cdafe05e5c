// Argument checks shared by the bindings: every buffer that crosses into the core is checked
// for element type, C-contiguity, writability and length, and a mismatch raises TypeError or
// ValueError naming what was expected and what came. No data is copied.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <optional>
#include <string>

namespace codl_bindings {

namespace py = pybind11;

struct Buffer {
    void* data;
    std::size_t size;  // elements
};

// `format` is the struct-module code expected ('f' float32, 'b' int8, 'B' uint8).
Buffer checked_buffer(const py::buffer& object, const char* name, char format, bool writable);

// Raises ValueError unless buffer holds at least `needed` elements.
void require_size(const Buffer& buffer, const char* name, std::size_t needed, const char* why);
// Raises ValueError unless buffer holds exactly `expected` elements: "<name>: expected <expected>
// <what>, received <size>", `what` naming the unit and where the count comes from.
void require_exact(const Buffer& buffer, const char* name, std::size_t expected, const char* what);

int checked_threads(int num_threads);

// An optional float32 bias of exactly `count` elements ("<what>" names where the count comes
// from, e.g. "elements (out_features)"), or null when none was given.
const float* checked_bias(const std::optional<py::buffer>& bias, std::size_t count, const char* what);

// Runs a layer call that returns false on NaN or Inf in its input x, without the GIL, after
// checking the thread count; raises ValueError if it returned false.
template <typename Call>
void run_released(int num_threads, Call call) {
    checked_threads(num_threads);
    bool finite;
    {
        py::gil_scoped_release release;
        finite = call();
    }
    if (!finite) throw py::value_error("x: expected finite values, received NaN or Inf");
}

// One per kernel family of codl/kernel_families.def (src/bindings/<family>.cpp), plus the
// .codl file format.
#define CODL_KERNEL_FAMILY(name, Table) void register_##name(py::module_& m);
#include "codl/kernel_families.def"
void register_format(py::module_& m);

}  // namespace codl_bindings
