"""Large mini-batches on the full Fashion-MNIST: where K-FAC keeps its accuracy.

    python benchmarks/large_batch.py [--batches 128 1024 4096] [--epochs 2]

Each optimizer trains FashionCNN for the same number of epochs at each batch size, with a
linear warm-up and polynomial decay (Osawa et al. 2018) and the learning rate scaled with the
batch (square-root rule from its batch-128 value); K-FAC refreshes its curvature as often per
example at every batch size. Writes benchmarks/results/large_batch.json
and prints a Markdown table of the best test accuracy.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from codl.bench import default_results_dir
from codl.bench.training import Run, save_runs, train
from codl.data import load_split

BASE_LR = {"sgd": 0.1, "adam": 1e-3, "kfac": 0.03}


def kfac_refresh(batch: int) -> dict[str, int]:
    """The same curvature refresh per example as factors /10 and inverses /100 at batch 128."""
    return {
        "factor_update_steps": max(1, round(10 * 128 / batch)),
        "inv_update_steps": max(1, round(100 * 128 / batch)),
    }


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[128, 1024, 4096])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--optimizers", nargs="*", default=list(BASE_LR))
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--out", type=Path, default=out_dir / "large_batch.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    train_data = load_split("train", args.data)[:2]
    test_data = load_split("test", args.data)[:2]
    runs: list[Run] = []
    table: dict[str, dict[int, float]] = {}
    for name in args.optimizers:
        for batch in args.batches:
            lr = BASE_LR[name] * math.sqrt(batch / 128)
            run = train(
                name,
                lr,
                train_data,
                test_data,
                batch_size=batch,
                epochs=args.epochs,
                warmup_epochs=args.warmup_epochs if batch > 128 else 0.0,
                evaluations_per_epoch=2,
                optimizer_options=kfac_refresh(batch) if name == "kfac" else None,
            )
            runs.append(run)
            table.setdefault(name, {})[batch] = run.best_accuracy()
            print(name, batch, f"lr {lr:g}", f"best {run.best_accuracy():.2f}%", flush=True)
    save_runs(runs, args.out, data=args.data, epochs=args.epochs, table=table)
    header = "| optimizer | " + " | ".join(f"batch {b}" for b in args.batches) + " |"
    print(header)
    print("|" + "---|" * (len(args.batches) + 1))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.2f}" for b in args.batches) + " |")
