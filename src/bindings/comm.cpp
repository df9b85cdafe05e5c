// Bindings of the gradient codecs (codl/comm.h): check every buffer and parameter, release the
// GIL, call the core. Non-finite gradients and corrupt payloads raise ValueError.
#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "buffers.h"
#include "codl/comm.h"

namespace codl_bindings {
namespace {

std::size_t checked_block(long long block, bool multiple_of_8) {
    if (block <= 0 || (multiple_of_8 && block % 8 != 0)) {
        throw py::value_error(std::string("block: expected a positive number of values") +
                              (multiple_of_8 ? " divisible by 8" : "") + ", received " +
                              std::to_string(block));
    }
    return static_cast<std::size_t>(block);
}

unsigned checked_levels(long long levels) {
    if (levels < 2 || levels > 256) {
        throw py::value_error("levels: expected 2 to 256 quantization levels, received " +
                              std::to_string(levels));
    }
    return static_cast<unsigned>(levels);
}

// The optional error-feedback buffer: float32, writable, as long as x.
float* error_buffer(const std::optional<py::buffer>& error, std::size_t n, const char* name) {
    if (!error) return nullptr;
    const Buffer e = checked_buffer(*error, name, 'f', true);
    require_exact(e, name, n, "float32 values (one per gradient value)");
    return static_cast<float*>(e.data);
}

void raise_non_finite() {
    throw py::value_error(
        "x: non-finite gradient values (NaN or Inf, or a block sum that overflows float32); "
        "the payload and error buffer are partly written");
}

}  // namespace

void register_comm(py::module_& m) {
    m.def(
        "comm_counter_uniform",
        [](std::uint64_t seed, std::uint64_t key, std::uint64_t step, const py::buffer& out) {
            const Buffer values = checked_buffer(out, "out", 'f', true);
            py::gil_scoped_release release;
            const std::uint64_t stream = codl::counter_stream(seed, key, step);
            auto* u = static_cast<float*>(values.data);
            for (std::size_t i = 0; i < values.size; ++i) u[i] = codl::counter_uniform(stream, i);
        },
        py::arg("seed"), py::arg("key"), py::arg("step"), py::arg("out"),
        "out[i] = the counter-based generator's uniform draw i for (seed, key, step).");

    // Int8 and sign: the same shape of call.
    struct BlockCodec {
        const char* encode_name;
        const char* decode_name;
        bool needs_multiple_of_8;
        std::size_t (*bytes)(std::size_t, std::size_t);
        bool (*encode)(const float*, float*, std::size_t, std::size_t, std::uint8_t*, int);
        void (*decode)(const std::uint8_t*, std::size_t, std::size_t, float*, bool, int);
    };
    static const BlockCodec codecs[] = {
        {"comm_int8_encode", "comm_int8_decode", false,
         [](std::size_t n, std::size_t b) { return codl::int8_payload_bytes(n, b); },
         codl::int8_encode, codl::int8_decode},
        {"comm_sign_encode", "comm_sign_decode", true,
         [](std::size_t n, std::size_t b) { return codl::sign_payload_bytes(n, b); },
         codl::sign_encode, codl::sign_decode},
    };
    for (const BlockCodec& codec : codecs) {
        m.def(
            codec.encode_name,
            [&codec](const py::buffer& x, const std::optional<py::buffer>& error, long long block,
                     const py::buffer& payload, int num_threads) {
                const std::size_t b = checked_block(block, codec.needs_multiple_of_8);
                const Buffer in = checked_buffer(x, "x", 'f', false);
                float* e = error_buffer(error, in.size, "error");
                const Buffer out = checked_buffer(payload, "payload", 'B', true);
                require_exact(out, "payload", codec.bytes(in.size, b), "bytes");
                checked_threads(num_threads);
                bool finite;
                {
                    py::gil_scoped_release release;
                    finite = codec.encode(static_cast<const float*>(in.data), e, in.size, b,
                                          static_cast<std::uint8_t*>(out.data), num_threads);
                }
                if (!finite) raise_non_finite();
            },
            py::arg("x"), py::arg("error"), py::arg("block"), py::arg("payload"),
            py::arg("num_threads") = 1);
        m.def(
            codec.decode_name,
            [&codec](const py::buffer& payload, long long block, const py::buffer& out,
                     bool accumulate, int num_threads) {
                const std::size_t b = checked_block(block, codec.needs_multiple_of_8);
                const Buffer values = checked_buffer(out, "out", 'f', true);
                const Buffer in = checked_buffer(payload, "payload", 'B', false);
                require_exact(in, "payload", codec.bytes(values.size, b), "bytes");
                checked_threads(num_threads);
                py::gil_scoped_release release;
                codec.decode(static_cast<const std::uint8_t*>(in.data), values.size, b,
                             static_cast<float*>(values.data), accumulate, num_threads);
            },
            py::arg("payload"), py::arg("block"), py::arg("out"), py::arg("accumulate"),
            py::arg("num_threads") = 1);
    }

    m.def(
        "comm_terngrad_encode",
        [](const py::buffer& x, const std::optional<py::buffer>& error, long long block,
           std::uint64_t seed, std::uint64_t key, std::uint64_t step, const py::buffer& payload,
           int num_threads) {
            const std::size_t b = checked_block(block, true);
            const Buffer in = checked_buffer(x, "x", 'f', false);
            float* e = error_buffer(error, in.size, "error");
            const Buffer out = checked_buffer(payload, "payload", 'B', true);
            require_exact(out, "payload", codl::terngrad_payload_bytes(in.size, b), "bytes");
            checked_threads(num_threads);
            bool finite;
            {
                py::gil_scoped_release release;
                finite = codl::terngrad_encode(static_cast<const float*>(in.data), e, in.size, b,
                                               codl::counter_stream(seed, key, step),
                                               static_cast<std::uint8_t*>(out.data), num_threads);
            }
            if (!finite) raise_non_finite();
        },
        py::arg("x"), py::arg("error"), py::arg("block"), py::arg("seed"), py::arg("key"),
        py::arg("step"), py::arg("payload"), py::arg("num_threads") = 1);
    m.def(
        "comm_terngrad_decode",
        [](const py::buffer& payload, long long block, const py::buffer& out, bool accumulate,
           int num_threads) {
            const std::size_t b = checked_block(block, true);
            const Buffer values = checked_buffer(out, "out", 'f', true);
            const Buffer in = checked_buffer(payload, "payload", 'B', false);
            require_exact(in, "payload", codl::terngrad_payload_bytes(values.size, b), "bytes");
            checked_threads(num_threads);
            bool valid;
            {
                py::gil_scoped_release release;
                valid = codl::terngrad_decode(static_cast<const std::uint8_t*>(in.data),
                                              values.size, b, static_cast<float*>(values.data),
                                              accumulate, num_threads);
            }
            if (!valid) {
                throw py::value_error("payload: corrupt TernGrad codes, a 2-bit field holds 0b11");
            }
        },
        py::arg("payload"), py::arg("block"), py::arg("out"), py::arg("accumulate"),
        py::arg("num_threads") = 1);

    m.def(
        "comm_qsgd_encode",
        [](const py::buffer& x, const std::optional<py::buffer>& error, long long block,
           long long levels, std::uint64_t seed, std::uint64_t key, std::uint64_t step,
           const py::buffer& payload, int num_threads) {
            const std::size_t b = checked_block(block, true);
            const unsigned s = checked_levels(levels);
            const Buffer in = checked_buffer(x, "x", 'f', false);
            float* e = error_buffer(error, in.size, "error");
            const Buffer out = checked_buffer(payload, "payload", 'B', true);
            require_exact(out, "payload", codl::qsgd_payload_bytes(in.size, b, s), "bytes");
            checked_threads(num_threads);
            bool finite;
            {
                py::gil_scoped_release release;
                finite = codl::qsgd_encode(static_cast<const float*>(in.data), e, in.size, b, s,
                                           codl::counter_stream(seed, key, step),
                                           static_cast<std::uint8_t*>(out.data), num_threads);
            }
            if (!finite) raise_non_finite();
        },
        py::arg("x"), py::arg("error"), py::arg("block"), py::arg("levels"), py::arg("seed"),
        py::arg("key"), py::arg("step"), py::arg("payload"), py::arg("num_threads") = 1);
    m.def(
        "comm_qsgd_decode",
        [](const py::buffer& payload, long long block, long long levels, const py::buffer& out,
           bool accumulate, int num_threads) {
            const std::size_t b = checked_block(block, true);
            const unsigned s = checked_levels(levels);
            const Buffer values = checked_buffer(out, "out", 'f', true);
            const Buffer in = checked_buffer(payload, "payload", 'B', false);
            require_exact(in, "payload", codl::qsgd_payload_bytes(values.size, b, s), "bytes");
            checked_threads(num_threads);
            bool valid;
            {
                py::gil_scoped_release release;
                valid = codl::qsgd_decode(static_cast<const std::uint8_t*>(in.data), values.size,
                                          b, s, static_cast<float*>(values.data), accumulate,
                                          num_threads);
            }
            if (!valid) {
                throw py::value_error("payload: corrupt QSGD codes, a level exceeds levels - 1");
            }
        },
        py::arg("payload"), py::arg("block"), py::arg("levels"), py::arg("out"),
        py::arg("accumulate"), py::arg("num_threads") = 1);

    m.def(
        "comm_topk_encode",
        [](const py::buffer& x, const std::optional<py::buffer>& error,
           const std::optional<py::buffer>& momentum, double momentum_factor, long long k,
           long long sample, std::uint64_t seed, std::uint64_t key, std::uint64_t step,
           const py::buffer& payload, int num_threads) {
            const Buffer in = checked_buffer(x, "x", 'f', false);
            if (in.size >= (std::size_t{1} << 32)) {
                throw py::value_error("x: top-k indexes values with uint32, received " +
                                      std::to_string(in.size) + " values");
            }
            float* e = error_buffer(error, in.size, "error");
            float* u = error_buffer(momentum, in.size, "momentum_buffer");
            if (u && !e) {
                throw py::value_error("momentum_buffer: momentum correction needs an error buffer");
            }
            if (k < 0 || static_cast<std::size_t>(k) > in.size) {
                throw py::value_error("k: expected 0 to " + std::to_string(in.size) +
                                      " values to send, received " + std::to_string(k));
            }
            if (sample < 1) {
                throw py::value_error("sample: expected a positive sample size, received " +
                                      std::to_string(sample));
            }
            const Buffer out = checked_buffer(payload, "payload", 'B', true);
            require_exact(out, "payload", codl::topk_payload_bytes(static_cast<std::size_t>(k)),
                          "bytes");
            checked_threads(num_threads);
            bool finite;
            {
                py::gil_scoped_release release;
                finite = codl::topk_encode(static_cast<const float*>(in.data), e, u,
                                           static_cast<float>(momentum_factor), in.size,
                                           static_cast<std::size_t>(k),
                                           static_cast<std::size_t>(sample),
                                           codl::counter_stream(seed, key, step),
                                           static_cast<std::uint8_t*>(out.data), num_threads);
            }
            if (!finite) raise_non_finite();
        },
        py::arg("x"), py::arg("error"), py::arg("momentum"), py::arg("momentum_factor"),
        py::arg("k"), py::arg("sample"), py::arg("seed"), py::arg("key"), py::arg("step"),
        py::arg("payload"), py::arg("num_threads") = 1);
    m.def(
        "comm_topk_decode",
        [](const py::buffer& payload, const py::buffer& out, bool accumulate, int num_threads) {
            const Buffer in = checked_buffer(payload, "payload", 'B', false);
            const Buffer values = checked_buffer(out, "out", 'f', true);
            checked_threads(num_threads);
            bool valid;
            {
                py::gil_scoped_release release;
                valid = codl::topk_decode(static_cast<const std::uint8_t*>(in.data), in.size,
                                          values.size, static_cast<float*>(values.data),
                                          accumulate, num_threads);
            }
            if (!valid) {
                throw py::value_error(
                    "payload: corrupt top-k payload (the count disagrees with its length or "
                    "exceeds out's size, or the indices are not strictly increasing below it)");
            }
        },
        py::arg("payload"), py::arg("out"), py::arg("accumulate"), py::arg("num_threads") = 1);
}

}  // namespace codl_bindings
