// Bindings of the packing kernels: check, release the GIL, call the core.
#include <string>

#include "buffers.h"
#include "codl/pack.h"

namespace codl_bindings {
namespace {

void raise_invalid_codes(const char* name) {
    throw py::value_error(std::string(name) + ": codes must be -1, 0 or +1; received a value outside them");
}

}  // namespace

void register_pack(py::module_& m) {
    m.def(
        "pack_signs_f32",
        [](const py::buffer& x, const py::buffer& out, int num_threads) {
            const Buffer in = checked_buffer(x, "x", 'f', false);
            const Buffer bits = checked_buffer(out, "out", 'B', true);
            require_size(bits, "out", codl::packed_signs_bytes(in.size), "one bit per value");
            checked_threads(num_threads);
            py::gil_scoped_release release;
            codl::pack_signs_f32(static_cast<const float*>(in.data), in.size,
                                 static_cast<std::uint8_t*>(bits.data), num_threads);
        },
        py::arg("x"), py::arg("out"), py::arg("num_threads") = 1,
        "Sign bits of float32 x into out (bit i%8 of byte i/8 = signbit(x[i])).");
    m.def(
        "unpack_signs_f32",
        [](const py::buffer& packed, const py::buffer& out, int num_threads) {
            const Buffer bits = checked_buffer(packed, "packed", 'B', false);
            const Buffer values = checked_buffer(out, "out", 'f', true);
            require_size(bits, "packed", codl::packed_signs_bytes(values.size), "one bit per output value");
            checked_threads(num_threads);
            py::gil_scoped_release release;
            codl::unpack_signs_f32(static_cast<const std::uint8_t*>(bits.data), values.size,
                                   static_cast<float*>(values.data), num_threads);
        },
        py::arg("packed"), py::arg("out"), py::arg("num_threads") = 1,
        "Fill float32 out with -1.0 where the sign bit is set, else +1.0.");

    using PackFn = bool (*)(const std::int8_t*, std::size_t, std::uint8_t*, int);
    using UnpackFn = bool (*)(const std::uint8_t*, std::size_t, std::int8_t*, int);
    struct TernaryFormat {
        const char* pack_name;
        const char* unpack_name;
        PackFn pack;
        UnpackFn unpack;
        std::size_t (*bytes)(std::size_t);
    };
    static const TernaryFormat formats[] = {
        {"pack_ternary2", "unpack_ternary2", codl::pack_ternary2, codl::unpack_ternary2,
         [](std::size_t n) { return codl::packed_ternary2_bytes(n); }},
        {"pack_ternary3", "unpack_ternary3", codl::pack_ternary3,
         [](const std::uint8_t* p, std::size_t n, std::int8_t* c, int t) {
             codl::unpack_ternary3(p, n, c, t);
             return true;
         },
         [](std::size_t n) { return codl::packed_ternary3_bytes(n); }},
    };
    for (const TernaryFormat& format : formats) {
        m.def(
            format.pack_name,
            [&format](const py::buffer& codes, const py::buffer& out, int num_threads) {
                const Buffer in = checked_buffer(codes, "codes", 'b', false);
                const Buffer packed = checked_buffer(out, "out", 'B', true);
                require_size(packed, "out", format.bytes(in.size), "the packed size of codes");
                checked_threads(num_threads);
                bool valid;
                {
                    py::gil_scoped_release release;
                    valid = format.pack(static_cast<const std::int8_t*>(in.data), in.size,
                                        static_cast<std::uint8_t*>(packed.data), num_threads);
                }
                if (!valid) raise_invalid_codes("codes");
            },
            py::arg("codes"), py::arg("out"), py::arg("num_threads") = 1,
            "Pack int8 codes in {-1, 0, 1} into out; ValueError if any code is outside.");
        m.def(
            format.unpack_name,
            [&format](const py::buffer& packed, const py::buffer& out, int num_threads) {
                const Buffer in = checked_buffer(packed, "packed", 'B', false);
                const Buffer codes = checked_buffer(out, "out", 'b', true);
                require_size(in, "packed", format.bytes(codes.size), "the packed size of out");
                checked_threads(num_threads);
                bool valid;
                {
                    py::gil_scoped_release release;
                    valid = format.unpack(static_cast<const std::uint8_t*>(in.data), codes.size,
                                          static_cast<std::int8_t*>(codes.data), num_threads);
                }
                if (!valid) {
                    throw py::value_error("packed: corrupt ternary data, a 2-bit field holds 0b11, which no code maps to");
                }
            },
            py::arg("packed"), py::arg("out"), py::arg("num_threads") = 1,
            "Unpack codes in {-1, 0, 1} into int8 out.");
    }
}

}  // namespace codl_bindings
