"""An independent reader of the .codl layout of docs/format.md (versions 1.x and 2.x), written
from the spec with Python's zlib, struct, json and NumPy only (no codl code), in float64 where it
computes values. The tests compare codl.load against it, which also proves every stream inflates
with zlib."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

NUMPY_DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def inflate(data: bytes, raw_length: int) -> bytes:
    out = zlib.decompress(data, wbits=-15)
    assert len(out) == raw_length
    return out


def version_of(blob: bytes) -> tuple[int, int]:
    magic, major, minor = struct.unpack_from("<8sHH", blob)
    assert magic == b"\x89CODL\r\n\x1a"
    return major, minor


def header_of(blob: bytes) -> tuple[dict[str, Any], int]:
    major, _minor = version_of(blob)
    assert major in (1, 2)
    length, raw_length, crc = struct.unpack_from("<III", blob, 12)
    stored = blob[24 : 24 + length]
    assert zlib.crc32(stored) == crc
    header = json.loads(inflate(stored, raw_length))
    if major == 1:  # version 1 has neither field: one values stream per tensor
        for entry in header["tensors"]:
            assert "chunk" not in entry and "sign_last" not in entry
            entry["chunk"], entry["sign_last"] = 0, False
    return header, 24 + length


def stream_of(blob: bytes, s: dict[str, int], data_start: int) -> bytes:
    stored = blob[data_start + s["offset"] : data_start + s["offset"] + s["length"]]
    assert zlib.crc32(stored) == s["crc32"]
    return inflate(stored, s["raw_length"])


def streams_of(blob: bytes, entry: dict[str, Any], data_start: int) -> dict[str, bytes]:
    """Each stream inflated; a list of streams (version 2's byte planes: chunk after chunk,
    plane after plane) becomes the values stream of version 1's shuffled layout: each chunk's
    planes are the chunk's elements shuffled."""
    out = {}
    for role, s in entry["streams"].items():
        if isinstance(s, list):
            assert role == "values" and entry["chunk"] > 0
            itemsize = len(s) // -(-entry["count"] // entry["chunk"])
            parts = [stream_of(blob, p, data_start) for p in s]
            chunks = [b"".join(parts[i : i + itemsize]) for i in range(0, len(parts), itemsize)]
            out[role] = b"".join(
                np.frombuffer(c, np.uint8).reshape(itemsize, -1).T.tobytes() for c in chunks
            )
        else:
            out[role] = stream_of(blob, s, data_start)
    return out


def rotate_right_one_bit(elements: np.ndarray) -> np.ndarray:
    """(count, itemsize) little-endian bytes, each element's bits rotated right by one: bit 0
    (where sign_last put the sign) back to the top."""
    itemsize = elements.shape[1]
    unsigned = np.dtype(f"<u{itemsize}")
    values = np.ascontiguousarray(elements).view(unsigned).reshape(-1)
    top = unsigned.type(8 * itemsize - 1)
    back = (values >> unsigned.type(1)) | ((values & unsigned.type(1)) << top)
    return back.view(np.uint8).reshape(elements.shape)


def positions_of(data: bytes, count: int) -> list[int]:
    positions, value, shift, previous = [], 0, 0, -1
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            previous = previous + 1 + value
            positions.append(previous)
            value, shift = 0, 0
    assert len(positions) == count and shift == 0
    return positions


def fields_of(data: bytes, count: int, width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    fields = bits[: count * width].reshape(count, width).astype(np.int64)
    return (fields << np.arange(width)).sum(axis=1)


def ternary_codes_of(data: bytes, numel: int) -> np.ndarray:
    """codl's 2-bit layout: blocks of 128 values in 32 bytes, byte j holding values
    j, j+32, j+64, j+96 in bits 0-1, 2-3, 4-5, 6-7; the tail 4 consecutive values per byte."""
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    fields = np.stack([(raw >> (2 * k)) & 3 for k in range(4)], axis=1)  # (bytes, 4)
    whole = numel // 128 * 128
    blocks = fields[: whole // 4].reshape(-1, 32, 4).transpose(0, 2, 1).reshape(-1)
    tail = fields[whole // 4 :].reshape(-1)[: numel - whole]
    return np.concatenate([blocks, tail]) - 1


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """Every tensor as a NumPy array: raw ones bit-exact, quantized ones computed in float64
    and rounded to float32 (exact: each value is one product of two float32 numbers)."""
    header, data_start = header_of(blob)
    assert header["data_length"] == len(blob) - data_start
    result = {}
    for entry in header["tensors"]:
        shape, numel = entry["shape"], int(np.prod(entry["shape"], dtype=np.int64))
        streams = streams_of(blob, entry, data_start)
        count = entry["count"]
        positions = (
            np.array(positions_of(streams["positions"], count), dtype=np.int64)
            if entry["sparse"]
            else np.arange(numel)
        )
        encoding = entry["encoding"]
        if encoding == "raw":
            dtype = NUMPY_DTYPES.get(entry["dtype"])
            itemsize = 2 if entry["dtype"] == "bfloat16" else np.dtype(dtype).itemsize
            raw = np.frombuffer(streams["values"], dtype=np.uint8)
            if entry["shuffle"] and not entry["chunk"]:
                raw = raw.reshape(itemsize, count).T.reshape(-1)
            elements = raw.reshape(count, itemsize)
            if entry["sign_last"]:
                elements = rotate_right_one_bit(elements)
            dense = np.zeros((numel, itemsize), dtype=np.uint8)
            dense[positions] = elements
            if entry["dtype"] == "bfloat16":  # as float32: bf16 is float32's upper half
                widened = np.zeros((numel, 4), dtype=np.uint8)
                widened[:, 2:] = dense
                result[entry["name"]] = widened.view(np.float32).reshape(shape)
            else:
                result[entry["name"]] = dense.view(dtype).reshape(shape)
            continue
        table = np.frombuffer(streams["table"], dtype="<f4").astype(np.float64)
        values = np.zeros(numel, dtype=np.float64)
        if encoding == "codebook":
            values[positions] = table[fields_of(streams["values"], count, entry["width"])]
        elif encoding == "linear":
            fields = fields_of(streams["values"], count, entry["width"])
            assert (fields < 1 << entry["bits"]).all(), "a linear field of 2^bits or more"
            codes = fields - (1 << (entry["bits"] - 1))
            rows = np.asarray(positions) // (numel // shape[0])
            values[positions] = codes * table[rows]
        else:
            codes = ternary_codes_of(streams["values"], numel)
            values = codes * np.repeat(table, numel // shape[0])
        result[entry["name"]] = values.astype(np.float32).reshape(shape)
    return result
