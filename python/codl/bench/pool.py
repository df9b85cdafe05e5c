"""``codl bench pool``: codl's thread pool on small layers, at 1 and 2 threads, on a quiet
machine and under contention.

The work is a frozen LeNet-5 made of codl's ternary layers (:func:`codl.ternary.ternary_conv2d`
and :func:`codl.ternary.ternary_linear`, int8 activations, 2-bit weights) with torch's ReLU and
max pooling between them: at batch 1 each layer is a few microseconds of work, so the cost of
handing a job to the pool's workers (and of waiting for them) is what is measured. With
``--contenders N`` the same timings are taken again while N busy processes (a spinning Python
loop each, or a 2-thread torch matmul loop with ``--contender matmul``) compete for the CPUs.

Each row reports the median milliseconds per forward pass with its interquartile range and its
90th percentile (the pool's failure mode under contention is a long tail, not a shifted median),
and the 1-minute load average at the end of the row.

    python benchmarks/pool.py [--batches 1 64] [--threads 1 2] [--contenders 1]
"""

from __future__ import annotations

import argparse
import functools
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

from codl.bench import default_results_dir, machine
from codl.bench.timing import load_average
from codl.ternary import PackedTernaryWeight, pack_weight, ternary_conv2d, ternary_linear

#: LeNet-5's layers: (out_channels, in_channels, kernel) for the convolutions, then
#: (out_features, in_features) for the fully connected layers.
CONVS = ((6, 1, 5), (16, 6, 5))
LINEARS = ((120, 400), (84, 120), (10, 84))

#: The busy loops a contender process runs: pure Python (one core, never sleeps) or torch
#: matmuls on 2 threads (OpenMP threads that spin between regions, like a second model).
CONTENDERS = {
    "spin": "while True:\n    pass\n",
    "matmul": (
        "import torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a)\n"
    ),
}


@dataclass(frozen=True)
class Row:
    batch: int
    threads: int
    contenders: int
    contender: str
    median_ms: float
    iqr_ms: float
    p90_ms: float
    calls: int
    load_average: float


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


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 20) -> list[float]:
    """Milliseconds of each call of ``fn``, one timer per call (a block average would hide the
    tail), for about ``seconds`` and at least ``min_calls`` calls, after two warm-up calls."""
    fn()
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < end:
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
    batches: Sequence[int],
    threads: Sequence[int],
    contenders: int,
    contender: str,
    seconds: float,
) -> list[Row]:
    """One :class:`Row` per batch and thread count, each run with ``contenders`` busy
    processes (0: none)."""
    model = lenet()
    rows: list[Row] = []
    saved = torch.get_num_threads()
    try:
        for batch in batches:
            x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
            for count in threads:
                torch.set_num_threads(count)
                with torch.inference_mode():
                    times = time_calls(functools.partial(model, x), seconds)
                quartiles = statistics.quantiles(times, n=4)
                rows.append(
                    Row(
                        batch=batch,
                        threads=count,
                        contenders=contenders,
                        contender=contender if contenders else "",
                        median_ms=statistics.median(times),
                        iqr_ms=quartiles[2] - quartiles[0],
                        p90_ms=statistics.quantiles(times, n=10)[8],
                        calls=len(times),
                        load_average=load_average(),
                    )
                )
    finally:
        torch.set_num_threads(saved)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        "| batch | threads | contenders | median ms | IQR ms | p90 ms | calls | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        busy = f"{r.contenders} {r.contender}" if r.contenders else "0"
        lines.append(
            f"| {r.batch} | {r.threads} | {busy} | {r.median_ms:.3f} | {r.iqr_ms:.3f} | "
            f"{r.p90_ms:.3f} | {r.calls} | {r.load_average:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> None:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--contenders", type=int, default=1, help="busy processes in the contended run (0: none)"
    )
    parser.add_argument("--contender", choices=sorted(CONTENDERS), default="spin")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per row")
    parser.add_argument("--out", type=Path, default=out_dir / "pool.json")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batches) or any(t < 1 for t in args.threads):
        parser.error(
            f"expected batches and threads >= 1, received {args.batches} and {args.threads}"
        )
    if args.contenders < 0:
        parser.error(f"--contenders: expected >= 0, received {args.contenders}")
    rows = measure_rows(args.batches, args.threads, 0, args.contender, args.seconds)
    if args.contenders:
        with contending(args.contenders, args.contender):
            rows += measure_rows(
                args.batches, args.threads, args.contenders, args.contender, args.seconds
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
