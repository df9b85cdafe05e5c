// Bindings of the ternary linear kernels: check, release the GIL, call the core.
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "buffers.h"
#include "codl/ternary.h"

namespace codl_bindings {
namespace {

using LinearKernel = bool (*)(const float*, std::size_t, std::size_t, const std::uint8_t*, const float*,
                              std::size_t, const float*, float*, int);

// One binding per layout / activation mode; they differ in the kernel and the packed row size.
void define_linear(py::module_& m, const char* name, LinearKernel kernel, std::size_t (*padded_k)(std::size_t),
                   std::size_t values_per_byte, const char* packed_what, const char* doc) {
    m.def(
        name,
        [kernel, padded_k, values_per_byte, packed_what](
            const py::buffer& x, std::size_t rows, std::size_t in_features, const py::buffer& packed,
            const py::buffer& alpha, const std::optional<py::buffer>& bias, const py::buffer& out,
            int num_threads) {
            const Buffer input = checked_buffer(x, "x", 'f', false);
            const Buffer weight = checked_buffer(packed, "packed", 'B', false);
            const Buffer scales = checked_buffer(alpha, "alpha", 'f', false);
            const Buffer result = checked_buffer(out, "out", 'f', true);
            const std::size_t out_features = scales.size;
            if (in_features == 0 || out_features == 0) {
                throw py::value_error("in_features, alpha: expected a non-empty weight, received in_features=" +
                                      std::to_string(in_features) + " and " + std::to_string(out_features) +
                                      " scales");
            }
            require_exact(input, "x", rows * in_features, "elements (rows * in_features)");
            require_exact(weight, "packed", out_features * padded_k(in_features) / values_per_byte,
                          packed_what);
            require_exact(result, "out", rows * out_features, "elements (rows * out_features)");
            const float* bias_data = checked_bias(bias, out_features, "elements (out_features)");
            run_released(num_threads, [&] {
                return kernel(static_cast<const float*>(input.data), rows, in_features,
                              static_cast<const std::uint8_t*>(weight.data), static_cast<const float*>(scales.data),
                              out_features, bias_data, static_cast<float*>(result.data), num_threads);
            });
        },
        py::arg("x"), py::arg("rows"), py::arg("in_features"), py::arg("packed"), py::arg("alpha"),
        py::arg("bias"), py::arg("out"), py::arg("num_threads") = 1, doc);
}

std::size_t padded_k2(std::size_t k) { return codl::ternary_padded_k(k); }
std::size_t padded_k3(std::size_t k) { return codl::ternary3_padded_k(k); }

}  // namespace

void register_ternary(py::module_& m) {
    m.def(
        "first_invalid_ternary2_row",
        [](const py::buffer& packed, std::size_t rows, int num_threads) {
            const Buffer weight = checked_buffer(packed, "packed", 'B', false);
            if (rows == 0 || weight.size % rows != 0) {
                throw py::value_error("rows: expected a positive divisor of the " + std::to_string(weight.size) +
                                      " packed bytes, received " + std::to_string(rows));
            }
            checked_threads(num_threads);
            std::size_t first;
            {
                py::gil_scoped_release release;
                first = codl::first_invalid_ternary2_row(static_cast<const std::uint8_t*>(weight.data), rows,
                                                         weight.size / rows, num_threads);
            }
            return first == rows ? -1 : static_cast<long long>(first);
        },
        py::arg("packed"), py::arg("rows"), py::arg("num_threads") = 1,
        "The first of rows equal rows of 2-bit packed ternary codes holding a field 0b11, or -1 if none does.");
    define_linear(m, "ternary_linear_f32", codl::ternary_linear_f32, padded_k2, 4,
                  "elements (out_features rows of ceil(in_features / 128) * 32 bytes)",
                  "out = quantize_int8(x) @ (alpha * codes).T + bias for packed ternary weights.");
    define_linear(m, "ternary3_linear_f32", codl::ternary3_linear_f32, padded_k3, 5,
                  "elements (out_features rows of ceil(in_features / 160) * 32 bytes (base-3 layout))",
                  "out = quantize_int8(x) @ (alpha * codes).T + bias for base-3 packed ternary weights.");
    define_linear(m, "ternary_linear_f32act", codl::ternary_linear_f32act, padded_k2, 4,
                  "elements (out_features rows of ceil(in_features / 128) * 32 bytes)",
                  "out = x @ (alpha * codes).T + bias with float32 activations (no quantization).");
}

}  // namespace codl_bindings
