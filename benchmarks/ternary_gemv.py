"""Batch 1 against the read bandwidth, batch 8 and 64 against torch dynamic int8 (fbgemm), one
table row per run: `CODL_CPU_DISPATCH=LEVEL python benchmarks/ternary_gemv.py THREADS`.

A 4096 x 4096 ternary weight through ``codl.ternary.packed.ternary_linear``. The read-only
bandwidth (``torch.sum`` of 1 GiB, codl.bench.ternary) is measured before and after the batch-1
timings, in the same process and with the same threads; batch 1 cold rotates through enough
weight copies to overflow the last-level cache. Medians of 200 calls (60 at batch 8 and 64).
"""

import os
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

import codl
from codl.bench.ternary import copies_to_overflow, read_bandwidth_bytes_per_s, rotating
from codl.ternary.packed import pack_weight, ternary_linear

SIDE = 4096


def median_us(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def main(threads: int) -> str:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (SIDE, SIDE), dtype=torch.int8, generator=generator)
    alpha = torch.rand(SIDE, generator=generator) + 0.5
    weight = pack_weight(codes, alpha)
    copies = [pack_weight(codes, alpha) for _ in range(copies_to_overflow(weight.nbytes()))]
    x1 = torch.randn(1, SIDE, generator=generator)
    bandwidths = [read_bandwidth_bytes_per_s()]
    cold = median_us(rotating([partial(ternary_linear, x1, copy) for copy in copies]), 200)
    hot = median_us(partial(ternary_linear, x1, weight), 200)
    bandwidths.append(read_bandwidth_bytes_per_s())
    low, high = min(bandwidths), max(bandwidths)
    achieved = weight.nbytes() / (cold * 1e-6)
    row = [
        codl.get_dispatch_level(),
        str(threads),
        f"{low / 1e9:.1f}-{high / 1e9:.1f}",
        f"{cold:.0f}",
        f"{achieved / high:.0%}-{achieved / low:.0%}",
        f"{hot:.0f}",
    ]
    for batch in (8, 64):
        x = torch.randn(batch, SIDE, generator=generator)
        linear = torch.nn.Sequential(torch.nn.Linear(SIDE, SIDE))
        int8 = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            linear, {torch.nn.Linear}, dtype=torch.qint8
        )
        row += [
            f"{median_us(partial(ternary_linear, x, weight), 60):.0f}",
            f"{median_us(partial(int8, x), 60):.0f}",
        ]
    row.append(f"{os.getloadavg()[0]:.1f}")
    return "| " + " | ".join(row) + " |"


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()))
