"""Bit packing of signs and ternary codes, run by the C++ core at the CPU's best ISA.

Formats (the C++ header ``cpp/include/codl/pack.h`` is the normative description, and
:mod:`codl.kernels.reference` implements the same layouts in plain torch):

* signs: 1 bit per value, bit ``i % 8`` of byte ``i // 8`` is ``torch.signbit(x[i])``.
* ternary ``"2bit"``: codes ``c + 1`` in 2 bits. Blocks of 128 values fill 32 bytes with byte
  ``j`` holding values ``j, j+32, j+64, j+96`` of the block (bits 0-1, 2-3, 4-5, 6-7), the
  layout a SIMD dot product wants (as bitnet.cpp's I2_S); the tail packs 4 consecutive values
  per byte. ``ceil(n / 4)`` bytes.
* ternary ``"base3"``: 5 trits per byte, 1.6 bits per value (as llama.cpp's TQ1_0): blocks of
  160 values fill 32 bytes with byte ``j`` holding values ``j + 32k``; the tail packs 5
  consecutive values per byte. ``ceil(n / 5)`` bytes.

All functions take and return CPU tensors without copying them into the core; inputs must be
contiguous. Invalid codes raise ``ValueError``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal

import torch

from codl import _ops

TernaryFormat = Literal["2bit", "base3"]
Shape = int | Sequence[int] | torch.Size

__all__ = [
    "TernaryFormat",
    "pack_signs",
    "pack_ternary",
    "packed_signs_size",
    "packed_ternary_size",
    "unpack_signs",
    "unpack_ternary",
]


def packed_signs_size(numel: int) -> int:
    """Bytes that :func:`pack_signs` produces for ``numel`` values."""
    return (_check_numel(numel) + 7) // 8


def packed_ternary_size(numel: int, format: TernaryFormat = "2bit") -> int:
    """Bytes that :func:`pack_ternary` produces for ``numel`` codes in ``format``."""
    values_per_byte = 4 if _check_format(format) == "2bit" else 5
    return -(-_check_numel(numel) // values_per_byte)


def pack_signs(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pack the sign bits of a float32 tensor, 1 bit per value (``-0.0`` and ``-nan`` count as
    negative, as in :func:`torch.signbit`). Returns a 1-D uint8 tensor (``out`` if given)."""
    numel = _numel_of(x, "x")
    out = _output(out, packed_signs_size(numel), torch.uint8)
    _ops.pack_signs_f32(x, out)
    return out


def unpack_signs(
    packed: torch.Tensor, shape: Shape, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Values of ``shape`` from packed signs: ``-1.0`` where the bit is set, else ``+1.0``."""
    size = _shape(shape)
    out = _output(out, size, torch.float32)
    _require_packed(packed, packed_signs_size(out.numel()))
    _ops.unpack_signs_f32(packed, out)
    return out


def pack_ternary(
    codes: torch.Tensor, *, format: TernaryFormat = "2bit", out: torch.Tensor | None = None
) -> torch.Tensor:
    """Pack int8 codes in {-1, 0, +1} (any shape, contiguous) into a 1-D uint8 tensor."""
    numel = _numel_of(codes, "codes")
    out = _output(out, packed_ternary_size(numel, format), torch.uint8)
    _ops.pack_ternary(codes, out, format)
    return out


def unpack_ternary(
    packed: torch.Tensor,
    shape: Shape,
    *,
    format: TernaryFormat = "2bit",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """int8 codes in {-1, 0, +1} of ``shape`` from :func:`pack_ternary`'s output.

    Raises ``ValueError`` for ``"2bit"`` data holding the field 0b11, which no code maps to,
    anywhere, the padding fields of the last byte included (:func:`pack_ternary` writes them as
    code 0, field 0b01).
    """
    size = _shape(shape)
    out = _output(out, size, torch.int8)
    _require_packed(packed, packed_ternary_size(out.numel(), format))
    _ops.unpack_ternary(packed, out, format)
    return out


def _check_numel(numel: int) -> int:
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel: expected a non-negative int, received {numel!r}")
    return numel


def _check_format(format: str) -> str:
    if format not in ("2bit", "base3"):
        raise ValueError(f"format: expected '2bit' or 'base3', received {format!r}")
    return format


def _numel_of(tensor: object, name: str) -> int:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(tensor).__name__}")
    return tensor.numel()


def _shape(shape: Shape) -> torch.Size:
    def is_size(d: object) -> bool:
        return isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 0

    if isinstance(shape, numbers.Integral) and is_size(shape):
        return torch.Size((int(shape),))
    if isinstance(shape, (list, tuple, torch.Size)) and all(is_size(d) for d in shape):
        return torch.Size(int(d) for d in shape)
    raise ValueError(
        f"shape: expected a non-negative int or a sequence of them, received {shape!r}"
    )


def _output(out: torch.Tensor | None, size: int | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor of ``size``, or ``out`` checked to have exactly that shape and dtype."""
    shape = torch.Size((size,)) if isinstance(size, int) else size
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a torch.Tensor, received {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out: expected dtype {dtype}, received {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {tuple(shape)}, received {tuple(out.shape)}")
    return out


def _require_packed(packed: object, needed: int) -> None:
    numel = _numel_of(packed, "packed")
    if numel != needed:
        raise ValueError(
            f"packed: expected {needed} bytes for the requested shape, received {numel}"
        )
