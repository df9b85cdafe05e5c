"""Bad inputs to codl.kernels and to the binding codl._C: each raises the documented exception
with a message that names what was expected and what was received, and nothing crashes.

The raw-binding tests call codl._C directly on purpose: they test the binding's own checks,
which the Python layer (codl._ops) otherwise shields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import codl
import codl._C as C
from codl import _ops
from codl.kernels import pack_signs, pack_ternary, unpack_signs, unpack_ternary
from codl.kernels import reference as ref

LEVELS: list[str] = list(_ops.native_info()["isas_runnable"])  # type: ignore[call-overload]
ALL_LEVELS = ("scalar", "avx2", "avx512", "sve")
FORMATS = ("2bit", "base3")


@pytest.fixture(autouse=True)
def _restore_state() -> Iterator[None]:
    level = codl.get_dispatch_level()
    yield
    codl.set_num_threads(None)
    codl.set_dispatch_level(level)


def _still_works() -> None:
    """After an error the library keeps working (and computes the right thing)."""
    x = torch.tensor([-1.0, 2.0, -3.0])
    assert pack_signs(x).tolist() == [0b101]
    codes = torch.tensor([1, -1, 0], dtype=torch.int8)
    assert pack_ternary(codes).tolist() == [0x52]


# --------------------------------------------------------------------------------------------
# dtypes and types
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.int32, torch.bfloat16, torch.float16, torch.uint8]
)
def test_pack_signs_wrong_dtype(dtype: torch.dtype) -> None:
    pattern = rf"x: expected dtype torch\.float32, received {re.escape(str(dtype))}$"
    with pytest.raises(TypeError, match=pattern):
        pack_signs(torch.zeros(16, dtype=dtype))
    _still_works()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32, torch.uint8, torch.bool])
def test_pack_ternary_wrong_dtype(fmt: Any, dtype: torch.dtype) -> None:
    pattern = rf"codes: expected dtype torch\.int8, received {re.escape(str(dtype))}$"
    with pytest.raises(TypeError, match=pattern):
        pack_ternary(torch.zeros(10, dtype=dtype), format=fmt)


_PACKED_INT8 = r"packed: expected dtype torch\.uint8, received torch\.int8"


def test_unpack_signs_int8_packed() -> None:
    with pytest.raises(TypeError, match=_PACKED_INT8):
        unpack_signs(torch.zeros(2, dtype=torch.int8), 16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unpack_ternary_int8_packed(fmt: Any) -> None:
    with pytest.raises(TypeError, match=_PACKED_INT8):
        unpack_ternary(torch.zeros(2, dtype=torch.int8), 8 if fmt == "2bit" else 10, format=fmt)


NOT_TENSORS = [
    pytest.param([1.0, -2.0], "list", id="list"),
    pytest.param(np.ones(8, dtype=np.float32), "ndarray", id="ndarray"),
    pytest.param(None, "NoneType", id="None"),
]


@pytest.mark.parametrize(("value", "type_name"), NOT_TENSORS)
def test_pack_signs_not_a_tensor(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"x: expected a torch\.Tensor, received {type_name}$"):
        pack_signs(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "type_name"), NOT_TENSORS)
def test_pack_ternary_not_a_tensor(value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"codes: expected a torch\.Tensor, received {type_name}$"):
        pack_ternary(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", [[0, 1], np.zeros(2, dtype=np.uint8), b"\x00\x01"], ids=["list", "ndarray", "bytes"]
)
def test_unpack_not_a_tensor(value: object) -> None:
    type_name = type(value).__name__
    with pytest.raises(TypeError, match=rf"packed: expected a torch\.Tensor, received {type_name}"):
        unpack_signs(value, 16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"packed: expected a torch\.Tensor, received {type_name}"):
        unpack_ternary(value, 8)  # type: ignore[arg-type]


def test_out_not_a_tensor() -> None:
    with pytest.raises(TypeError, match=r"out: expected a torch\.Tensor, received bytearray"):
        pack_signs(torch.ones(8), out=bytearray(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"out: expected a torch\.Tensor, received ndarray"):
        unpack_signs(torch.zeros(1, dtype=torch.uint8), 8, out=np.zeros(8, np.float32))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Contiguity
# --------------------------------------------------------------------------------------------

_CONTIGUOUS = r"expected a contiguous tensor, received strides"


def test_pack_signs_transposed() -> None:
    x = torch.randn(6, 10).t()
    assert not x.is_contiguous()
    with pytest.raises(ValueError, match=rf"x: {_CONTIGUOUS} \(1, 10\) for shape \(10, 6\)"):
        pack_signs(x)


def test_pack_signs_strided() -> None:
    with pytest.raises(ValueError, match=rf"x: {_CONTIGUOUS} \(2,\) for shape \(20,\)"):
        pack_signs(torch.randn(40)[::2])


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_ternary_transposed(fmt: Any) -> None:
    codes = torch.zeros(4, 10, dtype=torch.int8).t()
    with pytest.raises(ValueError, match=rf"codes: {_CONTIGUOUS}"):
        pack_ternary(codes, format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_ternary_strided(fmt: Any) -> None:
    with pytest.raises(ValueError, match=rf"codes: {_CONTIGUOUS}"):
        pack_ternary(torch.zeros(40, dtype=torch.int8)[::2], format=fmt)


def test_unpack_signs_strided_packed() -> None:
    with pytest.raises(ValueError, match=rf"packed: {_CONTIGUOUS}"):
        unpack_signs(torch.zeros(4, dtype=torch.uint8)[::2], 16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unpack_ternary_strided_packed(fmt: Any) -> None:
    with pytest.raises(ValueError, match=rf"packed: {_CONTIGUOUS}"):
        unpack_ternary(
            torch.zeros(4, dtype=torch.uint8)[::2], 8 if fmt == "2bit" else 10, format=fmt
        )


def test_out_strided() -> None:
    with pytest.raises(ValueError, match=rf"out: {_CONTIGUOUS}"):
        pack_signs(torch.ones(16), out=torch.zeros(4, dtype=torch.uint8)[::2])
    with pytest.raises(ValueError, match=rf"out: {_CONTIGUOUS}"):
        unpack_signs(torch.zeros(2, dtype=torch.uint8), (4, 4), out=torch.zeros(4, 4).t())
    with pytest.raises(ValueError, match=rf"out: {_CONTIGUOUS}"):
        unpack_ternary(
            torch.zeros(2, dtype=torch.uint8), 8, out=torch.zeros(16, dtype=torch.int8)[::2]
        )


# --------------------------------------------------------------------------------------------
# Packed sizes that do not fit the requested shape
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numel", "shape", "needed"), [(1, 10, 2), (3, (10,), 2), (0, (2, 4), 1), (2, 0, 0)]
)
def test_unpack_signs_packed_wrong_length(numel: int, shape: Any, needed: int) -> None:
    pattern = rf"packed: expected {needed} bytes for the requested shape, received {numel}$"
    with pytest.raises(ValueError, match=pattern):
        unpack_signs(torch.zeros(numel, dtype=torch.uint8), shape)


@pytest.mark.parametrize(
    ("fmt", "numel", "shape", "needed"),
    [
        ("2bit", 2, 9, 3),
        ("2bit", 4, (3, 3), 3),
        ("base3", 1, 9, 2),
        ("base3", 3, (9,), 2),
        ("2bit", 1, (0,), 0),
        ("base3", 31, 160, 32),
        ("base3", 33, 160, 32),
    ],
)
def test_unpack_ternary_packed_wrong_length(fmt: Any, numel: int, shape: Any, needed: int) -> None:
    pattern = rf"packed: expected {needed} bytes for the requested shape, received {numel}$"
    with pytest.raises(ValueError, match=pattern):
        unpack_ternary(torch.zeros(numel, dtype=torch.uint8), shape, format=fmt)


# --------------------------------------------------------------------------------------------
# Codes outside {-1, 0, 1} and corrupt 2bit data, at every level
# --------------------------------------------------------------------------------------------

_BAD_CODES = r"codes: expected values in \{-1, 0, 1\}, received -?\d+ at flat index \d+"
_RAW_BAD_CODES = r"codes: codes must be -1, 0 or \+1; received"


@pytest.mark.parametrize("position", ["start", "middle", "tail", "last"])
@pytest.mark.parametrize("bad", [2, -2, 127, -128])
@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_ternary_invalid_code(level: str, fmt: Any, bad: int, position: str) -> None:
    # 1000 = 7 blocks of 128 + 104 (2bit) = 6 blocks of 160 + 40 (base3).
    index = {"start": 0, "middle": 500, "tail": 990, "last": 999}[position]
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (1000,), dtype=torch.int8, generator=gen)
    codes[index] = bad
    expected = rf"received {bad} at flat index {index} \(1 invalid in all\)"
    with pytest.raises(ValueError, match=expected):
        pack_ternary(codes, format=fmt)
    _still_works()


@pytest.mark.parametrize("bad", [2, -128])
@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_ternary_invalid_code_threads(level: str, fmt: Any, bad: int) -> None:
    """The bad code lies in the second thread's chunk, or in the last block/tail byte."""
    codl.set_num_threads(2)
    n = 300_001
    for index in (0, 200_000, n - 1):
        codes = torch.zeros(n, dtype=torch.int8)
        codes[index] = bad
        with pytest.raises(ValueError, match=_BAD_CODES):
            pack_ternary(codes, format=fmt)
    _still_works()


