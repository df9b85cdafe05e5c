"""codl's DDP hook against torch's own communication hooks on the same work: the step time of
DDP training on an emulated slow link, and the bytes each sends.

The anchors are torch's ``allreduce_hook`` (DDP's float32 default), ``fp16_compress_hook`` and
``powerSGD_hook`` (rank 2, error feedback, warm start). Each torch hook is wrapped so that its
collective's future completes only after the same :class:`~codl.comm.linkmodel.EmulatedLink`
sleep that codl's hook takes after its own collectives ((P - 1) alpha per collective phase plus
bytes / B, with the bytes of a float32 or float16 ring allreduce), so both sides pay for their
bytes the same way. The model, batch and processes are those of ``comm_validation.py`` (an MLP
with 814,090 gradient values in one bucket, 2 and 4 gloo processes on 127.0.0.1, one thread
each); each configuration times forward + backward (with the exchange) after warm-up steps,
and the slowest rank's median is reported.

    python benchmarks/comm_vs_torch_hooks.py    # writes benchmarks/results/comm_vs_torch_hooks.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from codl.bench import default_results_dir
from codl.bench.comm_validation import (
    BATCH,
    LATENCY,
    _model,
    add_run_arguments,
    run_all,
    write_results,
)

BANDWIDTHS = (10e6, 100e6)  # bytes/s
#: Torch's PowerSGD needs start_powerSGD_iter >= 2; codl's hook gets the same warm-up.
WARMUP_STEPS = 2


def _ring_bytes(numel: int, world_size: int, itemsize: int) -> float:
    return 2 * (world_size - 1) / world_size * itemsize * numel


def _torch_powersgd_bytes(shapes: list[torch.Size], world_size: int, rank: int = 2) -> float:
    """torch's powerSGD_hook: float32 ring allreduces of the uncompressed tensors, of all P and of
    all Q (its _should_compress rule with min_compression_rate 2)."""
    uncompressed = p_numel = q_numel = 0
    for shape in shapes:
        numel = shape.numel()
        if len(shape) < 2:
            uncompressed += numel
            continue
        n, m = shape[0], numel // shape[0]
        if (n + m) * rank * 2 < n * m:
            p_numel, q_numel = p_numel + n * rank, q_numel + m * rank
        else:
            uncompressed += numel
    return sum(_ring_bytes(k, world_size, 4) for k in (uncompressed, p_numel, q_numel) if k)


def _throttled(
    hook: Callable[..., Any], link: Any, messages: int, nbytes: Callable[[Any], float]
) -> tuple[Callable[..., Any], list[float]]:
    """``hook`` whose future completes after the link's sleep for the bucket's bytes, and the
    list of the bytes of each call."""

    sent: list[float] = []

    def wrapped(state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        cost = nbytes(bucket)
        sent.append(cost)
        future = hook(state, bucket)

        def after(done: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            link.wait(messages, cost)
            return done.value()

        throttled: torch.futures.Future[torch.Tensor] = future.then(after)
        return throttled

    # DDP checks the annotations themselves, not their strings.
    wrapped.__annotations__ = {
        "state": object,
        "bucket": dist.GradBucket,  # type: ignore[attr-defined, unused-ignore]
        "return": torch.futures.Future[torch.Tensor],
    }
    return wrapped, sent


def _configs(world_size: int) -> list[tuple[str, str, Any]]:
    from codl import comm

    return [
        ("torch", "allreduce (float32)", "allreduce"),
        ("torch", "fp16_compress_hook", "fp16"),
        ("torch", "powerSGD_hook r2", "powersgd"),
        ("codl", "float32", None),
        ("codl", "FP16", comm.FP16()),
        ("codl", "Int8", comm.Int8()),
        ("codl", "SignEF", comm.SignEF()),
        ("codl", "TopK 1%", comm.TopK(0.01)),
        ("codl", "PowerSGD r2", comm.PowerSGD(2)),
    ]


def _register(
    model: DistributedDataParallel, side: str, codec: Any, link: Any
) -> tuple[Any, Callable[[], float]]:
    """Registers the hook; returns codl's hook state (or None) and the last step's bytes."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

    from codl.comm import ddp_hook

    world_size = dist.get_world_size()
    phases = 2 * (world_size - 1)  # a ring allreduce's messages, as codl's hook counts them
    if side == "codl":
        state, hook = ddp_hook(codec, small_tensor_numel=0, warmup_steps=WARMUP_STEPS, link=link)
        model.register_comm_hook(state, hook)
        return state, lambda: float(state.last_step.bytes_sent if state.last_step else 0)
    if codec in ("allreduce", "fp16"):
        torch_hook, itemsize = {
            "allreduce": (default_hooks.allreduce_hook, 4),
            "fp16": (default_hooks.fp16_compress_hook, 2),
        }[codec]
        wrapped, sent = _throttled(
            torch_hook,
            link,
            phases,
            lambda b: _ring_bytes(b.buffer().numel(), world_size, itemsize),
        )
        model.register_comm_hook(None, wrapped)
        return None, lambda: float(sent[-1])
    powersgd_state = powersgd.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=2,
        start_powerSGD_iter=WARMUP_STEPS,
        min_compression_rate=2,
        use_error_feedback=True,
        warm_start=True,
    )

    def powersgd_bytes(bucket: Any) -> float:
        # Warm-up iterations are a plain float32 allreduce in torch's hook.
        if powersgd_state.iter < powersgd_state.start_powerSGD_iter:
            return _ring_bytes(bucket.buffer().numel(), world_size, 4)
        return _torch_powersgd_bytes([p.shape for p in bucket.parameters()], world_size)

    # Three allreduces per bucket once compressing, one before.
    wrapped, sent = _throttled(powersgd.powerSGD_hook, link, 3 * phases, powersgd_bytes)
    model.register_comm_hook(powersgd_state, wrapped)
    return None, lambda: float(sent[-1])


