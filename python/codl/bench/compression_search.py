"""Per-layer compression-plan search against the best uniform plan, on Fashion-MNIST.

    python benchmarks/compression_search.py [--data full|subset] [--epochs 2] [--budget 0.5]
        [--val-examples 10000] [--seed 0] [--threads 1] [--out PATH]
    python benchmarks/compression_search.py --summarize results/compression_search-seed*.json

A LeNet-5-class CNN (:class:`codl.models.LeNet5`, conv 1-32-64 5x5 + BN, fc 1600-256-10)
is trained briefly on the training split less ``--val-examples`` held-out images. Then, with
no fine-tuning (post-training compression):

* searched: :func:`codl.search.compression_search` with the accuracy budget ``--budget`` points
  on the held-out images (sensitivity table, knapsack, joint check);
* uniform: every candidate setting of the same grid (sparsity x bits, ternary included) applied
  to all four weights alike; the best uniform plan is the smallest file whose held-out accuracy
  drop is within the same budget. The issue's example, uniform 90% + 5 bits, is reported too.

Every plan is written with :func:`codl.save`; file sizes are the files', accuracies those of a
fresh model loaded from the file with :func:`codl.load_into`, on the held-out images and on the
test split. Goal (issue 7): the searched file >= 1.5x smaller than the best uniform one.
The held-out images (10,000 by default) are the search's only accuracy signal: the budget is
held on them, and the test split is kept for reporting. Writes
benchmarks/results/compression_search-seed{SEED}.json; ``--summarize`` reads such files and
writes the mean and standard deviation over seeds (benchmarks/results/
compression_search-seeds.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import codl
from codl.bench import default_results_dir
from codl.data import load_split
from codl.models import LeNet5
from codl.search import DEFAULT_BITS, DEFAULT_SPARSITIES, candidate_settings, compression_search
from codl.training import evaluate, fine_tune


def _measure(
    model: nn.Module,
    plan: dict[str, Any] | None,
    folder: Path,
    name: str,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    path = folder / f"{name}.codl"
    codl.save(model, path, plan=plan)
    fresh = LeNet5()
    codl.load_into(fresh, path)
    row = {
        "plan": plan,
        "file_bytes": os.path.getsize(path),
        "val_accuracy": evaluate(fresh, *val),
    }
    if test is not None:
        row["test_accuracy"] = evaluate(fresh, *test)
    return row


SUMMARY_FIELDS: dict[str, Callable[[dict[str, Any]], float]] = {
    "searched_bytes": lambda r: r["searched"]["file_bytes"],
    "best_uniform_bytes": lambda r: r["best_uniform"]["file_bytes"],
    "ratio": lambda r: r["ratio_best_uniform_over_searched"],
    "searched_val_drop": lambda r: r["searched"]["val_drop"],
    "searched_test_drop": lambda r: r["searched"]["test_drop"],
    "best_uniform_val_drop": lambda r: r["best_uniform"]["val_drop"],
    "best_uniform_test_drop": lambda r: r["best_uniform"]["test_drop"],
    "baseline_test_accuracy": lambda r: r["baseline"]["test_accuracy"],
    "search_seconds": lambda r: r["seconds"]["search"],
}


def summarize(paths: list[Path], out: Path) -> dict[str, Any]:
    """Per-seed figures of the runs in ``paths`` and their mean and standard deviation (sample,
    n - 1), printed as a markdown table and written to ``out``."""
    runs = [json.loads(path.read_text()) for path in paths]
    per_seed = [
        {"seed": run["seed"], "best_uniform": run["best_uniform"]["setting"]}
        | {key: get(run) for key, get in SUMMARY_FIELDS.items()}
        for run in runs
    ]
    stats = {}
    for key in SUMMARY_FIELDS:
        values = [row[key] for row in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        stats[key] = {"mean": statistics.fmean(values), "std": std}
    budgets = {run["budget_points"] for run in runs}
    summary = {
        "benchmark": "compression_search (over seeds)",
        "files": [path.name for path in paths],
        "budget_points": sorted(budgets),
        "val_examples": sorted({run["val_examples"] for run in runs}),
        "per_seed": per_seed,
        "mean_std": stats,
        "goal": {
            "target": "searched >= 1.5x smaller than the best uniform",
            "met_every_seed": all(row["ratio"] >= 1.5 for row in per_seed),
            "met_on_mean": stats["ratio"]["mean"] >= 1.5,
        },
        "test_drop_within_budget_every_seed": all(
            row["searched_test_drop"] <= max(budgets) for row in per_seed
        ),
    }
    lines = [
        "| seed | searched bytes | best uniform | best-uniform bytes | ratio | search-split drop "
        "| test drop |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in per_seed:
        lines.append(
            f"| {row['seed']} | {row['searched_bytes']:,} | {row['best_uniform']} | "
            f"{row['best_uniform_bytes']:,} | {row['ratio']:.2f}x | "
            f"{row['searched_val_drop']:.2f} | {row['searched_test_drop']:.2f} |"
        )

    def ms(key: str, spec: str) -> str:
        return f"{stats[key]['mean']:{spec}} ± {stats[key]['std']:{spec}}"

    lines.append(
        f"| mean ± std | {ms('searched_bytes', ',.0f')} | | {ms('best_uniform_bytes', ',.0f')} | "
        f"{ms('ratio', '.2f')}x | {ms('searched_val_drop', '.2f')} | "
        f"{ms('searched_test_drop', '.2f')} |"
    )
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return summary


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    if (argv is not None and "--summarize" in argv) or (argv is None and "--summarize" in sys.argv):
        summary_parser = argparse.ArgumentParser(description="mean and std over seeds")
        summary_parser.add_argument("--summarize", type=Path, nargs="+", required=True)
        summary_parser.add_argument(
            "--out", type=Path, default=out_dir / "compression_search-seeds.json"
        )
        summary_args = summary_parser.parse_args(argv)
        summarize(summary_args.summarize, summary_args.out)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["full", "subset"], default="full")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=0.5, help="accuracy drop, points")
    parser.add_argument(
        "--val-examples",
        type=int,
        default=10000,
        help="training images held out for the search (the budget is measured on them)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/compression_search-seed{SEED}.json"
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="cache of the trained model: loaded if it exists (same --data/--epochs/--seed/"
        "--val-examples!), else written after training",
    )
    parser.add_argument("--refine-rounds", type=int, default=4)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-reuse-activations",
        action="store_true",
        help="evaluate the whole model for every setting (slower; the same table)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = out_dir / f"compression_search-seed{args.seed}.json"
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    started = time.perf_counter()

    images, labels, source = load_split("train", args.data)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(images), generator=generator)
    held, kept = order[: args.val_examples], order[args.val_examples :]
    val = (images[held], labels[held])
    train = (images[kept], labels[kept])
    test_images, test_labels, _ = load_split("test", args.data)
    test = (test_images, test_labels)

    torch.manual_seed(args.seed)
    model = LeNet5()
    loaded = args.state is not None and args.state.exists()
    if loaded:
        model.load_state_dict(torch.load(args.state, weights_only=True))
        print(f"loaded the trained model from {args.state}")
    else:
        fine_tune(model, *train, epochs=args.epochs, lr=1e-3, seed=args.seed)
        if args.state is not None:
            torch.save(model.state_dict(), args.state)
    model.eval()
    train_seconds = time.perf_counter() - started
    baseline_val = evaluate(model, *val)
    baseline_test = evaluate(model, *test)
    print(f"float: val {baseline_val:.2f}%, test {baseline_test:.2f}% ({train_seconds:.0f} s)")

    t0 = time.perf_counter()
    result = compression_search(
        model,
        val,
        args.budget,
        refine_rounds=args.refine_rounds,
        progress=progress,
        reuse_activations=not args.no_reuse_activations,
    )
    search_seconds = time.perf_counter() - t0
    print(f"search: {search_seconds:.0f} s, plan {json.dumps(result.plan)}")
    if result.backoffs:
        print("back-offs:", result.backoffs)
    if result.refinements:
        print("refinements:", result.refinements)

    with tempfile.TemporaryDirectory(prefix="codl-search-") as scratch:
        folder = Path(scratch)
        lossless = _measure(model, None, folder, "lossless", val, test)
        torch.save(model.state_dict(), folder / "float.pt")
        torch_save_bytes = os.path.getsize(folder / "float.pt")
        searched = _measure(model, result.plan, folder, "searched", val, test)
        assert searched["file_bytes"] == result.file_bytes
        assert searched["val_accuracy"] == result.measured_accuracy

        t0 = time.perf_counter()
        uniform_rows = []
        settings = candidate_settings(DEFAULT_SPARSITIES, DEFAULT_BITS)
        for setting in tqdm(settings, desc="uniform plans", disable=not progress):
            plan = {"*": setting.plan_entry()}
            row = _measure(model, plan, folder, "uniform", val, None)  # test: best one only
            row["setting"] = setting.label()
            row["val_drop"] = baseline_val - row["val_accuracy"]
            uniform_rows.append(row)
        uniform_seconds = time.perf_counter() - t0
        example = _measure(
            model, {"*": {"prune": 0.9, "bits": 5}}, folder, "uniform-90-5", val, test
        )

        within = [r for r in uniform_rows if r["val_drop"] <= args.budget]
        best_uniform = min(within, key=lambda r: (r["file_bytes"], -r["val_accuracy"]))
        best_uniform.update(
            _measure(model, best_uniform["plan"], folder, "best-uniform", val, test)
        )
    ratio = best_uniform["file_bytes"] / searched["file_bytes"]
    summary = {
        "benchmark": "compression_search",
        "model": "codl.models.LeNet5 (conv 1-32-64 5x5 + BN, fc 1600-256-10)",
        "data": source,
        "train_examples": len(train[0]),
        "val_examples": len(val[0]),
        "test_examples": len(test_images),
        "epochs": args.epochs,
        "budget_points": args.budget,
        "refine_rounds": args.refine_rounds,
        "baseline": {"val_accuracy": baseline_val, "test_accuracy": baseline_test},
        "torch_save_bytes": torch_save_bytes,
        "lossless": lossless,
        "searched": {
            **searched,
            "val_drop": baseline_val - searched["val_accuracy"],
            "test_drop": baseline_test - searched["test_accuracy"],
            "predicted_bytes": result.predicted_bytes,
            "predicted_drop": result.predicted_drop,
            "knapsack_plan": result.knapsack_plan,
            "backoffs": result.backoffs,
            "refinements": result.refinements,
        },
        "best_uniform": {
            **best_uniform,
            "test_drop": baseline_test - best_uniform["test_accuracy"],
        },
        "uniform_90_5": {
            **example,
            "val_drop": baseline_val - example["val_accuracy"],
            "test_drop": baseline_test - example["test_accuracy"],
        },
        "uniform": uniform_rows,
        "table": [row.to_dict() for row in result.table],
        "ratio_best_uniform_over_searched": ratio,
        "goal": {"target": "searched >= 1.5x smaller than the best uniform", "met": ratio >= 1.5},
        "seconds": {
            "train": train_seconds,
            "train_is_state_load": loaded,
            "search": search_seconds,
            "uniform": uniform_seconds,
            "total": time.perf_counter() - started,
        },
        "threads": args.threads,
        "seed": args.seed,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    print(
        f"| plan | file bytes | val drop | test accuracy |\n|---|---:|---:|---:|\n"
        f"| float32 torch.save | {torch_save_bytes:,} | 0 | {baseline_test:.2f} |\n"
        f"| searched | {searched['file_bytes']:,} | {summary['searched']['val_drop']:.2f} | "
        f"{searched['test_accuracy']:.2f} |\n"
        f"| best uniform ({best_uniform['setting']}) | {best_uniform['file_bytes']:,} | "
        f"{best_uniform['val_drop']:.2f} | {best_uniform['test_accuracy']:.2f} |\n"
        f"| uniform 90% + 5 bits | {example['file_bytes']:,} | "
        f"{summary['uniform_90_5']['val_drop']:.2f} | {example['test_accuracy']:.2f} |"
    )
    print(f"best uniform / searched = {ratio:.2f}x (goal >= 1.5x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
