"""Plain torch versions of :mod:`codl.linalg`, one matrix at a time.

They are the independent reference of the tests and the baseline of ``codl bench linalg``:
the loop a K-FAC implementation writes without codl (kfac-pytorch and ASDL both do).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _eye_like(mat: torch.Tensor) -> torch.Tensor:
    return torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device)


def damped_inverse(mats: Sequence[torch.Tensor], dampings: Sequence[float]) -> list[torch.Tensor]:
    """``cholesky_inverse(cholesky(F + λI))`` for each matrix, in a Python loop."""
    return [
        torch.cholesky_inverse(torch.linalg.cholesky(mat + damping * _eye_like(mat)))
        for mat, damping in zip(mats, dampings)
    ]


def damped_inverse_bucketed(
    mats: Sequence[torch.Tensor], dampings: Sequence[float]
) -> list[torch.Tensor]:
    """The same, one batched torch call per matrix size: the best torch alone can do."""
    buckets: dict[int, list[int]] = {}
    for index, mat in enumerate(mats):
        buckets.setdefault(mat.shape[-1], []).append(index)
    results: list[torch.Tensor | None] = [None] * len(mats)
    for size, indices in buckets.items():
        stacked = torch.stack([mats[i] for i in indices])
        damping = torch.tensor([dampings[i] for i in indices], dtype=stacked.dtype)
        stacked = stacked + damping[:, None, None] * torch.eye(size, dtype=stacked.dtype)
        inverses = torch.cholesky_inverse(torch.linalg.cholesky(stacked))
        for slot, i in enumerate(indices):
            results[i] = inverses[slot]
    return [r for r in results if r is not None]


def damped_cholesky(mats: Sequence[torch.Tensor], dampings: Sequence[float]) -> list[torch.Tensor]:
    return [
        torch.linalg.cholesky(mat + damping * _eye_like(mat))
        for mat, damping in zip(mats, dampings)
    ]


def cholesky_solve(
    factors: Sequence[torch.Tensor], rhs: Sequence[torch.Tensor], side: str = "left"
) -> list[torch.Tensor]:
    if side == "left":
        return [torch.cholesky_solve(b, factor) for factor, b in zip(factors, rhs)]
    return [torch.cholesky_solve(b.mT, factor).mT for factor, b in zip(factors, rhs)]


def sym_eig(mats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pairs = [torch.linalg.eigh(mat) for mat in mats]
    return [values for values, _ in pairs], [vectors for _, vectors in pairs]


def pack_symmetric(mat: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(mat.shape[0], mat.shape[0])
    return mat[rows, cols]


def unpack_symmetric(packed: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = torch.triu_indices(n, n)
    out = torch.empty(n, n, dtype=packed.dtype)
    out[rows, cols] = packed
    out[cols, rows] = packed
    return out
