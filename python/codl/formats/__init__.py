"""The ``.codl`` model format: pruned, quantized and DEFLATE-packed state_dicts.

``codl.save(model, "m.codl", plan={"*": {"prune": 0.9, "bits": 5}})`` writes a file any zlib
can inflate stream by stream; ``codl.load("m.codl")`` returns the state_dict (dequantized,
bit-exact against :func:`decode_preview`); ``codl.load_into(model, "m.codl")`` loads it into a
model. The layout is specified in ``docs/format.md``; plans in :mod:`codl.formats.spec`.
"""

from __future__ import annotations

from codl.formats.codl_file import (
    MAGIC,
    VERSION,
    FormatError,
    TensorInfo,
    encode_state_dict,
    inspect,
    load,
    load_into,
    read_header,
    save,
)
from codl.formats.encodings import DTYPES, ENCODINGS, decode_preview
from codl.formats.spec import METHODS, CompressionSpec, Plan, resolve_plan

__all__ = [
    "DTYPES",
    "ENCODINGS",
    "MAGIC",
    "METHODS",
    "VERSION",
    "CompressionSpec",
    "FormatError",
    "Plan",
    "TensorInfo",
    "decode_preview",
    "encode_state_dict",
    "inspect",
    "load",
    "load_into",
    "read_header",
    "resolve_plan",
    "save",
]
