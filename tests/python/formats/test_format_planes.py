"""Format 2's byte planes: lossless dense floats stored in chunks, each chunk's byte planes a
DEFLATE stream of its own, every element rotated left one bit first (the sign to bit 0, so the
top plane of a float32 or bfloat16 is exactly its exponent: ZipNN's byte grouping). Round trips
are bit-exact for every float dtype, against the independent reader (codl_reference: zlib +
NumPy) too; a version 1.0 file written by codl before format 2 still loads."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from codl_reference import decode as reference_decode
from codl_reference import version_of
from test_format_safety import expect_error, seal, split, tensor_entry

import codl
from codl import _C, _ops
from codl.formats import codec, encode_state_dict, encodings

DATA = Path(__file__).parent / "data"


def _bits(t: torch.Tensor) -> torch.Tensor:
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().reshape(-1).view(view)


def assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(_bits(a), _bits(b))


def _reference_bits(blob: bytes) -> dict[str, np.ndarray]:
    """The reference reader's values as raw bytes (bfloat16 comes back widened to float32)."""
    out = {}
    for name, value in reference_decode(blob).items():
        array = np.ascontiguousarray(value)
        if array.dtype == np.float32 and name.startswith("bf16"):
            array = (array.view(np.uint32) >> 16).astype(np.uint16)
        out[name] = array.view(np.uint8).reshape(-1)
    return out