@pytest.mark.parametrize("n", [1, 4, 5, 127, 128, 129, 160, 161])
@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_ternary_invalid_code_every_short_position(level: str, fmt: Any, n: int) -> None:
    for index in range(n):
        codes = torch.ones(n, dtype=torch.int8)
        codes[index] = 3
        with pytest.raises(ValueError, match=_BAD_CODES):
            pack_ternary(codes, format=fmt)


def test_pack_ternary_every_byte_value(level: str) -> None:
    """Each int8 value outside {-1, 0, 1} is rejected, each inside is accepted."""
    for value in range(-128, 128):
        codes = torch.zeros(300, dtype=torch.int8)
        codes[37] = value
        for fmt in FORMATS:
            if value in (-1, 0, 1):
                pack_ternary(codes, format=fmt)  # type: ignore[arg-type]
            else:
                with pytest.raises(ValueError, match=_BAD_CODES):
                    pack_ternary(codes, format=fmt)  # type: ignore[arg-type]


_CORRUPT = r"packed: corrupt ternary data, a 2-bit field holds 0b11"


@pytest.mark.parametrize(
    ("byte", "shift"),
    [(0, 0), (5, 2), (31, 6), (32 * 7 - 1, 4), (224, 0), (249, 2)],
    ids=["first", "block", "block-end", "last-block", "tail-first", "tail-last-used"],
)
def test_unpack_2bit_corrupt(level: str, byte: int, shift: int) -> None:
    # 1000 codes: 7 blocks (224 bytes) + 104 values in 26 tail bytes.
    packed = ref.pack_ternary2(torch.zeros(1000, dtype=torch.int8))
    packed[byte] |= 0b11 << shift
    with pytest.raises(ValueError, match=_CORRUPT):
        unpack_ternary(packed, 1000, format="2bit")
    _still_works()


