// Bindings of the sparse (1x4 block) linear kernels: check, release the GIL, call the core.
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "buffers.h"
#include "codl/sparse.h"

namespace codl_bindings {
namespace {

// checked_buffer for the index types, which the shared helper does not name: int32 row
// pointers ('i') and uint16 block columns ('H').
Buffer checked_index_buffer(const py::buffer& object, const char* name, char format, py::ssize_t itemsize,
                            const char* type_name) {
    py::buffer_info info = object.request(false);
    const std::string got = info.format;
    const char code = got.empty() ? '\0' : got.back();
    const bool prefix_ok = got.size() == 1 || (got.size() == 2 && (got[0] == '<' || got[0] == '=' || got[0] == '@'));
    if (!prefix_ok || code != format || info.itemsize != itemsize) {
        throw py::type_error(std::string(name) + ": expected " + type_name + " elements, received format '" + got +
                             "' (" + std::to_string(info.itemsize) + "-byte items)");
    }
    std::size_t size = 1;
    py::ssize_t expected_stride = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] != 1 && info.strides[d] != expected_stride) {
            throw py::value_error(std::string(name) + ": expected a C-contiguous buffer, received strides that skip "
                                                      "memory (call .contiguous() first)");
        }
        expected_stride *= info.shape[d];
        size *= static_cast<std::size_t>(info.shape[d]);
    }
    return {info.ptr, size};
}

struct SparseWeight {
    const std::int32_t* row_ptr;
    const std::uint16_t* cols;
    const std::int8_t* values;
    std::size_t blocks, n, k_blocks;
};

// The weight's buffers and their lengths; the indices themselves are checked by
// first_invalid_sparse_row (the kernels clamp them, so a bad index never reads out of bounds).
SparseWeight checked_weight(const py::buffer& row_ptr, const py::buffer& cols, const py::buffer& values,
                            std::size_t in_features, std::size_t out_features) {
    const Buffer rp = checked_index_buffer(row_ptr, "row_ptr", 'i', 4, "int32");
    const Buffer cl = checked_index_buffer(cols, "cols", 'H', 2, "uint16");
    const Buffer vl = checked_buffer(values, "values", 'b', false);
    if (in_features == 0 || out_features == 0) {
        throw py::value_error("in_features, out_features: expected a non-empty weight, received " +
                              std::to_string(out_features) + " x " + std::to_string(in_features));
    }
    const std::size_t k_blocks = codl::sparse_blocks(in_features);
    if (k_blocks > codl::kSparseMaxBlocks) {
        throw py::value_error("in_features: expected at most " + std::to_string(4 * codl::kSparseMaxBlocks) +
                              " (uint16 block columns), received " + std::to_string(in_features));
    }
    require_exact(rp, "row_ptr", out_features + 1, "elements (out_features + 1)");
    require_exact(vl, "values", 4 * cl.size, "elements (4 per block column)");
    if (cl.size > 0x7FFFFFFF) throw py::value_error("cols: expected at most 2^31 - 1 blocks (int32 row pointers)");
    return {static_cast<const std::int32_t*>(rp.data), static_cast<const std::uint16_t*>(cl.data),
            static_cast<const std::int8_t*>(vl.data), cl.size, out_features, k_blocks};
}

// The float side of a sparse linear call, either layout: x (rows x in_features), the per-row
// weight scales (their count is out_features), an optional bias and the output.
struct LinearIo {
    const float* x;
    const float* scale;
    const float* bias;
    float* out;
    std::size_t out_features;
};

LinearIo checked_io(const py::buffer& x, std::size_t rows, std::size_t in_features, const py::buffer& scale,
                    const std::optional<py::buffer>& bias, const py::buffer& out) {
    const Buffer input = checked_buffer(x, "x", 'f', false);
    const Buffer scales = checked_buffer(scale, "scale", 'f', false);
    const Buffer result = checked_buffer(out, "out", 'f', true);
    const std::size_t out_features = scales.size;
    require_exact(input, "x", rows * in_features, "elements (rows * in_features)");
    require_exact(result, "out", rows * out_features, "elements (rows * out_features)");
    const float* bias_data = checked_bias(bias, out_features, "elements (out_features)");
    return {static_cast<const float*>(input.data), static_cast<const float*>(scales.data), bias_data,
            static_cast<float*>(result.data), out_features};
}

struct PanelWeight {
    const std::uint16_t* masks;
    const std::int32_t* starts;
    const std::int8_t* values;
    std::size_t blocks, n, k_blocks;
};

