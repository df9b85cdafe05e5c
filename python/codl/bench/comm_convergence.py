"""Convergence of compressed data-parallel training: DDP with codl's comm hooks on Fashion-MNIST.

Each configuration trains the same LeNet-5-class CNN (codl.models.LeNet5; ``--model smallcnn``
for codl.models.SmallCNN) with plain
DDP (float32 allreduce) or with ``codl.comm.ddp_hook(codec)``, on 2 and 4 gloo processes on
127.0.0.1 (torch.multiprocessing, one thread each), the same seed, global batch and SGD
schedule, and reports the test accuracy and the bytes each rank sent. Lossy codecs are also
run without error feedback, to show what it buys.

    python benchmarks/comm_convergence.py                       # full data, 2 and 4 processes
    python benchmarks/comm_convergence.py --quick               # smoke run on the shipped subset
    python benchmarks/comm_convergence.py --configs float32 signef --seeds 0 1 2   # mean of 3
    python benchmarks/comm_convergence.py --schedule constant --hook-momentum  # momentum 0.9,
                                                # constant rate, the hook told the momentum

With several seeds the results hold every run and a summary: the mean and standard deviation
of the test accuracy per world size and configuration, and the mean drop from float32.

Writes benchmarks/results/comm_convergence.json and a plot of accuracy against bytes sent.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codl._launch import launch
from codl.bench import default_results_dir

# name -> (codec constructor source, the goal: max points below uncompressed DDP)
CONFIGS: dict[str, tuple[str, float | None]] = {
    "float32": ("None", None),
    "fp16": ("comm.FP16()", 0.3),
    "bf16": ("comm.BF16()", 0.3),
    "int8": ("comm.Int8()", 0.3),
    "signef": ("comm.SignEF()", 1.0),
    "sign (no EF)": ("comm.SignEF(error_feedback=False)", None),
    "signef b512": ("comm.SignEF(block=512)", 1.0),
    "sign b512 (no EF)": ("comm.SignEF(block=512, error_feedback=False)", None),
    "topk 1%": ("comm.TopK(0.01, error_feedback=True)", 1.0),
    "topk 1% (no EF)": ("comm.TopK(0.01, error_feedback=False)", None),
    "powersgd r2": ("comm.PowerSGD(2)", 1.0),
    "powersgd r2 (no EF)": ("comm.PowerSGD(2, error_feedback=False)", None),
    "qsgd": ("comm.QSGD()", None),
    "terngrad": ("comm.TernGrad()", None),
    "terngrad (no clip)": ("comm.TernGrad(clip=None)", None),
}

#: --model: LeNet5 (the table's model) or SmallCNN, on which issue 14 saw SignEF diverge.
MODELS = {"lenet5": "LeNet5", "smallcnn": "SmallCNN"}


#: The SGD momentum of every run.
MOMENTUM = 0.9


def make_codec(name: str) -> Any:
    from codl import comm  # noqa: F401  (used by the eval'd constructor)

    return eval(CONFIGS[name][0])  # our own table above, never user input


def worker(
    rank: int, world: int, name: str, seed: int, args: argparse.Namespace
) -> dict[str, Any] | None:
    """Trains configuration ``name`` on this rank; rank 0 returns the result."""
    from codl import models
    from codl.comm import ddp_hook
    from codl.data import DataChoice, load_split
    from codl.training import evaluate

    data: DataChoice = "subset" if args.quick else "full"
    images, labels, _ = load_split("train", data)
    if args.train_limit:
        images, labels = images[: args.train_limit], labels[: args.train_limit]
    torch.manual_seed(seed)
    model = getattr(models, MODELS[args.model])()
    ddp = DistributedDataParallel(model)
    codec = make_codec(name)
    state = None
    if codec is not None:
        # --hook-momentum tells the hook the SGD's momentum: codecs with error feedback then
        # compress the momentum (issue 14: SignEF diverged at momentum 0.9 and a constant rate).
        hook_momentum = MOMENTUM if args.hook_momentum else 0.0
        state, hook = ddp_hook(codec, warmup_steps=args.warmup_steps, momentum=hook_momentum)
        ddp.register_comm_hook(state, hook)
    per_rank = args.batch_size // world
    steps_per_epoch = len(images) // args.batch_size
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=MOMENTUM, weight_decay=5e-4)
    schedule: torch.optim.lr_scheduler.LRScheduler
    if args.schedule == "onecycle":
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
        )
    else:
        schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(images), generator=generator)  # same on every rank
        for step in range(steps_per_epoch):
            batch = order[step * args.batch_size : (step + 1) * args.batch_size]
            mine = batch[rank * per_rank : (rank + 1) * per_rank]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(ddp(images[mine]), labels[mine]).backward()
            optimizer.step()
            schedule.step()
    elapsed = time.perf_counter() - started
    if rank != 0:
        return None
    test_images, test_labels, _ = load_split("test", data)
    total = state.total.as_dict() if state is not None else None
    params = sum(p.numel() for p in model.parameters())
    ring_bytes = 2 * (world - 1) / world * 4 * params * args.epochs * steps_per_epoch
    return {
        "config": name,
        "model": args.model,
        "world_size": world,
        "seed": seed,
        "test_accuracy": round(evaluate(model, test_images, test_labels, batch_size=2000), 2),
        "bytes_sent_per_rank": total["bytes_sent"] if total else ring_bytes,
        "ratio_to_float32": round(total["ratio"], 4) if total else 1.0,
        "train_seconds": round(elapsed, 1),
    }


def run(name: str, world: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Configuration ``name`` on ``world`` gloo processes on 127.0.0.1, one thread each; rank 0's
    result (every rank must finish)."""
    result: dict[str, Any] = launch(
        worker, world, name, seed, args, timeout_s=3600, group_timeout_s=900
    )[0]
    return result


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per world size and configuration: mean and (sample) standard deviation of the test
    accuracy over seeds, the mean drop from float32 (paired by seed) and the issue's goal."""
    summary = []
    keys = list(dict.fromkeys((r["world_size"], r["config"]) for r in results))
    for world, name in keys:
        runs = [r for r in results if r["world_size"] == world and r["config"] == name]
        accuracy = torch.tensor([r["test_accuracy"] for r in runs], dtype=torch.float64)
        row: dict[str, Any] = {
            "config": name,
            "world_size": world,
            "seeds": [r["seed"] for r in runs],
            "test_accuracy_mean": round(float(accuracy.mean()), 2),
            "test_accuracy_std": round(float(accuracy.std()), 2) if len(runs) > 1 else None,
            "ratio_to_float32": runs[0]["ratio_to_float32"],
            "bytes_sent_per_rank": runs[0]["bytes_sent_per_rank"],
        }
        drops = [r["drop_vs_float32"] for r in runs if "drop_vs_float32" in r]
        if len(drops) == len(runs):
            row["drop_vs_float32_mean"] = round(sum(drops) / len(drops), 2)
            goal = CONFIGS[name][1]
            if goal is not None:
                row["goal_max_drop"] = goal
                row["goal_met"] = row["drop_vs_float32_mean"] <= goal
        summary.append(row)
    return summary


