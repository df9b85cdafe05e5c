"""Reading untrusted .codl files: every kind of damage raises codl.FormatError naming the tensor
and the field, nothing is unpickled, sizes are bounded before allocation (no decompression
bombs), and a bounded hypothesis fuzz over mutated valid files finds nothing but FormatError."""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import codl
from codl.formats import FormatError, codec, load

PREAMBLE = struct.Struct("<8sHHIII")
FUZZ_LIMIT = 1 << 24  # max_bytes for fuzzed loads: a forged shape may not allocate more


def _small_model_file() -> bytes:
    """A small file with every encoding, sparse and dense, and a few dtypes."""
    g = torch.Generator().manual_seed(5)
    tensors = {
        "raw": torch.randn(6, 5, generator=g),
        "raw_i64": torch.arange(7),
        "half": torch.randn(9, generator=g).half(),
        "pruned": torch.randn(8, 10, generator=g),
        "kmeans": torch.randn(8, 10, generator=g),
        "kmeans_dense": torch.randn(3, 7, generator=g),
        "linear": torch.randn(8, 10, generator=g),
        "ternary": torch.randn(5, 30, generator=g),
        "scalar": torch.tensor(2.0),
    }
    plan = {
        "pruned": {"prune": 0.7},
        "kmeans": {"prune": 0.8, "bits": 3},
        "kmeans_dense": {"bits": 2},
        "linear": {"prune": 0.5, "bits": 4, "method": "linear"},
        "ternary": {"method": "ternary"},
    }
    data, _ = codl.formats.encode_state_dict(tensors, plan)
    return data


VALID = _small_model_file()


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    _, _, _, length, _, _ = PREAMBLE.unpack_from(blob)
    header = json.loads(zlib.decompress(blob[24 : 24 + length], wbits=-15))
    return header, blob[24 + length :]


def seal(
    header: dict[str, Any],
    data: bytes,
    *,
    fix_crcs: bool = False,
    version: tuple[int, int] = codl.formats.VERSION,
) -> bytes:
    """Reassemble a file; the header's CRC (and optionally every stream's) made to match, so a
    mutation reaches the checks behind the CRCs."""
    if fix_crcs:
        for entry in header["tensors"]:
            for streams in entry["streams"].values():
                for stream in streams if isinstance(streams, list) else [streams]:
                    stored = data[stream["offset"] : stream["offset"] + stream["length"]]
                    stream["crc32"] = zlib.crc32(stored)
    raw = json.dumps(header).encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = compressor.compress(raw) + compressor.flush()
    preamble = PREAMBLE.pack(
        b"\x89CODL\r\n\x1a", *version, len(stored), len(raw), zlib.crc32(stored)
    )
    return preamble + stored + data


def tensor_entry(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in header["tensors"] if e["name"] == name)


def expect_error(
    blob: bytes, match: str, tensor: str | None = None, field: str | None = None
) -> None:
    with pytest.raises(FormatError, match=match) as info:
        load(blob, max_bytes=FUZZ_LIMIT)
    assert info.value.tensor == tensor
    if field is not None:
        assert info.value.field == field


def test_the_valid_file_loads_and_reseals_unchanged() -> None:
    header, data = split(VALID)
    assert set(load(VALID)) == {e["name"] for e in header["tensors"]}
    resealed = load(seal(header, data, fix_crcs=True))
    for name, tensor in load(VALID).items():
        assert torch.equal(resealed[name], tensor)


def test_format_error_is_a_value_error_exported_by_codl() -> None:
    assert codl.FormatError is FormatError and issubclass(FormatError, ValueError)


def test_not_a_codl_file() -> None:
    expect_error(b"", "shorter than the 24-byte preamble", field="preamble")
    expect_error(b"PK\x03\x04" + bytes(40), "not a .codl file", field="magic")
    expect_error(
        b"\x89CODL\r\n\x1a\x03\x00" + VALID[10:],
        r"version 1\.x or 2\.x, received 3\.0",
        field="version",
    )


def test_truncated_or_extended_files() -> None:
    for cut in range(0, len(VALID), 7):
        with pytest.raises(FormatError):
            load(VALID[:cut])
    expect_error(VALID + b"\x00", "truncated, or bytes appended", field="data_length")