def test_unpack_2bit_corrupt_threads(level: str) -> None:
    codl.set_num_threads(2)
    n = 300_000
    for byte in (3, n // 4 - 100, n // 4 - 1):
        packed = ref.pack_ternary2(torch.zeros(n, dtype=torch.int8))
        packed[byte] = 0xFF
        with pytest.raises(ValueError, match=_CORRUPT):
            unpack_ternary(packed, n, format="2bit")
    _still_works()


# --------------------------------------------------------------------------------------------
# Shapes, formats, devices, grad
# --------------------------------------------------------------------------------------------

_SHAPE = r"shape: expected a non-negative int or a sequence of them, received"


@pytest.mark.parametrize("shape", [-1, (-1,), (2, -3), (2.0,), (2, 1.5), (True,), ("a",)], ids=str)
def test_unpack_bad_shape(shape: Any) -> None:
    with pytest.raises(ValueError, match=_SHAPE):
        unpack_signs(torch.zeros(1, dtype=torch.uint8), shape)
    with pytest.raises(ValueError, match=_SHAPE):
        unpack_ternary(torch.zeros(1, dtype=torch.uint8), shape)


@pytest.mark.parametrize("shape", [2.0, None], ids=str)
def test_unpack_bad_scalar_shape(shape: Any) -> None:
    with pytest.raises(ValueError, match=_SHAPE):
        unpack_signs(torch.zeros(1, dtype=torch.uint8), shape)


@pytest.mark.parametrize("fmt", ["3bit", "BASE3", "", None])
def test_ternary_bad_format(fmt: Any) -> None:
    with pytest.raises(ValueError, match=r"format: expected '2bit' or 'base3', received"):
        pack_ternary(torch.zeros(5, dtype=torch.int8), format=fmt)
    with pytest.raises(ValueError, match=r"format: expected '2bit' or 'base3', received"):
        unpack_ternary(torch.zeros(1, dtype=torch.uint8), 5, format=fmt)


_DEVICE = r"expected a CPU tensor, received one on meta"


def test_meta_input() -> None:
    with pytest.raises(ValueError, match=rf"x: {_DEVICE}"):
        pack_signs(torch.empty(16, device="meta"))
    with pytest.raises(ValueError, match=rf"codes: {_DEVICE}"):
        pack_ternary(torch.empty(16, dtype=torch.int8, device="meta"))
    with pytest.raises(ValueError, match=rf"packed: {_DEVICE}"):
        unpack_signs(torch.empty(2, dtype=torch.uint8, device="meta"), 16)
    with pytest.raises(ValueError, match=rf"packed: {_DEVICE}"):
        unpack_ternary(torch.empty(4, dtype=torch.uint8, device="meta"), 16)


def test_meta_out() -> None:
    with pytest.raises(ValueError, match=rf"out: {_DEVICE}"):
        pack_signs(torch.ones(16), out=torch.empty(2, dtype=torch.uint8, device="meta"))
    with pytest.raises(ValueError, match=rf"out: {_DEVICE}"):
        unpack_ternary(
            torch.zeros(4, dtype=torch.uint8),
            16,
            out=torch.empty(16, dtype=torch.int8, device="meta"),
        )


def test_out_requires_grad() -> None:
    out = torch.zeros(16, requires_grad=True)
    with pytest.raises(ValueError, match=r"out: an output tensor must not require grad"):
        unpack_signs(torch.zeros(2, dtype=torch.uint8), 16, out=out)
    assert torch.equal(out.detach(), torch.zeros(16))  # untouched
    param = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"out: an output tensor must not require grad"):
        unpack_signs(torch.zeros(2, dtype=torch.uint8), (4, 4), out=param)


