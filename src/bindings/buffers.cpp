#include "buffers.h"

namespace codl_bindings {
namespace {

const char* describe_format(char format) {
    switch (format) {
        case 'f': return "float32";
        case 'd': return "float64";
        case 'b': return "int8";
        case 'B': return "uint8";
        default: return "?";
    }
}

std::string received_format(const py::buffer_info& info) {
    if (info.format == "f") return "float32";
    if (info.format == "d") return "float64";
    if (info.format == "e") return "float16";
    if (info.format == "b") return "int8";
    if (info.format == "B") return "uint8";
    if (info.format == "?") return "bool";
    return "format '" + info.format + "' (" + std::to_string(info.itemsize) + "-byte items)";
}

}  // namespace

Buffer checked_buffer(const py::buffer& object, const char* name, char format, bool writable) {
    // Request read-only access and check writability here, so the message is ours (the
    // exporter's own refusal is a BufferError that names no argument).
    py::buffer_info info = object.request(false);
    const std::string got = info.format;
    // Some exporters prefix a byte-order or size character ('<f', '=b').
    const char code = got.empty() ? '\0' : got.back();
    const bool prefix_ok = got.size() == 1 || (got.size() == 2 && (got[0] == '<' || got[0] == '=' || got[0] == '@'));
    if (!prefix_ok || code != format) {
        throw py::type_error(std::string(name) + ": expected " + describe_format(format) +
                             " elements, received " + received_format(info));
    }
    std::size_t size = 1;
    py::ssize_t expected_stride = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] != 1 && info.strides[d] != expected_stride) {
            throw py::value_error(std::string(name) +
                                  ": expected a C-contiguous buffer, received strides that skip "
                                  "memory (call .contiguous() first)");
        }
        expected_stride *= info.shape[d];
        size *= static_cast<std::size_t>(info.shape[d]);
    }
    if (writable && info.readonly) {
        throw py::value_error(std::string(name) + ": expected a writable buffer, received a read-only one");
    }
    return {info.ptr, size};
}

void require_size(const Buffer& buffer, const char* name, std::size_t needed, const char* why) {
    if (buffer.size < needed) {
        throw py::value_error(std::string(name) + ": expected at least " + std::to_string(needed) +
                              " elements (" + why + "), received " + std::to_string(buffer.size));
    }
}

void require_exact(const Buffer& buffer, const char* name, std::size_t expected, const char* what) {
    if (buffer.size != expected) {
        throw py::value_error(std::string(name) + ": expected " + std::to_string(expected) + " " + what +
                              ", received " + std::to_string(buffer.size));
    }
}

const float* checked_bias(const std::optional<py::buffer>& bias, std::size_t count, const char* what) {
    if (!bias) return nullptr;
    const Buffer b = checked_buffer(*bias, "bias", 'f', false);
    require_exact(b, "bias", count, what);
    return static_cast<const float*>(b.data);
}

int checked_threads(int num_threads) {
    if (num_threads < 1) {
        throw py::value_error("num_threads: expected a positive count, received " + std::to_string(num_threads));
    }
    return num_threads;
}

}  // namespace codl_bindings