def test_corrupt_header() -> None:
    blob = bytearray(VALID)
    blob[30] ^= 0x10
    expect_error(bytes(blob), "the header is corrupt", field="header_crc32")
    _, _, _, length, _, crc = PREAMBLE.unpack_from(VALID)
    bomb = VALID[:12] + struct.pack("<III", length, 2000 * length, crc) + VALID[24:]
    expect_error(bomb, "cannot come from", field="header_raw_length")
    not_json = seal({}, b"")[:24]  # a header that inflates to something that is not JSON
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    garbage = compressor.compress(b"{'tensors': ") + compressor.flush()
    not_json = PREAMBLE.pack(b"\x89CODL\r\n\x1a", 2, 0, len(garbage), 12, zlib.crc32(garbage))
    expect_error(not_json + garbage, "not valid JSON", field="header")


def test_stream_damage_names_the_tensor_and_the_stream() -> None:
    header, data = split(VALID)
    entry = tensor_entry(header, "kmeans")
    values = entry["streams"]["values"]
    flipped = bytearray(data)
    flipped[values["offset"]] ^= 0x01
    expect_error(seal(header, bytes(flipped)), "CRC32 mismatch", "kmeans", "streams.values")
    # With the CRC made to match, the damaged DEFLATE stream itself is caught (or decodes to
    # fields that are checked: an index past the codebook).
    with pytest.raises(FormatError) as info:
        load(seal(header, bytes(flipped), fix_crcs=True))
    assert info.value.tensor == "kmeans" and info.value.field is not None


@pytest.mark.parametrize(
    ("edit", "match", "field"),
    [
        (lambda e: e["streams"]["values"].update(offset=10**9), "outside", "streams.values.offset"),
        (lambda e: e["streams"]["values"].update(length=10**6), "outside", "streams.values.offset"),
        (lambda e: e["streams"]["values"].update(raw_length=10**12), "cannot come from", None),
        (lambda e: e["streams"]["table"].update(raw_length=4 * 300), "centroids", None),
        (lambda e: e.update(count=81), r"in \[0, 80\]", "count"),
        (lambda e: e.update(width=2), r"in \[3, 8\]", "width"),
        (lambda e: e.update(dtype="int64"), "decodes to floats", "dtype"),
        (lambda e: e.update(dtype="object"), "expected one of", "dtype"),
        (lambda e: e.update(encoding="pickle"), "expected one of", "encoding"),
        (lambda e: e.update(shape=[8, -10]), "sizes", "shape"),
        (lambda e: e.update(shape="8x10"), "sizes", "shape"),
        (lambda e: e.update(sparse=False), "dense tensor", "count"),
        (lambda e: e["streams"].pop("positions"), "expected streams", "streams"),
        (lambda e: e["streams"]["values"].update(crc32=-1), r"in \[0, 4294967295\]", "crc32"),
    ],
)
def test_header_fields_are_checked(
    edit: Callable[[dict[str, Any]], object], match: str, field: str | None
) -> None:
    header, data = split(VALID)
    edit(tensor_entry(header, "kmeans"))
    expect_error(seal(header, data), match, "kmeans", field)


def test_a_decompression_bomb_is_refused_without_inflating_it() -> None:
    """A stream that inflates to 50 MB where the header allows 24 bytes fails at the bound."""
    header, data = split(VALID)
    entry = tensor_entry(header, "raw_i64")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(50 << 20)) + compressor.flush()
    entry["streams"]["values"].update(offset=len(data), length=len(bomb))
    header["data_length"] = len(data) + len(bomb)
    expect_error(seal(header, data + bomb, fix_crcs=True), "more than its recorded size", "raw_i64")


def test_forged_shapes_are_bounded_before_allocation() -> None:
    header, data = split(VALID)
    tensor_entry(header, "pruned")["shape"] = [1 << 20, 1 << 20]  # 4 TiB of float32, sparse
    expect_error(seal(header, data), "above the limit", field="shape")