# --------------------------------------------------------------------------------------------
# Threads and dispatch levels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, False, "2", 2.0, 1025, 2**31])
def test_set_num_threads_invalid(value: Any) -> None:
    codl.set_num_threads(3)
    pattern = (
        rf"num_threads: expected an int from 1 to 1024, or None; received {re.escape(repr(value))}$"
    )
    with pytest.raises(ValueError, match=pattern):
        codl.set_num_threads(value)
    assert codl.get_num_threads() == 3  # unchanged


def test_set_num_threads_too_large() -> None:
    try:
        codl.set_num_threads(2**31)
    except ValueError:
        return  # rejecting it up front is fine
    pack_signs(torch.ones(8))  # accepted: the kernels must then work


@pytest.mark.parametrize("name", ["avx3", "", "AVX2", "scalar ", "neon"])
def test_set_dispatch_level_unknown(name: str) -> None:
    before = codl.get_dispatch_level()
    pattern = rf"expected one of scalar, avx2, avx512, sve; received '{re.escape(name)}'"
    with pytest.raises(ValueError, match=pattern):
        codl.set_dispatch_level(name)
    assert codl.get_dispatch_level() == before


@pytest.mark.parametrize("name", [n for n in ALL_LEVELS if n not in LEVELS] or ["none"])
def test_set_dispatch_level_unavailable(name: str) -> None:
    if name == "none":
        pytest.skip("this CPU runs every level")
    before = codl.get_dispatch_level()
    built = _ops.native_info()["isas_built"]
    if name in built:  # type: ignore[operator]
        pattern = rf"this CPU cannot run the {name} kernels: it lacks \w"
    else:
        pattern = rf"the {name} kernels are not built into this codl \(built: scalar"
    with pytest.raises(ValueError, match=pattern):
        codl.set_dispatch_level(name)
    assert codl.get_dispatch_level() == before
    _still_works()


