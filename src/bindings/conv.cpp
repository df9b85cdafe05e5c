// Bindings of the direct convolution: check memory safety (buffer types and lengths against the
// geometry), release the GIL, call the core.
#include <pybind11/stl.h>

#include <vector>
#include <optional>
#include <string>

#include "buffers.h"
#include "codl/conv.h"
#include "codl/pack.h"
#include "codl/ternary.h"

namespace codl_bindings {
namespace {

using Sizes = std::vector<std::size_t>;

// Sequences of a fixed length (shape 4, the per-axis pairs 2).
void require_length(const Sizes& values, std::size_t length, const char* name) {
    if (values.size() != length) {
        throw py::value_error(std::string(name) + ": expected " + std::to_string(length) + " values, received " +
                              std::to_string(values.size()));
    }
}

codl::ConvInput parse_input(const std::string& layout) {
    if (layout == "nchw") return codl::ConvInput::f32_nchw;
    if (layout == "nhwc") return codl::ConvInput::f32_nhwc;
    if (layout == "int8_nhwc") return codl::ConvInput::i8_nhwc;
    throw py::value_error("input_layout: expected 'nchw', 'nhwc' or 'int8_nhwc', received '" + layout + "'");
}

codl::ConvOutput parse_output(const std::string& layout) {
    if (layout == "nchw") return codl::ConvOutput::f32_nchw;
    if (layout == "nhwc") return codl::ConvOutput::f32_nhwc;
    if (layout == "int8_nhwc") return codl::ConvOutput::i8_nhwc;
    throw py::value_error("output_layout: expected 'nchw', 'nhwc' or 'int8_nhwc', received '" + layout + "'");
}

void require_positive(const Sizes& pair, const char* name) {
    require_length(pair, 2, name);
    if (pair[0] == 0 || pair[1] == 0) {
        throw py::value_error(std::string(name) + ": expected positive values, received (" +
                              std::to_string(pair[0]) + ", " + std::to_string(pair[1]) + ")");
    }
}

codl::ConvWeights parse_weights(const std::string& format, bool allow_blocked) {
    if (format == "int8") return codl::ConvWeights::i8;
    if (format == "ternary2") return codl::ConvWeights::ternary2;
    if (allow_blocked && format == "blocked") return codl::ConvWeights::blocked;
    throw py::value_error(std::string("weight_format: expected 'int8', 'ternary2'") +
                          (allow_blocked ? " or 'blocked'" : "") + ", received '" + format + "'");
}

// The weight buffer's check for its format: canonical int8, 2-bit stream, or blocked bytes.
Buffer checked_weights(const py::buffer& weight, codl::ConvWeights format, const codl::ConvGeometry& g) {
    const std::size_t codes = g.out_c * g.reduction();
    switch (format) {
        case codl::ConvWeights::i8: {
            const Buffer w = checked_buffer(weight, "weight", 'b', false);
            require_exact(w, "weight", codes, "elements (out_channels * KH * KW * padded in_channels)");
            return w;
        }
        case codl::ConvWeights::ternary2: {
            const Buffer w = checked_buffer(weight, "weight", 'B', false);
            require_exact(w, "weight", codl::packed_ternary2_bytes(codes),
                          "bytes (out_channels * KH * KW * padded in_channels 2-bit codes)");
            return w;
        }
        case codl::ConvWeights::blocked: break;
    }
    const Buffer w = checked_buffer(weight, "weight", 'b', false);
    require_exact(w, "weight", codl::conv_blocked_bytes(g),
                  "elements (out_channels padded to 16 * KH * KW * padded in_channels)");
    return w;
}

// One layer's geometry from its image's (C, H, W), out_channels and the per-axis pairs,
// checked: positive sizes and a (dilated) kernel that fits the padded image.
codl::ConvGeometry checked_geometry(std::size_t c, std::size_t h, std::size_t w, std::size_t out_c,
                                   const Sizes& kernel_size, const Sizes& stride, const Sizes& padding,
                                   const Sizes& dilation) {
    require_length(padding, 2, "padding");
    require_positive(kernel_size, "kernel_size");
    require_positive(stride, "stride");
    require_positive(dilation, "dilation");
    codl::ConvGeometry g;
    g.in_c = c;
    g.in_h = h;
    g.in_w = w;
    g.out_c = out_c;
    g.kernel_h = kernel_size[0];
    g.kernel_w = kernel_size[1];
    g.stride_h = stride[0];
    g.stride_w = stride[1];
    g.pad_h = padding[0];
    g.pad_w = padding[1];
    g.dilation_h = dilation[0];
    g.dilation_w = dilation[1];
    if (g.in_c == 0 || g.in_h == 0 || g.in_w == 0 || g.out_c == 0) {
        throw py::value_error("shape, out_channels: expected positive sizes, received (C, H, W) = (" +
                              std::to_string(g.in_c) + ", " + std::to_string(g.in_h) + ", " + std::to_string(g.in_w) +
                              ") and " + std::to_string(g.out_c));
    }
    if (g.out_h() == 0 || g.out_w() == 0) {
        throw py::value_error("kernel_size: expected a (dilated) kernel that fits the padded input of " +
                              std::to_string(g.padded_h()) + "x" + std::to_string(g.padded_w()) + ", received " +
                              std::to_string(g.kernel_h) + "x" + std::to_string(g.kernel_w));
    }
    return g;
}

// A chain built once from Python (its buffers kept alive here) and run many times.
class ConvChain {
public:
    explicit ConvChain(const py::list& specs, const Sizes& input_shape) {
        require_length(input_shape, 3, "input_shape");
        input_elements_ = input_shape[0] * input_shape[1] * input_shape[2];
        for (const py::handle& item : specs) {
            const py::tuple spec = py::reinterpret_borrow<py::tuple>(item);
            const std::string kind = spec[0].cast<std::string>();
            codl::ChainLayer layer;
            if (kind == "conv") {
                layer.kind = codl::ChainLayer::Kind::conv;
                codl::ConvArgs& a = layer.conv;
                a.input = parse_input(spec[1].cast<std::string>());
                const Sizes shape = spec[2].cast<Sizes>();  // (C, H, W)
                require_length(shape, 3, "conv shape");
                a.g = checked_geometry(shape[0], shape[1], shape[2], spec[5].cast<std::size_t>(), spec[6].cast<Sizes>(),
                                       spec[7].cast<Sizes>(), spec[8].cast<Sizes>(), spec[9].cast<Sizes>());
                const codl::ConvGeometry& g = a.g;
                a.weights = codl::ConvWeights::blocked;
                a.w = keep(spec[3], "blocked", 'b', codl::conv_blocked_bytes(g));
                a.w_sums = static_cast<const std::int32_t*>(keep(spec[4], "w_sums", 'i', g.out_c_padded()));
                a.w_scale = static_cast<const float*>(keep(spec[10], "weight_scale", 'f', g.out_c));
                a.bias = spec[11].is_none() ? nullptr : static_cast<const float*>(keep(spec[11], "bias", 'f', g.out_c));
                a.relu = spec[12].cast<bool>();
                a.output = parse_output(spec[13].cast<std::string>());
                a.input_scale = spec[14].cast<float>();
                a.output_scale = spec[15].cast<float>();
            } else if (kind == "maxpool2x2") {
                layer.kind = codl::ChainLayer::Kind::maxpool2x2;
                const Sizes shape = spec[1].cast<Sizes>();  // (H, W, C)
                require_length(shape, 3, "pool shape");
                layer.pool_h = shape[0];
                layer.pool_w = shape[1];
                layer.pool_c = shape[2];
            } else if (kind == "linear") {
                layer.kind = codl::ChainLayer::Kind::linear;
                layer.in_features = spec[4].cast<std::size_t>();
                layer.out_features = spec[5].cast<std::size_t>();
                const std::size_t row_bytes = codl::ternary_padded_k(layer.in_features) / 4;
                layer.packed = static_cast<const std::uint8_t*>(keep(spec[1], "packed", 'B', layer.out_features * row_bytes));
                layer.alpha = static_cast<const float*>(keep(spec[2], "alpha", 'f', layer.out_features));
                layer.bias = spec[3].is_none() ? nullptr
                                               : static_cast<const float*>(keep(spec[3], "bias", 'f', layer.out_features));
                layer.input_scale = spec[6].cast<float>();
                layer.relu = spec[7].cast<bool>();
            } else {
                throw py::value_error("layers: expected kinds 'conv', 'maxpool2x2' or 'linear', received '" + kind + "'");
            }
            layers_.push_back(layer);
        }
        if (layers_.empty()) throw py::value_error("layers: expected at least one layer, received none");
        if (codl::check_chain(layers_.data(), layers_.size(), input_elements_, &output_elements_) !=
            codl::ChainStatus::ok) {
            throw py::value_error("layers: expected each layer to take its predecessor's output (kind and size), "
                                  "and a float32 output last");
        }
    }

