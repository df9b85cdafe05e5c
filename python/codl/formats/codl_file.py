"""Writing and reading ``.codl`` files (the layout is specified in ``docs/format.md``).

Reading never unpickles and never executes anything from the file: the header is JSON, checked
field by field; every offset and length is checked against the file's size before anything is
allocated; every stream's CRC32 is checked and it is inflated into a buffer of exactly the size
the header implies, failing if the stream wants more or ends short. Whatever is wrong raises
:class:`FormatError` naming the tensor and the field.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import struct
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Union

import numpy as np
import torch
from torch import nn

import codl
from codl import _ops
from codl.formats import codec, encodings
from codl.formats.encodings import (
    DTYPES,
    ENCODINGS,
    EncodedTensor,
    StoredStream,
    chunk_bounds,
    encode,
    encode_chunk,
    encode_planes,
    planes_layout,
)
from codl.formats.spec import Plan, plan_to_json, resolve_plan

__all__ = [
    "MAGIC",
    "VERSION",
    "FormatError",
    "TensorInfo",
    "inspect",
    "load",
    "load_into",
    "read_header",
    "save",
]

#: The first 8 bytes of every .codl file (PNG-style: a non-ASCII byte, then the name, then
#: CR LF, ^Z, so text-mode transfers and truncations show).
MAGIC: Final = b"\x89CODL\r\n\x1a"
#: (major, minor) written. Readers accept the major versions they know (1 and 2) and any minor.
VERSION: Final = (2, 0)
#: Major versions this reader reads: 1 (every stream one object) and 2 (adds byte planes in
#: chunks: the ``chunk`` and ``sign_last`` fields, ``values`` as a list of streams).
READABLE_MAJORS: Final = (1, 2)
#: magic, major, minor, then the header's stored length, inflated length and CRC32 of the
#: stored bytes (u32 each): little-endian, 24 bytes. The JSON header is itself a raw DEFLATE
#: stream (names and offsets repeat: it shrinks ~6x, which matters for small models).
_PREAMBLE: Final = struct.Struct("<8sHHIII")
#: The largest inflated header a reader accepts (a million tensors' worth).
_MAX_HEADER_BYTES: Final = 1 << 28
#: The inflated header may be at most this many times the whole file's size (names and offsets
#: compress ~6x, ~25x for thousands of empty tensors with long shared names): a small file cannot
#: make the reader parse and check a huge header.
_MAX_HEADER_EXPANSION: Final = 256
#: DEFLATE cannot expand data by more than 1032:1 (a 258-byte match costs at least 2 bits);
#: a stream claiming more is rejected before its buffer is allocated.
_MAX_DEFLATE_RATIO: Final = 1032
_MAX_DIMS: Final = 64
#: Default bound on the decoded size of a whole file, as a multiple of its size (at least
#: 1 GiB): a 99.9%-sparse tensor legitimately decodes to ~2000x its stored size.
_DEFAULT_EXPANSION: Final = 4096
_MIN_DEFAULT_LIMIT: Final = 1 << 30

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


class FormatError(ValueError):
    """A ``.codl`` file is malformed or corrupt. ``tensor`` and ``field`` say where (None when
    the problem is not one tensor's)."""

    def __init__(self, message: str, *, tensor: str | None = None, field: str | None = None):
        where = []
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.tensor = tensor
        self.field = field


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor (``codl inspect`` prints these)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    sparse: bool
    count: int  # stored values: numel, or the kept ones when sparse
    bits: int  # bits per value of the quantized encodings, else 8 * itemsize
    width: int  # bits per stored field (codebook/linear)
    shuffle: bool
    stored_bytes: int  # compressed bytes of its streams
    #: role -> {offset, length, raw_length, crc32}; in the byte-plane layout "values" is a list
    #: of them (chunk after chunk, plane after plane)
    streams: dict[str, Any]
    chunk: int = 0  # elements per chunk of byte planes (format 2); 0: one values stream
    sign_last: bool = False  # format 2: elements rotated left one bit before the split

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.count / self.numel if self.numel else 0.0

    @property
    def dense_bytes(self) -> int:
        """Bytes of the tensor as torch holds it (its dtype, dense)."""
        return self.numel * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize


# ---------------------------------------------------------------------------------------- save
def _state_dict(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    items: Mapping[str, Any]
    if isinstance(model_or_state_dict, nn.Module):
        items = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        items = model_or_state_dict
    else:
        raise TypeError(
            "model_or_state_dict: expected an nn.Module or a dict of tensors, received "
            f"{type(model_or_state_dict).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, value in items.items():
        if not isinstance(name, str):
            raise TypeError(f"state_dict: expected str keys, received {name!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state_dict[{name!r}]: expected a tensor, received {type(value).__name__}"
            )
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(
                f"state_dict[{name!r}]: expected a dense tensor, received {value.layout}"
            )
        tensors[name] = value.detach().cpu()
    return tensors


def _stream_entry(stream: StoredStream, offset: int) -> dict[str, int]:
    return {
        "offset": offset,
        "length": len(stream.data),
        "raw_length": stream.raw_length,
        "crc32": stream.crc32,
    }


def _header_entry(t: EncodedTensor, offset: int) -> tuple[dict[str, Any], list[bytes]]:
    """The tensor's header entry, its streams placed from ``offset`` on, and their bytes."""
    chunks: list[bytes] = []
    streams: dict[str, Any] = {}
    for role, s in t.streams.items():
        parts = s if isinstance(s, list) else [s]
        entries = []
        for part in parts:
            entries.append(_stream_entry(part, offset))
            chunks.append(part.data)
            offset += len(part.data)
        streams[role] = entries if isinstance(s, list) else entries[0]
    entry = {
        "name": t.name,
        "dtype": t.dtype,
        "shape": list(t.shape),
        "encoding": t.encoding,
        "sparse": t.sparse,
        "count": t.count,
        "bits": t.bits,
        "width": t.width,
        "shuffle": t.shuffle,
        "chunk": t.chunk,
        "sign_last": t.sign_last,
        "streams": streams,
    }
    return entry, chunks


#: Input size below which :func:`encode_state_dict` encodes on the calling thread alone.
_PARALLEL_SAVE_MIN_BYTES = 1 << 20


def _encode_all(
    tensors: dict[str, torch.Tensor],
    specs: Mapping[str, Any],
    level: int,
    threads: int,
) -> list[tuple[str, EncodedTensor]]:
    """Every tensor encoded, in state_dict order. The work is split into independent jobs (a
    tensor, or one chunk of a lossless float tensor's byte planes); with ``threads`` > 1 they run
    on a pool, largest first (the core's DEFLATE, Python's zlib and the torch ops of the
    quantizers release the GIL), so one big embedding is spread over the threads too."""
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    planes = {n for n, t in tensors.items() if planes_layout(t, specs[n])}
    raws = {n: encodings.tensor_bytes(tensors[n]) for n in planes}
    # (size, tensor name, chunk index or -1 for a whole tensor)
    jobs: list[tuple[int, str, int]] = []
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if name in planes:
            for index, (start, stop) in enumerate(chunk_bounds(tensor.numel())):
                jobs.append(((stop - start) * tensor.element_size(), name, index))
        else:
            jobs.append((size, name, -1))

    def run(job: tuple[int, str, int]) -> EncodedTensor | list[StoredStream]:
        _, name, index = job
        if index < 0:
            return encode(name, tensors[name], specs[name], level=level)
        tensor = tensors[name]
        start, stop = chunk_bounds(tensor.numel())[index]
        return encode_chunk(raws[name], tensor.element_size(), start, stop, level)

    if threads <= 1 or len(jobs) <= 1 or total < _PARALLEL_SAVE_MIN_BYTES:
        results = [run(job) for job in jobs]
    else:
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0])
        # One thread of torch's and codl's own per pool worker: the pool is the parallelism,
        # and each worker's ops running on `threads` threads too would oversubscribe the cores.
        with _ops.using_threads(1), ThreadPoolExecutor(max_workers=threads) as pool:
            done = dict(zip(order, pool.map(lambda i: run(jobs[i]), order), strict=True))
        results = [done[i] for i in range(len(jobs))]
    encoded: dict[str, EncodedTensor] = {}
    chunks: dict[str, list[list[StoredStream]]] = {}
    for (_, name, index), result in zip(jobs, results, strict=True):
        if index < 0:
            assert isinstance(result, EncodedTensor)
            encoded[name] = result
        else:
            assert isinstance(result, list)
            chunks.setdefault(name, []).append(result)
    for name, parts in chunks.items():
        encoded[name] = encode_planes(name, tensors[name], parts)
    return [(name, encoded[name]) for name in tensors]


def encode_state_dict(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    plan: Plan | None = None,
    *,
    level: int = codec.DEFAULT_LEVEL,
    metadata: Mapping[str, str] | None = None,
    num_threads: int | None = None,
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """The bytes of a ``.codl`` file and the state_dict a reader will get back from it.
    Tensors are encoded on ``num_threads`` threads (default :func:`codl.get_num_threads`); the
    bytes do not depend on it."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 12:
        raise ValueError(f"level: expected an int from 0 to 12, received {level!r}")
    if sys.byteorder != "little":
        raise RuntimeError("the .codl format is little-endian; this host is not")
    tensors = _state_dict(model_or_state_dict)
    specs = resolve_plan(plan, tensors)
    meta: dict[str, Any] = {"codl_version": _codl_version()}
    if plan is not None:
        meta["plan"] = plan_to_json(plan)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata: expected str keys and values, received {key!r}: {value!r}")
        meta[key] = value
    threads = _ops.get_num_threads() if num_threads is None else num_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"num_threads: expected a positive int or None, received {threads!r}")
    entries, chunks, previews = [], [], {}
    offset = 0
    for name, encoded in _encode_all(tensors, specs, level, threads):
        entry, data = _header_entry(encoded, offset)
        entries.append(entry)
        chunks.extend(data)
        offset += sum(len(d) for d in data)
        assert encoded.preview is not None
        previews[name] = encoded.preview
    header = json.dumps(
        {"tensors": entries, "data_length": offset, "metadata": meta},
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    if len(header) > _MAX_HEADER_BYTES:
        raise ValueError(
            f"state_dict: its header would take {len(header)} bytes, above the format's limit"
        )
    stored = codec.deflate(header, level)
    if len(header) > _MAX_HEADER_EXPANSION * (_PREAMBLE.size + len(stored) + offset):
        raise ValueError(
            f"metadata: the header would inflate to {len(header)} bytes, more than "
            f"{_MAX_HEADER_EXPANSION} times the file's size (readers refuse it): store less "
            "metadata"
        )
    preamble = _PREAMBLE.pack(
        MAGIC, *VERSION, len(stored), len(header), zlib.crc32(stored) & 0xFFFFFFFF
    )
    return b"".join([preamble, stored, *chunks]), previews


def save(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    plan: Plan | None = None,
    *,
    level: int = codec.DEFAULT_LEVEL,
    metadata: Mapping[str, str] | None = None,
    num_threads: int | None = None,
) -> None:
    """Write a model's state_dict (or a dict of tensors) as a ``.codl`` file.

    Without ``plan`` every tensor is stored losslessly (DEFLATE of its bytes, floats byte-plane
    shuffled first). A ``plan`` (see :mod:`codl.formats.spec`) prunes and quantizes the tensors
    it names; :func:`load` then returns exactly :func:`codl.formats.decode_preview`'s values.
    ``level`` is the DEFLATE level (0-12; zlib stops at 9): lower is faster to write and a
    little larger (docs/format.md has a size/speed table; reading speed barely depends on it).
    ``metadata`` is stored as strings. Tensors are encoded in parallel on ``num_threads``
    threads (default :func:`codl.get_num_threads`); the file does not depend on it.
    """
    data, _ = encode_state_dict(
        model_or_state_dict, plan, level=level, metadata=metadata, num_threads=num_threads
    )
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    partial.replace(target)  # readers never see half a file


def _codl_version() -> str:
    return codl.__version__


# ---------------------------------------------------------------------------------------- read
def _fail(message: str, tensor: str | None = None, field: str | None = None) -> FormatError:
    return FormatError(message, tensor=tensor, field=field)


def _int(
    entry: Mapping[str, Any], key: str, tensor: str | None, low: int = 0, high: int = 1 << 63
) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"expected an integer, received {value!r}", tensor, key)
    if not low <= value <= high:
        raise _fail(f"expected a value in [{low}, {high}], received {value}", tensor, key)
    return value


def _bool(entry: Mapping[str, Any], key: str, tensor: str | None) -> bool:
    value = entry.get(key)
    if not isinstance(value, bool):
        raise _fail(f"expected true or false, received {value!r}", tensor, key)
    return value


@dataclass(frozen=True)
class _Stream:
    offset: int  # in the file
    length: int
    raw_length: int
    crc32: int


@dataclass(frozen=True)
class _Record:
    info: TensorInfo
    positions: _Stream | None
    values: _Stream | None  # None in the byte-plane layout: then `parts`
    table: _Stream | None
    rows: int
    #: Bytes decoding allocates: the result, the float32 buffer a quantized tensor of another
    #: dtype is decoded into, the inflated streams and the decoder's scratch (``max_bytes``).
    out_bytes: int
    #: The byte-plane layout's values streams, chunk after chunk, plane after plane.
    parts: tuple[_Stream, ...] = ()


def _read_preamble(data: memoryview) -> tuple[dict[str, Any], int, int]:
    if len(data) < _PREAMBLE.size:
        raise _fail(
            f"file of {len(data)} bytes is shorter than the {_PREAMBLE.size}-byte preamble",
            field="preamble",
        )
    magic, major, minor, header_length, header_raw_length, header_crc = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _fail(
            f"expected the magic {MAGIC!r}, received {bytes(magic)!r}: not a .codl file",
            field="magic",
        )
    if major not in READABLE_MAJORS:
        known = " or ".join(f"{m}.x" for m in READABLE_MAJORS)
        raise _fail(f"expected format version {known}, received {major}.{minor}", field="version")
    if header_length > len(data) - _PREAMBLE.size:
        raise _fail(
            f"header of {header_length} bytes does not fit in the {len(data)}-byte file",
            field="header_length",
        )
    if header_raw_length > min(_MAX_HEADER_BYTES, _MAX_DEFLATE_RATIO * header_length + 64):
        raise _fail(
            f"{header_raw_length} bytes cannot come from a {header_length}-byte header",
            field="header_raw_length",
        )
    if header_raw_length > _MAX_HEADER_EXPANSION * len(data):
        raise _fail(
            f"a header of {header_raw_length} bytes is more than {_MAX_HEADER_EXPANSION} times "
            f"the {len(data)}-byte file",
            field="header_raw_length",
        )
    start = _PREAMBLE.size
    stored = data[start : start + header_length]
    if zlib.crc32(stored) & 0xFFFFFFFF != header_crc:
        raise _fail("CRC32 mismatch: the header is corrupt", field="header_crc32")
    header_bytes, error = codec.inflate_python(stored, header_raw_length)
    if error is not None:
        raise _fail(error, field="header")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, ints of 4300+ digits
        raise _fail(f"the header is not valid JSON ({error})", field="header") from None
    if not isinstance(header, dict):
        raise _fail("expected a JSON object", field="header")
    return header, start + header_length, major


def _check_stream(
    streams: Mapping[str, Any], role: str, name: str, data_start: int, data_length: int
) -> _Stream:
    return _check_stream_entry(streams.get(role), f"streams.{role}", name, data_start, data_length)


def _check_stream_entry(
    entry: object, where: str, name: str, data_start: int, data_length: int
) -> _Stream:
    if not isinstance(entry, dict):
        raise _fail("expected an object with offset, length, raw_length, crc32", name, where)
    offset = _int(entry, "offset", name)
    length = _int(entry, "length", name)
    raw_length = _int(entry, "raw_length", name)
    crc = _int(entry, "crc32", name, high=0xFFFFFFFF)
    if length == 0:
        raise _fail(
            "expected at least 1 byte (a DEFLATE stream is never empty)", name, f"{where}.length"
        )
    if offset > data_length or length > data_length - offset:
        raise _fail(
            f"bytes [{offset}, {offset + length}) fall outside the {data_length}-byte data section",
            name,
            f"{where}.offset",
        )
    if raw_length > _MAX_DEFLATE_RATIO * length + 64:
        raise _fail(
            f"{raw_length} bytes cannot come from {length} bytes of DEFLATE",
            name,
            f"{where}.raw_length",
        )
    return _Stream(data_start + offset, length, raw_length, crc)


def _check_parts(
    listed: object,
    name: str,
    dtype: str,
    count: int,
    chunk: int,
    data_start: int,
    data_length: int,
) -> tuple[_Stream, ...]:
    """The values of the byte-plane layout: ceil(count / chunk) chunks of itemsize streams, the
    stream of plane k of chunk c inflating to one byte per element of the chunk."""
    itemsize = _itemsize(dtype)
    chunks = -(-count // chunk)
    if not isinstance(listed, list) or len(listed) != chunks * itemsize:
        raise _fail(
            f"expected a list of {chunks * itemsize} streams ({chunks} chunks of {chunk} elements, "
            f"{itemsize} byte planes each)",
            name,
            "streams.values",
        )
    parts = []
    for index, part in enumerate(listed):
        where = f"streams.values[{index}]"
        stream = _check_stream_entry(part, where, name, data_start, data_length)
        elements = min(chunk, count - index // itemsize * chunk)
        if stream.raw_length != elements:
            raise _fail(
                f"expected {elements} bytes (one byte plane of {elements} elements), received "
                f"{stream.raw_length}",
                name,
                f"{where}.raw_length",
            )
        parts.append(stream)
    return tuple(parts)


def _expect_raw_length(stream: _Stream, expected: int, name: str, role: str, what: str) -> None:
    if stream.raw_length != expected:
        raise _fail(
            f"expected {expected} bytes ({what}), received {stream.raw_length}",
            name,
            f"streams.{role}.raw_length",
        )


def _check_tensor(
    entry: object, index: int, data_start: int, data_length: int, seen: set[str], major: int = 2
) -> _Record:
    if not isinstance(entry, dict):
        raise _fail("expected an object", field=f"tensors[{index}]")
    name = entry.get("name")
    if not isinstance(name, str):
        raise _fail(f"expected a string, received {name!r}", field=f"tensors[{index}].name")
    if name in seen:
        raise _fail("the name appears twice", name, "name")
    seen.add(name)
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(f"expected one of {sorted(DTYPES)}, received {dtype!r}", name, "dtype")
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 62 for d in shape
        )
    ):
        raise _fail(
            f"expected a list of at most {_MAX_DIMS} sizes, received {shape!r}", name, "shape"
        )
    numel = math.prod(shape)
    if numel >= 1 << 62:
        raise _fail(f"{numel} elements is more than any file can hold", name, "shape")
    encoding = entry.get("encoding")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise _fail(f"expected one of {ENCODINGS}, received {encoding!r}", name, "encoding")
    sparse = _bool(entry, "sparse", name)
    shuffle = _bool(entry, "shuffle", name)
    count = _int(entry, "count", name, high=numel)
    if not sparse and count != numel:
        raise _fail(
            f"expected {numel} (the tensor's size) for a dense tensor, received {count}",
            name,
            "count",
        )
    streams = entry.get("streams")
    if not isinstance(streams, dict):
        raise _fail("expected an object", name, "streams")
    roles = (
        {"values"}
        | ({"positions"} if sparse else set())
        | (set() if encoding == "raw" else {"table"})
    )
    if set(streams) != roles:
        raise _fail(
            f"expected streams {sorted(roles)}, received {sorted(streams)}", name, "streams"
        )
    # Format 2: a dense float tensor may be stored in chunks of byte planes.
    chunk, sign_last = 0, False
    if major >= 2:
        chunk = _int(entry, "chunk", name)
        sign_last = _bool(entry, "sign_last", name)
    parts: tuple[_Stream, ...] = ()
    if chunk:
        if encoding != "raw" or sparse or not shuffle or count == 0:
            raise _fail(
                "chunks of byte planes are for dense, non-empty raw floats stored shuffled",
                name,
                "chunk",
            )
        if _itemsize(dtype) == 1 or not DTYPES[dtype].is_floating_point:
            raise _fail(f"byte planes are for floats of 2+ bytes, not {dtype}", name, "shuffle")
        parts = _check_parts(streams["values"], name, dtype, count, chunk, data_start, data_length)
    elif sign_last:
        raise _fail("expected false without chunks of byte planes (chunk 0)", name, "sign_last")
    checked = {
        role: _check_stream(streams, role, name, data_start, data_length)
        for role in roles
        if not (parts and role == "values")
    }
    positions = checked.get("positions")
    if positions is not None and not count <= positions.raw_length <= 10 * count:
        raise _fail(
            f"{count} positions take 1 to 10 bytes each, received {positions.raw_length} bytes",
            name,
            "streams.positions.raw_length",
        )
    itemsize = _itemsize(dtype)
    bits, width, rows = 8 * itemsize, 0, 0
    values, table = checked.get("values"), checked.get("table")
    if parts:
        # The result, and one chunk's inflated planes (the scratch of decode_planes).
        out_bytes = numel * itemsize + min(count, chunk) * itemsize
    elif encoding == "raw":
        assert values is not None
        if shuffle and (itemsize == 1 or not DTYPES[dtype].is_floating_point):
            raise _fail(
                f"byte-plane shuffle is for floats of 2+ bytes, not {dtype}", name, "shuffle"
            )
        _expect_raw_length(
            values, count * itemsize, name, "values", f"{count} x {itemsize}-byte {dtype}"
        )
        # Dense unshuffled values inflate straight into the result; otherwise the stream is
        # inflated apart (and unshuffled apart when sparse).
        direct = not sparse and not shuffle
        scratch = 0 if direct else values.raw_length * (2 if sparse and shuffle else 1)
        out_bytes = numel * itemsize + scratch + (positions.raw_length if positions else 0)
    else:
        assert values is not None
        if not DTYPES[dtype].is_floating_point:
            raise _fail(f"encoding {encoding!r} decodes to floats, not {dtype}", name, "dtype")
        if shuffle:
            raise _fail("byte-plane shuffle is only for raw values", name, "shuffle")
        if not shape:
            raise _fail(f"encoding {encoding!r} needs at least one dimension", name, "shape")
        assert table is not None
        rows = shape[0]
        if encoding == "ternary":
            bits = _int(entry, "bits", name, 2, 2)
            if sparse:
                raise _fail("ternary tensors are stored dense (zeros are codes)", name, "sparse")
            _expect_raw_length(values, (numel + 3) // 4, name, "values", f"{numel} 2-bit codes")
            _expect_raw_length(table, 4 * rows, name, "table", f"{rows} float32 row scales")
            scratch = numel  # the unpacked int8 codes
        else:
            bits = _int(entry, "bits", name, 2 if encoding == "linear" else 1, 8)
            width = _int(entry, "width", name, bits, 8)
            _expect_raw_length(
                values, (count * width + 7) // 8, name, "values", f"{count} fields of {width} bits"
            )
            if encoding == "codebook":
                entries = table.raw_length // 4
                if table.raw_length % 4 or not 1 <= entries <= 1 << bits:
                    raise _fail(
                        f"expected 1 to {1 << bits} float32 centroids, received "
                        f"{table.raw_length} bytes",
                        name,
                        "streams.table.raw_length",
                    )
                scratch = 0
            else:
                _expect_raw_length(table, 4 * rows, name, "table", f"{rows} float32 channel scales")
                # the scales copied out; fields wider than `bits` unpacked to be checked
                scratch = 4 * rows + (count if width not in (bits, 8) else 0)
        # The float32 result, then (other dtypes) the cast copy, and every inflated stream.
        out_bytes = numel * 4 + (numel * itemsize if dtype != "float32" else 0) + scratch
        out_bytes += sum(s.raw_length for s in checked.values())
    stored = sum(s.length for s in checked.values()) + sum(p.length for p in parts)

    def described(s: _Stream) -> dict[str, int]:
        return {
            "offset": s.offset - data_start,
            "length": s.length,
            "raw_length": s.raw_length,
            "crc32": s.crc32,
        }

    stream_info: dict[str, Any] = {role: described(s) for role, s in checked.items()}
    if parts:
        stream_info["values"] = [described(p) for p in parts]
    info = TensorInfo(
        name,
        dtype,
        tuple(shape),
        encoding,
        sparse,
        count,
        bits,
        width,
        shuffle,
        stored,
        stream_info,
        chunk,
        sign_last,
    )
    return _Record(info, positions, values, table, rows, out_bytes, parts)


def _read(data: memoryview) -> tuple[list[_Record], dict[str, Any]]:
    header, data_start, major = _read_preamble(data)
    data_length = _int(header, "data_length", None)
    if data_length != len(data) - data_start:
        raise _fail(
            f"expected {data_length} bytes after the header, the file has {len(data) - data_start} "
            "(truncated, or bytes appended)",
            field="data_length",
        )
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _fail("expected an object", field="metadata")
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        raise _fail("expected a list", field="tensors")
    if len(tensors) > data_length:
        raise _fail(
            f"{len(tensors)} tensors cannot fit in a {data_length}-byte data section (each has "
            "streams of their own, of 1 byte or more)",
            field="tensors",
        )
    seen: set[str] = set()
    records = [
        _check_tensor(entry, i, data_start, data_length, seen, major)
        for i, entry in enumerate(tensors)
    ]
    _check_no_overlap(records)
    return records, metadata


def _check_no_overlap(records: list[_Record]) -> None:
    """Every stream owns its bytes: two streams sharing a byte (one stream aliased by many
    tensors, say) would let a small file decode to many times its size."""
    spans = sorted(
        (stream.offset, stream.offset + stream.length, index, role)
        for index, record in enumerate(records)
        for role, stream in _streams(record)
    )
    for (_, end, index, role), (start, _, other, other_role) in itertools.pairwise(spans):
        if start < end:
            raise _fail(
                f"its bytes overlap those of tensor {records[index].info.name!r}'s {role} stream "
                "(streams may not share bytes)",
                records[other].info.name,
                f"streams.{other_role}.offset",
            )


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[memoryview]:
    """The file's bytes as a memoryview: a path is memory-mapped for the duration (reading a
    90 MB file into a fresh bytes object cost 54 ms, more than decoding it; a mapping of the
    page cache costs ~1 ms). Every decoded tensor is a copy, so nothing outlives the mapping."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        yield view.cast("B") if view.format != "B" or view.ndim != 1 else view
        return
    with open(source, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:  # mmap refuses an empty file; the header check reports it
            yield memoryview(b"")
            return
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    try:
        yield view
    finally:
        view.release()
        # A slice still referenced (say by an exception's traceback) keeps it open: GC closes it.
        with contextlib.suppress(BufferError):
            mapping.close()


def read_header(
    source: Source, *, check_crcs: bool = False
) -> tuple[list[TensorInfo], dict[str, Any]]:
    """The checked header of a ``.codl`` file: per-tensor info and the metadata. With
    ``check_crcs`` every stream's CRC32 is checked too (nothing is inflated): FormatError names
    the first corrupt stream."""
    with _opened(source) as data:
        records, metadata = _read(data)
        if check_crcs:
            for record in records:
                for role, stream in _streams(record):
                    _check_crc(stream, data, record.info.name, role)
    return [r.info for r in records], metadata


def inspect(source: Source, *, check_crcs: bool = False) -> list[TensorInfo]:
    """Per-tensor info of a ``.codl`` file: its header (and with ``check_crcs`` its streams'
    CRC32s, as ``codl inspect`` does); nothing is inflated."""
    return read_header(source, check_crcs=check_crcs)[0]


def _streams(record: _Record) -> list[tuple[str, _Stream]]:
    pairs = [("positions", record.positions), ("values", record.values), ("table", record.table)]
    pairs += [(f"values[{i}]", part) for i, part in enumerate(record.parts)]
    return [(role, stream) for role, stream in pairs if stream is not None]


def _check_crc(stream: _Stream, data: memoryview, name: str, role: str) -> memoryview:
    """The stream's stored bytes, once their CRC32 matches the header's."""
    stored = data[stream.offset : stream.offset + stream.length]
    if codec.crc32(stored) != stream.crc32:
        raise _fail("CRC32 mismatch (the stored bytes are corrupt)", name, f"streams.{role}")
    return stored


def _decode(record: _Record, data: memoryview) -> torch.Tensor:
    info = record.info
    quantized = info.encoding != "raw"
    out_dtype = torch.float32 if quantized else DTYPES[info.dtype]
    out = torch.empty(info.numel, dtype=out_dtype)
    core = codec.core_codec() != "none"
    # Linear fields stored wider than `bits` may hold values of 2^bits or more, which the format
    # forbids: those tensors' streams are inflated here so that their fields can be checked.
    check_fields = info.encoding == "linear" and info.width > info.bits
    compressed = core and not check_fields

    def argument(
        stream: _Stream | None, role: str
    ) -> tuple[memoryview | bytes | np.ndarray, int, int] | None:
        if stream is None:
            return None
        if compressed:
            stored = data[stream.offset : stream.offset + stream.length]
            return stored, stream.raw_length, stream.crc32
        # Checked and inflated here; the core gets the plain bytes.
        inflated = _inflate(stream, data, info.name, role, core)
        return inflated, stream.raw_length, stream.crc32

    assert record.values is not None
    values = argument(record.values, "values")
    assert values is not None
    if check_fields:
        _check_linear_fields(values[0], info)

    failure = _ops.decode_tensor(
        info.encoding,
        numel=info.numel,
        count=info.count,
        sparse=info.sparse,
        itemsize=out.element_size(),
        shuffle=info.shuffle,
        bits=info.bits,
        width=info.width,
        rows=record.rows,
        compressed=compressed,
        positions=argument(record.positions, "positions"),
        values=values,
        table=argument(record.table, "table"),
        out=out.view(torch.uint8),
    )
    if failure is not None:
        role, message = failure
        raise _fail(message, info.name, f"streams.{role}" if role else None)
    result = out.reshape(info.shape)
    if quantized and DTYPES[info.dtype] != torch.float32:
        result = result.to(DTYPES[info.dtype])
    return result


def _decode_chunk(record: _Record, index: int, data: memoryview, out: torch.Tensor) -> None:
    """Chunk ``index`` of a tensor in byte planes, into its elements of ``out`` (the tensor's
    flat result): the core joins the planes (CRCs checked, stored planes read in place); without
    a codec in the core Python's zlib inflates them and NumPy joins them."""
    info = record.info
    itemsize = out.element_size()
    start = index * info.chunk
    stop = min(start + info.chunk, info.count)
    planes = record.parts[index * itemsize : (index + 1) * itemsize]
    target = out[start:stop].view(torch.uint8)
    if codec.core_codec() != "none":
        arguments = [(data[p.offset : p.offset + p.length], p.raw_length, p.crc32) for p in planes]
        failure = _ops.decode_planes(arguments, itemsize, sign_last=info.sign_last, out=target)
        if failure is not None:
            plane, message = failure
            raise _fail(message, info.name, f"streams.values[{index * itemsize + plane}]")
        return
    inflated = [
        np.frombuffer(
            _inflate(p, data, info.name, f"values[{index * itemsize + k}]", core=False), np.uint8
        )
        for k, p in enumerate(planes)
    ]
    unsigned = np.dtype(f"<u{itemsize}")
    joined = np.stack(inflated, axis=1).reshape(-1).view(unsigned)
    if info.sign_last:
        joined = (joined >> unsigned.type(1)) | (joined << unsigned.type(8 * itemsize - 1))
    target.numpy()[:] = joined.view(np.uint8)


def _decode_chunks(
    chunks: list[tuple[_Record, int]], data: memoryview, outs: dict[str, torch.Tensor]
) -> None:
    """Chunks of byte planes of one itemsize and ``sign_last`` (of one tensor or several), each
    into its tensor's flat result in ``outs``: in the core in one call, which decodes the chunks'
    Huffman-coded planes two at a time (~1.5x one at a time); otherwise one by one."""
    if codec.core_codec() == "none" or len(chunks) == 1:
        for record, index in chunks:
            _decode_chunk(record, index, data, outs[record.info.name])
        return
    arguments = []
    itemsize = outs[chunks[0][0].info.name].element_size()
    for record, index in chunks:
        info = record.info
        start = index * info.chunk
        stop = min(start + info.chunk, info.count)
        planes = record.parts[index * itemsize : (index + 1) * itemsize]
        streams = [(data[p.offset : p.offset + p.length], p.raw_length, p.crc32) for p in planes]
        arguments.append((streams, outs[info.name][start:stop].view(torch.uint8)))
    failure = _ops.decode_plane_chunks(arguments, itemsize, sign_last=chunks[0][0].info.sign_last)
    if failure is not None:
        chunk, plane, message = failure
        record, index = chunks[chunk]
        raise _fail(message, record.info.name, f"streams.values[{index * itemsize + plane}]")


def _inflate(
    stream: _Stream, data: memoryview, name: str, role: str, core: bool
) -> bytes | np.ndarray:
    """A stream's bytes, CRC-checked and inflated to exactly ``raw_length`` bytes."""
    stored = _check_crc(stream, data, name, role)
    if core:
        out = torch.empty(stream.raw_length, dtype=torch.uint8)
        error = _ops.inflate_into(stored, out)
        if error is not None:
            raise _fail(error, name, f"streams.{role}")
        return out.numpy()
    inflated, error = codec.inflate_python(stored, stream.raw_length)
    if error is not None:
        raise _fail(error, name, f"streams.{role}")
    return inflated


def _check_linear_fields(packed: bytes | memoryview | np.ndarray, info: TensorInfo) -> None:
    """A linear field is a code plus 2^(bits-1): one of 2^bits or more is an error."""
    if info.count == 0:
        return
    fields = np.frombuffer(packed, dtype=np.uint8)
    if info.width != 8:
        fields = _ops.unpack_fields(fields, info.count, info.width).numpy()
    largest = int(fields[: info.count].max())
    if largest >> info.bits:
        raise _fail(
            f"a field of {largest} is out of range for {info.bits}-bit codes (at most "
            f"{(1 << info.bits) - 1})",
            info.name,
            "streams.values",
        )


_load_pools: dict[int, ThreadPoolExecutor] = {}
_load_pools_lock = threading.Lock()


def _load_pool(threads: int) -> ThreadPoolExecutor:
    """The decode threads of :func:`load`, kept between calls: each keeps the core's scratch
    buffers (a fresh one is page faults) and a pool costs ~0.1-0.5 ms to start."""
    with _load_pools_lock:
        pool = _load_pools.get(threads)
        if pool is None:
            pool = _load_pools[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="codl-load"
            )
        return pool


#: Decoded size below which :func:`load` decodes on the calling thread alone.
_PARALLEL_LOAD_MIN_BYTES = 4 << 20


def load(
    source: Source, *, max_bytes: int | None = None, num_threads: int | None = None
) -> dict[str, torch.Tensor]:
    """The state_dict stored in a ``.codl`` file (a path, or the file's bytes).

    Quantized tensors come back dequantized, bit-exact against the values the writer computed
    (:func:`codl.formats.decode_preview`), in their original dtype. ``max_bytes`` bounds the
    decoded size of the whole file (default: 4096 times the file's size, at least 1 GiB), so a
    forged header cannot make the reader allocate without limit. Tensors decode in parallel on
    ``num_threads`` threads (default :func:`codl.get_num_threads`). Raises :class:`FormatError`
    if anything in the file is malformed or corrupt.
    """
    with _opened(source) as data:
        return _load(data, max_bytes, num_threads)


def _load(
    data: memoryview, max_bytes: int | None, num_threads: int | None
) -> dict[str, torch.Tensor]:
    records, _ = _read(data)
    limit = (
        max(_MIN_DEFAULT_LIMIT, _DEFAULT_EXPANSION * len(data)) if max_bytes is None else max_bytes
    )
    total = sum(r.out_bytes for r in records)
    if total > limit:
        raise _fail(
            f"the tensors decode to {total} bytes, above the limit of {limit} (pass max_bytes= "
            "to allow more)",
            field="shape",
        )
    threads = _ops.get_num_threads() if num_threads is None else num_threads
    # Jobs: a whole tensor, or one chunk of a tensor in byte planes (into its preallocated result).
    planes = {
        r.info.name: torch.empty(r.info.numel, dtype=DTYPES[r.info.dtype])
        for r in records
        if r.parts
    }
    if codec.core_codec() != "none":
        for tensor in planes.values():
            _ops.advise_huge_pages(tensor)
    # Jobs: a whole tensor, or two chunks of byte planes (of one tensor or two, into their
    # preallocated results), paired by size so that the core's interleaved decode of their
    # Huffman planes ends both together.
    chunks: dict[tuple[int, bool], list[tuple[int, _Record, int]]] = {}
    for r in records:
        if r.parts:
            itemsize = _itemsize(r.info.dtype)
            for index in range(len(r.parts) // itemsize):
                size = min(r.info.chunk, r.info.count - index * r.info.chunk) * itemsize
                chunks.setdefault((itemsize, r.info.sign_last), []).append((size, r, index))
    jobs: list[tuple[int, _Record | None, list[tuple[_Record, int]]]] = []  # (bytes, whole, chunks)
    for group in chunks.values():
        group.sort(key=lambda unit: -unit[0])
        for i in range(0, len(group), 2):
            pair = group[i : i + 2]
            jobs.append((sum(unit[0] for unit in pair), None, [(r, k) for _, r, k in pair]))
    jobs += [(r.out_bytes, r, []) for r in records if not r.parts]

    def run(job: tuple[int, _Record | None, list[tuple[_Record, int]]]) -> torch.Tensor | None:
        _, whole, pair = job
        if whole is not None:
            return _decode(whole, data)
        _decode_chunks(pair, data, planes)
        return None

    # Starting a pool costs ~0.1-0.5 ms: below a few MB it costs more than it saves.
    if threads <= 1 or len(jobs) <= 1 or total < _PARALLEL_LOAD_MIN_BYTES:
        results = [run(job) for job in jobs]
    else:
        # The core releases the GIL while it inflates and decodes, so jobs run in parallel;
        # largest first, so the pool does not wait on one big tensor at the end.
        jobs.sort(key=lambda job: -job[0])
        results = list(_load_pool(threads).map(run, jobs))
    decoded = {job[1].info.name: out for job, out in zip(jobs, results) if job[1] is not None}
    state: dict[str, torch.Tensor] = {}
    for r in records:
        name = r.info.name
        result = planes[name].reshape(r.info.shape) if r.parts else decoded[name]
        assert result is not None
        state[name] = result
    return state


def load_into(model: nn.Module, source: Source, *, strict: bool = True) -> Any:
    """Load a ``.codl`` file into ``model`` with ``model.load_state_dict(..., strict=strict)``:
    strict by default, so missing and unexpected keys raise as torch reports them; returns
    torch's ``(missing_keys, unexpected_keys)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, received {type(model).__name__}")
    return model.load_state_dict(load(source), strict=strict)
