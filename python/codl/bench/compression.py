"""Deep-Compression-style pipeline on LeNet-5 and LeNet-300-100, packed as ``.codl`` files.

S. Han, H. Mao and W. J. Dally, "Deep Compression", ICLR 2016 (arXiv:1510.00149): prune the
small weights and retrain (§2), share the survivors through a k-means codebook per layer and
fine-tune the centroids (§3), then entropy-code (§4; Huffman there, DEFLATE here). Their LeNet-5
came out 39x smaller and LeNet-300-100 40x (Table 1); the goal set for codl is >= 40x against
the float32 ``torch.save`` file, stretch >= 90x, at most 0.5 points of test accuracy lost.

For each model, :func:`compress_model`:

1. trains the float baseline (Adam, cosine decay) and saves it with ``torch.save``;
2. prunes every Linear/Conv weight to its own sparsity (:attr:`Recipe.sparsity`) with an AGP
   ramp (Zhu & Gupta 2017) while fine-tuning, then holds the masks for the rest of the phase;
3. shares the kept weights of each layer through a ``2^bits`` k-means codebook
   (:attr:`Recipe.bits`) and fine-tunes the centroids (:class:`codl.quant.KMeansQuantizer`);
4. saves with :func:`codl.save` and a plan that names, per weight, the model's own zero
   fraction and bit width. On weights that already hold at most ``2^bits`` distinct kept values,
   the plan's magnitude mask drops exactly the zeros and its k-means returns those values as the
   codebook, so the file stores exactly the fine-tuned model: :func:`compress_model` checks that
   :func:`codl.load` gives back every tensor of the model bit for bit, then measures the test
   accuracy of a fresh model loaded from the file.

Sizes are those of the files written to disk: the float ``torch.save`` file, its ``gzip -9``,
the ``.codl`` file, and (for comparison) ``gzip -9`` of the compressed model's own
``torch.save`` file, which holds the same zeros and shared values but no packing.
"""

from __future__ import annotations

import copy
import gzip
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from codl.data import DataChoice

__all__ = [
    "QUICK",
    "RECIPES",
    "CompressionResult",
    "LayerResult",
    "PipelineConfig",
    "Recipe",
    "compress_model",
    "format_markdown",
    "main",
    "run",
    "save_plan",
    "with_overrides",
]

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """A model, how hard to compress each of its weights, and its full-run training budget.

    ``sparsity`` and ``bits`` are keyed by state_dict name (``"<module>.weight"``): the fraction
    of the weight's entries pruned, and the codebook width of the kept ones.
    """

    name: str
    build: Callable[[], nn.Module]
    sparsity: Mapping[str, float]
    bits: Mapping[str, int]
    description: str = ""
    #: The training budget of a full run (``benchmarks/compression.py`` without ``--quick``).
    config: PipelineConfig | None = None
    #: The budget of ``--quick`` (:data:`QUICK` when None).
    quick: PipelineConfig | None = None


def _lenet5() -> nn.Module:
    from codl.models import LeNet5

    return LeNet5()


def _lenet300100() -> nn.Module:
    from codl.models import LeNet300100

    return LeNet300100()