def plot(summary: list[dict[str, Any]], path: Path, model: str = "lenet5") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r["world_size"] for r in summary})
    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.5), squeeze=False)
    for axis, world in zip(axes[0], worlds):
        for r in (r for r in summary if r["world_size"] == world):
            x, y = r["bytes_sent_per_rank"] / 1e6, r["test_accuracy_mean"]
            axis.errorbar(x, y, yerr=r["test_accuracy_std"] or 0.0, fmt="o", capsize=3)
            axis.annotate(
                r["config"], (x, y), fontsize=8, xytext=(4, 2), textcoords="offset points"
            )
        axis.set_xscale("log")
        axis.set_xlabel("MB sent per rank (log)")
        axis.set_ylabel("test accuracy % (mean over seeds, ± sd)")
        axis.set_title(f"{MODELS[model]}, Fashion-MNIST, {world} gloo processes")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> int:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--world-sizes", nargs="*", type=int, default=[2, 4])
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="lenet5",
        help="codl.models.LeNet5 (default) or SmallCNN (where SignEF diverged at momentum 0.9)",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument(
        "--schedule",
        choices=["onecycle", "constant"],
        default="onecycle",
        help="learning-rate schedule: one cycle up to --lr and down (default), or --lr throughout",
    )
    parser.add_argument(
        "--hook-momentum",
        action="store_true",
        help=f"pass the SGD's momentum ({MOMENTUM}) to ddp_hook(momentum=): codecs with error "
        "feedback then compress the momentum instead of the gradient",
    )
    parser.add_argument("--train-limit", type=int, default=0, help="first N training images")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0], help="one run per seed")
    parser.add_argument("--quick", action="store_true", help="shipped subset, 1 epoch")
    parser.add_argument("--out", type=Path, default=out_dir / "comm_convergence.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.warmup_steps = 1, 5
    results = []
    for seed in args.seeds:  # seed by seed, so a cut-short run still leaves whole sets
        for world in args.world_sizes:
            for name in args.configs:
                result = run(name, world, seed, args)
                print(json.dumps(result), flush=True)
                results.append(result)
    for r in results:
        baseline = next(
            (
                b["test_accuracy"]
                for b in results
                if (b["world_size"], b["seed"], b["config"])
                == (r["world_size"], r["seed"], "float32")
            ),
            None,
        )
        goal = CONFIGS[r["config"]][1]
        if baseline is not None:
            r["drop_vs_float32"] = round(baseline - r["test_accuracy"], 2)
            if goal is not None:
                r["goal_max_drop"] = goal
                r["goal_met"] = r["drop_vs_float32"] <= goal
    summary = summarize(results)
    for row in summary:
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "comm_convergence",
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    plot(summary, args.out.with_suffix(".png"), args.model)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0