def test_set_dispatch_level_sve_on_x86() -> None:
    if _ops.native_info()["arch"] != "x86_64":
        pytest.skip("x86_64 only")
    with pytest.raises(ValueError, match=r"sve kernels are not built"):
        codl.set_dispatch_level("sve")


def test_set_dispatch_level_not_a_string() -> None:
    with pytest.raises(TypeError):
        codl.set_dispatch_level(1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The raw binding codl._C
# --------------------------------------------------------------------------------------------


def _f32(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


def _u8(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.uint8)


def _i8(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int8)


# (function, valid input, output of the right size, name of the input, input element type)
RAW: list[tuple[str, Callable[[int], np.ndarray], Callable[[int], np.ndarray], int, str, str]] = [
    ("pack_signs_f32", _f32, _u8, 2, "x", "float32"),
    ("unpack_signs_f32", _u8, _f32, 16, "packed", "uint8"),
    ("pack_ternary2", _i8, _u8, 4, "codes", "int8"),
    ("unpack_ternary2", _u8, _i8, 64, "packed", "uint8"),
    ("pack_ternary3", _i8, _u8, 4, "codes", "int8"),
    ("unpack_ternary3", _u8, _i8, 80, "packed", "uint8"),
]
# Inputs of 16 elements; the output sizes above are what 16 elements need.
RAW_IDS = [r[0] for r in RAW]


def _raw_args(entry: tuple[Any, ...]) -> tuple[Callable[..., None], np.ndarray, np.ndarray]:
    name, make_in, make_out, out_size, _, _ = entry
    return getattr(C, name), make_in(16), make_out(out_size)


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
def test_raw_valid_call(entry: tuple[Any, ...]) -> None:
    fn, x, out = _raw_args(entry)
    fn(x, out, 1)  # a correct call does not raise
    fn(x, out)  # num_threads defaults to 1


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
def test_raw_read_only_out(entry: tuple[Any, ...]) -> None:
    fn, x, out = _raw_args(entry)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only"):
        fn(x, out, 1)


def test_raw_read_only_bytes_out() -> None:
    with pytest.raises(ValueError, match=r"out: expected a writable buffer, received a read-only"):
        C.pack_signs_f32(_f32(16), bytes(2), 1)


@pytest.mark.parametrize(
    ("name", "make_in", "out_size"),
    [("pack_signs_f32", _f32, 2), ("pack_ternary2", _i8, 4), ("pack_ternary3", _i8, 4)],
)
def test_raw_too_short_out(name: str, make_in: Callable[[int], np.ndarray], out_size: int) -> None:
    # 16 inputs need 2 bytes of signs, 4 of 2bit, 4 of base3.
    pattern = rf"out: expected at least {out_size} elements \(.+\), received {out_size - 1}$"
    with pytest.raises(ValueError, match=pattern):
        getattr(C, name)(make_in(16), _u8(out_size - 1), 1)
    with pytest.raises(ValueError, match=r"out: expected at least \d+ elements .*received 0$"):
        getattr(C, name)(make_in(16), _u8(0), 1)


@pytest.mark.parametrize(
    ("name", "values", "packed_bytes", "needed"),
    [("unpack_signs_f32", 17, 2, 3), ("unpack_ternary2", 17, 4, 5), ("unpack_ternary3", 11, 2, 3)],
)
def test_raw_too_short_packed(name: str, values: int, packed_bytes: int, needed: int) -> None:
    out = _f32(values) if name == "unpack_signs_f32" else _i8(values)
    pattern = rf"packed: expected at least {needed} elements .*received {packed_bytes}$"
    with pytest.raises(ValueError, match=pattern):
        getattr(C, name)(_u8(packed_bytes), out, 1)


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
@pytest.mark.parametrize(
    ("dtype", "received"), [(np.float64, "float64"), (np.int16, "format 'h'"), (np.bool_, "bool")]
)
def test_raw_wrong_input_type(entry: tuple[Any, ...], dtype: Any, received: str) -> None:
    fn, x, out = _raw_args(entry)
    _, _, _, _, arg, expected = entry
    pattern = rf"{arg}: expected {expected} elements, received {received}"
    with pytest.raises(TypeError, match=pattern):
        fn(x.astype(dtype), out, 1)


def test_raw_float64_x() -> None:
    with pytest.raises(TypeError, match=r"x: expected float32 elements, received float64"):
        C.pack_signs_f32(np.zeros(16, dtype=np.float64), _u8(2), 1)


def test_raw_wrong_out_type() -> None:
    with pytest.raises(TypeError, match=r"out: expected uint8 elements, received int8"):
        C.pack_signs_f32(_f32(16), _i8(2), 1)
    with pytest.raises(TypeError, match=r"out: expected float32 elements, received float64"):
        C.unpack_signs_f32(_u8(2), np.zeros(16), 1)


def test_raw_big_endian() -> None:
    with pytest.raises(TypeError, match=r"x: expected float32 elements, received format '>f'"):
        C.pack_signs_f32(np.zeros(16, dtype=">f4"), _u8(2), 1)


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
def test_raw_non_contiguous_input(entry: tuple[Any, ...]) -> None:
    fn, x, out = _raw_args(entry)
    arg = entry[4]
    view = np.repeat(x, 2)[::2]
    assert not view.flags.c_contiguous
    with pytest.raises(ValueError, match=rf"{arg}: expected a C-contiguous buffer"):
        fn(view, out, 1)
    transposed = np.zeros((4, 4), dtype=x.dtype).T
    with pytest.raises(ValueError, match=rf"{arg}: expected a C-contiguous buffer"):
        fn(transposed, out, 1)


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
def test_raw_non_contiguous_out(entry: tuple[Any, ...]) -> None:
    fn, x, out = _raw_args(entry)
    with pytest.raises(ValueError, match=r"out: expected a C-contiguous buffer"):
        fn(x, np.repeat(out, 2)[::2], 1)


@pytest.mark.parametrize("entry", RAW, ids=RAW_IDS)
@pytest.mark.parametrize("threads", [0, -1, -(2**31)])
def test_raw_num_threads(entry: tuple[Any, ...], threads: int) -> None:
    fn, x, out = _raw_args(entry)
    pattern = rf"num_threads: expected a positive count, received {threads}$"
    with pytest.raises(ValueError, match=pattern):
        fn(x, out, threads)


def test_raw_invalid_codes() -> None:
    codes = _i8(16)
    codes[9] = 5
    for name in ("pack_ternary2", "pack_ternary3"):
        with pytest.raises(ValueError, match=_RAW_BAD_CODES):
            getattr(C, name)(codes, _u8(4), 1)


def test_raw_corrupt_2bit() -> None:
    with pytest.raises(ValueError, match=_CORRUPT):
        C.unpack_ternary2(np.full(4, 0xFF, dtype=np.uint8), _i8(16), 1)


def test_raw_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        C.pack_signs_f32([0.0] * 16, _u8(2), 1)
    with pytest.raises(TypeError):
        C.pack_signs_f32(torch.zeros(16), _u8(2), 1)


def test_raw_set_dispatch() -> None:
    pattern = r"expected one of scalar, avx2, avx512, sve; received 'x'"
    with pytest.raises(ValueError, match=pattern):
        C.set_dispatch("x")
