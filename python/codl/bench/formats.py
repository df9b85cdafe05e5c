"""Decoding ``.codl`` files: inflate, dequantize and scatter to dense float32, against reading
the same dequantized tensor back from ``torch.save`` bytes (gzip-compressed, the usual way to
ship a smaller checkpoint, and plain for the lossless case).

Each case is one square float32 weight saved with a plan; both sides return bit-identical
tensors. ``codl.load`` decodes one tensor on one thread, so the output rate is per core.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import replace

import torch

import codl
from codl.bench import Case, Result, run_cases
from codl.formats import encode_state_dict

DEFAULT_SIDE = 4096  # 16M values: 64 MB of float32 output per decode

#: case label -> plan entry for the weight (None: lossless). "vs gzip" cases compare with
#: gzip + torch.load of the same dequantized tensor, the lossless one with plain torch.load.
PLANS: dict[str, dict[str, object] | None] = {
    "kmeans5 p90 (vs gzip)": {"prune": 0.9, "bits": 5},
    "kmeans5 dense (vs gzip)": {"bits": 5},
    "int8 dense (vs gzip)": {"bits": 8, "method": "linear"},
    "int4 p70 (vs gzip)": {"prune": 0.7, "bits": 4, "method": "linear"},
    "ternary (vs gzip)": {"method": "ternary"},
    "lossless (vs torch.load)": None,
}


def _torch_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cases(side: int) -> tuple[list[Case], dict[str, dict[str, float]]]:
    """The cases, and per case the sizes of the files both sides read."""
    weight = torch.randn(side, side, generator=torch.Generator().manual_seed(0))
    result: list[Case] = []
    sizes: dict[str, dict[str, float]] = {}
    for label, spec in PLANS.items():
        blob, decoded = encode_state_dict({"w": weight}, None if spec is None else {"w": spec})
        # The baseline reads the very tensor codl decodes, so both return identical values.
        plain = _torch_bytes(decoded)
        lossless = spec is None
        baseline_bytes = plain if lossless else gzip.compress(plain, compresslevel=6)

        def decode_codl(blob: bytes = blob) -> dict[str, torch.Tensor]:
            return codl.load(blob, num_threads=1)

        def decode_torch(
            data: bytes = baseline_bytes, gz: bool = not lossless
        ) -> dict[str, torch.Tensor]:
            raw = gzip.decompress(data) if gz else data
            loaded: dict[str, torch.Tensor] = torch.load(io.BytesIO(raw), weights_only=True)
            return loaded

        result.append(Case(label, weight.numel(), decode_codl, decode_torch, _same))
        sizes[label] = {"codl_file_bytes": len(blob), "baseline_file_bytes": len(baseline_bytes)}
    return result, sizes


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: side of the square float32 weight (default 4096)."""
    case_list, sizes = cases(size or DEFAULT_SIDE)
    results = run_cases("formats", case_list, repeat, threads, progress)
    noted = []
    for r in results:
        out_mb = 4 * r.numel / 1e6
        notes = {
            "codl_MB_per_s_float32_out_per_core": round(out_mb / (r.codl_ms * 1e-3), 1),
            "baseline_MB_per_s_float32_out": round(out_mb / (r.baseline_ms * 1e-3), 1),
            **sizes[r.case],
            "codl_x_smaller_than_float32": round(4 * r.numel / sizes[r.case]["codl_file_bytes"], 1),
        }
        noted.append(replace(r, notes=notes, baseline_label="torch.load"))
    return noted
