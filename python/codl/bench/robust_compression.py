"""Robust compression on Fashion-MNIST: clean and PGD accuracy of a float model, its compressed
versions, and the compressed versions after adversarial fine-tuning.

    python benchmarks/robust_compression.py [--data full|subset] [--model lenet300100|lenet5]
        [--train-examples N] [--eps 0.1] [--threads 1] [--out PATH]

Models (all from the same trained float model, test split for every accuracy):

* float: trained with Adam (cosine decay) on clean data;
* pruned 90%: global magnitude pruning (:func:`codl.prune.magnitude_`), fine-tuned with the
  masks held;
* k-means 4-bit: per-layer 16-value codebooks (:func:`codl.quant.kmeans_`), centroids
  fine-tuned;
* ternary: every Linear/Conv swapped for its ternary twin (:func:`codl.quantize_`, TWN codes,
  straight-through training);
* each of those + adversarial fine-tuning (:func:`codl.robust.adversarial_finetune`, half clean
  and half PGD examples, Goodfellow et al. 2015 eq. 6), its compressor kept in the loop;
* float + adversarial fine-tuning, for reference.

The attack of the report is PGD, L∞, ``eps`` in pixel units ([0, 1] pixels; divided by the
normalisation's std for the model's inputs), 10 steps of eps/4 from a random start, inputs kept
in the valid pixel range. Training uses a cheaper PGD (``--train-steps`` steps of eps/2).
Writes benchmarks/results/robust_compression.json and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import codl
from codl.bench import default_results_dir
from codl.data import load_split
from codl.prune import magnitude_
from codl.quant import kmeans_
from codl.robust import (
    PGD,
    RobustnessRow,
    adversarial_finetune,
    fashion_mnist_range,
    format_markdown,
    pixel_eps,
    robust_accuracy,
)
from codl.training import evaluate, fine_tune

COMPRESSIONS = ("pruned 90%", "k-means 4-bit", "ternary")


def _build(name: str) -> Callable[[], nn.Module]:
    if name == "lenet300100":
        from codl.models import LeNet300100

        return LeNet300100
    if name == "lenet5":
        from codl.models import LeNet5

        return lambda: LeNet5(channels=(16, 32), hidden=128)
    raise ValueError(f"--model: expected lenet300100 or lenet5, received {name!r}")


def _sparsity(model: nn.Module) -> float:
    from codl.training import prunable_weights

    weights = prunable_weights(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / sum(w.numel() for w in weights.values())


def _distinct_values(model: nn.Module) -> int:
    from codl.training import prunable_weights

    return max(int(torch.unique(w[w != 0]).numel()) for w in prunable_weights(model).values())


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--model", default="lenet300100")
    parser.add_argument("--train-examples", type=int, default=None, help="default: all")
    parser.add_argument("--epochs", type=float, default=4.0, help="float training")
    parser.add_argument("--compress-epochs", type=float, default=1.0)
    parser.add_argument("--adversarial-epochs", type=float, default=2.0)
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf budget in pixel units")
    parser.add_argument("--train-steps", type=int, default=3, help="PGD steps while training")
    parser.add_argument("--mix", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=out_dir / "robust_compression.json")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--compressions",
        nargs="+",
        choices=COMPRESSIONS,
        default=list(COMPRESSIONS),
        help="which compressed models to build (default: all)",
    )
    parser.add_argument(
        "--kmeans-reassign",
        action="store_true",
        help="adversarial fine-tuning of the k-means model trains the weights through a "
        "straight-through estimator (weights may change cluster) instead of the centroids alone",
    )
    parser.add_argument(
        "--skip-float-adversarial", action="store_true", help="leave out float + adversarial"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    started = time.perf_counter()

    images, labels, source = load_split("train", args.data)
    if args.train_examples is not None:
        images, labels = images[: args.train_examples], labels[: args.train_examples]
    test_images, test_labels, _ = load_split("test", args.data)
    clamp = fashion_mnist_range()
    eps = pixel_eps(args.eps)

    def evaluation_attack() -> PGD:
        return PGD(eps, steps=10, step_size=eps / 4, clamp=clamp, seed=args.seed)

    def training_attack() -> PGD:
        return PGD(eps, steps=args.train_steps, step_size=eps / 2, clamp=clamp, seed=args.seed + 1)

    rows: list[RobustnessRow] = []
    details: dict[str, dict[str, Any]] = {}

    def report(name: str, model: nn.Module, compression: str, adversarial: bool, t0: float) -> None:
        clean = evaluate(model, test_images, test_labels)
        robust = robust_accuracy(
            model, test_images, test_labels, evaluation_attack(), progress=progress
        )
        row = RobustnessRow(
            args.model, clean, robust, compression, adversarial, time.perf_counter() - t0
        )
        rows.append(row)
        details[name] = row.to_dict()
        print(f"{name:<28} clean {clean:6.2f}%  PGD {robust:6.2f}%  ({row.seconds:.0f} s)")

    build = _build(args.model)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    float_model = build()
    fine_tune(float_model, images, labels, epochs=args.epochs, lr=1e-3, seed=args.seed)
    report("float", float_model, "", False, t0)

    def adversarial(
        name: str, model: nn.Module, compressor: Any, compression: str, lr: float
    ) -> nn.Module:
        t1 = time.perf_counter()
        adversarial_finetune(
            model,
            (images, labels),
            training_attack(),
            args.adversarial_epochs,
            lr=lr,
            mix=args.mix,
            compressor=compressor,
            seed=args.seed + 2,
            progress=progress,
        )
        report(name, model, compression, True, t1)
        return model

    if not args.skip_float_adversarial:
        adversarial("float + adversarial", copy.deepcopy(float_model), None, "", 1e-3)

    if "pruned 90%" in args.compressions:
        # Pruned 90%: one shot, then fine-tuning with the masks held.
        t0 = time.perf_counter()
        pruned = copy.deepcopy(float_model)
        pruner = magnitude_(pruned, 0.9)
        fine_tune(
            pruned, images, labels, epochs=args.compress_epochs, lr=1e-3, callbacks=[pruner], seed=1
        )
        pruner.remove()
        report("pruned 90%", pruned, "pruned 90%", False, t0)
        pruned_adv = copy.deepcopy(pruned)
        # The zeros are the smallest magnitudes: the same 90% mask, rebuilt on the copy.
        pruned_adv_pruner = magnitude_(pruned_adv, 0.9)
        adversarial("pruned 90% + adversarial", pruned_adv, pruned_adv_pruner, "pruned 90%", 1e-3)
        details["pruned 90% + adversarial"]["sparsity"] = _sparsity(pruned_adv)
        details["pruned 90%"]["sparsity"] = _sparsity(pruned)

    if "k-means 4-bit" in args.compressions:
        # k-means 4-bit: 16 shared values per layer, centroids fine-tuned.
        t0 = time.perf_counter()
        shared = copy.deepcopy(float_model)
        quantizer = kmeans_(shared, 4)
        fine_tune(
            shared,
            images,
            labels,
            epochs=args.compress_epochs,
            lr=1e-4,
            callbacks=[quantizer],
            seed=2,
        )
        quantizer.remove()
        report("k-means 4-bit", shared, "k-means 4-bit", False, t0)
        shared_adv = copy.deepcopy(shared)
        # <= 16 distinct values: the same codebook. Centroid-only: each member carries its
        # centroid's summed gradient, but Adam's step is scale-free, so the centroids move by
        # ~lr a step and the same lr as the other models fits. --kmeans-reassign: the weights
        # train through the straight-through estimator and may change cluster.
        shared_adv_quantizer = kmeans_(shared_adv, 4, reassign=args.kmeans_reassign)
        adversarial(
            "k-means 4-bit + adversarial", shared_adv, shared_adv_quantizer, "k-means 4-bit", 1e-3
        )
        shared_adv_quantizer.remove()
        details["k-means 4-bit"]["max_distinct_values"] = _distinct_values(shared)
        details["k-means 4-bit + adversarial"]["max_distinct_values"] = _distinct_values(shared_adv)
        details["k-means 4-bit + adversarial"]["reassign"] = args.kmeans_reassign

    if "ternary" in args.compressions:
        # Ternary: every Linear/Conv ternarized (TWN, per-row scales), trained through the STE.
        t0 = time.perf_counter()
        ternary = codl.quantize_(copy.deepcopy(float_model), codl.TernaryConfig())
        fine_tune(ternary, images, labels, epochs=args.compress_epochs, lr=1e-3, seed=3)
        report("ternary", ternary, "ternary (TWN)", False, t0)
        adversarial("ternary + adversarial", copy.deepcopy(ternary), None, "ternary (TWN)", 1e-3)

    table = format_markdown(rows, f"PGD eps={args.eps:g}")
    print(table)
    result = {
        "benchmark": "robust_compression",
        "model": args.model,
        "data": source,
        "train_examples": len(images),
        "test_examples": len(test_images),
        "eps_pixels": args.eps,
        "eps_normalised": eps,
        "clamp_normalised": list(clamp),
        "evaluation_attack": "PGD L-inf, 10 steps of eps/4, random start",
        "training_attack": f"PGD L-inf, {args.train_steps} steps of eps/2, random start",
        "mix": args.mix,
        "kmeans_reassign": args.kmeans_reassign,
        "epochs": args.epochs,
        "compress_epochs": args.compress_epochs,
        "adversarial_epochs": args.adversarial_epochs,
        "threads": args.threads,
        "seed": args.seed,
        "rows": [row.to_dict() for row in rows],
        "details": details,
        "seconds": time.perf_counter() - started,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    gains = {}
    for compression in args.compressions:
        plain, robust = details[compression], details[f"{compression} + adversarial"]
        gains[compression] = {
            "pgd_gain": robust["adversarial_accuracy"] - plain["adversarial_accuracy"],
            "clean_cost": plain["clean_accuracy"] - robust["clean_accuracy"],
        }
    result["goal"] = {
        "target": "PGD accuracy +10 points or more at a clean cost of 2 points or less",
        "per_compression": gains,
        "met": all(g["pgd_gain"] >= 10 and g["clean_cost"] <= 2 for g in gains.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    print(json.dumps(result["goal"], indent=2))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