    std::size_t output_elements() const { return output_elements_; }

    void run(const py::buffer& x, std::size_t batch, const py::buffer& out, int num_threads) const {
        const Buffer input = checked_buffer(x, "x", 'f', false);
        require_exact(input, "x", batch * input_elements_, "elements (batch * C * H * W of the chain's input)");
        const Buffer result = checked_buffer(out, "out", 'f', true);
        require_exact(result, "out", batch * output_elements_, "elements (batch * the chain's outputs)");
        checked_threads(num_threads);
        codl::ChainStatus status;
        {
            py::gil_scoped_release release;
            status = codl::run_chain(layers_.data(), layers_.size(), static_cast<const float*>(input.data), batch,
                                     static_cast<float*>(result.data), num_threads);
        }
        switch (status) {
            case codl::ChainStatus::ok: return;
            case codl::ChainStatus::nonfinite_input: throw py::value_error("x: expected finite values, received NaN or Inf");
            case codl::ChainStatus::invalid_ternary_code:
                throw py::value_error("weight: expected 2-bit fields 0b00, 0b01 or 0b10, received 0b11");
            case codl::ChainStatus::bad_scale: throw py::value_error("layers: a scale is not positive and finite");
            case codl::ChainStatus::mismatched_layers: throw py::value_error("layers: mismatched layers");
        }
    }

private:
    // Checks a buffer of the chain (type, exact length) and keeps it alive with the chain.
    const void* keep(const py::handle& object, const char* name, char format, std::size_t elements) {
        const py::buffer buffer = py::reinterpret_borrow<py::buffer>(object);
        const Buffer checked = checked_buffer(buffer, name, format, false);
        require_exact(checked, name, elements, "elements");
        keep_alive_.push_back(py::reinterpret_borrow<py::object>(object));
        return checked.data;
    }

