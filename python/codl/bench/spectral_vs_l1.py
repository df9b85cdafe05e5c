"""Spectral pruning against L1 channel pruning at the same kept widths, on Fashion-MNIST.

    python benchmarks/spectral_vs_l1.py [--models lenet5 fashioncnn] [--epochs 2]
        [--ratios 0.5 0.75] [--dof 0.05] [--finetune-epochs 0.5] [--seeds 0 1 2]

For every model and seed: train the float model (Adam, cosine decay), then for every setting
prune two copies to the same widths, one with :func:`codl.prune.spectral_` (Suzuki et al.,
IJCAI 2020; calibration on ``--calib`` training images) and one with :func:`codl.prune.channel_`
(L1 filter norms, Li et al. 2017), and report the test accuracy of both right after pruning and
after ``--finetune-epochs`` of fine-tuning. A ``--ratios`` setting removes that fraction of
every layer's channels; a ``--dof`` setting lets spectral pruning choose each layer's width
from its degrees of freedom N(λ) and prunes L1 to those same widths.

Prints a Markdown table (mean ± std over seeds) and writes benchmarks/results/spectral_vs_l1.json.
Quick check on the shipped subset: ``--data subset --epochs 0.2 --finetune-epochs 0.2``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codl.bench import default_results_dir
from codl.data import load_split
from codl.models import FashionCNN, LeNet5
from codl.prune import channel_, spectral_
from codl.training import evaluate, fine_tune

MODELS: dict[str, Callable[[], nn.Module]] = {"lenet5": LeNet5, "fashioncnn": FashionCNN}


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    train_images, train_labels, kind = load_split("train", args.data)
    test_images, test_labels, _ = load_split("test", args.data)
    settings: list[tuple[str, float]] = [("ratio", r) for r in args.ratios]
    settings += [("dof", d) for d in args.dof]
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for model_name in args.models:
        for seed in args.seeds:
            torch.manual_seed(seed)
            base = MODELS[model_name]()
            fine_tune(
                base,
                train_images,
                train_labels,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                seed=seed,
            )
            base_accuracy = evaluate(base, test_images, test_labels)
            generator = torch.Generator().manual_seed(seed)
            calib = train_images[
                torch.randperm(len(train_images), generator=generator)[: args.calib]
            ]
            print(f"{model_name} seed {seed}: float {base_accuracy:.2f}%", flush=True)
            for setting, value in settings:
                spectral_model = copy.deepcopy(base)
                report = spectral_(
                    spectral_model,
                    calib,
                    ratio=value if setting == "ratio" else None,
                    dof=value if setting == "dof" else None,
                    lam=args.lam,
                    theta=args.theta,
                )
                widths = {name: len(layer.kept) for name, layer in report.items()}
                l1_model = copy.deepcopy(base)
                channel_(l1_model, widths=widths, criterion="l1")
                row: dict[str, Any] = {
                    "model": model_name,
                    "seed": seed,
                    "setting": setting,
                    "value": value,
                    "widths": widths,
                    "float_accuracy": base_accuracy,
                    "float_parameters": _parameters(base),
                    "pruned_parameters": _parameters(l1_model),
                    "relative_errors": {n: layer.relative_error for n, layer in report.items()},
                }
                for method, model in (("spectral", spectral_model), ("l1", l1_model)):
                    row[f"{method}_before"] = evaluate(model, test_images, test_labels)
                    fine_tune(
                        model,
                        train_images,
                        train_labels,
                        epochs=args.finetune_epochs,
                        lr=args.finetune_lr,
                        batch_size=args.batch_size,
                        seed=seed + 1000,
                    )
                    row[f"{method}_after"] = evaluate(model, test_images, test_labels)
                records.append(row)
                print(
                    f"  {setting}={value:g} widths {widths}: spectral {row['spectral_before']:.2f}"
                    f" -> {row['spectral_after']:.2f}, l1 {row['l1_before']:.2f}"
                    f" -> {row['l1_after']:.2f}",
                    flush=True,
                )
    return {
        "data": kind,
        "train_examples": len(train_images),
        "test_examples": len(test_images),
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "seconds": time.perf_counter() - started,
        "runs": records,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | setting | kept widths (seed 0) | params kept | float | spectral before "
        "| L1 before | spectral after FT | L1 after FT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in result["runs"]:
        groups.setdefault((row["model"], row["setting"], row["value"]), []).append(row)
    for (model, setting, value), rows in groups.items():
        kept = f"{rows[0]['pruned_parameters'] / rows[0]['float_parameters']:.1%}"
        widths = "/".join(str(w) for w in rows[0]["widths"].values())
        cells = [
            _summary([r[key] for r in rows])
            for key in (
                "float_accuracy",
                "spectral_before",
                "l1_before",
                "spectral_after",
                "l1_after",
            )
        ]
        lines.append(
            f"| {model} | {setting} {value:g} | {widths} | {kept} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> dict[str, Any]:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--epochs", type=float, default=2.0, help="training of the float model")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.5, 0.75])
    parser.add_argument("--dof", type=float, nargs="*", default=[], help="λ of N(λ) widths")
    parser.add_argument("--lam", type=float, default=1e-3, help="ridge of Â_J (relative)")
    parser.add_argument("--theta", type=float, default=0.0, help="output-aware weight")
    parser.add_argument("--calib", type=int, default=2048, help="calibration images")
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=out_dir / "spectral_vs_l1.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result
