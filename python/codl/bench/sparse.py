"""Sparse linear layers (``codl.kernels.sparse_linear``, int8 weights in 1x4 blocks and in row
panels) against torch dynamic int8 (``quantize_dynamic``, fbgemm: what a pruned model runs at
today, zeros stored densely) and torch float32 ``x @ W.T``, on the weights of LeNet-300-100
(784->300, 300->100), FashionCNN's fc (3136->256) and a 4096x4096 layer, magnitude-pruned to
50..99% zeros, at batch 1, 8 and 64.
Hot cache (the same weight every call). Against int8 each layout runs (``codl blocks``, ``codl
panels``); against float32 the layout ``pack_sparse`` picks. The crossover is the lowest sparsity
at which a layout beats dynamic int8.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from codl.bench import Case, Result, run_cases
from codl.kernels.sparse import PanelSparseWeight, SparseWeight, pack_sparse, sparse_linear

SHAPES = {  # name: (out_features, in_features)
    "LeNet-300-100 fc1": (300, 784),
    "LeNet-300-100 fc2": (100, 300),
    "FashionCNN fc": (256, 3136),
    "4096x4096": (4096, 4096),
}
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
BATCHES = (1, 8, 64)
LAYOUTS = ("blocks", "panels")


def pruned_linear(out_features: int, in_features: int, sparsity: float) -> torch.nn.Linear:
    """A Linear with its smallest-magnitude ``sparsity`` of weights set to zero (unstructured,
    the pattern :func:`codl.prune.magnitude_` leaves)."""
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        weight = torch.randn(out_features, in_features, generator=generator)
        keep = max(1, round(weight.numel() * (1 - sparsity)))
        threshold = weight.abs().flatten().kthvalue(weight.numel() - keep + 1).values
        linear.weight.copy_(torch.where(weight.abs() >= threshold, weight, 0.0))
    return linear


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both sides quantize to int8, at different granularities: within a few percent."""
    return bool((a - b).abs().max() <= 0.05 * b.abs().max() + 1e-3)


def cases(baseline: str, shapes: dict[str, tuple[int, int]]) -> Iterator[Case]:
    layouts = LAYOUTS if baseline == "int8" else ("auto",)
    for (name, (n, k)), sparsity in ((s, p) for s in shapes.items() for p in SPARSITIES):
        linear = pruned_linear(n, k, sparsity)
        bias = linear.bias.detach()
        if baseline == "int8":
            dense = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                torch.nn.Sequential(linear), {torch.nn.Linear}, torch.qint8
            )
        else:
            dense = linear
        for layout in layouts:
            packed = pack_sparse(linear.weight, layout=layout)
            for batch in BATCHES:
                x = torch.randn(batch, k, generator=torch.Generator().manual_seed(1))

                def ours(
                    x: torch.Tensor = x,
                    packed: SparseWeight | PanelSparseWeight = packed,
                    bias: torch.Tensor = bias,
                ) -> torch.Tensor:
                    return sparse_linear(x, packed, bias)

                def theirs(x: torch.Tensor = x, dense: torch.nn.Module = dense) -> torch.Tensor:
                    with torch.no_grad():
                        return dense(x)  # type: ignore[no-any-return]

                label = f"{name} {sparsity:.0%} batch {batch} {layout} vs {baseline}"
                yield Case(label, batch * n * k, ours, theirs, _close)


def crossover(results: list[Result]) -> dict[str, float | None]:
    """Per shape and batch: the lowest sparsity at which one of codl's layouts beat dynamic int8
    (and one did at every higher sparsity), None if none ever did."""
    found: dict[str, float | None] = {}
    for name in SHAPES:
        for batch in BATCHES:
            wins = []
            for sparsity in SPARSITIES:
                labels = [f"{name} {sparsity:.0%} batch {batch} {lay} vs int8" for lay in LAYOUTS]
                match = [r for r in results if r.case in labels]
                if match:
                    wins.append((sparsity, any(r.baseline_ms > r.codl_ms for r in match)))
            lowest = None
            for sparsity, won in reversed(wins):
                if not won:
                    break
                lowest = sparsity
            if wins:
                found[f"{name} batch {batch}"] = lowest
    return found


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: only the shapes whose input features are at most ``size`` (default: all)."""
    shapes = {name: shape for name, shape in SHAPES.items() if size is None or shape[1] <= size}
    results = run_cases("sparse", cases("int8", shapes), repeat, threads, progress)
    results += run_cases("sparse", cases("float32", shapes), repeat, threads, progress)
    return results
