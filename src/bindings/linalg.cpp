// Bindings of the batched dense factorizations: lists of NumPy views in and out (zero-copy),
// every buffer checked (dtype, 2-D shape, contiguity, writability, sizes, list lengths), the
// GIL released around the core.
#include <pybind11/stl.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "buffers.h"
#include "codl/linalg.h"

namespace codl_bindings {
namespace {

struct Matrix {
    void* data;
    std::size_t rows, cols;
};

std::string indexed(const char* name, std::size_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; }

std::string shape_text(const py::buffer_info& info) {
    std::string text = "(";
    for (py::ssize_t d = 0; d < info.ndim; ++d) text += (d ? ", " : "") + std::to_string(info.shape[d]);
    return text + (info.ndim == 1 ? ",)" : ")");
}

// 'f' or 'd' from the first matrix of a list; TypeError for anything else.
char float_format(const py::handle& object, const std::string& name) {
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(object).request();
    const char code = info.format.empty() ? '\0' : info.format.back();
    if ((code == 'f' || code == 'd') && info.format.size() <= 2) return code;
    throw py::type_error(name + ": expected float32 or float64 elements, received format '" + info.format + "'");
}

py::buffer as_buffer(const py::handle& object, const std::string& name) {
    if (!PyObject_CheckBuffer(object.ptr())) {
        throw py::type_error(name + ": expected a buffer (NumPy array), received " +
                             std::string(py::str(py::type::of(object).attr("__name__"))));
    }
    return py::reinterpret_borrow<py::buffer>(object);
}

Matrix checked_matrix(const py::handle& object, const std::string& name, char format, bool writable) {
    const py::buffer buffer = as_buffer(object, name);
    const Buffer flat = checked_buffer(buffer, name.c_str(), format, writable);
    const py::buffer_info info = buffer.request();
    if (info.ndim != 2) {
        throw py::value_error(name + ": expected a 2-D matrix, received shape " + shape_text(info));
    }
    return {flat.data, static_cast<std::size_t>(info.shape[0]), static_cast<std::size_t>(info.shape[1])};
}

Matrix checked_square(const py::handle& object, const std::string& name, char format, bool writable) {
    const Matrix m = checked_matrix(object, name, format, writable);
    if (m.rows != m.cols) {
        throw py::value_error(name + ": expected a square matrix, received shape (" + std::to_string(m.rows) +
                              ", " + std::to_string(m.cols) + ")");
    }
    return m;
}

void require_length(const py::list& list, const char* name, std::size_t expected, const char* reference) {
    if (list.size() != expected) {
        throw py::value_error(std::string(name) + ": expected " + std::to_string(expected) + " entries (one per " +
                              reference + "), received " + std::to_string(list.size()));
    }
}

void require_same_shape(const Matrix& out, const Matrix& in, const std::string& name) {
    if (out.rows != in.rows || out.cols != in.cols) {
        throw py::value_error(name + ": expected shape (" + std::to_string(in.rows) + ", " + std::to_string(in.cols) +
                              ") like its input, received (" + std::to_string(out.rows) + ", " +
                              std::to_string(out.cols) + ")");
    }
}

template <class T>
std::vector<std::pair<int, std::size_t>> run_damped(const py::list& mats, const std::vector<double>& dampings,
                                                     const py::list& outs, int num_threads, bool inverse,
                                                     char format) {
    std::vector<codl::DampedJob<T>> jobs;
    jobs.reserve(mats.size());
    for (std::size_t i = 0; i < mats.size(); ++i) {
        const Matrix in = checked_square(mats[i], indexed("mats", i), format, false);
        const Matrix out = checked_square(outs[i], indexed("outs", i), format, true);
        require_same_shape(out, in, indexed("outs", i));
        jobs.push_back({static_cast<const T*>(in.data), static_cast<T*>(out.data), in.rows,
                        static_cast<T>(dampings[i])});
    }
    std::vector<codl::LinalgResult> results(jobs.size());
    {
        py::gil_scoped_release release;
        if (inverse) {
            codl::damped_inverse(jobs.data(), jobs.size(), results.data(), num_threads);
        } else {
            codl::damped_cholesky(jobs.data(), jobs.size(), results.data(), num_threads);
        }
    }
    std::vector<std::pair<int, std::size_t>> statuses;
    statuses.reserve(results.size());
    for (const codl::LinalgResult& r : results) statuses.emplace_back(static_cast<int>(r.status), r.pivot);
    return statuses;
}

std::vector<std::pair<int, std::size_t>> damped(const py::list& mats, const std::vector<double>& dampings,
                                                const py::list& outs, int num_threads, bool inverse) {
    if (dampings.size() != mats.size()) {
        throw py::value_error("dampings: expected " + std::to_string(mats.size()) +
                              " entries (one per matrix), received " + std::to_string(dampings.size()));
    }
    require_length(outs, "outs", mats.size(), "matrix");
    checked_threads(num_threads);
    for (std::size_t i = 0; i < dampings.size(); ++i) {
        if (!std::isfinite(dampings[i]) || dampings[i] < 0) {
            throw py::value_error("dampings[" + std::to_string(i) + "]: expected a finite value >= 0, received " +
                                  std::string(py::str(py::float_(dampings[i]))));
        }
    }
    if (mats.empty()) return {};
    const char format = float_format(as_buffer(mats[0], "mats[0]"), "mats[0]");
    return format == 'f' ? run_damped<float>(mats, dampings, outs, num_threads, inverse, format)
                         : run_damped<double>(mats, dampings, outs, num_threads, inverse, format);
}

template <class T>
void run_solve(const py::list& factors, const py::list& rhs, const py::list& outs, codl::SolveSide side,
               int num_threads, char format) {
    std::vector<codl::SolveJob<T>> jobs;
    jobs.reserve(factors.size());
    for (std::size_t i = 0; i < factors.size(); ++i) {
        const Matrix l = checked_square(factors[i], indexed("factors", i), format, false);
        const Matrix b = checked_matrix(rhs[i], indexed("rhs", i), format, false);
        const Matrix x = checked_matrix(outs[i], indexed("outs", i), format, true);
        const std::size_t shared = side == codl::SolveSide::left ? b.rows : b.cols;
        if (shared != l.rows) {
            const std::string wanted = side == codl::SolveSide::left ? "(" + std::to_string(l.rows) + ", m)"
                                                                     : "(m, " + std::to_string(l.rows) + ")";
            throw py::value_error(indexed("rhs", i) + ": expected shape " + wanted + " for a factor of size " +
                                  std::to_string(l.rows) + ", received (" + std::to_string(b.rows) + ", " +
                                  std::to_string(b.cols) + ")");
        }
        require_same_shape(x, b, indexed("outs", i));
        const std::size_t m = side == codl::SolveSide::left ? b.cols : b.rows;
        jobs.push_back({static_cast<const T*>(l.data), l.rows, static_cast<const T*>(b.data),
                        static_cast<T*>(x.data), m});
    }
    py::gil_scoped_release release;
    codl::cholesky_solve(jobs.data(), jobs.size(), side, num_threads);
}

template <class T>
void pack_matrix(const py::buffer& mat, const py::buffer& out, char format) {
    const Matrix m = checked_square(mat, "mat", format, false);
    const Buffer packed = checked_buffer(out, "out", format, true);
    if (packed.size != codl::packed_symmetric_size(m.rows)) {
        throw py::value_error("out: expected " + std::to_string(codl::packed_symmetric_size(m.rows)) +
                              " elements (n(n+1)/2 for n=" + std::to_string(m.rows) + "), received " +
                              std::to_string(packed.size));
    }
    py::gil_scoped_release release;
    codl::pack_symmetric(static_cast<const T*>(m.data), m.rows, static_cast<T*>(packed.data));
}

template <class T>
void unpack_matrix(const py::buffer& packed_object, std::size_t n, const py::buffer& out, char format) {
    const Buffer packed = checked_buffer(packed_object, "packed", format, false);
    const Matrix m = checked_square(out, "out", format, true);
    if (packed.size != codl::packed_symmetric_size(n)) {
        throw py::value_error("packed: expected " + std::to_string(codl::packed_symmetric_size(n)) +
                              " elements (n(n+1)/2 for n=" + std::to_string(n) + "), received " +
                              std::to_string(packed.size));
    }
    if (m.rows != n) {
        throw py::value_error("out: expected shape (" + std::to_string(n) + ", " + std::to_string(n) +
                              "), received (" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + ")");
    }
    py::gil_scoped_release release;
    codl::unpack_symmetric(static_cast<const T*>(packed.data), n, static_cast<T*>(m.data));
}

}  // namespace

void register_linalg(py::module_& m) {
    m.def(
        "damped_cholesky",
        [](const py::list& mats, const std::vector<double>& dampings, const py::list& outs, int num_threads) {
            return damped(mats, dampings, outs, num_threads, false);
        },
        py::arg("mats"), py::arg("dampings"), py::arg("outs"), py::arg("num_threads") = 1,
        "outs[i] = L with L L^T = mats[i] + dampings[i] I (upper triangle zero). Returns (status, pivot) per "
        "matrix: 0 ok, 1 not positive definite at pivot, 2 NaN/Inf in the input (either triangle), 3 a result "
        "that overflowed; failed outputs are NaN.");
    m.def(
        "damped_inverse",
        [](const py::list& mats, const std::vector<double>& dampings, const py::list& outs, int num_threads) {
            return damped(mats, dampings, outs, num_threads, true);
        },
        py::arg("mats"), py::arg("dampings"), py::arg("outs"), py::arg("num_threads") = 1,
        "outs[i] = (mats[i] + dampings[i] I)^-1 (both triangles). Returns (status, pivot) per matrix as "
        "damped_cholesky does.");
    m.def(
        "cholesky_solve",
        [](const py::list& factors, const py::list& rhs, const py::list& outs, const std::string& side,
           int num_threads) {
            if (side != "left" && side != "right") {
                throw py::value_error("side: expected 'left' or 'right', received '" + side + "'");
            }
            require_length(rhs, "rhs", factors.size(), "factor");
            require_length(outs, "outs", factors.size(), "factor");
            checked_threads(num_threads);
            if (factors.empty()) return;
            const char format = float_format(as_buffer(factors[0], "factors[0]"), "factors[0]");
            const codl::SolveSide s = side == "left" ? codl::SolveSide::left : codl::SolveSide::right;
            if (format == 'f') {
                run_solve<float>(factors, rhs, outs, s, num_threads, format);
            } else {
                run_solve<double>(factors, rhs, outs, s, num_threads, format);
            }
        },
        py::arg("factors"), py::arg("rhs"), py::arg("outs"), py::arg("side"), py::arg("num_threads") = 1,
        "outs[i] = (L L^T)^-1 rhs[i] (side 'left', rhs n x m) or rhs[i] (L L^T)^-1 (side 'right', rhs m x n).");
    m.def(
        "pack_symmetric",
        [](const py::buffer& mat, const py::buffer& out) {
            if (float_format(mat, "mat") == 'f') {
                pack_matrix<float>(mat, out, 'f');
            } else {
                pack_matrix<double>(mat, out, 'd');
            }
        },
        py::arg("mat"), py::arg("out"), "out = the upper triangle of mat, row by row (n(n+1)/2 values).");
    m.def(
        "unpack_symmetric",
        [](const py::buffer& packed, std::size_t n, const py::buffer& out) {
            if (float_format(packed, "packed") == 'f') {
                unpack_matrix<float>(packed, n, out, 'f');
            } else {
                unpack_matrix<double>(packed, n, out, 'd');
            }
        },
        py::arg("packed"), py::arg("n"), py::arg("out"), "out (n x n, both triangles) from pack_symmetric's layout.");
}

}  // namespace codl_bindings
