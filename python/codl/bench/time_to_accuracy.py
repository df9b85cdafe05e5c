"""Time to accuracy on the full Fashion-MNIST: SGD, Adam (torch) and K-FAC (codl).

    python benchmarks/time_to_accuracy.py [--seeds 3] [--epochs 3] [--target 91] [--grid kfac:0.03]
        [--schedules decay constant] [--evaluations-per-epoch 4]

For each learning-rate schedule and optimizer, seed 0 runs every learning rate of its grid; the
rate that reaches the target soonest (else the best accuracy) then runs the other seeds.
``decay``: polynomial decay to 0 at the end of ``--epochs``; ``constant``: the rate throughout.
Reports seconds, epochs and optimizer steps to the target (steps are exact to one evaluation
interval, and do not depend on the machine's load). Writes
benchmarks/results/time_to_accuracy.json and .png (accuracy against wall-clock and epochs).
Training wall-clock excludes evaluation; torch.set_num_threads(2) for every optimizer.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from codl.bench import default_results_dir
from codl.bench.training import SCHEDULES, Run, plot_accuracy, save_runs, train
from codl.data import load_split

GRIDS = {
    "sgd": [0.01, 0.03, 0.1],
    "adam": [3e-4, 1e-3, 3e-3],
    "kfac": [0.01, 0.03, 0.1],
}


def rank(run: Run, target: float) -> tuple[float, float]:
    reached = run.time_to(target)
    return (reached if reached is not None else float("inf"), -run.best_accuracy())


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the best rate")
    parser.add_argument("--epochs", type=float, default=3.0, help="training epochs per run")
    parser.add_argument("--target", type=float, default=91.0, help="test accuracy target (%%)")
    parser.add_argument("--batch", type=int, default=128, help="mini-batch size")
    parser.add_argument("--optimizers", nargs="*", default=list(GRIDS), help="sgd adam kfac")
    parser.add_argument(
        "--schedules",
        nargs="*",
        choices=SCHEDULES,
        default=["decay"],
        help="learning-rate schedules, each run separately (default: decay)",
    )
    parser.add_argument(
        "--evaluations-per-epoch",
        type=int,
        default=4,
        help="test evaluations per epoch (the resolution of steps/epochs to the target)",
    )
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--out", type=Path, default=out_dir / "time_to_accuracy")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME:LR,LR",
        help="replace an optimizer's learning-rate grid, e.g. --grid kfac:0.03,0.1",
    )
    args = parser.parse_args(argv)
    for entry in args.grid:
        name, rates = entry.split(":")
        GRIDS[name] = [float(rate) for rate in rates.split(",")]
    torch.set_num_threads(2)
    train_images, train_labels, kind = load_split("train", args.data)
    test_images, test_labels, _ = load_split("test", args.data)
    runs: list[Run] = []
    summary = {}
    best_runs: list[Run] = []
    for schedule in args.schedules:
        for name in args.optimizers:

            def run(lr: float, seed: int, name: str = name, schedule: str = schedule) -> Run:
                return train(
                    name,
                    lr,
                    (train_images, train_labels),
                    (test_images, test_labels),
                    batch_size=args.batch,
                    epochs=args.epochs,
                    seed=seed,
                    evaluations_per_epoch=args.evaluations_per_epoch,
                    schedule=schedule,
                )

            grid_runs = [run(lr, 0) for lr in GRIDS[name]]
            best = min(grid_runs, key=lambda r: rank(r, args.target))
            seeded = [best] + [run(best.learning_rate, seed) for seed in range(1, args.seeds)]
            runs += grid_runs + seeded[1:]
            best_runs += seeded
            times = [r.time_to(args.target) for r in seeded]
            reached = [t for t in times if t is not None]
            key = name if schedule == "decay" else f"{name}-{schedule}"
            summary[key] = {
                "schedule": schedule,
                "learning_rate": best.learning_rate,
                "seconds_to_target": times,
                "median_seconds_to_target": statistics.median(reached)
                if len(reached) == len(times)
                else None,
                "steps_to_target": [r.steps_to(args.target) for r in seeded],
                "epochs_to_target": [r.epochs_to(args.target) for r in seeded],
                "best_accuracy": [r.best_accuracy() for r in seeded],
                "diverged": [r.diverged for r in seeded],
                "grid_best_accuracy": {r.learning_rate: r.best_accuracy() for r in grid_runs},
                "grid_steps_to_target": {
                    r.learning_rate: r.steps_to(args.target) for r in grid_runs
                },
            }
            print(key, summary[key], flush=True)
    save_runs(
        runs,
        args.out.with_suffix(".json"),
        data=kind,
        target=args.target,
        schedules=args.schedules,
        load_average=os.getloadavg(),
        summary=summary,
    )
    plot_accuracy(
        best_runs,
        args.out.with_suffix(".png"),
        f"FashionCNN on Fashion-MNIST ({kind}), batch {args.batch}, {args.seeds} seeds",
        args.target,
    )
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
