// Bindings of the .codl format core: the DEFLATE codec, the field/position/shuffle kernels and
// the per-tensor decoder. Argument mistakes (the caller's bugs) raise TypeError/ValueError;
// what a corrupt file causes comes back as a message, which codl.formats turns into a
// FormatError naming the tensor and the field.
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "buffers.h"
#include "codl/codl_format.h"

namespace codl_bindings {
namespace {

namespace fmt = codl::format;

fmt::Backend parse_backend(const std::string& name) {
    if (name == "best") return fmt::Backend::best;
    if (name == "zlib") return fmt::Backend::zlib;
    if (name == "libdeflate") return fmt::Backend::libdeflate;
    throw py::value_error("backend: expected 'best', 'zlib' or 'libdeflate', received '" + name + "'");
}

fmt::Backend available_backend(const std::string& name) {
    const fmt::Backend backend = parse_backend(name);
    if (!fmt::backend_available(backend)) {
        throw py::value_error("backend: '" + name + "' was not built into codl's core (built: " +
                              fmt::backend_name(fmt::Backend::best) + ")");
    }
    return backend;
}

// int64 positions: NumPy reports 'l' or 'q' depending on the platform.
Buffer checked_int64(const py::buffer& object, const char* name, bool writable) {
    py::buffer_info info = object.request(false);
    const char code = info.format.empty() ? '\0' : info.format.back();
    if (info.itemsize != 8 || (code != 'l' && code != 'q')) {
        throw py::type_error(std::string(name) + ": expected int64 elements, received format '" + info.format + "'");
    }
    if (info.ndim != 1 || (info.shape[0] > 1 && info.strides[0] != 8)) {
        throw py::value_error(std::string(name) + ": expected a contiguous 1-D buffer");
    }
    if (writable && info.readonly) {
        throw py::value_error(std::string(name) + ": expected a writable buffer, received a read-only one");
    }
    return {info.ptr, static_cast<std::size_t>(info.shape[0])};
}

void check_width(int width) {
    if (width < 1 || width > 8) {
        throw py::value_error("width: expected bits per field from 1 to 8, received " + std::to_string(width));
    }
}

void check_itemsize(std::size_t itemsize) {
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        throw py::value_error("itemsize: expected 1, 2, 4 or 8 bytes, received " + std::to_string(itemsize));
    }
}

// The input and output of a transform that keeps the size (byte shuffles, plane splits): equal
// sizes, a multiple of itemsize.
std::pair<Buffer, Buffer> checked_byte_transform(const py::buffer& data, const py::buffer& out, std::size_t itemsize) {
    check_itemsize(itemsize);
    Buffer in = checked_buffer(data, "data", 'B', false);
    Buffer o = checked_buffer(out, "out", 'B', true);
    if (in.size % itemsize || o.size != in.size) {
        throw py::value_error("data, out: expected equal sizes that are multiples of itemsize " + std::to_string(itemsize) +
                              ", received " + std::to_string(in.size) + " and " + std::to_string(o.size));
    }
    return {in, o};
}

using StreamArg = std::tuple<py::buffer, std::size_t, std::uint32_t>;  // bytes, raw size, CRC32

fmt::Stream to_stream(const std::optional<StreamArg>& arg, const char* name) {
    fmt::Stream s;
    if (!arg) return s;
    const Buffer b = checked_buffer(std::get<0>(*arg), name, 'B', false);
    s.data = static_cast<const std::uint8_t*>(b.data);
    s.size = b.size;
    s.raw_size = std::get<1>(*arg);
    s.crc32 = std::get<2>(*arg);
    return s;
}

fmt::Encoding parse_encoding(const std::string& name) {
    if (name == "raw") return fmt::Encoding::raw;
    if (name == "codebook") return fmt::Encoding::codebook;
    if (name == "linear") return fmt::Encoding::linear;
    if (name == "ternary") return fmt::Encoding::ternary;
    throw py::value_error("encoding: expected 'raw', 'codebook', 'linear' or 'ternary', received '" + name + "'");
}

}  // namespace

