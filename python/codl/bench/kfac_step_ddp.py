"""``codl bench kfac_step_ddp``: distributed K-FAC's time per step against distributed SGD's,
amortized over its update periods, at a chosen batch per rank (issue 17's per-step goal).

    python benchmarks/kfac_step_ddp.py [--procs 4] [--batch-per-rank 1024 256 64]
                                       [--factor-steps 10] [--inverse-steps 100]

FashionCNN under ``DistributedDataParallel`` on ``--procs`` gloo processes on 127.0.0.1 (one
torch thread each), random images (the time of a step does not depend on their values), the
same seed on every rank. SGD (momentum 0.9) and :class:`codl.optim.KFAC` at each
``--fractions`` (grad-worker fraction; 1 is KAISA's COMM-OPT) are timed step by step, each
step between two barriers and the slowest rank's time kept. A K-FAC step is one of three
kinds: a plain step (preconditioning with the current inverses), a factor-update step (the
Kronecker factors recomputed and averaged across ranks) and an inverse-update step (the
inversions shared out and broadcast). Each is timed on its own (plain: the median of
``--plain-steps``; one factor-only and one inverse-only step after the first cycle) and the
amortized step adds each update's extra time over a plain step as often as it comes:
``plain + (factor - plain) / F + (inverse - plain) / I`` for factors every F steps and
inverses every I steps. That is the mean step over a whole inverse cycle without running all
of it (at batch 1024 per rank a step takes seconds here, a cycle of 100 minutes).

Writes ``results/kfac_step_ddp.json``; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from codl._launch import launch
from codl.bench import default_results_dir
from codl.models import FashionCNN
from codl.optim import KFAC


def _batch(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(size, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (size,), generator=generator),
    )


def _slowest(seconds: float) -> float:
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def _timed_steps(optimizer: Any, model: torch.nn.Module, batch: Any, steps: int) -> list[float]:
    """The slowest rank's seconds of each of ``steps`` steps, each between barriers."""
    inputs, targets = batch
    times = []
    for _ in range(steps):
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        times.append(_slowest(time.perf_counter() - start))
    return times


def _worker(
    rank: int,
    world_size: int,
    batch_size: int,
    fractions: Sequence[float],
    plain_steps: int,
) -> list[dict[str, Any]]:
    batch = _batch(batch_size, rank)
    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    model = DistributedDataParallel(FashionCNN())
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _timed_steps(sgd, model, batch, 2)  # warm-up
    sgd_times = _timed_steps(sgd, model, batch, plain_steps)
    rows.append({"config": "SGD", "step_ms": 1e3 * statistics.median(sgd_times)})
    for fraction in fractions:
        torch.manual_seed(0)
        model = DistributedDataParallel(FashionCNN())
        # Factors at steps 0 and cycle - 1, inverses at 0 and cycle: step 0 (the first factors
        # and inverses, lazy allocations) is a warm-up; then plain steps, one step that only
        # updates the factors, one that only updates the inverses.
        cycle = plain_steps + 2
        kfac = KFAC(
            model,
            lr=0.01,
            momentum=0.9,
            factor_update_steps=cycle - 1,
            inv_update_steps=cycle,
            grad_worker_fraction=fraction,
        )
        times = _timed_steps(kfac, model, batch, cycle + 1)
        rows.append(
            {
                "config": f"K-FAC fraction {fraction:g}",
                "plain_ms": 1e3 * statistics.median(times[1 : cycle - 1]),
                "factor_ms": 1e3 * times[cycle - 1],
                "inverse_ms": 1e3 * times[cycle],
            }
        )
    return rows


def amortized_ms(row: dict[str, Any], factor_steps: int, inverse_steps: int) -> float:
    """A K-FAC row's mean step over one inverse cycle: a plain step, plus each update's extra
    time over it as often as the update comes (factors every ``factor_steps``, inverses every
    ``inverse_steps``)."""
    plain = float(row["plain_ms"])
    factor, inverse = float(row["factor_ms"]), float(row["inverse_ms"])
    return plain + (factor - plain) / factor_steps + (inverse - plain) / inverse_steps


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--batch-per-rank", type=int, nargs="+", default=[1024, 256, 64])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0])
    parser.add_argument("--factor-steps", type=int, default=10)
    parser.add_argument("--inverse-steps", type=int, default=100)
    parser.add_argument("--plain-steps", type=int, default=5, help="plain steps timed per run")
    parser.add_argument("--out", type=Path, default=out_dir / "kfac_step_ddp.json")
    args = parser.parse_args(argv)
    if args.procs < 1 or args.plain_steps < 1 or min(args.batch_per_rank) < 1:
        parser.error("--procs, --plain-steps and --batch-per-rank must be positive")
    if args.inverse_steps % args.factor_steps:
        parser.error("--inverse-steps must be a multiple of --factor-steps")
    table = []
    for batch in args.batch_per_rank:
        load_before = os.getloadavg()[0]
        rows = launch(
            _worker,
            args.procs,
            batch,
            list(args.fractions),
            args.plain_steps,
            timeout_s=3600,
            group_timeout_s=1800,
        )[0]
        sgd = rows[0]["step_ms"]
        for row in rows:
            row.update(batch_per_rank=batch, procs=args.procs, load_before=load_before)
            if "plain_ms" in row:
                row["amortized_ms"] = amortized_ms(row, args.factor_steps, args.inverse_steps)
                row["vs_sgd"] = row["amortized_ms"] / sgd
            table.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        print(f"batch {batch}/rank, {args.procs} processes (load before {load_before:.2f}):")
        for row in table[-len(rows) :]:
            if "plain_ms" in row:
                print(
                    f"  {row['config']:<20} plain {row['plain_ms']:9.1f} ms, factors "
                    f"{row['factor_ms']:9.1f}, inverses {row['inverse_ms']:9.1f}; amortized "
                    f"(factors /{args.factor_steps}, inverses /{args.inverse_steps}) "
                    f"{row['amortized_ms']:9.1f} ms = {row['vs_sgd']:.2f}x SGD"
                )
            else:
                print(f"  {row['config']:<20} {row['step_ms']:9.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": table}, indent=1) + "\n")
    print(f"wrote {args.out}")