    std::vector<codl::ChainLayer> layers_;
    std::vector<py::object> keep_alive_;
    std::size_t input_elements_ = 0, output_elements_ = 0;
};

const ConvChain& chain_of(const py::object& object) {
    if (!PyCapsule_IsValid(object.ptr(), "codl.ConvChain")) {
        throw py::type_error("chain: expected an object from conv_chain_build");
    }
    return *static_cast<const ConvChain*>(PyCapsule_GetPointer(object.ptr(), "codl.ConvChain"));
}

const char* kInvalidTernary = "weight: expected 2-bit fields 0b00, 0b01 or 0b10 (codes -1, 0, +1), received 0b11";

}  // namespace

void register_conv(py::module_& m) {
    m.def(
        "conv2d_i8",
        [](const py::buffer& x, const std::string& input_layout, const Sizes& shape,
           const py::buffer& weight, const std::string& weight_format, std::size_t out_channels,
           const Sizes& kernel_size, const Sizes& stride, const Sizes& padding, const Sizes& dilation,
           const py::buffer& weight_scale, const std::optional<py::buffer>& bias, bool relu,
           const py::buffer& out, const std::string& output_layout, float input_scale, float output_scale,
           int num_threads, const std::optional<py::buffer>& w_sums) {
            codl::ConvArgs a;
            a.input = parse_input(input_layout);
            a.output = parse_output(output_layout);
            a.weights = parse_weights(weight_format, true);
            require_length(shape, 4, "shape");
            a.batch = shape[0];
            if (a.batch == 0) throw py::value_error("shape: expected a positive batch, received 0");
            a.g = checked_geometry(shape[1], shape[2], shape[3], out_channels, kernel_size, stride, padding, dilation);
            const codl::ConvGeometry& g = a.g;
            const bool int8_in = a.input == codl::ConvInput::i8_nhwc, int8_out = a.output == codl::ConvOutput::i8_nhwc;
            const Buffer input = checked_buffer(x, "x", int8_in ? 'b' : 'f', false);
            require_exact(input, "x", a.batch * g.in_c * g.in_h * g.in_w, "elements (N * C * H * W)");
            const Buffer w = checked_weights(weight, a.weights, g);
            if (a.weights == codl::ConvWeights::blocked) {
                if (!w_sums) throw py::value_error("w_sums: expected the blocked weights' sums, received None");
                const Buffer sums = checked_buffer(*w_sums, "w_sums", 'i', false);
                require_exact(sums, "w_sums", g.out_c_padded(), "elements (out_channels padded to 16)");
                a.w_sums = static_cast<const std::int32_t*>(sums.data);
            }
            const Buffer scales = checked_buffer(weight_scale, "weight_scale", 'f', false);
            require_exact(scales, "weight_scale", g.out_c, "elements (out_channels)");
            a.bias = checked_bias(bias, g.out_c, "elements (out_channels)");
            const Buffer result = checked_buffer(out, "out", int8_out ? 'b' : 'f', true);
            require_exact(result, "out", a.batch * g.out_c * g.out_h() * g.out_w(),
                          "elements (N * out_channels * out_h * out_w)");
            checked_threads(num_threads);
            a.x = input.data;
            a.w = w.data;
            a.w_scale = static_cast<const float*>(scales.data);
            a.relu = relu;
            a.out = result.data;
            a.input_scale = input_scale;
            a.output_scale = output_scale;
            float used = 0.0f;
            a.used_input_scale = &used;
            codl::ConvStatus status;
            {
                py::gil_scoped_release release;
                status = codl::conv2d(a, num_threads);
            }
            switch (status) {
                case codl::ConvStatus::ok: break;
                case codl::ConvStatus::nonfinite_input:
                    throw py::value_error("x: expected finite values, received NaN or Inf");
                case codl::ConvStatus::invalid_ternary_code: throw py::value_error(kInvalidTernary);
                case codl::ConvStatus::bad_scale:
                    throw py::value_error("input_scale, output_scale: expected positive finite scales (input_scale "
                                          "0 means absmax for float input), received " +
                                          std::to_string(input_scale) + " and " + std::to_string(output_scale));
            }
            return used;
        },
        py::arg("x"), py::arg("input_layout"), py::arg("shape"), py::arg("weight"), py::arg("weight_format"),
        py::arg("out_channels"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("weight_scale"), py::arg("bias"), py::arg("relu"), py::arg("out"),
        py::arg("output_layout"), py::arg("input_scale"), py::arg("output_scale"), py::arg("num_threads") = 1,
        py::arg("w_sums") = py::none(),
        "Direct int8 convolution (weights int8 or 2-bit ternary in [Cout][KH][KW][Cin padded to 4], or "
        "blocked by conv_prepare_weights with their w_sums); returns the activation scale used.");
    m.def(
        "conv_prepare_weights",
        [](const py::buffer& weight, const std::string& weight_format, std::size_t out_channels,
           std::size_t in_channels, const Sizes& kernel_size, const py::buffer& blocked, const py::buffer& w_sums) {
            codl::ConvGeometry g;
            require_positive(kernel_size, "kernel_size");
            if (out_channels == 0 || in_channels == 0) {
                throw py::value_error("out_channels, in_channels: expected positive sizes, received " +
                                      std::to_string(out_channels) + " and " + std::to_string(in_channels));
            }
            g.out_c = out_channels;
            g.in_c = in_channels;
            g.kernel_h = kernel_size[0];
            g.kernel_w = kernel_size[1];
            const codl::ConvWeights format = parse_weights(weight_format, false);
            const Buffer w = checked_weights(weight, format, g);
            const Buffer out = checked_buffer(blocked, "blocked", 'b', true);
            require_exact(out, "blocked", codl::conv_blocked_bytes(g),
                          "elements (out_channels padded to 16 * KH * KW * padded in_channels)");
            const Buffer sums = checked_buffer(w_sums, "w_sums", 'i', true);
            require_exact(sums, "w_sums", g.out_c_padded(), "elements (out_channels padded to 16)");
            codl::ConvStatus status;
            {
                py::gil_scoped_release release;
                status = codl::conv_prepare_weights(g, format, w.data, static_cast<std::int8_t*>(out.data),
                                                    static_cast<std::int32_t*>(sums.data));
            }
            if (status == codl::ConvStatus::invalid_ternary_code) throw py::value_error(kInvalidTernary);
        },
        py::arg("weight"), py::arg("weight_format"), py::arg("out_channels"), py::arg("in_channels"),
        py::arg("kernel_size"), py::arg("blocked"), py::arg("w_sums"),
        "The blocked weights and their sums, once, for conv2d_i8's 'blocked' format.");
    // The chain is an opaque capsule handed back to conv_chain_run (functions, not a class: the
    // stub checks compare functions).
    m.def(
        "conv_chain_build",
        [](const py::list& layers, const Sizes& input_shape) -> py::object {
            auto* chain = new ConvChain(layers, input_shape);
            return py::capsule(chain, "codl.ConvChain", [](PyObject* capsule) {
                delete static_cast<ConvChain*>(PyCapsule_GetPointer(capsule, "codl.ConvChain"));
            });
        },
        py::arg("layers"), py::arg("input_shape"),
        "A chain of conv, 2x2 max-pool and ternary linear layers (an opaque object for conv_chain_run).");
    m.def(
        "conv_chain_output_elements",
        [](const py::object& chain) { return chain_of(chain).output_elements(); }, py::arg("chain"),
        "Outputs per image of a chain from conv_chain_build.");
    m.def(
        "conv_chain_run",
        [](const py::object& chain, const py::buffer& x, std::size_t batch, const py::buffer& out, int num_threads) {
            chain_of(chain).run(x, batch, out, num_threads);
        },
        py::arg("chain"), py::arg("x"), py::arg("batch"), py::arg("out"), py::arg("num_threads") = 1,
        "Runs a chain from conv_chain_build on batch float32 images into out.");
    m.def(
        "conv_blocked_bytes",
        [](std::size_t out_channels, std::size_t in_channels, const Sizes& kernel_size) {
            require_positive(kernel_size, "kernel_size");
            codl::ConvGeometry g;
            g.out_c = out_channels;
            g.in_c = in_channels;
            g.kernel_h = kernel_size[0];
            g.kernel_w = kernel_size[1];
            return codl::conv_blocked_bytes(g);
        },
        py::arg("out_channels"), py::arg("in_channels"), py::arg("kernel_size"),
        "Bytes of conv_prepare_weights' blocked weights (first layers fold their patches).");
    m.def(
        "maxpool2x2_i8_nhwc",
        [](const py::buffer& x, const Sizes& shape, const py::buffer& out, int num_threads) {
            require_length(shape, 4, "shape");
            const Buffer input = checked_buffer(x, "x", 'b', false);
            const Buffer result = checked_buffer(out, "out", 'b', true);
            const std::size_t n = shape[0], h = shape[1], w = shape[2], c = shape[3];
            require_exact(input, "x", n * h * w * c, "elements (N * H * W * C)");
            require_exact(result, "out", n * (h / 2) * (w / 2) * c, "elements (N * H/2 * W/2 * C)");
            checked_threads(num_threads);
            py::gil_scoped_release release;
            codl::maxpool2x2_i8_nhwc(static_cast<const std::int8_t*>(input.data), n, h, w, c,
                                     static_cast<std::int8_t*>(result.data), num_threads);
        },
        py::arg("x"), py::arg("shape"), py::arg("out"), py::arg("num_threads") = 1,
        "2x2 max pooling, stride 2, of int8 NHWC activations.");
}

}  // namespace codl_bindings
