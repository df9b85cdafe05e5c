"""Decoding ``.codl`` files: inflate, dequantize and scatter to dense float32, against reading
the same dequantized tensor back from ``torch.save`` bytes (gzip-compressed, the usual way to
ship a smaller checkpoint, and plain for the lossless case).

Each case is one square float32 weight saved with a plan; both sides return bit-identical
tensors. ``codl.load`` decodes one tensor on one thread, so the output rate is per core.

The ``MiniLM-L6`` cases time a whole model instead: a state dict with all-MiniLM-L6-v2's
shapes (22.7M float32 values, 90.9 MB, an embedding of 30522 x 384 holding half of them;
scaled down with ``size``), random normal weights of std 0.05 (trained weights compress a
little better losslessly). ``codl.load`` of the .codl file against ``torch.load`` of the plain
``torch.save`` file, both from the page cache, and ``codl.save`` against ``torch.save``, at the
benchmark's thread count.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from dataclasses import replace

import torch

import codl
from codl.bench import Case, Result, run_cases
from codl.formats import encode_state_dict
from codl.formats.spec import Plan

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


#: model case label -> plan (None: lossless).
MODEL_PLANS: dict[str, Plan | None] = {
    "lossless": None,
    "linear8": {"*": {"bits": 8, "method": "linear"}},
    "kmeans8": {"*": {"bits": 8}},
}


def minilm_state_dict(side: int = DEFAULT_SIDE) -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's tensor shapes (hidden 384, 6 layers, vocabulary 30522) at
    ``side = 4096``; smaller sides scale the hidden size and vocabulary down."""
    hidden = max(4, 384 * side // DEFAULT_SIDE)
    vocab = max(8, 30522 * side // DEFAULT_SIDE)
    generator = torch.Generator().manual_seed(0)
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("embeddings.word_embeddings.weight", (vocab, hidden)),
        ("embeddings.position_embeddings.weight", (512, hidden)),
        ("embeddings.token_type_embeddings.weight", (2, hidden)),
        ("embeddings.LayerNorm.weight", (hidden,)),
        ("embeddings.LayerNorm.bias", (hidden,)),
    ]
    for layer in range(6):
        prefix = f"encoder.layer.{layer}."
        for linear in ("attention.self.query", "attention.self.key", "attention.self.value"):
            shapes += [(prefix + linear + ".weight", (hidden, hidden))]
            shapes += [(prefix + linear + ".bias", (hidden,))]
        shapes += [
            (prefix + "attention.output.dense.weight", (hidden, hidden)),
            (prefix + "attention.output.dense.bias", (hidden,)),
            (prefix + "attention.output.LayerNorm.weight", (hidden,)),
            (prefix + "attention.output.LayerNorm.bias", (hidden,)),
            (prefix + "intermediate.dense.weight", (4 * hidden, hidden)),
            (prefix + "intermediate.dense.bias", (4 * hidden,)),
            (prefix + "output.dense.weight", (hidden, 4 * hidden)),
            (prefix + "output.dense.bias", (hidden,)),
            (prefix + "output.LayerNorm.weight", (hidden,)),
            (prefix + "output.LayerNorm.bias", (hidden,)),
        ]
    shapes += [("pooler.dense.weight", (hidden, hidden)), ("pooler.dense.bias", (hidden,))]
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes}


def model_cases(side: int, directory: str) -> tuple[list[Case], dict[str, dict[str, float]]]:
    """Load and save of the MiniLM-shaped state dict, files written under ``directory``."""
    state = minilm_state_dict(side)
    numel = sum(t.numel() for t in state.values())
    plain = os.path.join(directory, "plain.pt")
    torch.save(state, plain)
    result: list[Case] = []
    sizes: dict[str, dict[str, float]] = {}
    for label, plan in MODEL_PLANS.items():
        path = os.path.join(directory, f"{label}.codl")
        blob, decoded = encode_state_dict(state, plan)
        with open(path, "wb") as file:
            file.write(blob)
        # What torch.load reads back is the state dict codl returns: the same values.
        baseline_path = os.path.join(directory, f"{label}.pt")
        torch.save(decoded, baseline_path)
        file_sizes = {
            "codl_file_bytes": float(len(blob)),
            "baseline_file_bytes": float(os.path.getsize(baseline_path)),
        }

        def load_codl(path: str = path) -> dict[str, torch.Tensor]:
            return codl.load(path)

        def load_torch(path: str = baseline_path) -> dict[str, torch.Tensor]:
            loaded: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
            return loaded

        def save_codl(plan: Plan | None = plan, path: str = path) -> bool:
            codl.save(state, path + ".new", plan)
            return True

        def save_torch(path: str = plain) -> bool:
            torch.save(state, path + ".new")
            return True

        name = f"MiniLM-L6 {label}"
        result.append(Case(f"{name} load (vs torch.load)", numel, load_codl, load_torch, _same))
        result.append(
            Case(f"{name} save (vs torch.save)", numel, save_codl, save_torch, lambda a, b: a == b)
        )
        sizes[f"{name} load (vs torch.load)"] = file_sizes
        sizes[f"{name} save (vs torch.save)"] = file_sizes
    return result, sizes


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: side of the square float32 weight (default 4096); the MiniLM-shaped model
    is scaled by ``size / 4096``."""
    side = size or DEFAULT_SIDE
    case_list, sizes = cases(side)
    with tempfile.TemporaryDirectory(prefix="codl-bench-formats-") as directory:
        model_list, model_sizes = model_cases(side, directory)
        sizes.update(model_sizes)
        results = run_cases("formats", case_list + model_list, repeat, threads, progress)
    noted = []
    for r in results:
        if r.case.startswith("MiniLM"):
            in_mb = 4 * r.numel / 1e6
            baseline = "torch.save" if " save " in r.case else "torch.load"
            model_notes = {
                "codl_MB_per_s_float32": round(in_mb / (r.codl_ms * 1e-3), 1),
                "baseline_MB_per_s_float32": round(in_mb / (r.baseline_ms * 1e-3), 1),
                **sizes[r.case],
                "codl_x_smaller_than_torch_save": round(
                    sizes[r.case]["baseline_file_bytes"] / sizes[r.case]["codl_file_bytes"], 3
                ),
            }
            noted.append(replace(r, notes=model_notes, baseline_label=baseline))
            continue
        out_mb = 4 * r.numel / 1e6
        notes = {
            "codl_MB_per_s_float32_out_per_core": round(out_mb / (r.codl_ms * 1e-3), 1),
            "baseline_MB_per_s_float32_out": round(out_mb / (r.baseline_ms * 1e-3), 1),
            **sizes[r.case],
            "codl_x_smaller_than_float32": round(4 * r.numel / sizes[r.case]["codl_file_bytes"], 1),
        }
        noted.append(replace(r, notes=notes, baseline_label="torch.load"))
    return noted
