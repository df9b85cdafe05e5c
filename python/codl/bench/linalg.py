"""Kronecker-factor linear algebra: codl.linalg's batched calls against the torch loops that
K-FAC implementations run (codl.linalg.reference).

The factor mixes are those of the K-FAC issue: ResNet-20's (many small and mid-sized factors)
and ResNet-50's large ones; ``--size N`` caps every side at N, and the case names then say so.
Each matrix is a sample covariance ``X Xᵀ / m`` like a real factor, damped by ``1e-3`` of its
mean eigenvalue.

The inverse cases' notes give the rate of each side in GFLOP/s (``n³`` per ``n x n`` inverse)
and set codl's against ``torch_sgemm_2048_GFLOP_per_s``, torch's float32 matrix product of two
2048 x 2048 matrices measured in the same run with the same threads
(``fraction_of_torch_sgemm_2048_rate``). That is a practical reference rate of this machine's
BLAS, not its peak: a fraction above 1 means codl's inverses ran faster than that product.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import torch

from codl import linalg
from codl.bench import Case, Result, median_ms, run_cases
from codl.linalg import reference

# ResNet-20 on CIFAR-10: input factors A (k*k*c_in + bias) and output factors G (c_out).
RESNET20_A = [27] + [144] * 6 + [145] + [288] * 5 + [289] + [576] * 5 + [65]
RESNET20_G = [16] * 7 + [32] * 6 + [64] * 6 + [10]
RESNET50_LARGE = [512, 1024, 2048, 2304, 4608]


def factor_like(n: int, generator: torch.Generator) -> torch.Tensor:
    samples = torch.randn(n, 2 * n, generator=generator)
    return samples @ samples.T / (2 * n)


def factors(sizes: list[int], seed: int = 0) -> tuple[list[torch.Tensor], list[float]]:
    generator = torch.Generator().manual_seed(seed)
    mats = [factor_like(n, generator) for n in sizes]
    return mats, [1e-3 * float(m.diagonal().mean()) for m in mats]


def inverses_agree(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> bool:
    # Both are float32 inverses of well-conditioned matrices: they agree to a few ulps times n.
    return all(
        float((a - b).norm()) <= 1e-3 * float(b.norm()) for a, b in zip(ours, theirs, strict=True)
    )


def eigenvalues_agree(
    ours: tuple[list[torch.Tensor], list[torch.Tensor]],
    theirs: tuple[list[torch.Tensor], list[torch.Tensor]],
) -> bool:
    return all(
        float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())
        for a, b in zip(ours[0], theirs[0], strict=True)
    )


def cubic_flops(sizes: list[int]) -> float:
    # potrf + potri is n³/3 + 2n³/3 = n³ flops (LAPACK Working Note 41).
    return float(sum(n**3 for n in sizes))


def sgemm_gflops(threads: int, side: int = 2048) -> float:
    """Torch's (MKL or OpenBLAS) float32 rate on a ``side x side`` matrix product, the best of
    three: a reference rate of the machine's BLAS, not the machine's peak."""
    from codl import _ops

    with _ops.using_threads(threads):
        a, b = torch.randn(side, side), torch.randn(side, side)
        best = float("inf")
        a @ b
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e9


def cases(cap: int | None) -> list[tuple[Case, list[int], list[torch.Tensor], list[float]]]:
    def capped(sizes: list[int]) -> list[int]:
        return [min(n, cap) for n in sizes] if cap else sizes

    mix = capped(RESNET20_A + RESNET20_G)
    large = capped(RESNET50_LARGE)
    suffix = f" <={cap}" if cap else ""
    out = []
    for label, sizes in ((f"ResNet-20 mix{suffix}", mix), (f"ResNet-50 large{suffix}", large)):
        mats, dampings = factors(sizes)
        out.append(
            (
                Case(
                    f"inverse {label}",
                    sum(n * n for n in sizes),
                    partial(linalg.damped_inverse, mats, dampings),
                    partial(reference.damped_inverse, mats, dampings),
                    inverses_agree,
                ),
                sizes,
                mats,
                dampings,
            )
        )
    mats, dampings = factors(mix)
    out.append(
        (
            Case(
                f"eigen ResNet-20 mix{suffix}",
                sum(n * n for n in mix),
                partial(linalg.sym_eig, mats),
                partial(reference.sym_eig, mats),
                eigenvalues_agree,
            ),
            mix,
            mats,
            dampings,
        )
    )
    return out


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: cap on the factor matrices' side (default: none, the full sizes)."""
    from codl import _ops

    chosen = cases(size)
    results = run_cases("linalg", [case for case, *_ in chosen], repeat, threads, progress)
    sgemm = sgemm_gflops(threads)
    noted = []
    for result, (case, sizes, mats, dampings) in zip(results, chosen, strict=True):
        notes: dict[str, float] = {}
        if case.name.startswith("inverse"):
            with _ops.using_threads(threads):
                bucketed_ms = median_ms(
                    partial(reference.damped_inverse_bucketed, mats, dampings), repeat
                )
            flops = cubic_flops(sizes)
            notes = {
                "bucketed_torch_ms": round(bucketed_ms, 3),
                "ratio_vs_bucketed": round(bucketed_ms / result.codl_ms, 2),
                "codl_GFLOP_per_s": round(flops / (result.codl_ms * 1e-3) / 1e9, 1),
                "torch_GFLOP_per_s": round(flops / (result.baseline_ms * 1e-3) / 1e9, 1),
                "torch_sgemm_2048_GFLOP_per_s": round(sgemm, 1),
                "fraction_of_torch_sgemm_2048_rate": round(
                    flops / (result.codl_ms * 1e-3) / 1e9 / sgemm, 2
                ),
            }
        noted.append(replace(result, notes=notes))
    return noted
