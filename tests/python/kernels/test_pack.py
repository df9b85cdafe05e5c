"""Tests for codl.kernels: the packing functions at every dispatch level and thread count.

Expected values come from three sources, none of which is the code under test:
* codl.kernels.reference (plain torch ops, a separate implementation of the formats),
* pure-Python encoders written here from the format description (Python ints, one value at
  a time), and
* hand-computed bytes.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import codl
from codl import _ops
from codl.kernels import (
    pack_signs,
    pack_ternary,
    packed_signs_size,
    packed_ternary_size,
    unpack_signs,
    unpack_ternary,
)
from codl.kernels import reference as ref

LEVELS: list[str] = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]
THREADS = (1, 2, 3)
# Threads only start at >= 2 * 65536 values; 640 is the chunk alignment, 128/160 the blocks.
LARGE_LENGTHS = (
    1023,
    1024,
    1025,
    128 * 1024 - 1,
    128 * 1024,
    128 * 1024 + 1,
    160 * 1024 - 1,
    160 * 1024,
    160 * 1024 + 1,
    65536 * 3 + 77,
    2**20 + 3,
)
LENGTHS = (*range(301), *LARGE_LENGTHS)


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


class _DispatchLevel:
    """Context manager: run the kernels at ``level``, then restore the level found on entry
    (which is not the best one when CODL_CPU_DISPATCH forced another)."""

    def __init__(self, level: str) -> None:
        self.level = level
        self.original = ""

    def __enter__(self) -> str:
        self.original = codl.get_dispatch_level()
        codl.set_dispatch_level(self.level)
        assert codl.get_dispatch_level() == self.level
        return self.level

    def __exit__(self, *exc: object) -> None:
        codl.set_dispatch_level(self.original)


@pytest.fixture(params=THREADS)
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    codl.set_num_threads(request.param)
    assert codl.get_num_threads() == request.param
    yield request.param
    codl.set_num_threads(None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    codl.set_num_threads(1)
    yield
    codl.set_num_threads(None)


def float_bits(*patterns: int) -> torch.Tensor:
    """float32 values from their IEEE bit patterns (to control the sign of NaN exactly)."""
    return torch.from_numpy(np.array(patterns, dtype=np.uint32).view(np.float32).copy())


# Sign bit set: -0.0, -inf, quiet -nan, signalling -nan, the smallest negative denormal.
NEGATIVE_SPECIALS = (0x80000000, 0xFF800000, 0xFFC00000, 0xFF800001, 0x80000001, 0xFF7FFFFF)
# Sign bit clear: +0.0, +inf, quiet +nan, signalling +nan, the smallest denormal, max.
POSITIVE_SPECIALS = (0x00000000, 0x7F800000, 0x7FC00000, 0x7F800001, 0x00000001, 0x7F7FFFFF)


def random_floats(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, generator=gen)
    if n:
        specials = float_bits(*NEGATIVE_SPECIALS, *POSITIVE_SPECIALS)
        where = torch.randint(0, n, (max(1, n // 16),), generator=gen)
        x[where] = specials[torch.randint(0, len(specials), where.shape, generator=gen)]
    return x


def random_2bit_bytes(nbytes: int, gen: torch.Generator) -> torch.Tensor:
    """Bytes whose four 2-bit fields all hold 0, 1 or 2 (valid "2bit" data)."""
    fields = torch.randint(0, 3, (nbytes, 4), generator=gen, dtype=torch.uint8)
    return (fields << torch.tensor([0, 2, 4, 6], dtype=torch.uint8)).sum(1, dtype=torch.uint8)


class Case:
    """Inputs of one length and the reference outputs for them."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n = n
        self.x = random_floats(n, gen)
        self.codes = torch.randint(-1, 2, (n,), generator=gen, dtype=torch.int8)
        # Random bytes, including set padding bits in the last byte (unpack must ignore them).
        self.sign_bytes = torch.randint(
            0, 256, (math.ceil(n / 8),), generator=gen, dtype=torch.uint8
        )
        self.two_bit_bytes = random_2bit_bytes(math.ceil(n / 4), gen)
        self.base3_bytes = torch.randint(
            0, 256, (math.ceil(n / 5),), generator=gen, dtype=torch.uint8
        )
        self.expected = {
            "pack_signs": ref.pack_signs(self.x),
            "unpack_signs": ref.unpack_signs(self.sign_bytes, n),
            "pack_ternary/2bit": ref.pack_ternary2(self.codes),
            "pack_ternary/base3": ref.pack_ternary3(self.codes),
            "unpack_ternary/2bit": ref.unpack_ternary2(self.two_bit_bytes, n),
            "unpack_ternary/base3": ref.unpack_ternary3(self.base3_bytes, n),
        }