@dataclass(frozen=True)
class PipelineConfig:
    """Training budget of each phase, in epochs (fractions allowed) of the training split."""

    epochs: float = 8.0  # float baseline
    prune_epochs: float = 6.0  # AGP ramp, then fine-tuning with the masks held
    ramp_fraction: float = 0.5  # of the pruning phase spent raising the sparsity
    quant_epochs: float = 2.0  # codebook fine-tuning
    lr: float = 1e-3
    prune_lr: float = 1e-3
    quant_lr: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    decode_repeat: int = 7  # timed codl.load / torch.load calls (median kept)

    def __post_init__(self) -> None:
        for key in ("epochs", "prune_epochs", "quant_epochs", "lr", "prune_lr", "quant_lr"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key}: expected a number >= 0, received {value!r}")
        if not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError(
                f"ramp_fraction: expected a float in (0, 1], received {self.ramp_fraction!r}"
            )
        for key in ("batch_size", "decode_repeat"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, received {value!r}")


#: ``--quick``: a smoke run of every phase (well under a minute for both models on the subset).
QUICK = PipelineConfig(
    epochs=2.0, prune_epochs=2.0, ramp_fraction=0.4, quant_epochs=0.5, decode_repeat=3
)


#: Per-layer sparsities in the spirit of Deep Compression's LeNet recipes (their Tables 2 and 3:
#: LeNet-300-100 kept 8% / 9% / 26% of fc1 / fc2 / fc3, LeNet-5 66% / 12% / 8% / 19% of conv1 /
#: conv2 / fc1 / fc2) pushed further, with 5-bit codebooks on convolutions and on the small last
#: layer, 4 bits on the big fully connected ones (fully connected layers tolerate fewer bits
#: than convolutions, Deep Compression §3). The pruning phase is long: at these sparsities the
#: accuracy comes back with fine-tuning time (LeNet-300-100 at 96% lost 0.9 points after 6
#: epochs of pruning and 0.1 after 12).
RECIPES: dict[str, Recipe] = {
    "lenet5": Recipe(
        "lenet5",
        _lenet5,
        sparsity={
            "features.0.weight": 0.5,
            "features.4.weight": 0.9,
            "classifier.1.weight": 0.965,
            "classifier.4.weight": 0.8,
        },
        bits={
            "features.0.weight": 5,
            "features.4.weight": 5,
            "classifier.1.weight": 4,
            "classifier.4.weight": 5,
        },
        description="codl.models.LeNet5: conv 1-32-64 5x5 + BN, fc 1600-256-10",
        config=PipelineConfig(epochs=3.0, prune_epochs=6.0, ramp_fraction=0.4, quant_epochs=1.5),
    ),
    "lenet300100": Recipe(
        "lenet300100",
        _lenet300100,
        sparsity={"1.weight": 0.98, "3.weight": 0.95, "5.weight": 0.8},
        bits={"1.weight": 4, "3.weight": 4, "5.weight": 5},
        description="codl.models.LeNet300100: fc 784-300-100-10",
        config=PipelineConfig(epochs=8.0, prune_epochs=24.0, ramp_fraction=0.4, quant_epochs=4.0),
        # Cheap enough to recover from 98% pruning even in a smoke run (~3 s on the subset).
        quick=PipelineConfig(epochs=4.0, prune_epochs=8.0, ramp_fraction=0.4, quant_epochs=1.0),
    ),
}


@dataclass(frozen=True)
class LayerResult:
    """One tensor of the ``.codl`` file as its header describes it."""

    name: str
    shape: tuple[int, ...]
    encoding: str
    sparsity: float
    bits: int
    dense_bytes: int
    stored_bytes: int


@dataclass
class CompressionResult:
    """Everything measured for one model. Accuracies are top-1 percent on the test split; byte
    counts are sizes of files written to disk."""

    model: str
    parameters: int
    train_examples: int
    test_examples: int
    float_accuracy: float
    pruned_accuracy: float
    shared_accuracy: float  # after k-means sharing and codebook fine-tuning
    codl_accuracy: float  # a fresh model loaded from the .codl file
    accuracy_drop: float  # float_accuracy - codl_accuracy, in points
    sparsity: float  # of the pruned weights together
    torch_save_bytes: int  # float32 baseline, torch.save
    gzip_bytes: int  # gzip -9 of that file
    codl_lossless_bytes: int  # the float baseline through codl.save without a plan
    compressed_torch_gzip_bytes: int  # gzip -9 of torch.save of the compressed model
    codl_bytes: int
    ratio: float  # torch_save_bytes / codl_bytes
    ratio_vs_gzip: float  # gzip_bytes / codl_bytes
    exact_round_trip: bool  # codl.load returned every tensor of the model bit for bit
    codl_load_ms: float  # median, from the file on disk
    torch_load_ms: float  # torch.load(weights_only=True) of the float file
    gzip_torch_load_ms: float  # gunzip + torch.load
    seconds: float  # wall time of the whole pipeline
    layers: list[LayerResult] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _steps(epochs: float, examples: int, batch_size: int) -> int:
    # fine_tune's own count, so the AGP ramp ends inside the phase.
    return math.ceil(epochs * examples / batch_size)


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    from codl.training import prunable_weights

    found = prunable_weights(model)
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(
            f"recipe: {missing} are not prunable weights of the model ({sorted(found)})"
        )
    return {name: found[name] for name in names}


def _prune(model: nn.Module, recipe: Recipe, train: Split, config: PipelineConfig) -> list[Any]:
    """AGP-prune each weight to its recipe sparsity while fine-tuning; returns the pruners."""
    from codl.prune import AGPSchedule, Pruner
    from codl.training import fine_tune

    steps = _steps(config.prune_epochs, len(train[0]), config.batch_size)
    schedule = None
    if steps >= 2:
        end = max(1, min(steps, round(config.ramp_fraction * steps)))
        # About 20 increments over the ramp (Zhu & Gupta prune every Δt steps, not every step).
        schedule = AGPSchedule(end_step=end, frequency=max(1, end // 20))
    weights = _weights(model, list(recipe.sparsity))
    pruners = [
        Pruner({name: weight}, recipe.sparsity[name], "layer", schedule)
        for name, weight in weights.items()
    ]
    # Without the budget for a ramp the pruners were built at their final sparsity: one shot.
    if steps >= 2:
        fine_tune(
            model,
            *train,
            epochs=config.prune_epochs,
            batch_size=config.batch_size,
            lr=config.prune_lr,
            callbacks=pruners,
            seed=config.seed + 1,
        )
    for pruner in pruners:
        if pruner.target_sparsity != pruner.final_sparsity:
            raise RuntimeError("the AGP ramp did not reach its final sparsity")
        pruner.remove()
    return pruners


def _share(model: nn.Module, recipe: Recipe, train: Split, config: PipelineConfig) -> Any:
    from codl.quant import KMeansQuantizer
    from codl.training import fine_tune

    weights = _weights(model, list(recipe.bits))
    quantizer = KMeansQuantizer(weights, dict(recipe.bits), seed=config.seed)
    if _steps(config.quant_epochs, len(train[0]), config.batch_size) > 0:
        fine_tune(
            model,
            *train,
            epochs=config.quant_epochs,
            batch_size=config.batch_size,
            lr=config.quant_lr,
            callbacks=[quantizer],
            seed=config.seed + 2,
        )
    quantizer.remove()
    return quantizer


def save_plan(model: nn.Module, bits: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """The :func:`codl.save` plan that stores ``model``'s shared weights exactly: per weight,
    its own zero fraction (the plan's magnitude mask then drops exactly the zeros, the smallest
    magnitudes) and its codebook width (k-means on at most ``2^bits`` distinct values returns
    them as the codebook)."""
    state = model.state_dict()
    plan: dict[str, dict[str, Any]] = {}
    for name, width in bits.items():
        weight = state[name]
        zeros = int((weight == 0).sum())
        plan[name] = {"prune": zeros / weight.numel(), "bits": width}
    return plan


def _file_bytes(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.path.getsize(path)


def _torch_save(state: Mapping[str, torch.Tensor], path: Path) -> int:
    torch.save(dict(state), path)
    return os.path.getsize(path)


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    from codl.bench import median_ms

    return median_ms(fn, repeat)


def _evaluate(model: nn.Module, split: Split) -> float:
    from codl.training import evaluate

    return evaluate(model, *split)


def compress_model(
    recipe: Recipe,
    train: Split,
    test: Split,
    config: PipelineConfig | None = None,
    *,
    workdir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> CompressionResult:
    """Run the whole pipeline on one model (``config``: the recipe's full-run budget when None);
    files go to ``workdir`` (a temporary directory, removed afterwards, when None)."""
    if config is None:
        config = recipe.config or PipelineConfig()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="codl-compression-") as scratch:
            return compress_model(recipe, train, test, config, workdir=scratch, log=log)
    from codl.formats import inspect, load, load_into, save

    say = log if log is not None else (lambda _: None)
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = recipe.build()
    parameters = sum(p.numel() for p in model.parameters())

    from codl.training import fine_tune

    fine_tune(
        model,
        *train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
    )
    float_accuracy = _evaluate(model, test)
    float_state = copy.deepcopy(model.state_dict())
    float_path = folder / f"{recipe.name}.pt"
    torch_save_bytes = _torch_save(float_state, float_path)
    gzip_path = folder / f"{recipe.name}.pt.gz"
    gzip_bytes = _file_bytes(gzip_path, gzip.compress(float_path.read_bytes(), compresslevel=9))
    lossless_path = folder / f"{recipe.name}.lossless.codl"
    save(float_state, lossless_path)
    codl_lossless_bytes = os.path.getsize(lossless_path)
    say(f"{recipe.name}: float {float_accuracy:.2f}% ({time.perf_counter() - started:.0f} s)")

    pruners = _prune(model, recipe, train, config)
    pruned_accuracy = _evaluate(model, test)
    say(
        f"{recipe.name}: pruned {pruned_accuracy:.2f}% "
        + ", ".join(f"{n} {p.sparsity():.3f}" for n, p in zip(recipe.sparsity, pruners))
    )

    _share(model, recipe, train, config)
    shared_accuracy = _evaluate(model, test)
    say(f"{recipe.name}: shared {shared_accuracy:.2f}%")

    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    plan = save_plan(model, recipe.bits)
    codl_path = folder / f"{recipe.name}.codl"
    save(state, codl_path, plan=plan, metadata={"model": recipe.name})
    codl_bytes = os.path.getsize(codl_path)
    compressed_pt = folder / f"{recipe.name}.compressed.pt"
    _torch_save(state, compressed_pt)
    compressed_torch_gzip_bytes = _file_bytes(
        folder / f"{recipe.name}.compressed.pt.gz",
        gzip.compress(compressed_pt.read_bytes(), compresslevel=9),
    )

    loaded = load(codl_path)
    exact = loaded.keys() == state.keys() and all(
        loaded[k].dtype == state[k].dtype and torch.equal(loaded[k], state[k]) for k in state
    )
    if not exact:
        differing = [k for k in state if k not in loaded or not torch.equal(loaded[k], state[k])]
        raise RuntimeError(f"codl.load did not return the saved model exactly: {differing}")
    fresh = recipe.build()
    load_into(fresh, codl_path)
    codl_accuracy = _evaluate(fresh, test)

    codl_load_ms = _median_ms(lambda: load(codl_path), config.decode_repeat)
    torch_load_ms = _median_ms(
        lambda: torch.load(float_path, weights_only=True), config.decode_repeat
    )

    def gunzip_and_load() -> object:
        raw = gzip.decompress(gzip_path.read_bytes())
        return torch.load(io.BytesIO(raw), weights_only=True)

    gzip_torch_load_ms = _median_ms(gunzip_and_load, config.decode_repeat)

    pruned_names = list(recipe.sparsity)
    zeros = sum(int((state[n] == 0).sum()) for n in pruned_names)
    total = sum(state[n].numel() for n in pruned_names)
    layers = [
        LayerResult(
            info.name,
            info.shape,
            info.encoding,
            round(info.sparsity, 4),
            info.bits,
            info.dense_bytes,
            info.stored_bytes,
        )
        for info in inspect(codl_path)
    ]
    result = CompressionResult(
        model=recipe.name,
        parameters=parameters,
        train_examples=len(train[0]),
        test_examples=len(test[0]),
        float_accuracy=float_accuracy,
        pruned_accuracy=pruned_accuracy,
        shared_accuracy=shared_accuracy,
        codl_accuracy=codl_accuracy,
        accuracy_drop=round(float_accuracy - codl_accuracy, 2),
        sparsity=round(zeros / total, 4),
        torch_save_bytes=torch_save_bytes,
        gzip_bytes=gzip_bytes,
        codl_lossless_bytes=codl_lossless_bytes,
        compressed_torch_gzip_bytes=compressed_torch_gzip_bytes,
        codl_bytes=codl_bytes,
        ratio=round(torch_save_bytes / codl_bytes, 1),
        ratio_vs_gzip=round(gzip_bytes / codl_bytes, 1),
        exact_round_trip=exact,
        codl_load_ms=round(codl_load_ms, 3),
        torch_load_ms=round(torch_load_ms, 3),
        gzip_torch_load_ms=round(gzip_torch_load_ms, 3),
        seconds=round(time.perf_counter() - started, 1),
        layers=layers,
        config=asdict(config),
        recipe={"sparsity": dict(recipe.sparsity), "bits": dict(recipe.bits)},
    )
    say(
        f"{recipe.name}: .codl {codl_bytes} bytes, {result.ratio}x smaller than torch.save, "
        f"accuracy {codl_accuracy:.2f}% (float {float_accuracy:.2f}%)"
    )
    return result


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def format_markdown(results: Sequence[CompressionResult]) -> str:
    """The summary table and a per-layer table of every model, as Markdown."""
    lines = [
        "| model | float acc | pruned | shared | .codl acc | drop | sparsity | torch.save "
        "| gzip -9 | .codl | ratio | vs gzip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.model} | {r.float_accuracy:.2f}% | {r.pruned_accuracy:.2f}% | "
            f"{r.shared_accuracy:.2f}% | {r.codl_accuracy:.2f}% | {r.accuracy_drop:+.2f} | "
            f"{r.sparsity:.1%} | {_kib(r.torch_save_bytes)} | {_kib(r.gzip_bytes)} | "
            f"{_kib(r.codl_bytes)} | {r.ratio:.1f}x | {r.ratio_vs_gzip:.1f}x |"
        )
    lines.append("")
    lines.append(
        "| model | gzip -9 of compressed torch.save | codl lossless | codl.load ms "
        "| torch.load ms | gunzip+torch.load ms | bit-exact |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|:---:|")
    for r in results:
        lines.append(
            f"| {r.model} | {_kib(r.compressed_torch_gzip_bytes)} | "
            f"{_kib(r.codl_lossless_bytes)} | {r.codl_load_ms:.2f} | {r.torch_load_ms:.2f} | "
            f"{r.gzip_torch_load_ms:.2f} | {'yes' if r.exact_round_trip else 'NO'} |"
        )
    for r in results:
        lines += [
            "",
            f"{r.model} ({r.parameters:,} parameters), per tensor:",
            "",
            "| tensor | shape | encoding | sparsity | bits | float32 bytes | stored bytes |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for layer in r.layers:
            shape = "x".join(map(str, layer.shape)) or "scalar"
            bits = str(layer.bits) if layer.encoding != "raw" else "-"
            lines.append(
                f"| {layer.name} | {shape} | {layer.encoding} | {layer.sparsity:.1%} | {bits} | "
                f"{layer.dense_bytes} | {layer.stored_bytes} |"
            )
    return "\n".join(lines)


def with_overrides(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    """``config`` with the given fields replaced (None values ignored)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def run(
    models: Sequence[str] = tuple(RECIPES),
    *,
    data: DataChoice = "full",
    config: PipelineConfig | None = None,
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    train_limit: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compress every model in ``models`` on Fashion-MNIST (``data``: ``"full"`` or
    ``"subset"``, the shipped 3000/1000 images) with ``config`` (when None, each recipe's
    full-run budget, or its quick one if ``quick``) and the fields in ``overrides`` replaced;
    ``train_limit`` keeps the first training images only. Returns the JSON-ready record:
    machine, data, and one result per model."""
    from codl.bench import machine
    from codl.data import load_split

    unknown = [m for m in models if m not in RECIPES]
    if unknown:
        raise ValueError(f"models: unknown {unknown}; expected names among {sorted(RECIPES)}")
    train_images, train_labels, kind = load_split("train", data)
    test_images, test_labels, _ = load_split("test", data)
    if train_limit is not None:
        train_images, train_labels = train_images[:train_limit], train_labels[:train_limit]
    results = []
    for name in models:
        recipe = RECIPES[name]
        chosen = config or ((recipe.quick or QUICK) if quick else recipe.config)
        folder = None if workdir is None else Path(workdir)
        results.append(
            compress_model(
                recipe,
                (train_images, train_labels),
                (test_images, test_labels),
                with_overrides(chosen or PipelineConfig(), **(overrides or {})),
                workdir=folder,
                log=log,
            )
        )
    return {
        "benchmark": "compression",
        "data": kind,
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "results": [r.to_dict() for r in results],
        "table": format_markdown(results),
    }


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> dict[str, Any]:
    """Command line of ``codl bench compression`` (``benchmarks/compression.py``). Without
    ``--out`` the JSON goes to ``results_dir`` (compression.json, or compression-quick.json with
    ``--quick``), or nowhere when that is None."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        description="Prune + k-means share + .codl: LeNet-5 and LeNet-300-100 on Fashion-MNIST"
    )
    parser.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every phase")
    parser.add_argument("--epochs", type=float, help="float baseline training")
    parser.add_argument("--prune-epochs", type=float, help="AGP ramp + fine-tuning")
    parser.add_argument("--quant-epochs", type=float, help="codebook fine-tuning")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--prune-lr", type=float)
    parser.add_argument("--quant-lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--train-limit", type=int, help="use the first N training images")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default 2; 1 with --quick, whose small batches gain nothing from "
        "a second thread and lose much when the cores are shared)",
    )
    parser.add_argument("--keep-files", type=Path, help="write the .pt/.codl files here")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    args = parser.parse_args(argv)
    if args.out is None and results_dir is not None:
        args.out = results_dir / ("compression-quick.json" if args.quick else "compression.json")
    overrides = dict(
        epochs=args.epochs,
        prune_epochs=args.prune_epochs,
        quant_epochs=args.quant_epochs,
        lr=args.lr,
        prune_lr=args.prune_lr,
        quant_lr=args.quant_lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    from codl import _ops

    threads = args.threads if args.threads is not None else (1 if args.quick else 2)
    with _ops.using_threads(threads):
        record = run(
            args.models,
            data=args.data,
            quick=args.quick,
            overrides=overrides,
            train_limit=args.train_limit,
            workdir=args.keep_files,
            log=lambda line: print(line, flush=True),
        )
    record["quick"] = args.quick
    print(record["table"])
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return record
