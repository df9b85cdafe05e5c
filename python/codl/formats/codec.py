"""DEFLATE for the ``.codl`` format: the C++ core's (libdeflate or zlib) when it was built with
one, else Python's own ``zlib`` module. Both write raw RFC 1951 streams that any inflater
reads (``zlib.decompress(data, wbits=-15)``), and both inflate with a fixed output bound.
"""

from __future__ import annotations

import zlib
from typing import Union

import numpy as np
import torch

from codl import _ops

__all__ = ["DEFAULT_LEVEL", "core_codec", "crc32", "deflate", "inflate_python"]

#: Compression level of :func:`codl.save`: libdeflate's 9 is near its best ratio at a fraction
#: of the time of its 10-12 (zlib stops at 9 anyway); decoding speed does not depend on it.
DEFAULT_LEVEL = 9

Bytes = Union[bytes, bytearray, memoryview]


def core_codec() -> str:
    """``"libdeflate"``, ``"zlib"`` or ``"none"`` (then Python's zlib does the work)."""
    return _ops.format_codec()


def _as_bytes_like(data: Bytes | torch.Tensor) -> Bytes | np.ndarray:
    if isinstance(data, torch.Tensor):
        return _ops.as_buffer(data, "data", torch.uint8)
    return data


def _python_bytes(data: Bytes | torch.Tensor) -> Bytes:
    """What Python's zlib takes: a uint8 tensor becomes a view of its memory."""
    if isinstance(data, torch.Tensor):
        return memoryview(_ops.as_buffer(data, "data", torch.uint8).data)
    return data


def deflate(data: Bytes | torch.Tensor, level: int = DEFAULT_LEVEL) -> bytes:
    """Raw DEFLATE stream of ``data``."""
    if core_codec() != "none":
        return _ops.deflate(_as_bytes_like(data), level)
    compressor = zlib.compressobj(min(level, 9), zlib.DEFLATED, -15)
    return compressor.compress(_python_bytes(data)) + compressor.flush()


def crc32(data: Bytes | torch.Tensor) -> int:
    if core_codec() != "none":
        return _ops.crc32(_as_bytes_like(data))
    return zlib.crc32(_python_bytes(data)) & 0xFFFFFFFF


def inflate_python(data: Bytes, raw_size: int) -> tuple[bytes, str | None]:
    """Inflate with Python's zlib, never producing more than ``raw_size`` bytes (plus one, to
    tell a stream that is too long); returns the bytes and None, or what was wrong."""
    inflater = zlib.decompressobj(wbits=-15)
    try:
        out = inflater.decompress(data, raw_size + 1)
    except zlib.error:
        return b"", "not a valid raw DEFLATE stream"
    if len(out) > raw_size:
        return b"", "the DEFLATE stream inflates to more than its recorded size"
    if not inflater.eof:
        return b"", "the DEFLATE stream ends before its recorded size"
    if len(out) < raw_size:
        return b"", "the DEFLATE stream ends before its recorded size"
    if inflater.unused_data:
        return b"", "bytes follow the end of the DEFLATE stream"
    return out, None