// The panel layout's buffers and their lengths (one mask and one start per panel and block
// column); the starts themselves are checked by first_invalid_sparse_panel (the kernels clamp).
PanelWeight checked_panels(const py::buffer& masks, const py::buffer& starts, const py::buffer& values,
                           std::size_t in_features, std::size_t out_features) {
    const Buffer mk = checked_index_buffer(masks, "masks", 'H', 2, "uint16");
    const Buffer st = checked_index_buffer(starts, "starts", 'i', 4, "int32");
    const Buffer vl = checked_buffer(values, "values", 'b', false);
    if (in_features == 0 || out_features == 0) {
        throw py::value_error("in_features, out_features: expected a non-empty weight, received " +
                              std::to_string(out_features) + " x " + std::to_string(in_features));
    }
    const std::size_t k_blocks = codl::sparse_blocks(in_features);
    const std::size_t steps = codl::sparse_panels(out_features) * codl::sparse_steps(k_blocks);
    require_exact(mk, "masks", steps, "elements (one per panel of 4 rows and step of 4 block columns)");
    require_exact(st, "starts", steps, "elements (one per panel of 4 rows and step of 4 block columns)");
    if (vl.size % 4 != 0) {
        throw py::value_error("values: expected a multiple of 4 elements (4 per kept block), received " +
                              std::to_string(vl.size));
    }
    if (vl.size / 4 > 0x7FFFFFFF) throw py::value_error("values: expected at most 2^31 - 1 blocks (int32 starts)");
    return {static_cast<const std::uint16_t*>(mk.data), static_cast<const std::int32_t*>(st.data),
            static_cast<const std::int8_t*>(vl.data), vl.size / 4, out_features, k_blocks};
}

}  // namespace

void register_sparse(py::module_& m) {
    m.def(
        "first_invalid_sparse_row",
        [](const py::buffer& row_ptr, const py::buffer& cols, const py::buffer& values, std::size_t in_features,
           std::size_t out_features) {
            const SparseWeight w = checked_weight(row_ptr, cols, values, in_features, out_features);
            std::size_t first;
            {
                py::gil_scoped_release release;
                first = codl::first_invalid_sparse_row(w.row_ptr, w.n, w.cols, w.blocks, w.k_blocks);
            }
            return first == w.n ? -1 : static_cast<long long>(first);
        },
        py::arg("row_ptr"), py::arg("cols"), py::arg("values"), py::arg("in_features"), py::arg("out_features"),
        "The first output row whose row pointers or block columns are malformed, or -1 if none is.");
    m.def(
        "first_invalid_sparse_panel",
        [](const py::buffer& masks, const py::buffer& starts, const py::buffer& values, std::size_t in_features,
           std::size_t out_features) {
            const PanelWeight w = checked_panels(masks, starts, values, in_features, out_features);
            std::size_t first;
            {
                py::gil_scoped_release release;
                first = codl::first_invalid_sparse_panel(w.masks, w.starts, w.n, w.k_blocks, w.blocks);
            }
            return first == codl::sparse_panels(w.n) ? -1 : static_cast<long long>(first);
        },
        py::arg("masks"), py::arg("starts"), py::arg("values"), py::arg("in_features"), py::arg("out_features"),
        "The first panel of 4 rows whose masks or starts are malformed, or -1 if none is.");
    m.def(
        "sparse_panel_linear_f32",
        [](const py::buffer& x, std::size_t rows, std::size_t in_features, const py::buffer& masks,
           const py::buffer& starts, const py::buffer& values, const py::buffer& scale,
           const std::optional<py::buffer>& bias, const py::buffer& out, int num_threads) {
            const LinearIo io = checked_io(x, rows, in_features, scale, bias, out);
            const PanelWeight w = checked_panels(masks, starts, values, in_features, io.out_features);
            run_released(num_threads, [&] {
                return codl::sparse_panel_linear_f32(io.x, rows, in_features, w.masks, w.starts, w.values, w.blocks,
                                                     io.scale, io.out_features, io.bias, io.out, num_threads);
            });
        },
        py::arg("x"), py::arg("rows"), py::arg("in_features"), py::arg("masks"), py::arg("starts"), py::arg("values"),
        py::arg("scale"), py::arg("bias"), py::arg("out"), py::arg("num_threads") = 1,
        "out = quantize_int8(x) @ (scale * W).T + bias for W in row panels (uint16 masks, int32 starts, int8 values).");
    m.def(
        "sparse_linear_f32",
        [](const py::buffer& x, std::size_t rows, std::size_t in_features, const py::buffer& row_ptr,
           const py::buffer& cols, const py::buffer& values, const py::buffer& scale,
           const std::optional<py::buffer>& bias, const py::buffer& out, int num_threads) {
            const LinearIo io = checked_io(x, rows, in_features, scale, bias, out);
            const SparseWeight w = checked_weight(row_ptr, cols, values, in_features, io.out_features);
            run_released(num_threads, [&] {
                return codl::sparse_linear_f32(io.x, rows, in_features, w.row_ptr, w.cols, w.values, w.blocks,
                                               io.scale, io.out_features, io.bias, io.out, num_threads);
            });
        },
        py::arg("x"), py::arg("rows"), py::arg("in_features"), py::arg("row_ptr"), py::arg("cols"), py::arg("values"),
        py::arg("scale"), py::arg("bias"), py::arg("out"), py::arg("num_threads") = 1,
        "out = quantize_int8(x) @ (scale * W).T + bias for W in 1x4 blocks (int32 row_ptr, uint16 cols, int8 values).");
}

}  // namespace codl_bindings