@pytest.fixture(scope="module")
def cases() -> dict[int, Case]:
    gen = torch.Generator().manual_seed(20240607)
    return {n: Case(n, gen) for n in LENGTHS}


def _garbage(shape: int | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output buffer full of values no kernel writes, to catch bytes left unwritten."""
    fill: Any = float("nan") if dtype == torch.float32 else (0xA5 if dtype == torch.uint8 else 0x55)
    return torch.full(shape if isinstance(shape, tuple) else (shape,), fill, dtype=dtype)


CALLS: dict[str, Callable[[Case, torch.Tensor | None], torch.Tensor]] = {
    "pack_signs": lambda c, out: pack_signs(c.x, out=out),
    "unpack_signs": lambda c, out: unpack_signs(c.sign_bytes, c.n, out=out),
    "pack_ternary/2bit": lambda c, out: pack_ternary(c.codes, format="2bit", out=out),
    "pack_ternary/base3": lambda c, out: pack_ternary(c.codes, format="base3", out=out),
    "unpack_ternary/2bit": lambda c, out: unpack_ternary(
        c.two_bit_bytes, (c.n,), format="2bit", out=out
    ),
    "unpack_ternary/base3": lambda c, out: unpack_ternary(
        c.base3_bytes, torch.Size([c.n]), format="base3", out=out
    ),
}


# --------------------------------------------------------------------------------------------
# Against the plain-torch reference: every function, length, level and thread count
# --------------------------------------------------------------------------------------------


def test_levels_include_scalar() -> None:
    assert "scalar" in LEVELS
    assert set(LEVELS) <= {"scalar", "avx2", "avx512", "amx", "sve"}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_matches_reference(name: str, level: str, threads: int, cases: dict[int, Case]) -> None:
    call = CALLS[name]
    for n in LENGTHS:
        case = cases[n]
        expected = case.expected[name]
        got = call(case, None)
        assert got.dtype == expected.dtype, (name, n)
        assert torch.equal(got, expected), f"{name} n={n} level={level} threads={threads}"
        # Into a garbage-filled out=: every element must be written.
        out = _garbage(tuple(expected.shape), expected.dtype)
        got = call(case, out)
        assert got is out
        assert torch.equal(out, expected), f"{name} (out=) n={n} level={level} threads={threads}"


def test_threads_are_used(cases: dict[int, Case]) -> None:
    """A 3-thread call on 3 * 65536 + 77 values must start workers in the pool."""
    case = cases[65536 * 3 + 77]
    codl.set_num_threads(3)
    try:
        assert torch.equal(pack_signs(case.x), case.expected["pack_signs"])
    finally:
        codl.set_num_threads(None)
    assert int(_ops.native_info()["pool_threads_started"]) >= 2  # type: ignore[call-overload]


def test_concurrent_python_threads(cases: dict[int, Case]) -> None:
    """Calls from several Python threads at once (the GIL is released) stay correct."""
    case = cases[160 * 1024 + 1]
    errors: list[str] = []

    def work(index: int) -> None:
        for _ in range(5):
            if index % 2:
                if not torch.equal(pack_signs(case.x), case.expected["pack_signs"]):
                    errors.append(f"pack_signs in thread {index}")
            else:
                got = pack_ternary(case.codes, format="base3")
                if not torch.equal(got, case.expected["pack_ternary/base3"]):
                    errors.append(f"pack_ternary in thread {index}")

    codl.set_num_threads(2)
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not any(w.is_alive() for w in workers), "a thread hung"
    finally:
        codl.set_num_threads(None)
    assert errors == []


# --------------------------------------------------------------------------------------------
# Pure-Python encoders written from the format description (independent of the reference)
# --------------------------------------------------------------------------------------------


def py_pack_signs(x: torch.Tensor) -> list[int]:
    out = [0] * math.ceil(x.numel() / 8)
    for i, value in enumerate(x.reshape(-1).tolist()):
        if struct.unpack("<I", struct.pack("<f", value))[0] >> 31:
            out[i // 8] |= 1 << (i % 8)
    return out


def py_pack_ternary2(codes: list[int]) -> list[int]:
    n = len(codes)
    out: list[int] = []
    whole = n // 128 * 128
    for block in range(0, whole, 128):
        for j in range(32):
            out.append(sum((codes[block + j + 32 * k] + 1) << (2 * k) for k in range(4)))
    tail = codes[whole:] + [0] * (-(n - whole) % 4)  # padding codes are 0
    for b in range(0, len(tail), 4):
        out.append(sum((tail[b + k] + 1) << (2 * k) for k in range(4)))
    return out


def _base3_byte(trits: list[int]) -> int:
    v = sum((c + 1) * 3 ** (4 - k) for k, c in enumerate(trits))
    return -(-v * 256 // 243)


def py_pack_ternary3(codes: list[int]) -> list[int]:
    n = len(codes)
    out: list[int] = []
    whole = n // 160 * 160
    for block in range(0, whole, 160):
        for j in range(32):
            out.append(_base3_byte([codes[block + j + 32 * k] for k in range(5)]))
    tail = codes[whole:] + [0] * (-(n - whole) % 5)
    for b in range(0, len(tail), 5):
        out.append(_base3_byte(tail[b : b + 5]))
    return out


def py_decode_base3(byte: int) -> list[int]:
    """The header's decoding rule: trit k = ((uint8)(byte * 3^k) * 3) >> 8."""
    return [(((byte * 3**k) & 0xFF) * 3 >> 8) - 1 for k in range(5)]


PY_LENGTHS = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    31,
    32,
    33,
    127,
    128,
    129,
    159,
    160,
    161,
    255,
    256,
    257,
    288,
    319,
    320,
    321,
    383,
    384,
    385,
    639,
    640,
    641,
    1001,
)


