// Argument checks shared by the bindings: every buffer that crosses into the core is checked
// for element type, C-contiguity, writability and length, and a mismatch raises TypeError or
// ValueError naming what was expected and what came. No data is copied.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
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

// One per kernel family of codl/kernel_families.def (src/bindings/<family>.cpp), plus the
// .codl file format.
#define CODL_KERNEL_FAMILY(name, Table) void register_##name(py::module_& m);
#include "codl/kernel_families.def"
void register_format(py::module_& m);

}  // namespace codl_bindings
