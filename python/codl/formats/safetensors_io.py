"""Reading ``.safetensors`` files for ``codl compress``, without executing anything.

The ``safetensors`` package is used when it is installed. Otherwise a small reader of the
documented layout (https://huggingface.co/docs/safetensors): an unsigned 64-bit little-endian
header size N, N bytes of UTF-8 JSON mapping each tensor name to ``dtype``, ``shape`` and
``data_offsets`` [begin, end) relative to the byte after the header (plus an optional
``__metadata__`` of strings), then the raw little-endian tensor bytes. Every size and offset is
checked against the file before a tensor is built.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Final

import torch

__all__ = ["SAFETENSORS_DTYPES", "read_safetensors"]

SAFETENSORS_DTYPES: Final[dict[str, torch.dtype]] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER: Final = 100 * 1024 * 1024  # the limit the reference implementation applies


def read_safetensors(
    path: str | os.PathLike[str], *, use_package: bool = True
) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; ValueError naming the tensor if it is malformed."""
    if use_package:
        try:
            package = importlib.import_module("safetensors.torch")
        except ImportError:
            pass
        else:
            return dict(package.load_file(os.fspath(path)))
    data = Path(path).read_bytes()
    where = os.fspath(path)
    if len(data) < 8:
        raise ValueError(
            f"{where}: expected at least 8 bytes (the header size), received {len(data)}"
        )
    (header_size,) = struct.unpack_from("<Q", data)
    if header_size > min(_MAX_HEADER, len(data) - 8):
        raise ValueError(
            f"{where}: header of {header_size} bytes does not fit in a {len(data)}-byte file"
        )
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{where}: the header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: expected a JSON object as header")
    body = memoryview(data)[8 + header_size :]
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: tensor {name!r}: expected an object")
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise ValueError(
                f"{where}: tensor {name!r}: expected a dtype of {sorted(SAFETENSORS_DTYPES)}, "
                f"received {entry.get('dtype')!r}"
            )
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(
                f"{where}: tensor {name!r}: expected a list of sizes, received {shape!r}"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= len(body)
        ):
            raise ValueError(
                f"{where}: tensor {name!r}: data_offsets {offsets!r} fall outside the "
                f"{len(body)}-byte data section"
            )
        itemsize = torch.empty((), dtype=dtype).element_size()
        expected = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != expected:
            raise ValueError(
                f"{where}: tensor {name!r}: expected {expected} bytes for shape {shape}, "
                f"received {offsets[1] - offsets[0]}"
            )
        raw = bytearray(body[offsets[0] : offsets[1]])  # a copy the tensor owns
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        tensors[name] = flat.view(dtype).reshape(shape)
    return tensors