def test_duplicate_names_and_short_positions() -> None:
    header, data = split(VALID)
    header["tensors"].append(dict(tensor_entry(header, "raw")))
    expect_error(seal(header, data), "appears twice", "raw", "name")
    header, data = split(VALID)
    entry = tensor_entry(header, "pruned")
    entry["shape"] = [8, 2]  # the stored positions reach past 16 elements
    entry["count"] = min(entry["count"], 16)
    with pytest.raises(FormatError) as info:
        load(seal(header, data))
    assert info.value.tensor == "pruned"


def test_loading_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("codl.load must not unpickle")

    for module, name in [(pickle, "loads"), (pickle, "load"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    assert set(load(VALID)) >= {"raw", "kmeans", "ternary"}


def test_the_python_zlib_path_reads_and_rejects_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core built without zlib: Python's zlib inflates (bounded), the core decodes."""
    expected = load(VALID)
    monkeypatch.setattr(codec, "core_codec", lambda: "none")
    written, _ = codl.formats.encode_state_dict({"x": torch.randn(4, 6)}, {"x": {"bits": 3}})
    assert set(load(written)) == {"x"}
    for name, tensor in load(VALID).items():
        assert torch.equal(tensor, expected[name])
    header, data = split(VALID)
    entry = tensor_entry(header, "raw_i64")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(50 << 20)) + compressor.flush()
    entry["streams"]["values"].update(offset=len(data), length=len(bomb))
    header["data_length"] = len(data) + len(bomb)
    expect_error(seal(header, data + bomb, fix_crcs=True), "more than its recorded size", "raw_i64")
    header, data = split(VALID)
    flipped = bytearray(data)
    flipped[tensor_entry(header, "raw_i64")["streams"]["values"]["offset"]] ^= 4
    expect_error(seal(header, bytes(flipped)), "CRC32 mismatch", "raw_i64", "streams.values")


# ---------------------------------------------------------------------------------------- fuzz
def _int_paths(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _int_paths(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _int_paths(v, (*path, i))]
    return [path] if isinstance(node, (int, bool, str)) else []


HEADER, DATA = split(VALID)
PATHS = _int_paths(HEADER)
INTERESTING = st.one_of(
    st.sampled_from([0, 1, -1, 2, 3, 7, 8, 9, 255, 256, 2**31, 2**32, 2**62, 2**63, 2**64]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([None, True, "x", [], {}, 1.5, "float32", "codebook"]),
)


def _set(node: Any, path: tuple[object, ...], value: object) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) * 8 - 1)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID) - 1)),
    st.tuples(st.just("field"), st.integers(0, len(PATHS) - 1), INTERESTING),
    st.tuples(st.just("data"), st.integers(0, len(DATA) * 8 - 1), st.booleans()),
    st.tuples(st.just("bytes"), st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8)),
)