def _u8(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def test_pure_python_signs(level: str, one_thread: None) -> None:
    gen = torch.Generator().manual_seed(1)
    for n in PY_LENGTHS:
        x = random_floats(n, gen)
        assert torch.equal(pack_signs(x), _u8(py_pack_signs(x))), n


def test_pure_python_ternary(level: str, one_thread: None) -> None:
    gen = torch.Generator().manual_seed(2)
    for n in PY_LENGTHS:
        codes = torch.randint(-1, 2, (n,), generator=gen, dtype=torch.int8)
        as_list = codes.tolist()
        two = _u8(py_pack_ternary2(as_list))
        three = _u8(py_pack_ternary3(as_list))
        assert torch.equal(pack_ternary(codes, format="2bit"), two), n
        assert torch.equal(pack_ternary(codes, format="base3"), three), n
        # Decoding the independently encoded bytes gives the codes back.
        assert torch.equal(unpack_ternary(two, n, format="2bit"), codes), n
        assert torch.equal(unpack_ternary(three, n, format="base3"), codes), n


# --------------------------------------------------------------------------------------------
# Hand-computed known answers
# --------------------------------------------------------------------------------------------

SIGNS_EXAMPLE = (-1.0, 2.0, -0.0, 0.0, 5.0, 6.0, 7.0, float("nan"), 1.0, -3.0)


def _signs_example() -> torch.Tensor:
    x = torch.tensor(SIGNS_EXAMPLE, dtype=torch.float32)
    x[7] = float_bits(0xFFC00000)[0]  # -nan, sign bit set whatever the platform's NaN is
    return x


def test_known_pack_signs(level: str) -> None:
    assert torch.equal(pack_signs(_signs_example()), _u8([0x85, 0x02]))
    assert torch.equal(pack_signs(torch.tensor([], dtype=torch.float32)), _u8([]))
    assert torch.equal(pack_signs(-torch.ones(3)), _u8([0x07]))  # unused high bits are 0
    assert torch.equal(pack_signs(-torch.ones(8)), _u8([0xFF]))
    assert torch.equal(pack_signs(float_bits(*NEGATIVE_SPECIALS)), _u8([0x3F]))
    assert torch.equal(pack_signs(float_bits(*POSITIVE_SPECIALS)), _u8([0x00]))
    assert torch.equal(pack_signs(torch.tensor(-2.0)), _u8([0x01]))  # 0-d tensor


def test_known_unpack_signs(level: str) -> None:
    expected = torch.tensor([-1.0, 1, -1, 1, 1, 1, 1, -1, 1, -1])
    assert torch.equal(unpack_signs(_u8([0x85, 0x02]), 10), expected)
    # Set padding bits are ignored; shape is honoured.
    assert torch.equal(unpack_signs(_u8([0x85, 0xFE]), (2, 5)), expected.view(2, 5))
    assert torch.equal(unpack_signs(_u8([0xFF]), ()), torch.tensor(-1.0))


def test_known_2bit_tail(level: str) -> None:
    # codes 1, -1, 0 -> fields 2, 0, 1 and one padding field 1: 2 | 0<<2 | 1<<4 | 1<<6 = 0x52.
    assert torch.equal(pack_ternary(torch.tensor([1, -1, 0], dtype=torch.int8)), _u8([0x52]))
    # codes 1, 1, 1, 1, -1 -> 0xAA, then field 0 and three padding fields 1: 0x54.
    five = torch.tensor([1, 1, 1, 1, -1], dtype=torch.int8)
    assert torch.equal(pack_ternary(five, format="2bit"), _u8([0xAA, 0x54]))
    assert torch.equal(unpack_ternary(_u8([0xAA, 0x54]), 5, format="2bit"), five)
    assert torch.equal(unpack_ternary(_u8([0x52]), 3), torch.tensor([1, -1, 0], dtype=torch.int8))


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize(
    ("index", "byte", "shift"),
    [
        (7, 7, 0),
        (32 + 7, 7, 2),
        (64 + 7, 7, 4),
        (32 * 3 + 7, 7, 6),
        (31, 31, 0),
        (127, 31, 6),
        (0, 0, 0),
    ],
)
def test_known_2bit_block_layout(
    level: str, blocks: int, index: int, byte: int, shift: int
) -> None:
    """Value 32k + j of a 128-value block lands in byte j, bits 2k..2k+1."""
    n = 128 * blocks
    codes = torch.full((n,), -1, dtype=torch.int8)
    codes[128 * (blocks - 1) + index] = 1  # field 0b10 in the last block, all others 0b00
    expected = torch.zeros(32 * blocks, dtype=torch.uint8)
    expected[32 * (blocks - 1) + byte] = 2 << shift
    assert torch.equal(pack_ternary(codes, format="2bit"), expected)
    assert torch.equal(unpack_ternary(expected, n, format="2bit"), codes)


@pytest.mark.parametrize("n", [5, 160, 165, 320])
def test_known_base3_constant(level: str, n: int) -> None:
    for code, byte in ((-1, 0), (0, 128), (1, 255)):
        codes = torch.full((n,), code, dtype=torch.int8)
        expected = torch.full((n // 5,), byte, dtype=torch.uint8)
        assert torch.equal(pack_ternary(codes, format="base3"), expected), (n, code)
        assert torch.equal(unpack_ternary(expected, n, format="base3"), codes), (n, code)


def _trits(v: int) -> list[int]:
    """The 5 codes c_0..c_4 with v = sum (c_k + 1) * 3^(4-k)."""
    return [(v // 3 ** (4 - k)) % 3 - 1 for k in range(5)]


def test_known_base3_all_combinations_tail(level: str) -> None:
    for v in range(243):
        codes = torch.tensor(_trits(v), dtype=torch.int8)
        byte = math.ceil(v * 256 / 243)
        assert byte == (v * 256 + 242) // 243  # exact, no float rounding at these sizes
        assert torch.equal(pack_ternary(codes, format="base3"), _u8([byte])), v
        assert torch.equal(unpack_ternary(_u8([byte]), 5, format="base3"), codes), v


def test_known_base3_all_combinations_blocks(level: str, one_thread: None) -> None:
    """In a 160-value block byte j holds values j + 32k: put combination (32 b + j) % 243 in
    byte j of block b, for 8 blocks (every combination at least once)."""
    n = 160 * 8
    codes = torch.empty(n, dtype=torch.int8)
    expected = []
    for b in range(8):
        for j in range(32):
            v = (32 * b + j) % 243
            for k, c in enumerate(_trits(v)):
                codes[160 * b + j + 32 * k] = c
            expected.append(math.ceil(v * 256 / 243))
    assert torch.equal(pack_ternary(codes, format="base3"), _u8(expected))
    assert torch.equal(unpack_ternary(_u8(expected), n, format="base3"), codes)


def test_known_base3_decode_every_byte(level: str, one_thread: None) -> None:
    """Every byte value decodes by the header's rule, in the tail and inside blocks."""
    for byte in range(256):
        got = unpack_ternary(_u8([byte]), 5, format="base3")
        assert got.tolist() == py_decode_base3(byte), byte
    for first in range(0, 256, 32):
        block = list(range(first, first + 32))
        got = unpack_ternary(_u8(block), 160, format="base3").tolist()
        for j, byte in enumerate(block):
            assert [got[j + 32 * k] for k in range(5)] == py_decode_base3(byte), byte


# --------------------------------------------------------------------------------------------
# Round trips (hypothesis)
# --------------------------------------------------------------------------------------------

_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
    st.integers(0, 1500).map(lambda n: (n,)),
    st.tuples(st.integers(1, 5), st.integers(0, 400)),
)


@st.composite
def _float_arrays(draw: st.DrawFn) -> torch.Tensor:
    # Any bit pattern: NaNs of both signs, -0.0, infinities, denormals.
    bits = draw(hnp.arrays(np.uint32, _SHAPES, elements=st.integers(0, 2**32 - 1)))
    return torch.from_numpy(bits.view(np.float32).copy())


@st.composite
def _code_arrays(draw: st.DrawFn) -> torch.Tensor:
    return torch.from_numpy(draw(hnp.arrays(np.int8, _SHAPES, elements=st.integers(-1, 1))))


@pytest.mark.parametrize("level_name", LEVELS)
@settings(max_examples=60, deadline=None)
@given(x=_float_arrays())
def test_roundtrip_signs(level_name: str, x: torch.Tensor) -> None:
    with _DispatchLevel(level_name):
        packed = pack_signs(x)
        assert packed.shape == (math.ceil(x.numel() / 8),)
        back = unpack_signs(packed, x.shape)
    assert back.shape == x.shape
    assert back.dtype == torch.float32
    expected = torch.where(torch.signbit(x), -1.0, 1.0).to(torch.float32)
    assert torch.equal(back, expected)


@pytest.mark.parametrize("fmt", ["2bit", "base3"])
@pytest.mark.parametrize("level_name", LEVELS)
@settings(max_examples=60, deadline=None)
@given(codes=_code_arrays())
def test_roundtrip_ternary(level_name: str, fmt: Any, codes: torch.Tensor) -> None:
    with _DispatchLevel(level_name):
        packed = pack_ternary(codes, format=fmt)
        assert packed.shape == (math.ceil(codes.numel() / (4 if fmt == "2bit" else 5)),)
        back = unpack_ternary(packed, codes.shape, format=fmt)
    assert back.shape == codes.shape
    assert back.dtype == torch.int8
    assert torch.equal(back, codes)


# --------------------------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------------------------


def test_out_pack_signs_is_out() -> None:
    out = _garbage(2, torch.uint8)
    got = pack_signs(_signs_example(), out=out)
    assert got is out
    assert got.data_ptr() == out.data_ptr()
    assert out.tolist() == [0x85, 0x02]


def test_out_unpack_signs_is_out() -> None:
    out = _garbage((2, 5), torch.float32)
    got = unpack_signs(_u8([0x85, 0x02]), (2, 5), out=out)
    assert got is out
    assert got.data_ptr() == out.data_ptr()
    assert out.flatten().tolist() == [-1.0, 1, -1, 1, 1, 1, 1, -1, 1, -1]


@pytest.mark.parametrize(("fmt", "expected"), [("2bit", [0xAA, 0x54]), ("base3", [255])])
def test_out_pack_ternary_is_out(fmt: Any, expected: list[int]) -> None:
    codes = torch.tensor([1, 1, 1, 1, -1], dtype=torch.int8)
    if fmt == "base3":
        codes = torch.ones(5, dtype=torch.int8)
    out = _garbage(len(expected), torch.uint8)
    got = pack_ternary(codes, format=fmt, out=out)
    assert got is out
    assert got.data_ptr() == out.data_ptr()
    assert out.tolist() == expected


@pytest.mark.parametrize(("fmt", "packed"), [("2bit", [0xAA, 0x54]), ("base3", [0, 255])])
def test_out_unpack_ternary_is_out(fmt: Any, packed: list[int]) -> None:
    expected = [1, 1, 1, 1, -1] if fmt == "2bit" else [-1] * 5 + [1] * 5
    out = _garbage(len(expected), torch.int8)
    got = unpack_ternary(_u8(packed), len(expected), format=fmt, out=out)
    assert got is out
    assert got.data_ptr() == out.data_ptr()
    assert out.tolist() == expected


def test_out_view_writes_in_place_only_inside() -> None:
    """out= a slice of a bigger tensor: the bytes land in place and the guards are untouched."""
    gen = torch.Generator().manual_seed(3)
    x = random_floats(1000, gen)
    big = _garbage(7 + 125 + 9, torch.uint8)
    got = pack_signs(x, out=big[7 : 7 + 125])
    assert got.data_ptr() == big.data_ptr() + 7
    assert torch.equal(big[7 : 7 + 125], ref.pack_signs(x))
    assert (big[:7] == 0xA5).all() and (big[7 + 125 :] == 0xA5).all()

    values = _garbage(3 + 1000 + 5, torch.float32)
    unpack_signs(big[7 : 7 + 125], 1000, out=values[3 : 3 + 1000])
    assert torch.equal(values[3 : 3 + 1000], torch.where(torch.signbit(x), -1.0, 1.0))
    assert values[:3].isnan().all() and values[3 + 1000 :].isnan().all()

    codes = torch.randint(-1, 2, (1000,), generator=gen, dtype=torch.int8)
    for fmt, size, oracle in (("2bit", 250, ref.pack_ternary2), ("base3", 200, ref.pack_ternary3)):
        big = _garbage(4 + size + 4, torch.uint8)
        pack_ternary(codes, format=fmt, out=big[4 : 4 + size])  # type: ignore[arg-type]
        assert torch.equal(big[4 : 4 + size], oracle(codes)), fmt
        assert (big[:4] == 0xA5).all() and (big[4 + size :] == 0xA5).all(), fmt
        decoded = _garbage(2 + 1000 + 2, torch.int8)
        unpack_ternary(big[4 : 4 + size], 1000, format=fmt, out=decoded[2:1002])  # type: ignore[arg-type]
        assert torch.equal(decoded[2:1002], codes), fmt
        assert (decoded[:2] == 0x55).all() and (decoded[1002:] == 0x55).all(), fmt


@pytest.mark.parametrize(
    "call",
    [
        lambda out: pack_signs(torch.ones(9), out=out),
        lambda out: pack_ternary(torch.ones(9, dtype=torch.int8), out=out),
        lambda out: pack_ternary(torch.ones(9, dtype=torch.int8), format="base3", out=out),
    ],
    ids=["pack_signs", "pack_ternary2", "pack_ternary3"],
)
@pytest.mark.parametrize("dtype", [torch.int8, torch.float32, torch.int32])
def test_out_wrong_dtype_pack(call: Callable[[torch.Tensor], object], dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"out: expected dtype torch\.uint8, received {dtype}"):
        call(torch.zeros(2, dtype=dtype))


def test_out_wrong_dtype_unpack() -> None:
    with pytest.raises(TypeError, match=r"expected dtype torch\.float32, received torch\.float64"):
        unpack_signs(_u8([0]), 8, out=torch.zeros(8, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected dtype torch\.int8, received torch\.uint8"):
        unpack_ternary(_u8([0]), 4, out=torch.zeros(4, dtype=torch.uint8))


@pytest.mark.parametrize("size", [0, 1, 4])
def test_out_wrong_size(size: int) -> None:
    # 9 values need 2 bytes of signs, 3 bytes of 2bit, 2 bytes of base3.
    nine = torch.ones(9, dtype=torch.int8)
    with pytest.raises(ValueError, match=rf"out: expected shape \(2,\), received \({size},\)"):
        pack_signs(torch.ones(9), out=torch.zeros(size, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"out: expected shape \(3,\), received \({size},\)"):
        pack_ternary(nine, out=torch.zeros(size, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"out: expected shape \(2,\), received \({size},\)"):
        pack_ternary(nine, format="base3", out=torch.zeros(size, dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"out: expected shape \(9,\), received \({size + 7},\)"):
        unpack_signs(_u8([0, 0]), 9, out=torch.zeros(size + 7, dtype=torch.float32))
    with pytest.raises(ValueError, match=rf"out: expected shape \(9,\), received \({size},\)"):
        unpack_ternary(_u8([0, 0]), 9, format="base3", out=torch.zeros(size, dtype=torch.int8))


def test_out_must_have_the_requested_shape() -> None:
    packed = pack_signs(torch.ones(10))
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 5\), received \(10,\)"):
        unpack_signs(packed, (2, 5), out=torch.empty(10))
    out = torch.empty(2, 5)
    assert unpack_signs(packed, (2, 5), out=out) is out


def test_input_requiring_grad_is_accepted() -> None:
    x = _signs_example().requires_grad_(True)
    assert pack_signs(x).tolist() == [0x85, 0x02]


# --------------------------------------------------------------------------------------------
# Zero copy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.uint8])
def test_zero_copy_address(dtype: torch.dtype) -> None:
    t = torch.zeros(64, dtype=dtype)
    assert _ops.buffer_address(t) == t.data_ptr()
    view = t[5:]
    assert view.storage_offset() == 5
    assert view.data_ptr() == t.data_ptr() + 5 * t.element_size()
    assert _ops.buffer_address(view) == view.data_ptr()
    matrix = torch.zeros(6, 7, dtype=dtype)[2:]
    assert _ops.buffer_address(matrix) == matrix.data_ptr()


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

SIZE_NS = (*range(0, 50), 127, 128, 129, 159, 160, 161, 1000, 10**6 + 1, 2**40 + 3)


def test_packed_signs_size() -> None:
    assert [packed_signs_size(n) for n in (0, 1, 7, 8, 9, 16, 17)] == [0, 1, 1, 1, 2, 2, 3]
    for n in SIZE_NS:
        assert packed_signs_size(n) == math.ceil(n / 8) == -(-n // 8), n


def test_packed_ternary_size() -> None:
    assert [packed_ternary_size(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert [packed_ternary_size(n, "2bit") for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    assert [packed_ternary_size(n, "base3") for n in (0, 1, 5, 6, 10, 11)] == [0, 1, 1, 2, 2, 3]
    for n in SIZE_NS:
        assert packed_ternary_size(n, "2bit") == math.ceil(n / 4), n
        assert packed_ternary_size(n, format="base3") == math.ceil(n / 5), n


@pytest.mark.parametrize("numel", [-1, -8, 1.0, 8.0, True, False, None, "8"])
def test_packed_size_bad_numel(numel: Any) -> None:
    with pytest.raises(ValueError, match=r"numel: expected a non-negative int, received"):
        packed_signs_size(numel)
    with pytest.raises(ValueError, match=r"numel: expected a non-negative int, received"):
        packed_ternary_size(numel)
    with pytest.raises(ValueError, match=r"numel: expected a non-negative int, received"):
        packed_ternary_size(numel, "base3")


@pytest.mark.parametrize("fmt", ["3bit", "BASE3", "2-bit", "", None, 2])
def test_packed_size_bad_format(fmt: Any) -> None:
    with pytest.raises(ValueError, match=r"format: expected '2bit' or 'base3', received"):
        packed_ternary_size(10, fmt)
