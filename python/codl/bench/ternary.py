"""Ternary linear layers (``codl::ternary_linear``) against torch float32 ``x @ W.T`` and torch
dynamic int8 (``quantize_dynamic``) on a square weight, at batch 1, 8 and 64; then, hot cache
only, the float-activation kernel (``codl::ternary_linear_f32act``) and the base-3 (1.6-bit)
kernel (``codl::ternary_linear_base3``) against torch float32 at the same batches.

Hot cache: the same weight every call. Cold cache: calls rotate through enough copies of the
weight to overflow the last-level cache, so every call reads its weight from memory. At batch 1
the notes give the weight bytes read per second against the read-only bandwidth measured in the
same run (``torch.sum`` of 1 GiB) and against a copy's. The dispatch level is the process's
(``CODL_CPU_DISPATCH=avx512`` or ``amx`` compares the two).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from codl._ops import using_threads
from codl.bench import Case, Result, run_cases
from codl.bench.timing import measure
from codl.ternary.packed import PackedTernaryWeight, pack_weight, ternary_linear

DEFAULT_SIDE = 4096
BATCHES = (1, 8, 64)


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (sysfs), or 32 MiB when the system does not say."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 << 20)


def memory_bandwidth_bytes_per_s(megabytes: int = 256) -> float:
    """Read+write bandwidth of a large copy (bytes moved per second), the bound at batch 1."""
    source = torch.ones(megabytes << 18)  # float32: megabytes MiB
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best


def read_bandwidth_bytes_per_s(megabytes: int = 1024) -> float:
    """Read-only bandwidth (bytes read per second, best of 5) of ``torch.sum`` over a float32
    buffer of ``megabytes`` MiB, at torch's thread count: the floor of a batch-1 layer, which
    only reads its weight (a copy also writes, so its bandwidth is a different bound)."""
    source = torch.ones(megabytes << 18)
    source.sum()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - start)
    return source.numel() * 4 / best


def gemm_gmacs_per_s(
    threads: int, side: int = DEFAULT_SIDE, batch: int = 64, repeat: int = 15
) -> float:
    """Billions of multiply-adds a second of codl's ternary GEMM (a ``side`` x ``side`` weight,
    ``batch`` rows, hot cache; median of ``repeat`` calls) at ``threads`` threads. On an
    AVX-512 VNNI core the kernel alone runs at vpdpbusd's rate (64 int8 multiply-adds an
    instruction), and the call within about 10% of it: a whole model's rate against it says how
    much is left to gain by running faster rather than by doing fewer multiply-adds. Timed by
    :func:`codl.bench.timing.measure` (at least ``repeat`` blocks, their median)."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (side, side), dtype=torch.int8, generator=generator)
    weight = pack_weight(codes, torch.ones(side))
    x = torch.randn(batch, side, generator=generator)
    with using_threads(threads):
        timing = measure(partial(ternary_linear, x, weight), repeat)
    return batch * side * side / (timing.median_ms * 1e-3) / 1e9


