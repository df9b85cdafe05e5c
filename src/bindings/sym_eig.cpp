// Binding of the batched symmetric eigendecomposition: check every matrix and output, release
// the GIL, decompose the whole list in one call, return one status per matrix.
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "buffers.h"
#include "codl/sym_eig.h"

namespace codl_bindings {
namespace {

std::string item(const char* list, std::size_t index) {
    return std::string(list) + "[" + std::to_string(index) + "]";
}

// 'f' or 'd' for float32 / float64 buffers (byte-order prefixes allowed), else '\0'.
char float_code(const py::buffer_info& info) {
    const std::string& f = info.format;
    const bool prefix_ok = f.size() == 1 || (f.size() == 2 && (f[0] == '<' || f[0] == '=' || f[0] == '@'));
    const char code = f.empty() ? '\0' : f.back();
    return prefix_ok && (code == 'f' || code == 'd') && info.itemsize == (code == 'f' ? 4 : 8) ? code : '\0';
}

const char* dtype_name(char code) { return code == 'f' ? "float32" : "float64"; }

std::string describe(const py::buffer_info& info) {
    const char code = float_code(info);
    if (code) return dtype_name(code);
    return "format '" + info.format + "' (" + std::to_string(info.itemsize) + "-byte items)";
}

std::string shape_of(const py::buffer_info& info) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < info.ndim; ++d) s += (d ? ", " : "") + std::to_string(info.shape[d]);
    return s + (info.ndim == 1 ? ",)" : ")");
}

py::buffer as_buffer_object(const py::handle& object, const std::string& name) {
    if (!py::isinstance<py::buffer>(object)) {
        throw py::type_error(name + ": expected a buffer (a NumPy array), received " +
                             std::string(py::str(py::type::of(object).attr("__name__"))));
    }
    return py::reinterpret_borrow<py::buffer>(object);
}

void require_dtype(const py::buffer_info& info, const std::string& name, char code) {
    if (float_code(info) != code) {
        throw py::type_error(name + ": expected " + dtype_name(code) + " elements (as mats[0]), received " +
                             describe(info));
    }
}

bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
    const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
    return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

template <typename T>
std::vector<int> decompose(const std::vector<codl::SymEigProblem<T>>& problems, int num_threads) {
    std::vector<codl::SymEigStatus> status(problems.size(), codl::SymEigStatus::ok);
    {
        py::gil_scoped_release release;
        if constexpr (sizeof(T) == 4) {
            codl::sym_eig_f32(problems.data(), problems.size(), status.data(), num_threads);
        } else {
            codl::sym_eig_f64(problems.data(), problems.size(), status.data(), num_threads);
        }
    }
    std::vector<int> codes(status.size());
    for (std::size_t i = 0; i < status.size(); ++i) codes[i] = static_cast<int>(status[i]);
    return codes;
}

}  // namespace

void register_sym_eig(py::module_& m) {
    m.def(
        "sym_eig",
        [](const py::list& mats, const py::list& eigenvalues_out, const py::list& eigenvectors_out,
           int num_threads) -> std::vector<int> {
            checked_threads(num_threads);
            const std::size_t count = mats.size();
            if (eigenvalues_out.size() != count || eigenvectors_out.size() != count) {
                throw py::value_error("eigenvalues_out, eigenvectors_out: expected one per matrix (" +
                                      std::to_string(count) + "), received " +
                                      std::to_string(eigenvalues_out.size()) + " and " +
                                      std::to_string(eigenvectors_out.size()));
            }
            if (count == 0) return {};
            char code = '\0';
            std::vector<codl::SymEigProblem<float>> f32;
            std::vector<codl::SymEigProblem<double>> f64;
            for (std::size_t i = 0; i < count; ++i) {
                const std::string mat_name = item("mats", i), values_name = item("eigenvalues_out", i),
                                  vectors_name = item("eigenvectors_out", i);
                const py::buffer mat = as_buffer_object(mats[i], mat_name);
                const py::buffer values = as_buffer_object(eigenvalues_out[i], values_name);
                const py::buffer vectors = as_buffer_object(eigenvectors_out[i], vectors_name);
                const py::buffer_info info = mat.request(false);
                if (i == 0) {
                    code = float_code(info);
                    if (!code) {
                        throw py::type_error("mats[0]: expected float32 or float64 elements, received " +
                                             describe(info));
                    }
                }
                require_dtype(info, mat_name, code);
                require_dtype(values.request(false), values_name, code);
                require_dtype(vectors.request(false), vectors_name, code);
                if (info.ndim != 2 || info.shape[0] != info.shape[1]) {
                    throw py::value_error(mat_name + ": expected a square 2-D matrix, received shape " +
                                          shape_of(info));
                }
                const std::size_t n = static_cast<std::size_t>(info.shape[0]);
                const Buffer a = checked_buffer(mat, mat_name.c_str(), code, false);
                const Buffer w = checked_buffer(values, values_name.c_str(), code, true);
                const Buffer v = checked_buffer(vectors, vectors_name.c_str(), code, true);
                if (w.size != n) {
                    throw py::value_error(values_name + ": expected " + std::to_string(n) +
                                          " elements (the size of mats[" + std::to_string(i) + "]), received " +
                                          std::to_string(w.size));
                }
                if (v.size != n * n) {
                    throw py::value_error(vectors_name + ": expected " + std::to_string(n * n) +
                                          " elements (n x n for mats[" + std::to_string(i) + "]), received " +
                                          std::to_string(v.size));
                }
                const std::size_t item_bytes = code == 'f' ? 4 : 8;
                if (overlaps(a.data, n * n * item_bytes, v.data, n * n * item_bytes) ||
                    overlaps(a.data, n * n * item_bytes, w.data, n * item_bytes) ||
                    overlaps(v.data, n * n * item_bytes, w.data, n * item_bytes)) {
                    throw py::value_error(mat_name + ", " + values_name + ", " + vectors_name +
                                          ": expected separate memory, received overlapping buffers");
                }
                if (code == 'f') {
                    f32.push_back({static_cast<const float*>(a.data), n, static_cast<float*>(w.data),
                                   static_cast<float*>(v.data)});
                } else {
                    f64.push_back({static_cast<const double*>(a.data), n, static_cast<double*>(w.data),
                                   static_cast<double*>(v.data)});
                }
            }
            return code == 'f' ? decompose(f32, num_threads) : decompose(f64, num_threads);
        },
        py::arg("mats"), py::arg("eigenvalues_out"), py::arg("eigenvectors_out"), py::arg("num_threads") = 1,
        "Eigenvalues (ascending) and eigenvectors (columns) of each symmetric matrix; one status per\n"
        "matrix: 0 ok, 1 no convergence, 2 NaN or Inf in the input (outputs NaN when not 0).");
}

}  // namespace codl_bindings
