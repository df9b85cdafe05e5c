"""Validation of codl.comm's alpha-beta link model: measured DDP step times on an emulated slow
link against :func:`codl.comm.linkmodel.project`.

2 and 4 gloo processes on 127.0.0.1 (torch.multiprocessing, one thread each) train an MLP
(784-1024-10, 814,090 gradient values, one DDP bucket) with ``codl.comm.ddp_hook``; the hook's
:class:`~codl.comm.linkmodel.EmulatedLink` sleeps alpha per message + bytes / B after every
collective, at bandwidths low enough (2 and 10 MB/s) that the sleep dominates loopback. Each
rank measures its own compute (``profile_step``) and each codec's throughput in the same
process before training, and each configuration's step on the unthrottled loopback link, whose
part beyond compute and codec is the fixed per-step overhead the alpha-beta terms leave out
(:func:`codl.comm.linkmodel.with_measured_overhead`); the projection uses those. The measured
step is the median wall time of forward + backward (with the hook's exchange) over the timed
steps (the SGD update, outside the model, is left out). The projection without the overhead
(loopback's small-message latency added to alpha instead) is reported beside it.

    python benchmarks/comm_validation.py            # writes benchmarks/results/comm_validation.json
    python benchmarks/comm_validation.py --steps 4  # quicker

The issue's bar: projection within 20% of what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codl._launch import launch
from codl.bench import default_results_dir

BANDWIDTHS = (2e6, 10e6)  # bytes/s: the sleep must dominate loopback on a shared machine
LATENCY = 500e-6  # seconds per message
BATCH = 32


def codecs() -> dict[str, Any]:
    from codl import comm

    return {
        "float32": None,
        "fp16": comm.FP16(),
        "int8": comm.Int8(),
        "sign_ef": comm.SignEF(),
        "topk_1%": comm.TopK(0.01),
        "powersgd_r2": comm.PowerSGD(2),
    }


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 10))


def _timed_steps(
    codec: Any,
    overlap: bool,
    link: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    warmup: int,
) -> tuple[float, Any]:
    """Median seconds of forward + backward (with the hook's exchange) of the timed steps, and
    the hook's state."""
    from codl.comm import ddp_hook

    model = DistributedDataParallel(_model())
    state, hook = ddp_hook(codec, small_tensor_numel=0, overlap=overlap, link=link, momentum=0.0)
    model.register_comm_hook(state, hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for step in range(warmup + steps):
        dist.barrier()
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()  # type: ignore[no-untyped-call]  # waits for the hook's exchange
        if step >= warmup:  # the modelled step: forward, backward and the exchange
            times.append(time.perf_counter() - start)
        optimizer.step()
        optimizer.zero_grad()
    state.close()
    return statistics.median(times), state


def _throughput(codec: Any, profile: Any) -> Any:
    from codl.comm import PowerSGD
    from codl.comm.linkmodel import measure_powersgd_throughput, measure_throughput

    if codec is None:
        return None
    if isinstance(codec, PowerSGD):
        return measure_powersgd_throughput(codec, profile.parameter_shapes)
    return measure_throughput(codec, profile.gradient_numel)


def _worker(
    rank: int, world_size: int, steps: int, warmup: int, progress: bool
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from codl.comm.linkmodel import (
        EmulatedLink,
        profile_step,
        project,
        with_measured_overhead,
    )

    generator = torch.Generator().manual_seed(rank)
    images = torch.randn(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    profile = profile_step(_model(), (images, labels), F.cross_entropy, repeat=7)
    loopback = loopback_overhead(world_size)
    rows = []
    configs = [
        (name, codec, overlap) for name, codec in codecs().items() for overlap in (False, True)
    ]
    bar = tqdm(configs, desc=f"{world_size} processes", disable=not progress or rank != 0)
    for name, codec, overlap in bar:
        speed = _throughput(codec, profile)
        # The same configuration on the bare loopback link first: the step the model's compute
        # and codec terms leave unexplained there is the fixed per-step overhead.
        # Its steps are short, so three times as many keep the estimate steady.
        unthrottled_s, _ = _timed_steps(codec, overlap, None, images, labels, 3 * steps, warmup)
        calibrated = with_measured_overhead(
            profile, unthrottled_s, codec, world_size, overlap=overlap, throughput=speed
        )
        for bandwidth in BANDWIDTHS:
            link = EmulatedLink(bandwidth, LATENCY)
            measured, state = _timed_steps(codec, overlap, link, images, labels, steps, warmup)
            # With the overhead measured on loopback, the link under test is the emulator alone.
            projected = project(
                calibrated,
                codec,
                world_size,
                bandwidth,
                LATENCY,
                overlap=overlap,
                throughput=speed,
            )
            # Without it: loopback's small-message latency (per collective, spread over P - 1
            # messages) added to the emulator's alpha, nothing else.
            uncalibrated = project(
                profile,
                codec,
                world_size,
                bandwidth,
                LATENCY + loopback / (world_size - 1),
                overlap=overlap,
                throughput=speed,
            )
            hook_codec_s = statistics.median(
                r.encode_s + r.decode_s for r in state.history[warmup:]
            )
            last = state.last_step
            rows.append(
                {
                    "processes": world_size,
                    "rank": rank,
                    "codec": name,
                    "overlap": overlap,
                    "bandwidth_MBps": bandwidth / 1e6,
                    "latency_us": LATENCY * 1e6,
                    "measured_ms": 1e3 * measured,
                    "unthrottled_ms": 1e3 * unthrottled_s,
                    "overhead_ms": 1e3 * calibrated.overhead_s,
                    "projected_ms": 1e3 * projected.step_s,
                    "projected_without_overhead_ms": 1e3 * uncalibrated.step_s,
                    "hook_codec_ms": 1e3 * hook_codec_s,
                    "loopback_overhead_us": 1e6 * loopback,
                    "relative_error": (projected.step_s - measured) / measured,
                    "compute_ms": 1e3 * profile.compute_s,
                    "projected_comm_ms": 1e3 * projected.comm_s,
                    "projected_codec_ms": 1e3 * projected.codec_s,
                    "bytes_sent_measured": last.bytes_sent if last else None,
                    "bytes_sent_projected": projected.bytes_sent,
                }
            )
    return rows


def loopback_overhead(world_size: int, repeat: int = 21) -> float:
    """Median seconds of one small gloo collective on loopback (the all-to-all and all-gather
    of a few bytes the two-phase scheme issues): the real link's latency under the sleeps."""
    send = torch.zeros(world_size, dtype=torch.uint8)
    received = torch.empty_like(send)
    times = []
    for _ in range(repeat):
        dist.barrier()
        start = time.perf_counter()
        dist.all_to_all_single(received, send)
        dist.all_gather_single(received, send[:1].clone())
        times.append((time.perf_counter() - start) / 2)
    return statistics.median(times)


def run(
    world_size: int,
    steps: int,
    warmup: int,
    timeout_s: float,
    progress: bool = True,
    worker: Callable[..., list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Rows from ``worker(rank, world_size, steps, warmup, progress)`` (default: the link-model
    validation) on ``world_size`` gloo processes on 127.0.0.1, one thread each."""
    per_rank = launch(
        worker or _worker,
        world_size,
        steps,
        warmup,
        progress,
        timeout_s=timeout_s,
        group_timeout_s=120,
    )
    return [row for rows in per_rank for row in rows]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: the slowest rank's measured step (the step every rank waits
    for) against the slowest rank's projection."""
    keys = sorted({(r["processes"], r["bandwidth_MBps"], r["codec"], r["overlap"]) for r in rows})
    table = []
    for key in keys:
        group = [
            r
            for r in rows
            if (r["processes"], r["bandwidth_MBps"], r["codec"], r["overlap"]) == key
        ]
        measured = max(r["measured_ms"] for r in group)
        projected = max(r["projected_ms"] for r in group)
        without = max(r["projected_without_overhead_ms"] for r in group)
        table.append(
            {
                "processes": key[0],
                "bandwidth_MBps": key[1],
                "codec": key[2],
                "overlap": key[3],
                "measured_ms": round(measured, 2),
                "projected_ms": round(projected, 2),
                "relative_error": round((projected - measured) / measured, 4),
                "unthrottled_ms": round(max(r["unthrottled_ms"] for r in group), 2),
                "overhead_ms": round(max(r["overhead_ms"] for r in group), 2),
                "projected_without_overhead_ms": round(without, 2),
                "relative_error_without_overhead": round((without - measured) / measured, 4),
                "loopback_overhead_us": round(
                    next(r for r in group if r["rank"] == 0)["loopback_overhead_us"], 1
                ),
                "bytes_sent": next(r for r in group if r["rank"] == 0)["bytes_sent_measured"],
            }
        )
    return table


def add_run_arguments(
    parser: argparse.ArgumentParser, *, steps: int, warmup: int, out: Path
) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed steps first")
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, default=out)


def run_all(
    args: argparse.Namespace, worker: Callable[..., list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """Every process count of ``args.processes`` in turn (see :func:`run`)."""
    print(f"load average before: {os.getloadavg()}")
    rows: list[dict[str, Any]] = []
    for world_size in args.processes:
        rows += run(
            world_size,
            args.steps,
            args.warmup,
            timeout_s=900,
            progress=not args.no_progress,
            worker=worker,
        )
    return rows


def write_results(
    out: Path, table: list[dict[str, Any]], rows: list[dict[str, Any]], **summary: str
) -> None:
    """The table, its summary lines and every rank's rows, with the machine, as JSON."""
    import codl

    payload = {
        "machine": {
            "platform": platform.platform(),
            "cores": os.cpu_count(),
            "load_average_after": os.getloadavg(),  # other jobs share these cores
            "codl": codl.info(),
            "torch": torch.__version__,
        },
        "latency_us": LATENCY * 1e6,
        "batch": BATCH,
        "table": table,
        **summary,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, steps=8, warmup=3, out=out_dir / "comm_validation.json")
    args = parser.parse_args(argv)
    rows = run_all(args)
    table = summarize(rows)
    print(
        f"{'P':>2} {'MB/s':>6} {'codec':<8} {'overlap':<7} {'measured':>9} {'overhead':>8} "
        f"{'projected':>9} {'error':>7} {'without overhead':>16} {'error':>7}"
    )
    for row in table:
        print(
            f"{row['processes']:>2} {row['bandwidth_MBps']:>6g} {row['codec']:<8} "
            f"{row['overlap']!s:<7} {row['measured_ms']:>9.2f} {row['overhead_ms']:>8.2f} "
            f"{row['projected_ms']:>9.2f} {100 * row['relative_error']:>6.1f}% "
            f"{row['projected_without_overhead_ms']:>16.2f} "
            f"{100 * row['relative_error_without_overhead']:>6.1f}%"
        )
    within = sum(abs(row["relative_error"]) <= 0.2 for row in table)
    within_bare = sum(abs(row["relative_error_without_overhead"]) <= 0.2 for row in table)
    print(
        f"within 20% of the measured step: {within}/{len(table)} with the per-step overhead "
        f"measured on unthrottled loopback, {within_bare}/{len(table)} without it"
    )
    write_results(
        args.out,
        table,
        rows,
        within_20_percent=f"{within}/{len(table)}",
        within_20_percent_without_overhead=f"{within_bare}/{len(table)}",
    )