def _specials(dtype: torch.dtype, n: int) -> torch.Tensor:
    """Random normal weights with NaNs (two payloads), infinities, signed zeros and
    subnormals among them, as the dtype's own bits."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * 0.05).to(dtype)
    info = torch.finfo(dtype)
    special = torch.tensor(
        [0.0, -0.0, float("inf"), -float("inf"), float("nan"), info.tiny / 4, -info.tiny / 2],
        dtype=dtype,
    )
    x[:: n // 7][: len(special)] = special
    bits = _bits(x).clone()
    bits[1] = bits[4 * (n // 7)] | 1  # a NaN with another payload
    return bits.view(dtype)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 1000 elements, so small tensors span several (the last one shorter)."""
    monkeypatch.setattr(encodings, "CHUNK_ELEMENTS", 1000)
    return 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_floats_round_trip_bit_exact_through_chunks_of_planes(
    dtype: torch.dtype, small_chunks: int
) -> None:
    prefix = "bf16" if dtype == torch.bfloat16 else "x"
    tensors = {
        f"{prefix}_matrix": _specials(dtype, 3017).reshape(7, 431),
        f"{prefix}_one_chunk": _specials(dtype, 999),
        f"{prefix}_scalar": torch.tensor(-1.5, dtype=dtype),
        f"{prefix}_empty": torch.empty(0, 3, dtype=dtype),
    }
    blob, _ = encode_state_dict(tensors, num_threads=1)
    assert version_of(blob) == (2, 0)
    loaded = codl.load(blob)
    reference = _reference_bits(blob)
    itemsize = torch.empty((), dtype=dtype).element_size()
    infos = {i.name: i for i in codl.formats.inspect(blob)}
    for name, tensor in tensors.items():
        assert_identical(loaded[name], tensor)
        assert bytes(reference[name]) == bytes(_bits(tensor).view(torch.uint8).numpy())
        info = infos[name]
        if tensor.numel():
            chunks = -(-tensor.numel() // small_chunks)
            assert (info.chunk, info.sign_last, info.shuffle) == (small_chunks, True, True)
            assert len(info.streams["values"]) == chunks * itemsize
        else:  # nothing to chunk: one (empty) values stream, as in version 1
            assert (info.chunk, info.sign_last) == (0, False)
    # The bytes do not depend on the threads that wrote them; any thread count reads them.
    assert encode_state_dict(tensors, num_threads=3)[0] == blob
    for threads in (2, 4):
        again = codl.load(blob, num_threads=threads)
        for name, tensor in tensors.items():
            assert_identical(again[name], tensor)


def test_the_exponent_plane_is_huffman_coded_and_random_mantissa_planes_are_stored(
    small_chunks: int,
) -> None:
    """float32 weights, one chunk: planes 0-2 (mantissa bits, the sign in bit 0 of plane 0) are
    close to random and go out as stored blocks (their bytes verbatim in the file); plane 3 is
    the exponent alone, Huffman coded to ~3 bits per byte. A constant tensor's planes are LZ77
    runs: a few bytes each."""
    g = torch.Generator().manual_seed(2)
    weights = torch.randn(small_chunks, generator=g) * 0.02
    blob, _ = encode_state_dict({"w": weights, "zeros": torch.zeros(small_chunks)})
    header, data = split(blob)
    planes = tensor_entry(header, "w")["streams"]["values"]
    bits = weights.view(torch.int32).numpy().view(np.uint32)
    rotated = ((bits << np.uint32(1)) | (bits >> np.uint32(31))).astype(np.uint32)
    for k, stream in enumerate(planes):
        stored = data[stream["offset"] : stream["offset"] + stream["length"]]
        plane = ((rotated >> np.uint32(8 * k)) & np.uint32(0xFF)).astype(np.uint8).tobytes()
        assert zlib.decompress(stored, wbits=-15) == plane
        if k < 3:
            assert stream["length"] == small_chunks + 5 and plane in stored
        else:
            exponents = set((rotated >> np.uint32(24)).tolist())
            assert len(exponents) > 8 and stream["length"] < 0.5 * small_chunks
    for stream in tensor_entry(header, "zeros")["streams"]["values"]:
        assert stream["length"] < 20


def test_planes_decode_the_same_through_pythons_zlib(
    monkeypatch: pytest.MonkeyPatch, small_chunks: int
) -> None:
    tensors = {"f": _specials(torch.float32, 2500), "b": _specials(torch.bfloat16, 1500)}
    blob, _ = encode_state_dict(tensors)
    monkeypatch.setattr(codec, "core_codec", lambda: "none")
    loaded = codl.load(blob, num_threads=1)
    for name, tensor in tensors.items():
        assert_identical(loaded[name], tensor)


def _v1_tensors() -> dict[str, torch.Tensor]:
    """The tensors of data/version_1_0.codl, from integer hashing (no RNG): that file was
    written by codl at commit 39be1c0 (format 1.0: one values stream per tensor, floats
    byte-plane shuffled without the rotation; bf16's low plane in stored blocks)."""

    def hashed(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.int64)
        h = (i * 2654435761 + 12345) % (1 << 32)
        h = (h ^ (h >> 13)) * 1274126177 % (1 << 32)
        return (h.double() / (1 << 32) - 0.5) * 0.1

    return {
        "bf16": hashed(70_000).reshape(700, 100).bfloat16(),
        "f32": hashed(1_000).reshape(10, 100).float() * 3,
        "f16": hashed(3_000).half().reshape(3, 1000),
        "i64": torch.arange(-50, 50, dtype=torch.int64),
        "linear": hashed(640).reshape(8, 80).float(),
        "codebook_sparse": hashed(512).reshape(16, 32).float(),
    }


def test_a_version_1_file_still_loads() -> None:
    blob = (DATA / "version_1_0.codl").read_bytes()
    assert version_of(blob) == (1, 0)
    loaded = codl.load(blob)
    expected = _v1_tensors()
    for name in ("bf16", "f32", "f16", "i64"):
        assert_identical(loaded[name], expected[name])
    reference = reference_decode(blob)
    for name in ("linear", "codebook_sparse"):
        assert torch.equal(loaded[name], torch.from_numpy(np.array(reference[name])))
    assert (loaded["linear"] - expected["linear"]).abs().max() < 1e-3  # 8-bit codes of +-0.05
    assert (loaded["codebook_sparse"] != 0).sum() == 256  # half of it pruned
    infos = {i.name: i for i in codl.formats.inspect(blob, check_crcs=True)}
    assert infos["bf16"].shuffle and infos["bf16"].chunk == 0 and not infos["bf16"].sign_last
    # Version 2's fields mean nothing in a version 1 file: a list of values streams is refused.
    header, data = split(blob)
    entry = tensor_entry(header, "f32")
    entry["chunk"], entry["streams"]["values"] = 1000, [entry["streams"]["values"]]
    expect_error(seal(header, data, version=(1, 0)), "expected an object", "f32", "streams.values")


def _planes_file(small_chunks: int) -> bytes:
    return encode_state_dict({"w": torch.randn(2500), "i": torch.arange(5)})[0]


@pytest.mark.parametrize(
    ("edit", "match", "field"),
    [
        (lambda e: e.update(chunk=600), "expected a list of 20 streams", "streams.values"),
        (lambda e: e.update(chunk=-1), r"in \[0,", "chunk"),
        (lambda e: e.update(chunk=True), "expected an integer", "chunk"),
        (lambda e: e.update(sign_last=1), "expected true or false", "sign_last"),
        (lambda e: e.update(shuffle=False), "dense, non-empty raw floats", "chunk"),
        (lambda e: e.update(dtype="int32"), "floats of 2", "shuffle"),
        (lambda e: e["streams"]["values"].pop(), "expected a list of 12", "streams.values"),
        (
            lambda e: e["streams"]["values"][8].update(raw_length=1000),
            "expected 500 bytes",
            "streams.values[8].raw_length",
        ),
        (lambda e: e["streams"].update(values={}), "expected a list", "streams.values"),
        (lambda e: e.pop("chunk"), "expected an integer", "chunk"),
    ],
)
def test_chunk_fields_are_checked(
    edit: Callable[[dict[str, Any]], object], match: str, field: str, small_chunks: int
) -> None:
    header, data = split(_planes_file(small_chunks))
    edit(tensor_entry(header, "w"))
    expect_error(seal(header, data), match, "w", field)


def test_sign_last_and_chunks_belong_to_planes_only(small_chunks: int) -> None:
    header, data = split(_planes_file(small_chunks))
    tensor_entry(header, "i")["sign_last"] = True
    expect_error(seal(header, data), "without chunks", "i", "sign_last")
    header, data = split(_planes_file(small_chunks))
    tensor_entry(header, "i")["chunk"] = 5
    expect_error(seal(header, data), "dense, non-empty raw floats", "i", "chunk")


def test_a_corrupt_plane_is_named(small_chunks: int) -> None:
    blob = _planes_file(small_chunks)
    header, data = split(blob)
    plane = tensor_entry(header, "w")["streams"]["values"][7]
    flipped = bytearray(data)
    flipped[plane["offset"]] ^= 1
    expect_error(seal(header, bytes(flipped)), "CRC32 mismatch", "w", "streams.values[7]")
    # The CRC resealed: the damaged stream itself is caught, and named.
    with pytest.raises(codl.FormatError) as info:
        codl.load(seal(header, bytes(flipped), fix_crcs=True))
    assert info.value.tensor == "w" and info.value.field == "streams.values[7]"
    # A stream one byte short, its lengths and CRC made consistent: it ends too soon.
    plane["length"] -= 1
    short = bytearray(data)
    header["data_length"] = len(data)
    with pytest.raises(codl.FormatError) as info:
        codl.load(seal(header, bytes(short), fix_crcs=True))
    assert info.value.tensor == "w"
    assert json.dumps(header)  # the header stayed JSON throughout
    assert struct.calcsize("<8sHHIII") == 24


def test_the_huge_page_hint_keeps_the_data_and_checks_its_argument() -> None:
    """advise_huge_pages is a hint: it never changes a tensor's bytes, whatever its size, and a
    read-only buffer is refused with ValueError like every output argument."""
    for numel in (0, 1000, 3 << 20):
        tensor = torch.arange(numel, dtype=torch.float32)
        _ops.advise_huge_pages(tensor, at_least=0)
        assert torch.equal(tensor, torch.arange(numel, dtype=torch.float32))
    with pytest.raises(ValueError, match="read-only"):
        _C.format_advise_huge_pages(memoryview(bytes(16)), 0)


def test_chunks_of_two_tensors_decode_together_and_a_fault_names_its_tensor(
    small_chunks: int,
) -> None:
    """load pairs chunks across tensors of one dtype for the core's interleaved Huffman decode:
    two one-chunk tensors come back bit-exact, and a damaged exponent plane in the second is
    reported against that tensor and stream, not its partner."""
    g = torch.Generator().manual_seed(4)
    tensors = {
        "a": torch.randn(small_chunks, generator=g) * 0.05,
        "b": torch.randn(900, generator=g),
    }
    blob, _ = encode_state_dict(tensors)
    for threads in (1, 2):
        loaded = codl.load(blob, num_threads=threads)
        for name, tensor in tensors.items():
            assert torch.equal(loaded[name], tensor)
    header, data = split(blob)
    exponent = tensor_entry(header, "b")["streams"]["values"][3]
    damaged = bytearray(data)
    damaged[exponent["offset"] + exponent["length"] // 2] ^= 0xFF
    with pytest.raises(codl.FormatError) as info:
        codl.load(seal(header, bytes(damaged), fix_crcs=True))
    assert info.value.tensor == "b" and info.value.field == "streams.values[3]"
    with pytest.raises(ValueError, match="expected 4 streams"):
        _ops.decode_plane_chunks([([], torch.empty(4, dtype=torch.uint8))], 4, sign_last=True)


def test_huffman_only_is_read_by_pythons_zlib_and_no_larger_than_zlibs_own() -> None:
    """codl's literal-only coder (blocks merged while their distribution holds) against zlib's
    Z_HUFFMAN_ONLY on an exponent plane whose distribution drifts and then holds: the same bytes
    back through Python's zlib, at most zlib's size, and fewer blocks where nothing drifts."""
    g = torch.Generator().manual_seed(8)
    scales = torch.cat([torch.full((1 << 15,), 0.01 * (1 + k)) for k in range(8)])
    weights = torch.cat([torch.randn(8 << 15, generator=g) * scales, torch.randn(1 << 19) * 0.02])
    bits = weights.view(torch.int32).numpy().view(np.uint32)
    plane = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.uint8).tobytes()
    ours = codec.huffman_only(plane)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    theirs = compressor.compress(plane) + compressor.flush()
    assert zlib.decompress(ours, wbits=-15) == plane
    assert len(ours) <= len(theirs)
    # One piece alone is its own block; a uniform plane of many pieces is far fewer blocks
    # than zlib's one per 32 Ki symbols, and so fewer code descriptions.
    uniform = plane[-(1 << 19) :]
    zlib_uniform = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    assert len(codec.huffman_only(uniform)) < len(
        zlib_uniform.compress(uniform) + zlib_uniform.flush()
    )