def copies_to_overflow(bytes_each: int) -> int:
    return max(2, -(-2 * last_level_cache_bytes() // bytes_each) + 1)


def rotating(functions: list[Callable[[], torch.Tensor]]) -> Callable[[], torch.Tensor]:
    cycle = itertools.cycle(functions)
    return lambda: next(cycle)()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both sides approximate the same product; int8 rounding keeps them within a few percent."""
    return bool((a - b).norm() <= 0.05 * b.norm())


def cases(side: int, cold: bool) -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (side, side), dtype=torch.int8, generator=generator)
    alpha = torch.rand(side, generator=generator) + 0.5
    weight = pack_weight(codes, alpha)
    dense = weight.dequantize()
    linear = torch.nn.Linear(side, side, bias=False)
    with torch.no_grad():
        linear.weight.copy_(dense)
    int8_count = copies_to_overflow(side * side) if cold else 1
    int8_models = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        torch.nn.Sequential(*(linear for _ in range(int8_count))), {torch.nn.Linear}, torch.qint8
    )
    int8_layers = list(int8_models)
    ternary_count = copies_to_overflow(weight.nbytes()) if cold else 1
    ternaries = [weight] + [
        PackedTernaryWeight(weight.packed.clone(), weight.alpha.clone(), side)
        for _ in range(ternary_count - 1)
    ]
    denses = (
        [dense] + [dense.clone() for _ in range(copies_to_overflow(4 * side * side) - 1)]
        if cold
        else [dense]
    )
    result = []
    label = "cold" if cold else "hot"
    for batch in BATCHES:
        x = torch.randn(batch, side, generator=generator)
        ours = rotating([partial(ternary_linear, x, w) for w in ternaries])
        float32 = rotating([partial(torch.matmul, x, d.T) for d in denses])
        dynamic = rotating([partial(layer, x) for layer in int8_layers])
        result.append(
            Case(f"batch {batch} vs float32 {label}", batch * side * side, ours, float32, close)
        )
        result.append(
            Case(f"batch {batch} vs int8 {label}", batch * side * side, ours, dynamic, close)
        )
    return result


def relative_error(approximation: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approximation.double() - exact).norm() / exact.norm())


def variant_cases(side: int) -> list[Case]:
    """Hot-cache cases of the float-activation and base-3 kernels against torch float32."""
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(-1, 2, (side, side), dtype=torch.int8, generator=generator)
    alpha = torch.rand(side, generator=generator) + 0.5
    float_weight = pack_weight(codes, alpha, activations="float")
    base3_weight = pack_weight(codes, alpha, packing="base3")
    dense = float_weight.dequantize()
    result = []
    for batch in BATCHES:
        x = torch.randn(batch, side, generator=generator)
        float32 = partial(torch.matmul, x, dense.T)
        result.append(
            Case(
                f"batch {batch} float activations vs float32 hot",
                batch * side * side,
                partial(ternary_linear, x, float_weight),
                float32,
                close,
            )
        )
        result.append(
            Case(
                f"batch {batch} base3 vs float32 hot",
                batch * side * side,
                partial(ternary_linear, x, base3_weight),
                float32,
                close,
            )
        )
    return result


def model_cases() -> list[Case]:
    """Whole-model inference: the frozen ternary LeNet-5 (codl's kernels) against its float
    twin in torch, at batch 1 and 64 (images per second = batch / time)."""
    import codl
    from codl.models import LeNet5
    from codl.nn import freeze

    torch.manual_seed(0)
    float_model = LeNet5().eval()
    ternary_model = codl.quantize_(copy.deepcopy(float_model), codl.TernaryConfig())
    frozen = freeze(ternary_model)
    result = []
    for batch in (1, 64):
        images = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = ternary_model.eval()(images)

        def agrees(
            ours: torch.Tensor, _: torch.Tensor, reference: torch.Tensor = reference
        ) -> bool:
            # The float twin computes another function; check codl against the ternary model.
            return close(ours, reference)

        result.append(
            Case(
                f"LeNet-5 batch {batch} vs float",
                batch,
                partial(torch.no_grad()(frozen), images),
                partial(torch.no_grad()(float_model), images),
                agrees,
            )
        )
    return result


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: side of the square weight (default 4096)."""
    side = size or DEFAULT_SIDE
    results = run_cases("ternary", cases(side, cold=False), repeat, threads, progress)
    results += run_cases("ternary", cases(side, cold=True), repeat, threads, progress)
    results += run_cases("ternary", variant_cases(side), repeat, threads, progress)
    results += run_cases("ternary", model_cases(), repeat, threads, progress)
    weight_bytes = pack_weight(torch.zeros(side, side, dtype=torch.int8), 1.0).nbytes()
    base3_bytes = pack_weight(
        torch.zeros(side, side, dtype=torch.int8), 1.0, packing="base3"
    ).nbytes()
    errors = accuracy_notes(side)
    bandwidth = memory_bandwidth_bytes_per_s()
    read_bandwidth = read_bandwidth_bytes_per_s()
    noted = []
    for result in results:
        notes: dict[str, float] = {}
        if result.case.startswith("LeNet-5"):
            notes = {
                "codl_images_per_s": round(result.numel / (result.codl_ms * 1e-3), 1),
                "float_images_per_s": round(result.numel / (result.baseline_ms * 1e-3), 1),
            }
        elif "base3" in result.case:
            notes = {
                "weight_memory_x_smaller_than_float32": round(4 * side * side / base3_bytes, 2)
            }
        elif "float activations" in result.case:
            notes = errors
        elif result.case.startswith("batch 1 vs float32"):
            achieved = weight_bytes / (result.codl_ms * 1e-3)
            notes = {
                "weight_memory_x_smaller_than_float32": round(4 * side * side / weight_bytes, 2),
                "weight_GB_per_s": round(achieved / 1e9, 2),
                "copy_GB_per_s": round(bandwidth / 1e9, 2),
                "fraction_of_copy_bandwidth": round(achieved / bandwidth, 2),
                "read_GB_per_s": round(read_bandwidth / 1e9, 2),
                "fraction_of_read_bandwidth": round(achieved / read_bandwidth, 2),
            }
        noted.append(replace(result, notes=notes))
    return noted


def accuracy_notes(side: int) -> dict[str, float]:
    """What keeping activations float buys: the relative error (Frobenius norm) of each path
    against a float64 product of the same ternary weight, at batch 8."""
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(-1, 2, (side, side), dtype=torch.int8, generator=generator)
    alpha = torch.rand(side, generator=generator) + 0.5
    x = torch.randn(8, side, generator=generator)
    int8_weight = pack_weight(codes, alpha)
    float_weight = pack_weight(codes, alpha, activations="float")
    exact = x.double() @ int8_weight.dequantize().double().T
    return {
        "float_activations_relative_error": relative_error(ternary_linear(x, float_weight), exact),
        "int8_activations_relative_error": relative_error(ternary_linear(x, int8_weight), exact),
        "torch_float32_relative_error": relative_error(x @ int8_weight.dequantize().T, exact),
    }
