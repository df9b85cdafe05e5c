"""Reader and writer for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>`` followed by
``ndim`` big-endian uint32 dimension sizes and then the data, row-major, big-endian.
Files may be stored raw or gzip-compressed; a path ending in ``.gz`` is decompressed.

The reader checks every length against the file: the data must be exactly the product
of the dimensions (truncated files and trailing bytes are both errors). Anything wrong
raises :class:`DataFormatError`, whose message names the file and what was expected vs
found. Nothing is ever unpickled; the data is viewed with :func:`numpy.frombuffer`.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "IDX_DTYPES",
    "DataFormatError",
    "parse_idx",
    "read_idx",
    "write_idx",
]

#: IDX type code -> numpy dtype (big-endian as stored in the file).
IDX_DTYPES: Final[dict[int, np.dtype[np.generic]]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_DTYPE_NAMES: Final[dict[int, str]] = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}

_GZIP_MAGIC: Final = b"\x1f\x8b"

StrPath = str | os.PathLike[str]


class DataFormatError(ValueError):
    """A data file is corrupt, truncated or not in the expected format.

    The message always names the offending file and says what was expected and what
    was found.
    """


def _dtype_desc(code: int) -> str:
    name = _DTYPE_NAMES.get(code)
    return f"0x{code:02X} ({name})" if name else f"0x{code:02X} (unknown)"


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed, if ``path`` ends in ``.gz``) contents of ``path``."""
    with open(path, "rb") as f:
        raw = f.read()
    if path.suffix != ".gz":
        return raw
    if raw[:2] != _GZIP_MAGIC:
        raise DataFormatError(
            f"{path}: not a gzip stream: expected magic bytes 1f 8b, "
            f"found {raw[:2].hex(' ') or 'an empty file'}"
        )
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path}: corrupt or truncated gzip stream: {exc}") from exc


def parse_idx(
    data: bytes,
    path: StrPath = "<bytes>",
    *,
    expected_ndim: int | None = None,
    expected_dtype_code: int | None = None,
) -> npt.NDArray[np.generic]:
    """Parse the bytes of an (uncompressed) IDX file into a numpy array.

    Args:
        data: the whole uncompressed file contents.
        path: the file name, used only in error messages.
        expected_ndim: if given, the number of dimensions the file must declare.
        expected_dtype_code: if given, the IDX type code the file must declare
            (``0x08`` for unsigned bytes).

    Returns:
        A new, writable, C-contiguous array in native byte order with the declared shape.

    Raises:
        DataFormatError: bad magic, unexpected dtype code or number of dimensions,
            truncated header or data, or trailing bytes after the data.
    """
    if len(data) < 4:
        raise DataFormatError(
            f"{path}: truncated header: expected at least 4 bytes of magic number, "
            f"found {len(data)} bytes"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero0 != 0 or zero1 != 0:
        raise DataFormatError(
            f"{path}: bad magic number 0x{magic:08X}: expected the first two bytes to be "
            f"0x00 0x00 (IDX format), found 0x{zero0:02X} 0x{zero1:02X}"
        )
    if code not in IDX_DTYPES:
        raise DataFormatError(
            f"{path}: bad magic number 0x{magic:08X}: unknown IDX dtype code "
            f"{_dtype_desc(code)}; expected one of " + ", ".join(_dtype_desc(c) for c in IDX_DTYPES)
        )
    if expected_dtype_code is not None and code != expected_dtype_code:
        raise DataFormatError(
            f"{path}: wrong dtype code in magic number 0x{magic:08X}: expected "
            f"{_dtype_desc(expected_dtype_code)}, found {_dtype_desc(code)}"
        )
    if ndim == 0:
        raise DataFormatError(
            f"{path}: bad magic number 0x{magic:08X}: expected at least 1 dimension, found 0"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFormatError(
            f"{path}: wrong number of dimensions in magic number 0x{magic:08X}: "
            f"expected {expected_ndim}, found {ndim}"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFormatError(
            f"{path}: truncated header: {ndim} dimensions need a {header_len}-byte header, "
            f"found only {len(data)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected_data = math.prod(shape) * dtype.itemsize
    found_data = len(data) - header_len
    if found_data < expected_data:
        raise DataFormatError(
            f"{path}: truncated data: shape {shape} of {_dtype_desc(code)} needs "
            f"{expected_data} bytes after the {header_len}-byte header, found {found_data}"
        )
    if found_data > expected_data:
        raise DataFormatError(
            f"{path}: {found_data - expected_data} trailing bytes: shape {shape} of "
            f"{_dtype_desc(code)} needs {expected_data} bytes after the {header_len}-byte "
            f"header, found {found_data}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len)
    # One vectorised copy: makes the array writable and converts to native byte order.
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_idx(
    path: StrPath,
    *,
    expected_ndim: int | None = None,
    expected_dtype_code: int | None = None,
) -> npt.NDArray[np.generic]:
    """Read an IDX file (gzip-compressed if the name ends in ``.gz``) into a numpy array.

    Args:
        path: the file to read.
        expected_ndim: if given, the number of dimensions the file must declare.
        expected_dtype_code: if given, the IDX type code the file must declare.

    Returns:
        A new, writable array in native byte order with the shape declared in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: the file is corrupt, truncated, has trailing bytes, or does not
            declare the expected dtype / number of dimensions.
    """
    p = Path(path)
    return parse_idx(
        _read_bytes(p),
        p,
        expected_ndim=expected_ndim,
        expected_dtype_code=expected_dtype_code,
    )


def write_idx(path: StrPath, array: npt.ArrayLike, *, compress: bool | None = None) -> None:
    """Write ``array`` to ``path`` as an IDX file.

    The output is deterministic: when compressed, the gzip header carries no file name
    and ``mtime=0``, so the same array always gives the same bytes (for a given zlib).

    Args:
        path: where to write.
        array: data whose dtype is one of the IDX types (uint8, int8, int16, int32,
            float32, float64); at least 1-D, at most 255-D.
        compress: gzip the output; by default, if ``path`` ends in ``.gz``.

    Raises:
        ValueError: the array's dtype or rank cannot be stored in IDX.
    """
    a = np.asarray(array)
    p = Path(path)
    code = next(
        (
            c
            for c, dt in IDX_DTYPES.items()
            if dt.kind == a.dtype.kind and dt.itemsize == a.dtype.itemsize
        ),
        None,
    )
    if code is None:
        raise ValueError(f"dtype {a.dtype} cannot be stored in an IDX file")
    if not 1 <= a.ndim <= 255:
        raise ValueError(f"IDX files hold 1 to 255 dimensions, got {a.ndim}")
    if any(d >= 2**32 for d in a.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got shape {a.shape}")
    header = bytes((0, 0, code, a.ndim)) + struct.pack(f">{a.ndim}I", *a.shape)
    payload = header + np.ascontiguousarray(a, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = p.suffix == ".gz"
    with open(p, "wb") as f:
        if compress:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
                gz.write(payload)
        else:
            f.write(payload)
