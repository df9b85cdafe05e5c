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


def seal(header: dict[str, Any], data: bytes, *, fix_crcs: bool = False) -> bytes:
    """Reassemble a file; the header's CRC (and optionally every stream's) made to match, so a
    mutation reaches the checks behind the CRCs."""
    if fix_crcs:
        for entry in header["tensors"]:
            for stream in entry["streams"].values():
                stored = data[stream["offset"] : stream["offset"] + stream["length"]]
                stream["crc32"] = zlib.crc32(stored)
    raw = json.dumps(header).encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stored = compressor.compress(raw) + compressor.flush()
    preamble = PREAMBLE.pack(b"\x89CODL\r\n\x1a", 1, 0, len(stored), len(raw), zlib.crc32(stored))
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
        b"\x89CODL\r\n\x1a\x02\x00" + VALID[10:], r"version 1\.x, received 2\.0", field="version"
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
    not_json = PREAMBLE.pack(b"\x89CODL\r\n\x1a", 1, 0, len(garbage), 12, zlib.crc32(garbage))
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
