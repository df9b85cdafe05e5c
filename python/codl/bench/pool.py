"""``codl bench pool``: codl's thread pool on small layers, at 1 and 2 threads, on a quiet
machine and under contention.

The work is a frozen LeNet-5 made of codl's ternary layers (:func:`codl.ternary.ternary_conv2d`
and :func:`codl.ternary.ternary_linear`, int8 activations, 2-bit weights) with torch's ReLU and
max pooling between them: at batch 1 each layer is a few microseconds of work, so the cost of
handing a job to the pool's workers (and of waiting for them) is what is measured. ``--work
layers`` times the five ternary layers alone on fixed inputs of the network's im2col shapes, so
that only codl's pool is in play (torch's unfold and pooling run OpenMP regions of their own
on ``torch.get_num_threads()`` threads, which suffer from contention too). ``--work fused`` times
the whole-model path a user gets: ``codl.models.LeNet5`` ternarized, frozen with static int8
activations and run by :func:`codl.nn.fuse` as one call into the core (no torch op between the
layers). ``--gap-ms G`` sleeps G milliseconds before each timed call, as a caller that serves
requests as they come: the pool's workers have gone to sleep, and the operating system places
them anew when they wake. With
``--contenders N`` the same timings are taken again while N busy processes (a spinning Python
loop each, or a 2-thread torch matmul loop with ``--contender matmul``) compete for the CPUs.

Each row reports the median milliseconds per forward pass with its interquartile range and its
90th percentile (the pool's failure mode under contention is a long tail, not a shifted median),
and the 1-minute load average at the end of the row.

    python benchmarks/pool.py [--work lenet layers fused] [--batches 1 64] [--threads 1 2]
        [--contenders 1] [--contender spin|matmul] [--seconds 2] [--gap-ms 0]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codl._ops import set_num_threads
from codl.bench import default_results_dir, machine
from codl.bench.timing import load_average
from codl.models import LeNet5
from codl.nn import freeze, fuse, quantize_
from codl.ternary import (
    PackedTernaryWeight,
    TernaryConfig,
    pack_weight,
    ternary_conv2d,
    ternary_linear,
)

#: LeNet-5's layers: (out_channels, in_channels, kernel) for the convolutions, then
#: (out_features, in_features) for the fully connected layers.
CONVS = ((6, 1, 5), (16, 6, 5))
LINEARS = ((120, 400), (84, 120), (10, 84))

#: The busy loops a contender process runs: pure Python (one core, never sleeps) or torch
#: matmuls on 2 threads (OpenMP threads that spin between regions, like a second model).
#: Each stops once its parent is gone (a benchmark killed mid-run leaves no busy orphan).
CONTENDERS = {
    "spin": (
        "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
        "    for _ in range(100_000):\n        pass\n"
    ),
    "matmul": (
        "import os\nimport torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\n"
        "parent = os.getppid()\nwhile os.getppid() == parent:\n    a = torch.tanh(a @ a)\n"
    ),
}
#: What is timed: the whole network (torch's unfold, ReLU and pooling between codl's layers, so
#: torch's own threads take part), codl's five ternary_linear calls alone on the network's
#: im2col shapes (only codl's pool is in play), or the frozen network as one fused chain.
WORKS = ("lenet", "layers", "fused")


@dataclass(frozen=True)
class Row:
    work: str
    batch: int
    threads: int  # codl's (codl.set_num_threads)
    torch_threads: int
    contenders: int
    contender: str
    median_ms: float
    iqr_ms: float
    p90_ms: float
    calls: int
    load_average: float
    gap_ms: float = 0.0  # the sleep before each timed call


def _ternary(shape: tuple[int, int], generator: torch.Generator) -> PackedTernaryWeight:
    codes = torch.randint(-1, 2, shape, generator=generator, dtype=torch.int8)
    alpha = torch.rand(shape[0], generator=generator) + 0.5
    return pack_weight(codes, alpha)


def lenet(seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen LeNet-5 on codl's ternary kernels (random codes and scales, seeded): x of
    shape (N, 1, 28, 28) to logits (N, 10)."""
    generator = torch.Generator().manual_seed(seed)
    convs = [
        (_ternary((o, i * k * k), generator), torch.randn(o, generator=generator), k)
        for o, i, k in CONVS
    ]
    linears = [
        (_ternary(shape, generator), torch.randn(shape[0], generator=generator))
        for shape in LINEARS
    ]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for index, (weight, bias, k) in enumerate(convs):
            padding = (2, 2) if index == 0 else (0, 0)
            x = F.max_pool2d(F.relu(ternary_conv2d(x, weight, bias, (k, k), padding=padding)), 2)
        x = x.flatten(1)
        for index, (weight, bias) in enumerate(linears):
            x = ternary_linear(x, weight, bias)
            if index < len(linears) - 1:
                x = F.relu(x)
        return x

    return forward