def _worker(
    rank: int, world_size: int, steps: int, warmup: int, progress: bool
) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from codl.comm.linkmodel import EmulatedLink

    generator = torch.Generator().manual_seed(rank)
    images = torch.randn(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    configs = [(b, *c) for b in BANDWIDTHS for c in _configs(world_size)]
    bar = tqdm(configs, desc=f"{world_size} processes", disable=not progress or rank != 0)
    rows = []
    for bandwidth, side, name, codec in bar:
        link = EmulatedLink(bandwidth, LATENCY)
        model = DistributedDataParallel(_model())
        state, last_bytes = _register(model, side, codec, link)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        times, slept = [], []
        for step in range(warmup + steps):
            dist.barrier()
            before = link.slept_s
            start = time.perf_counter()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            if step >= warmup:
                times.append(time.perf_counter() - start)
                slept.append(link.slept_s - before)
            optimizer.step()
            optimizer.zero_grad()
        if state is not None:
            state.close()
        rows.append(
            {
                "processes": world_size,
                "rank": rank,
                "side": side,
                "hook": name,
                "bandwidth_MBps": bandwidth / 1e6,
                "step_ms": 1e3 * statistics.median(times),
                # What the emulated link charged per step: bytes / B plus alpha terms.
                "link_ms": 1e3 * statistics.median(slept),
                "bytes_per_step": last_bytes(),
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted(
        {(r["processes"], r["bandwidth_MBps"], r["side"], r["hook"]) for r in rows},
        key=lambda k: (k[0], k[1], k[2] != "torch", k[3]),
    )
    table = []
    for key in keys:
        group = [
            r for r in rows if (r["processes"], r["bandwidth_MBps"], r["side"], r["hook"]) == key
        ]
        table.append(
            {
                "processes": key[0],
                "bandwidth_MBps": key[1],
                "side": key[2],
                "hook": key[3],
                "step_ms": round(max(r["step_ms"] for r in group), 2),
                "link_ms": round(max(r["link_ms"] for r in group), 2),
                "bytes_per_step": next(r for r in group if r["rank"] == 0)["bytes_per_step"],
            }
        )
    for row in table:
        same = [
            r
            for r in table
            if (r["processes"], r["bandwidth_MBps"], r["side"])
            == (row["processes"], row["bandwidth_MBps"], "torch")
        ]
        best = min(r["step_ms"] for r in same)
        row["speedup_vs_best_torch_hook"] = round(best / row["step_ms"], 3)
    return table


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, steps=10, warmup=4, out=out_dir / "comm_vs_torch_hooks.json")
    args = parser.parse_args(argv)
    if args.warmup <= WARMUP_STEPS:
        parser.error(f"--warmup must exceed the hooks' {WARMUP_STEPS} uncompressed steps")
    rows = run_all(args, _worker)
    table = summarize(rows)
    print(
        f"{'P':>2} {'MB/s':>5} {'side':<6} {'hook':<22} {'step ms':>9} {'link ms':>9} "
        f"{'bytes':>9} {'vs best torch':>13}"
    )
    for row in table:
        print(
            f"{row['processes']:>2} {row['bandwidth_MBps']:>5g} {row['side']:<6} {row['hook']:<22} "
            f"{row['step_ms']:>9.2f} {row['link_ms']:>9.2f} {row['bytes_per_step']:>9.0f} "
            f"{row['speedup_vs_best_torch_hook']:>12.2f}x"
        )
    write_results(args.out, table, rows)