def _mutate(kind: str, *args: Any) -> bytes:
    if kind == "flip":
        blob = bytearray(VALID)
        blob[args[0] // 8] ^= 1 << (args[0] % 8)
        return bytes(blob)
    if kind == "truncate":
        return VALID[: args[0]]
    if kind == "bytes":
        return VALID[: args[0]] + args[1] + VALID[args[0] + len(args[1]) :]
    header = json.loads(json.dumps(HEADER))
    if kind == "field":  # a header value edited, the header's CRC resealed
        _set(header, PATHS[args[0]], args[1])
        return seal(header, DATA)
    # a bit of a stream flipped, every CRC resealed: the inflaters and decoders see it
    data = bytearray(DATA)
    data[args[0] // 8] ^= 1 << (args[0] % 8)
    return seal(header, bytes(data), fix_crcs=args[1])


@settings(
    max_examples=1500,  # about 4 s
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutation)
def test_fuzz_mutated_files_raise_only_format_error(change: tuple[Any, ...]) -> None:
    blob = _mutate(*change)
    try:
        result = load(blob, max_bytes=FUZZ_LIMIT, num_threads=2)
    except FormatError as error:
        assert str(error)
    else:
        assert all(isinstance(t, torch.Tensor) for t in result.values())


def test_save_load_under_the_fuzz_file(tmp_path: Path) -> None:
    """The fuzz seed is a real file: it loads from disk as from bytes."""
    path = tmp_path / "seed.codl"
    path.write_bytes(VALID)
    for name, tensor in load(path).items():
        assert torch.equal(tensor, load(VALID)[name])


# ------------------------------------------------------- hand-built files (issue 14 items 6-9)
def deflate_raw(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(raw) + compressor.flush()


def build(tensors: list[dict[str, Any]], metadata: dict[str, str] | None = None) -> bytes:
    """A file from header entries whose ``streams`` map each role to its inflated bytes."""
    entries, data = [], b""

    def placed(raw: bytes) -> dict[str, int]:
        nonlocal data
        stored = deflate_raw(raw)
        stream = {
            "offset": len(data),
            "length": len(stored),
            "raw_length": len(raw),
            "crc32": zlib.crc32(stored),
        }
        data += stored
        return stream

    for tensor in tensors:
        entry = {"chunk": 0, "sign_last": False}
        entry.update({k: v for k, v in tensor.items() if k != "streams"})
        entry["streams"] = {
            role: [placed(r) for r in raw] if isinstance(raw, list) else placed(raw)
            for role, raw in tensor["streams"].items()
        }
        entries.append(entry)
    return seal({"tensors": entries, "data_length": len(data), "metadata": metadata or {}}, data)


def empty_linear(name: str, dtype: str, numel: int) -> dict[str, Any]:
    """A sparse linear tensor of ``numel`` elements with nothing stored: all zeros."""
    return {
        "name": name,
        "dtype": dtype,
        "shape": [1, numel],
        "encoding": "linear",
        "sparse": True,
        "count": 0,
        "bits": 8,
        "width": 8,
        "shuffle": False,
        "streams": {"positions": b"", "values": b"", "table": struct.pack("<f", 1.0)},
    }


@pytest.mark.parametrize(("dtype", "itemsize"), [("float64", 8), ("float16", 2), ("bfloat16", 2)])
def test_max_bytes_counts_the_float32_buffer_of_quantized_non_float32(
    dtype: str, itemsize: int
) -> None:
    """Issue 14 item 6: a quantized float64/float16/bfloat16 tensor decodes into float32 and is
    then cast: both buffers are allocated, and max_bytes must count both (it counted 4 bytes per
    element: a 257-byte file loaded under max_bytes=1 GiB with 3.3 GB peak)."""
    numel = 1 << 18
    blob = build([empty_linear("w", dtype, numel)])
    assert len(blob) < 400
    allocated = numel * (4 + itemsize)  # the float32 buffer and the result
    with pytest.raises(FormatError, match="above the limit") as info:
        load(blob, max_bytes=allocated - 1)
    assert info.value.field == "shape"
    loaded = load(blob, max_bytes=allocated + 4096)["w"]
    assert loaded.dtype == DTYPES_BY_NAME[dtype] and loaded.shape == (1, numel)
    assert not bool(loaded.any())


DTYPES_BY_NAME = {"float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def test_streams_may_not_alias_or_overlap() -> None:
    """Issue 14 item 7: 100k tensors aliasing one stream made a 300 KB file take seconds and
    decode to many times its size; every stream must own its bytes."""
    header, data = split(VALID)
    alias = json.loads(json.dumps(tensor_entry(header, "raw")))
    alias["name"] = "alias"
    header["tensors"].append(alias)
    expect_error(seal(header, data), "overlap", "alias", "streams.values[0].offset")
    header, data = split(VALID)
    kmeans = tensor_entry(header, "kmeans")["streams"]
    table = kmeans["table"]
    table["offset"] -= 1  # now its first byte is the values stream's last one
    table["length"] += 1
    with pytest.raises(FormatError, match="overlap") as info:
        load(seal(header, data))
    assert info.value.tensor == "kmeans" and info.value.field is not None
    header, data = split(VALID)
    tensor_entry(header, "raw")["streams"]["values"][1]["length"] = 0
    expect_error(seal(header, data), "never empty", "raw", "streams.values[1].length")


def test_many_aliased_tensors_are_refused_before_their_entries_are_checked() -> None:
    header, data = split(VALID)
    entry = tensor_entry(header, "raw_i64")
    header["tensors"] = [dict(entry, name=f"t{i}") for i in range(len(data) + 1)]
    expect_error(seal(header, data), "cannot fit", field="tensors")


def test_the_header_is_bounded_by_the_file_size() -> None:
    """Issue 14 item 7: a header may not inflate to more than 256 times the file."""
    blob = build([], {"padding": "a" * (1 << 20)})  # 1 MiB of JSON in a ~1 KB file
    assert len(blob) < 4096
    expect_error(blob, "times the", field="header_raw_length")
    with pytest.raises(ValueError, match="metadata"):
        codl.formats.encode_state_dict({"x": torch.zeros(1)}, metadata={"p": "a" * (1 << 20)})


def linear_tensor(fields: list[int], width: int, bits: int = 4) -> dict[str, Any]:
    packed = _ops_pack(fields, width)
    return {
        "name": "lin",
        "dtype": "float32",
        "shape": [2, len(fields) // 2],
        "encoding": "linear",
        "sparse": False,
        "count": len(fields),
        "bits": bits,
        "width": width,
        "shuffle": False,
        "streams": {"values": packed, "table": struct.pack("<2f", 0.5, 0.25)},
    }


def _ops_pack(fields: list[int], width: int) -> bytes:
    """LSB-first packing of docs/format.md, by hand."""
    bits = sum(f << (i * width) for i, f in enumerate(fields))
    return bits.to_bytes((len(fields) * width + 7) // 8, "little")


@pytest.mark.parametrize("width", [4, 6, 8])
def test_a_linear_field_of_2_to_the_bits_or_more_is_an_error(width: int) -> None:
    """Issue 14 item 9: with bits=4 the fields are 0..15 (codes -8..7); a wider field would
    silently decode to a code the writer can never produce."""
    fields = [0, 1, 8, 15, 9, 7]
    loaded = load(build([linear_tensor(fields, width)]))["lin"]
    expected = torch.tensor([[-8 * 0.5, -7 * 0.5, 0.0], [7 * 0.25, 1 * 0.25, -1 * 0.25]])
    assert torch.equal(loaded, expected)
    if width == 4:  # a 4-bit field cannot hold 16; 1-bit linear codes are not in the format
        expect_error(build([linear_tensor([0, 1] * 3, 4, bits=1)]), r"in \[2, 8\]", "lin", "bits")
        return
    bad = build([linear_tensor([0, 1, 8, 16, 9, 7], width)])
    expect_error(bad, "field of 16 is out of range", "lin", "streams.values")
    core = codec.core_codec
    try:  # the same through Python's zlib (a core built without DEFLATE)
        codec.core_codec = lambda: "none"  # type: ignore[assignment]
        expect_error(bad, "field of 16 is out of range", "lin", "streams.values")
    finally:
        codec.core_codec = core  # type: ignore[assignment]


def test_inspect_checks_every_streams_crc_on_request() -> None:
    """Issue 14 item 8: a stream's flipped bit passes a header-only inspect but not one that
    checks the CRCs (codl inspect does, unless --header-only)."""
    header, data = split(VALID)
    assert [i.name for i in codl.formats.inspect(VALID, check_crcs=True)] == [
        e["name"] for e in header["tensors"]
    ]
    values = tensor_entry(header, "ternary")["streams"]["table"]
    flipped = bytearray(data)
    flipped[values["offset"] + values["length"] - 1] ^= 0x80
    blob = seal(header, bytes(flipped))
    assert len(codl.formats.inspect(blob)) == len(header["tensors"])
    with pytest.raises(FormatError, match="CRC32 mismatch") as info:
        codl.formats.inspect(blob, check_crcs=True)
    assert (info.value.tensor, info.value.field) == ("ternary", "streams.table")
    header, data = split(VALID)
    tensor_entry(header, "half")["streams"]["values"][1]["crc32"] ^= 1  # a wrong CRC in the header
    with pytest.raises(FormatError, match="CRC32 mismatch") as info:
        codl.formats.read_header(seal(header, data), check_crcs=True)
    assert (info.value.tensor, info.value.field) == ("half", "streams.values[1]")


# ------------------------------------------- fuzz of the classes of issue 14 items 6-8
STREAMS = [
    (e["name"], role, index)
    for e in HEADER["tensors"]
    for role, streams in e["streams"].items()
    for index in (range(len(streams)) if isinstance(streams, list) else [None])
]


def _stream_at(header: dict[str, Any], where: tuple[str, str, int | None]) -> dict[str, int]:
    name, role, index = where
    streams = tensor_entry(header, name)["streams"][role]
    return streams if index is None else streams[index]


QUANTIZED = [e["name"] for e in HEADER["tensors"] if e["encoding"] != "raw"]

issue_14_mutation = st.one_of(
    # one stream pointed at another's bytes (whole or shifted by a few bytes)
    st.tuples(
        st.just("alias"),
        st.integers(0, len(STREAMS) - 1),
        st.integers(0, len(STREAMS) - 1),
        st.integers(-3, 3),
    ),
    # a quantized tensor retyped and (if sparse) widened: what it really allocates is bounded
    st.tuples(
        st.just("retype"),
        st.sampled_from(QUANTIZED),
        st.sampled_from(["float64", "float16", "bfloat16", "float32"]),
        st.integers(1, 1 << 16),
    ),
    # a stored stream bit flipped, its CRC left alone: inspect --check-crcs must see it
    st.tuples(st.just("crc"), st.integers(0, len(DATA) * 8 - 1)),
)


def _allocated(blob: bytes, result: dict[str, torch.Tensor]) -> int:
    """Bytes the results hold, plus the float32 buffer each quantized non-float32 one needs."""
    infos = {i.name: i for i in codl.formats.inspect(blob)}
    total = 0
    for name, tensor in result.items():
        total += tensor.numel() * tensor.element_size()
        if infos[name].encoding != "raw" and tensor.dtype != torch.float32:
            total += 4 * tensor.numel()
    return total


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(issue_14_mutation)
def test_fuzz_aliases_retypes_and_stream_flips(change: tuple[Any, ...]) -> None:
    header = json.loads(json.dumps(HEADER))
    kind = change[0]
    if kind == "crc":
        data = bytearray(DATA)
        data[change[1] // 8] ^= 1 << (change[1] % 8)
        blob = seal(header, bytes(data))
        with pytest.raises(FormatError, match="CRC32 mismatch"):
            codl.formats.read_header(blob, check_crcs=True)
        with pytest.raises(FormatError):
            load(blob, max_bytes=FUZZ_LIMIT)
        return
    if kind == "alias":
        stream = _stream_at(header, STREAMS[change[1]])
        source = _stream_at(header, STREAMS[change[2]])
        stream.update(offset=max(0, source["offset"] + change[3]), length=source["length"])
        if stream == _stream_at(HEADER, STREAMS[change[1]]):
            return  # unchanged: the file is the valid one
        with pytest.raises(FormatError):
            load(seal(header, DATA, fix_crcs=True), max_bytes=FUZZ_LIMIT, num_threads=2)
        return
    entry = tensor_entry(header, change[1])
    entry["dtype"] = change[2]
    if entry["sparse"]:
        entry["shape"] = [entry["shape"][0], entry["shape"][1] * change[3]]
    blob = seal(header, DATA)
    try:
        result = load(blob, max_bytes=FUZZ_LIMIT, num_threads=2)
    except FormatError as error:
        assert str(error)
    else:
        assert result[change[1]].dtype == DTYPES_BY_NAME.get(change[2], torch.float32)
        assert _allocated(blob, result) <= FUZZ_LIMIT


def _open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_a_path_is_read_through_a_mapping_that_is_closed_after_the_load(tmp_path: Path) -> None:
    """codl.load(path) maps the file instead of reading it into memory: the tensors are copies,
    the same as from the bytes, the mapping and its descriptor are gone afterwards (the file can
    be replaced), and a corrupt or empty file still raises FormatError, leaving nothing open."""
    path = tmp_path / "model.codl"
    path.write_bytes(VALID)
    before = _open_descriptors()
    from_path = load(path)
    assert _open_descriptors() == before
    for name, tensor in load(VALID).items():
        assert torch.equal(from_path[name], tensor)
    path.write_bytes(VALID[: len(VALID) // 2])  # replaced while the loaded tensors live on
    with pytest.raises(FormatError):
        load(path)
    path.write_bytes(b"")
    with pytest.raises(FormatError, match="preamble"):
        load(path)
    assert _open_descriptors() == before
    for name, tensor in load(VALID).items():
        assert torch.equal(from_path[name], tensor)