void register_format(py::module_& m) {
    m.def("format_codec", [] { return std::string(fmt::backend_name(fmt::Backend::best)); },
          "The DEFLATE library the core uses: 'libdeflate', 'zlib' or 'none'.");
    m.def("format_backends", [] {
        std::vector<std::string> names;
        if (fmt::backend_available(fmt::Backend::zlib)) names.emplace_back("zlib");
        if (fmt::backend_available(fmt::Backend::libdeflate)) names.emplace_back("libdeflate");
        return names;
    });
    m.def(
        "format_deflate",
        [](const py::buffer& data, int level, const std::string& backend) {
            if (level < 0 || level > 12) {
                throw py::value_error("level: expected 0 to 12, received " + std::to_string(level));
            }
            const fmt::Backend chosen = available_backend(backend);
            const Buffer in = checked_buffer(data, "data", 'B', false);
            std::string out(fmt::deflate_bound(in.size), '\0');
            std::size_t size;
            {
                py::gil_scoped_release release;
                size = fmt::deflate_raw(static_cast<const std::uint8_t*>(in.data), in.size,
                                        reinterpret_cast<std::uint8_t*>(out.data()), out.size(), level, chosen);
            }
            if (size == 0) throw std::runtime_error("DEFLATE compression failed");
            out.resize(size);
            return py::bytes(out);
        },
        py::arg("data"), py::arg("level"), py::arg("backend") = "best",
        "Raw DEFLATE (RFC 1951) of a uint8 buffer.");
    m.def(
        "format_deflate_literals",
        [](const py::buffer& data, std::size_t block_bytes) {
            if (block_bytes < 1024) {
                throw py::value_error("block_bytes: expected at least 1024, received " + std::to_string(block_bytes));
            }
            const Buffer in = checked_buffer(data, "data", 'B', false);
            std::string out(fmt::deflate_bound(in.size), '\0');
            std::size_t size;
            {
                py::gil_scoped_release release;
                size = fmt::deflate_literals(static_cast<const std::uint8_t*>(in.data), in.size,
                                             reinterpret_cast<std::uint8_t*>(out.data()), out.size(), block_bytes);
            }
            if (size == 0) throw std::runtime_error("literal-only DEFLATE did not fit its bound");
            out.resize(size);
            return py::bytes(out);
        },
        py::arg("data"), py::arg("block_bytes") = fmt::kLiteralBlockBytes,
        "Literal-only raw DEFLATE of a uint8 buffer: an order-0 Huffman code per block of pieces of "
        "block_bytes (merged while one code costs no more; stored blocks where smaller).");
    m.def(
        "format_inflate",
        [](const py::buffer& data, const py::buffer& out, const std::string& backend) -> std::optional<std::string> {
            const fmt::Backend chosen = available_backend(backend);
            const Buffer in = checked_buffer(data, "data", 'B', false);
            const Buffer o = checked_buffer(out, "out", 'B', true);
            fmt::Status status;
            {
                py::gil_scoped_release release;
                status = fmt::inflate_raw(static_cast<const std::uint8_t*>(in.data), in.size,
                                          static_cast<std::uint8_t*>(o.data), o.size, chosen);
            }
            if (status == fmt::Status::ok) return std::nullopt;
            return std::string(fmt::status_message(status));
        },
        py::arg("data"), py::arg("out"), py::arg("backend") = "best",
        "Inflate exactly len(out) bytes; None on success, else what was wrong with the stream.");
    m.def(
        "format_crc32",
        [](const py::buffer& data, std::uint32_t crc) {
            const Buffer in = checked_buffer(data, "data", 'B', false);
            py::gil_scoped_release release;
            return fmt::crc32(static_cast<const std::uint8_t*>(in.data), in.size, crc);
        },
        py::arg("data"), py::arg("crc") = 0);
    m.def(
        "format_pack_fields",
        [](const py::buffer& values, int width, const py::buffer& out) {
            check_width(width);
            const Buffer v = checked_buffer(values, "values", 'B', false);
            const Buffer o = checked_buffer(out, "out", 'B', true);
            const std::size_t needed = fmt::packed_field_bytes(v.size, width);
            if (o.size != needed) {
                throw py::value_error("out: expected " + std::to_string(needed) + " bytes (" + std::to_string(v.size) +
                                      " fields of " + std::to_string(width) + " bits), received " +
                                      std::to_string(o.size));
            }
            bool fits;
            {
                py::gil_scoped_release release;
                fits = fmt::pack_fields(static_cast<const std::uint8_t*>(v.data), v.size, width,
                                        static_cast<std::uint8_t*>(o.data));
            }
            if (!fits) {
                throw py::value_error("values: expected values below 2**" + std::to_string(width) +
                                      ", received a larger one");
            }
        },
        py::arg("values"), py::arg("width"), py::arg("out"));
    m.def(
        "format_unpack_fields",
        [](const py::buffer& packed, int width, const py::buffer& out) {
            check_width(width);
            const Buffer p = checked_buffer(packed, "packed", 'B', false);
            const Buffer o = checked_buffer(out, "out", 'B', true);
            const std::size_t needed = fmt::packed_field_bytes(o.size, width);
            if (p.size != needed) {
                throw py::value_error("packed: expected " + std::to_string(needed) + " bytes for " +
                                      std::to_string(o.size) + " fields, received " + std::to_string(p.size));
            }
            py::gil_scoped_release release;
            fmt::unpack_fields(static_cast<const std::uint8_t*>(p.data), o.size, width, static_cast<std::uint8_t*>(o.data));
        },
        py::arg("packed"), py::arg("width"), py::arg("out"));
    m.def(
        "format_encode_positions",
        [](const py::buffer& positions) {
            const Buffer p = checked_int64(positions, "positions", false);
            const auto* values = static_cast<const std::int64_t*>(p.data);
            for (std::size_t i = 0; i < p.size; ++i) {
                if (values[i] < 0) throw py::value_error("positions: expected non-negative positions, received " + std::to_string(values[i]));
            }
            std::string out(p.size * fmt::kMaxVarintBytes, '\0');
            std::size_t size;
            {
                py::gil_scoped_release release;
                size = fmt::encode_positions(static_cast<const std::uint64_t*>(p.data), p.size,
                                             reinterpret_cast<std::uint8_t*>(out.data()));
            }
            if (size == SIZE_MAX) throw py::value_error("positions: expected strictly increasing positions");
            out.resize(size);
            return py::bytes(out);
        },
        py::arg("positions"), "LEB128 gaps of strictly increasing int64 positions.");
    m.def(
        "format_decode_positions",
        [](const py::buffer& data, std::uint64_t numel, const py::buffer& out) -> std::optional<std::string> {
            const Buffer in = checked_buffer(data, "data", 'B', false);
            const Buffer o = checked_int64(out, "out", true);
            fmt::Status status;
            {
                py::gil_scoped_release release;
                status = fmt::decode_positions(static_cast<const std::uint8_t*>(in.data), in.size, o.size, numel,
                                               static_cast<std::uint64_t*>(o.data));
            }
            if (status == fmt::Status::ok) return std::nullopt;
            return std::string(fmt::status_message(status));
        },
        py::arg("data"), py::arg("numel"), py::arg("out"));
    m.def(
        "format_shuffle",
        [](const py::buffer& data, std::size_t itemsize, const py::buffer& out, bool inverse) {
            const auto [in, o] = checked_byte_transform(data, out, itemsize);
            py::gil_scoped_release release;
            const auto* src = static_cast<const std::uint8_t*>(in.data);
            auto* dst = static_cast<std::uint8_t*>(o.data);
            if (inverse) {
                fmt::unshuffle_bytes(src, in.size / itemsize, itemsize, dst);
            } else {
                fmt::shuffle_bytes(src, in.size / itemsize, itemsize, dst);
            }
        },
        py::arg("data"), py::arg("itemsize"), py::arg("out"), py::arg("inverse") = false);
    m.def(
        "format_split_planes",
        [](const py::buffer& data, std::size_t itemsize, bool sign_last, const py::buffer& out) {
            const auto [in, o] = checked_byte_transform(data, out, itemsize);
            py::gil_scoped_release release;
            fmt::split_planes(static_cast<const std::uint8_t*>(in.data), in.size / itemsize, itemsize, sign_last,
                              static_cast<std::uint8_t*>(o.data));
        },
        py::arg("data"), py::arg("itemsize"), py::arg("sign_last"), py::arg("out"),
        "Byte planes of itemsize-byte elements, each rotated left one bit first when sign_last.");
    m.def(
        "format_decode_planes",
        [](const std::vector<StreamArg>& planes, std::size_t itemsize, bool sign_last, const py::buffer& out,
           const std::string& backend) -> std::optional<std::pair<std::size_t, std::string>> {
            if (itemsize != 2 && itemsize != 4 && itemsize != 8) {
                throw py::value_error("itemsize: expected 2, 4 or 8, received " + std::to_string(itemsize));
            }
            if (planes.size() != itemsize) {
                throw py::value_error("planes: expected " + std::to_string(itemsize) + " streams, received " +
                                      std::to_string(planes.size()));
            }
            std::vector<fmt::Stream> streams;
            for (const StreamArg& plane : planes) streams.push_back(to_stream(plane, "planes"));
            const fmt::Backend chosen = available_backend(backend);
            const Buffer o = checked_buffer(out, "out", 'B', true);
            if (o.size % itemsize) {
                throw py::value_error("out: expected a multiple of itemsize " + std::to_string(itemsize) +
                                      " bytes, received " + std::to_string(o.size));
            }
            fmt::Status status;
            std::size_t failed = 0;
            {
                py::gil_scoped_release release;
                status = fmt::decode_planes(streams.data(), itemsize, o.size / itemsize, sign_last,
                                            static_cast<std::uint8_t*>(o.data), &failed, chosen);
            }
            if (status == fmt::Status::ok) return std::nullopt;
            return std::make_pair(failed, std::string(fmt::status_message(status)));
        },
        py::arg("planes"), py::arg("itemsize"), py::arg("sign_last"), py::arg("out"), py::arg("backend") = "best",
        "Decode one chunk of byte-plane streams into out (len(out) / itemsize elements). None on success, "
        "else (the failing plane, what was wrong).");
    m.def(
        "format_decode_plane_chunks",
        [](const std::vector<std::pair<std::vector<StreamArg>, py::buffer>>& chunks, std::size_t itemsize,
           bool sign_last, const std::string& backend)
            -> std::optional<std::tuple<std::size_t, std::size_t, std::string>> {
            if (itemsize != 2 && itemsize != 4 && itemsize != 8) {
                throw py::value_error("itemsize: expected 2, 4 or 8, received " + std::to_string(itemsize));
            }
            const fmt::Backend chosen = available_backend(backend);
            std::vector<std::vector<fmt::Stream>> streams(chunks.size());
            std::vector<fmt::PlaneChunk> pieces(chunks.size());
            for (std::size_t c = 0; c < chunks.size(); ++c) {
                const auto& [planes, out] = chunks[c];
                if (planes.size() != itemsize) {
                    throw py::value_error("chunks[" + std::to_string(c) + "]: expected " + std::to_string(itemsize) +
                                          " streams, received " + std::to_string(planes.size()));
                }
                for (const StreamArg& plane : planes) streams[c].push_back(to_stream(plane, "chunks"));
                const Buffer o = checked_buffer(out, "out", 'B', true);
                if (o.size % itemsize) {
                    throw py::value_error("chunks[" + std::to_string(c) + "] out: expected a multiple of itemsize " +
                                          std::to_string(itemsize) + " bytes, received " + std::to_string(o.size));
                }
                pieces[c] = {streams[c].data(), o.size / itemsize, static_cast<std::uint8_t*>(o.data)};
            }
            fmt::Status status;
            std::size_t failed_chunk = 0, failed_plane = 0;
            {
                py::gil_scoped_release release;
                status = fmt::decode_plane_chunks(pieces.data(), pieces.size(), itemsize, sign_last, &failed_chunk,
                                                  &failed_plane, chosen);
            }
            if (status == fmt::Status::ok) return std::nullopt;
            return std::make_tuple(failed_chunk, failed_plane, std::string(fmt::status_message(status)));
        },
        py::arg("chunks"), py::arg("itemsize"), py::arg("sign_last"), py::arg("backend") = "best",
        "Decode several chunks (each: its itemsize plane streams and its out buffer), their Huffman planes "
        "two at a time. None on success, else (chunk, plane, what was wrong); no out is written on failure.");
    m.def(
        "format_advise_huge_pages",
        [](const py::buffer& out, std::size_t at_least) {
            const Buffer o = checked_buffer(out, "out", 'B', true);
            fmt::advise_huge_pages(o.data, o.size, at_least);
        },
        py::arg("out"), py::arg("at_least"),
        "Ask for transparent huge pages on out's 2 MB-aligned interior before it is first written "
        "(a hint; outputs of at least at_least bytes).");
    m.def(
        "format_decode_tensor",
        [](const std::string& encoding, std::uint64_t numel, std::uint64_t count, bool sparse, std::size_t itemsize,
           bool shuffle, int bits, int width, std::uint64_t rows, bool compressed,
           const std::optional<StreamArg>& positions, const StreamArg& values, const std::optional<StreamArg>& table,
           const py::buffer& out, const std::string& backend) -> std::optional<std::pair<std::string, std::string>> {
            fmt::TensorRecord r;
            r.encoding = parse_encoding(encoding);
            r.numel = numel;
            r.count = count;
            r.sparse = sparse;
            r.itemsize = itemsize;
            r.shuffle = shuffle;
            r.bits = bits;
            r.width = width;
            r.rows = rows;
            r.compressed = compressed;
            if (sparse != positions.has_value()) throw py::value_error("positions: expected a stream exactly when sparse");
            if ((r.encoding == fmt::Encoding::raw) == table.has_value()) {
                throw py::value_error("table: expected a stream for every encoding but raw");
            }
            r.positions = to_stream(positions, "positions");
            r.values = to_stream(values, "values");
            r.table = to_stream(table, "table");
            const fmt::Backend chosen = compressed ? available_backend(backend) : fmt::Backend::best;
            if (r.encoding == fmt::Encoding::raw) check_itemsize(itemsize);
            const Buffer o = checked_buffer(out, "out", 'B', true);
            const std::size_t element = r.encoding == fmt::Encoding::raw ? itemsize : 4;
            if (numel > SIZE_MAX / element || o.size != numel * element) {
                throw py::value_error("out: expected numel * " + std::to_string(element) + " bytes, received " +
                                      std::to_string(o.size));
            }
            fmt::Status status;
            fmt::Field failed;
            {
                py::gil_scoped_release release;
                status = fmt::decode_tensor(r, o.data, &failed, chosen);
            }
            if (status == fmt::Status::bad_request) throw py::value_error("decode_tensor: inconsistent arguments");
            if (status == fmt::Status::ok) return std::nullopt;
            return std::make_pair(std::string(fmt::field_name(failed)), std::string(fmt::status_message(status)));
        },
        py::arg("encoding"), py::arg("numel"), py::arg("count"), py::arg("sparse"), py::arg("itemsize"),
        py::arg("shuffle"), py::arg("bits"), py::arg("width"), py::arg("rows"), py::arg("compressed"),
        py::arg("positions"), py::arg("values"), py::arg("table"), py::arg("out"), py::arg("backend") = "best",
        "Decode one tensor's streams into out (bytes of the dtype for raw, float32 otherwise). None on "
        "success, else (stream, what was wrong).");
}

}  // namespace codl_bindings
