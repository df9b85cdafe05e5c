// The extension codl._C: selects the kernel table on import (CODL_CPU_DISPATCH may force one,
// and an impossible request fails the import with the reason) and exposes the core.
#include <pybind11/stl.h>

#include "bindings/buffers.h"
#include "codl/dispatch.h"
#include "codl/parallel.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "codl's C++ core (torch-free); use it through codl, not directly.";
    const std::string dispatch_error = codl::select_isa_from_environment();
    if (!dispatch_error.empty()) throw py::import_error("codl: " + dispatch_error);

    m.attr("__version__") = CODL_VERSION;
    m.def("native_info", [] {
        const codl::CpuFeatures& f = codl::cpu_features();
        py::list built, runnable;
        for (codl::IsaLevel isa : codl::built_isas()) {
            built.append(codl::isa_name(isa));
            if (codl::cpu_supports(isa)) runnable.append(codl::isa_name(isa));
        }
        py::dict info;
        info["compiler"] = codl::compiler_description();
        info["arch"] = f.arch;
        info["isas_built"] = built;
        info["isas_runnable"] = runnable;
        info["cpu_features"] = f.names();
        info["sve_vector_bits"] = f.sve_vector_bits;
        info["dispatch"] = codl::isa_name(codl::active_isa());
        info["best_dispatch"] = codl::isa_name(codl::best_isa());
        info["pool_threads_started"] = codl::pool_threads_started();
        return info;
    });
    m.def("get_dispatch", [] { return std::string(codl::isa_name(codl::active_isa())); });
    m.def(
        "set_dispatch",
        [](const std::string& name) {
            codl::IsaLevel isa;
            if (!codl::parse_isa(name, &isa)) {
                throw py::value_error("dispatch level: expected one of scalar, avx2, avx512, sve; received '" + name + "'");
            }
            const std::string error = codl::select_isa(isa);
            if (!error.empty()) throw py::value_error(error);
        },
        py::arg("level"));
    m.def(
        "buffer_address",
        [](const py::buffer& b) { return reinterpret_cast<std::uintptr_t>(b.request().ptr); },
        py::arg("buffer"), "The address the core would see for this buffer (tests use it to prove no copy).");
#define CODL_KERNEL_FAMILY(name, Table) codl_bindings::register_##name(m);
#include "codl/kernel_families.def"
    codl_bindings::register_format(m);
}