def layers(batch: int, seed: int = 0) -> Callable[[], list[torch.Tensor]]:
    """LeNet-5's five layers as codl ternary_linear calls on fixed inputs of the network's
    im2col shapes at ``batch`` (conv1: 784 rows of 25 per image, conv2: 100 rows of 150)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(o, i * k * k) for o, i, k in CONVS] + list(LINEARS)
    rows = [batch * 28 * 28, batch * 10 * 10, batch, batch, batch]
    weights = [_ternary(shape, generator) for shape in shapes]
    inputs = [
        torch.randn(r, shape[1], generator=generator) for r, shape in zip(rows, shapes, strict=True)
    ]

    def run() -> list[torch.Tensor]:
        return [ternary_linear(x, w) for x, w in zip(inputs, weights, strict=True)]

    return run


def fused_lenet(seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``codl.models.LeNet5`` (seeded initial weights) ternarized, frozen with static int8
    activations calibrated on 16 seeded images, and fused into one chain for inputs of shape
    (N, 1, 28, 28) (the chain takes any batch)."""
    torch.manual_seed(seed)
    model = quantize_(LeNet5(), TernaryConfig())
    calibration = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    chain = fuse(freeze(model, calibration=calibration), calibration[:1])
    return torch.no_grad()(chain)


def time_calls(
    fn: Callable[[], object], seconds: float, min_calls: int = 10, gap_s: float = 0.0
) -> list[float]:
    """Milliseconds of each call of ``fn``, one timer per call (a block average would hide the
    tail), for about ``seconds`` of calls and at least ``min_calls`` calls, after two warm-up
    calls; with ``gap_s``, a sleep of that long before each call (not timed)."""
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
        if gap_s:
            time.sleep(gap_s)
            end += gap_s
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


@contextmanager
def contending(count: int, kind: str) -> Iterator[None]:
    """``count`` busy processes running the ``kind`` loop of :data:`CONTENDERS` while inside."""
    if kind not in CONTENDERS:
        raise ValueError(f"contender: expected one of {sorted(CONTENDERS)}, received {kind!r}")
    processes = [
        subprocess.Popen([sys.executable, "-c", CONTENDERS[kind]], stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        time.sleep(0.5 if kind == "spin" else 2.0)  # until the loops (and torch) are running
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def measure_rows(
    works: Sequence[str],
    batches: Sequence[int],
    threads: Sequence[int],
    contenders: int,
    contender: str,
    seconds: float,
    torch_threads: int | None = None,
    gap_ms: float = 0.0,
) -> list[Row]:
    """One :class:`Row` per work, batch and thread count, each run with ``contenders`` busy
    processes (0: none) and a sleep of ``gap_ms`` before each timed call. torch runs on
    ``torch_threads`` threads, or on codl's count if None."""
    model = lenet()
    chain = fused_lenet() if "fused" in works else None
    rows: list[Row] = []
    saved = torch.get_num_threads()
    try:
        for work, batch in itertools.product(works, batches):
            x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
            fn: Callable[[], object]
            if work == "lenet":
                fn = functools.partial(model, x)
            elif work == "fused":
                assert chain is not None
                fn = functools.partial(chain, x)
            else:
                fn = layers(batch)
            for count in threads:
                torch.set_num_threads(torch_threads or count)
                set_num_threads(count)
                with torch.inference_mode():
                    times = time_calls(fn, seconds, gap_s=gap_ms / 1e3)
                quartiles = statistics.quantiles(times, n=4)
                rows.append(
                    Row(
                        work=work,
                        batch=batch,
                        threads=count,
                        torch_threads=torch_threads or count,
                        contenders=contenders,
                        contender=contender if contenders else "",
                        median_ms=statistics.median(times),
                        iqr_ms=quartiles[2] - quartiles[0],
                        p90_ms=statistics.quantiles(times, n=10)[8],
                        calls=len(times),
                        load_average=load_average(),
                        gap_ms=gap_ms,
                    )
                )
    finally:
        torch.set_num_threads(saved)
        set_num_threads(None)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| work | batch | gap ms | codl threads | torch threads | contenders | median ms | IQR ms "
        "| p90 ms | calls | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        busy = f"{r.contenders} {r.contender}" if r.contenders else "0"
        lines.append(
            f"| {r.work} | {r.batch} | {r.gap_ms:g} | {r.threads} | {r.torch_threads} | {busy} | "
            f"{r.median_ms:.3f} | {r.iqr_ms:.3f} | {r.p90_ms:.3f} | {r.calls} | "
            f"{r.load_average:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", nargs="+", choices=WORKS, default=list(WORKS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--contenders", type=int, default=1, help="busy processes in the contended run (0: none)"
    )
    parser.add_argument("--contender", choices=sorted(CONTENDERS), default="spin")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's threads (unfold, pooling); default: the same as codl's",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per row")
    parser.add_argument(
        "--gap-ms", type=float, default=0.0, help="sleep before each timed call (default 0)"
    )
    parser.add_argument("--out", type=Path, default=out_dir / "pool.json")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches) or any(t < 1 for t in args.threads):
        parser.error(
            f"expected batches and threads >= 1, received {args.batches} and {args.threads}"
        )
    if args.contenders < 0:
        parser.error(f"--contenders: expected >= 0, received {args.contenders}")
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads: expected >= 1, received {args.torch_threads}")
    if not args.gap_ms >= 0:
        parser.error(f"--gap-ms: expected >= 0, received {args.gap_ms}")
    common = {"seconds": args.seconds, "torch_threads": args.torch_threads, "gap_ms": args.gap_ms}
    rows = measure_rows(args.work, args.batches, args.threads, 0, args.contender, **common)
    if args.contenders:
        with contending(args.contenders, args.contender):
            rows += measure_rows(
                args.work, args.batches, args.threads, args.contenders, args.contender, **common
            )
    table = format_table(rows)
    print(table, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": machine(), "pid": os.getpid(), "rows": [asdict(r) for r in rows]},
            indent=2,
        )
        + "\n"
    )
