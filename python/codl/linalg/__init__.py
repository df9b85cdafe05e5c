"""Batched linear algebra for Kronecker factors: the kernels under codl's K-FAC.

Every function takes the whole list of a model's factors (mixed sizes, float32 or float64) in
one call; the C++ core schedules the list across threads by cost, so many small matrices run
side by side and large ones are blocked and parallel inside. Python loops over
``torch.linalg`` pay a dispatch per matrix and leave cores idle on small ones
(:mod:`codl.linalg.reference` is that loop; ``codl bench linalg`` times both).

Matrices are symmetric; the kernels read their lower triangle only (LAPACK's ``uplo='L'``),
but NaN or Inf anywhere in the input (upper triangle included) is an error. A matrix that is
not positive definite after damping, that holds NaN or Inf, or whose result overflows (the
float32 inverse of ``1e-40 * I``) never yields silent garbage: :class:`LinAlgError` names every
failed index and carries the results of the others, so a caller can retry just those (codl's
K-FAC does, with larger damping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from codl import _ops

__all__ = [
    "LinAlgError",
    "cholesky_solve",
    "damped_cholesky",
    "damped_inverse",
    "pack_symmetric",
    "pi_damping",
    "sym_eig",
    "unpack_symmetric",
]

_FLOAT_TYPES = (torch.float32, torch.float64)

if TYPE_CHECKING:  # torch's stubs do not declare it; it is a RuntimeError subclass
    _TorchLinAlgError = RuntimeError
else:
    _TorchLinAlgError = torch.linalg.LinAlgError


class LinAlgError(_TorchLinAlgError):
    """Some matrices of a batch failed; ``failures`` maps their index to the reason.

    ``results`` holds the outputs in input order, ``None`` where the matrix failed.
    It subclasses ``torch.linalg.LinAlgError``, so code written for torch catches it too.
    """

    def __init__(self, failures: dict[int, str], results: Sequence[object]) -> None:
        self.failures = dict(failures)
        self.results = list(results)
        listed = "; ".join(f"matrix {i}: {why}" for i, why in sorted(self.failures.items()))
        super().__init__(f"{len(self.failures)} of {len(self.results)} matrices failed: {listed}")


def _as_matrix_list(mats: object, name: str) -> list[torch.Tensor]:
    if isinstance(mats, torch.Tensor):
        if mats.dim() == 2:
            raise TypeError(
                f"{name}: expected a list of matrices or a 3-D batch, received one 2-D tensor "
                "(wrap it in a list)"
            )
        if mats.dim() != 3:
            raise ValueError(f"{name}: expected a 3-D batch, received shape {tuple(mats.shape)}")
        mats = list(mats.unbind(0))
    if not isinstance(mats, Sequence) or isinstance(mats, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of tensors, received {type(mats).__name__}")
    out: list[torch.Tensor] = []
    dtype = None
    for index, mat in enumerate(mats):
        if not isinstance(mat, torch.Tensor):
            raise TypeError(
                f"{name}[{index}]: expected a torch.Tensor, received {type(mat).__name__}"
            )
        if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(
                f"{name}[{index}]: expected a square matrix, received shape {tuple(mat.shape)}"
            )
        if mat.dtype not in _FLOAT_TYPES:
            raise TypeError(f"{name}[{index}]: expected float32 or float64, received {mat.dtype}")
        if dtype is None:
            dtype = mat.dtype
        elif mat.dtype != dtype:
            raise TypeError(
                f"{name}[{index}]: expected {dtype} like {name}[0], received {mat.dtype}"
            )
        if mat.device.type != "cpu":
            raise ValueError(
                f"{name}[{index}]: expected a CPU tensor, received one on {mat.device}"
            )
        out.append(mat.detach().contiguous())
    return out


def _dampings(damping: float | Sequence[float], count: int) -> list[float]:
    if isinstance(damping, (int, float)) and not isinstance(damping, bool):
        values = [float(damping)] * count
    elif isinstance(damping, Sequence) and not isinstance(damping, (str, bytes)):
        if len(damping) != count:
            raise ValueError(
                f"damping: expected {count} values (one per matrix), received {len(damping)}"
            )
        values = [float(d) for d in damping]
    elif isinstance(damping, torch.Tensor) and damping.dim() == 1 and damping.numel() == count:
        values = [float(d) for d in damping.tolist()]
    else:
        raise TypeError(
            f"damping: expected a float or a sequence of {count} floats, received {damping!r}"
        )
    for index, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"damping[{index}]: expected a finite value >= 0, received {value}")
    return values


def _first_non_finite(matrix: torch.Tensor) -> str:
    """``[i, j]`` of the first NaN/Inf entry (row-major); only called on the failure path."""
    bad = (~torch.isfinite(matrix)).nonzero()
    return f"[{int(bad[0, 0])}, {int(bad[0, 1])}]" if bad.numel() else "?"


def _raise_failures(
    statuses: Sequence[tuple[int, int]], matrices: list[torch.Tensor], outs: list[torch.Tensor]
) -> list[torch.Tensor]:
    failures = {}
    for index, (code, pivot) in enumerate(statuses):
        if code == 1:
            failures[index] = f"not positive definite after damping (pivot {pivot})"
        elif code == 2:
            failures[index] = f"holds NaN or Inf (first at {_first_non_finite(matrices[index])})"
        elif code == 3:
            failures[index] = (
                f"its result is not finite ({matrices[index].dtype} overflow: the damped "
                "matrix is too close to singular; increase the damping)"
            )
        elif code != 0:
            failures[index] = f"failed with status {code}"
    if failures:
        raise LinAlgError(failures, [None if i in failures else out for i, out in enumerate(outs)])
    return outs


def damped_inverse(
    mats: Sequence[torch.Tensor] | torch.Tensor, damping: float | Sequence[float] = 0.0
) -> list[torch.Tensor]:
    """``(F + λI)⁻¹`` of each symmetric positive semi-definite matrix, in one batched call.

    ``damping`` is one λ for all or one per matrix. Cholesky factorisation, triangular inverse
    and ``L⁻ᵀL⁻¹`` (LAPACK's potrf + potri, about n³ flops), blocked so most of the work runs in
    SIMD GEMM tiles. Raises :class:`LinAlgError` naming the matrices that are not positive
    definite after damping, that hold NaN/Inf (in either triangle) or whose inverse overflows.
    """
    matrices = _as_matrix_list(mats, "mats")
    dampings = _dampings(damping, len(matrices))
    outs = [torch.empty_like(m) for m in matrices]
    return _raise_failures(_ops.damped_inverse(matrices, dampings, outs), matrices, outs)


def damped_cholesky(
    mats: Sequence[torch.Tensor] | torch.Tensor, damping: float | Sequence[float] = 0.0
) -> list[torch.Tensor]:
    """Lower-triangular ``L`` with ``L Lᵀ = F + λI`` for each matrix (upper triangle zero).

    Raises :class:`LinAlgError` as :func:`damped_inverse` does."""
    matrices = _as_matrix_list(mats, "mats")
    dampings = _dampings(damping, len(matrices))
    outs = [torch.empty_like(m) for m in matrices]
    return _raise_failures(_ops.damped_cholesky(matrices, dampings, outs), matrices, outs)


def cholesky_solve(
    factors: Sequence[torch.Tensor], rhs: Sequence[torch.Tensor], *, side: str = "left"
) -> list[torch.Tensor]:
    """Solve with Cholesky factors from :func:`damped_cholesky`.

    ``side="left"``: ``X = (L Lᵀ)⁻¹ B`` for B of shape (n, m); ``side="right"``:
    ``X = B (L Lᵀ)⁻¹`` for B of shape (m, n). K-FAC needs both: ``G⁻¹ ∇W A⁻¹``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right', received {side!r}")
    lowers = _as_matrix_list(factors, "factors")
    if isinstance(rhs, torch.Tensor) or not isinstance(rhs, Sequence):
        raise TypeError(f"rhs: expected a sequence of tensors, received {type(rhs).__name__}")
    if len(rhs) != len(lowers):
        raise ValueError(
            f"rhs: expected {len(lowers)} tensors (one per factor), received {len(rhs)}"
        )
    rights: list[torch.Tensor] = []
    for index, (lower, b) in enumerate(zip(lowers, rhs)):
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"rhs[{index}]: expected a torch.Tensor, received {type(b).__name__}")
        n = lower.shape[0]
        shared_dim = 0 if side == "left" else 1
        if b.dim() != 2 or b.shape[shared_dim] != n:
            wanted = f"({n}, m)" if side == "left" else f"(m, {n})"
            raise ValueError(f"rhs[{index}]: expected shape {wanted}, received {tuple(b.shape)}")
        if b.dtype != lower.dtype:
            raise TypeError(
                f"rhs[{index}]: expected {lower.dtype} like the factors, received {b.dtype}"
            )
        rights.append(b.detach().contiguous())
    outs = [torch.empty_like(b) for b in rights]
    _ops.cholesky_solve(lowers, rights, outs, side)
    return outs


def sym_eig(
    mats: Sequence[torch.Tensor] | torch.Tensor,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Eigenvalues (ascending) and eigenvectors (columns) of each symmetric matrix.

    The convention of ``torch.linalg.eigh``: ``F = V diag(w) Vᵀ``. Raises :class:`LinAlgError`
    for matrices with NaN/Inf or whose iteration did not converge.
    """
    matrices = _as_matrix_list(mats, "mats")
    values = [torch.empty(m.shape[0], dtype=m.dtype) for m in matrices]
    vectors = [torch.empty_like(m) for m in matrices]
    statuses = _ops.sym_eig(matrices, values, vectors)
    failures = {}
    for index, code in enumerate(statuses):
        if code == 2:
            failures[index] = "holds NaN or Inf"
        elif code != 0:
            failures[index] = "the eigenvalue iteration did not converge"
    if failures:
        raise LinAlgError(
            failures,
            [None if i in failures else (w, v) for i, (w, v) in enumerate(zip(values, vectors))],
        )
    return values, vectors


def pi_damping(a: torch.Tensor, g: torch.Tensor, damping: float) -> tuple[float, float]:
    """Split Tikhonov damping λ between two Kronecker factors (Martens & Grosse 2015, §6.3).

    ``(A + π√λ I) ⊗ (G + √λ/π I)`` with ``π = sqrt((tr A / dim A) / (tr G / dim G))``; returns
    ``(π√λ, √λ/π)``. Factors may be matrices or the diagonals of diagonal factors (vectors).
    π is 1 when either trace is zero or not finite.
    """
    if not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping: expected a finite value >= 0, received {damping}")
    a_norm = _mean_diagonal(a, "a")
    g_norm = _mean_diagonal(g, "g")
    pi = math.sqrt(a_norm / g_norm) if a_norm > 0 and g_norm > 0 else 1.0
    if not math.isfinite(pi) or pi == 0:
        pi = 1.0
    root = math.sqrt(damping)
    return pi * root, root / pi


def _mean_diagonal(factor: torch.Tensor, name: str) -> float:
    if not isinstance(factor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(factor).__name__}")
    if factor.dim() == 1:
        diagonal = factor
    elif factor.dim() == 2 and factor.shape[0] == factor.shape[1]:
        diagonal = factor.diagonal()
    else:
        raise ValueError(
            f"{name}: expected a square matrix or a diagonal vector, "
            f"received shape {tuple(factor.shape)}"
        )
    if diagonal.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty factor")
    value = float(diagonal.double().mean())
    return value if math.isfinite(value) else 0.0


def pack_symmetric(mat: torch.Tensor) -> torch.Tensor:
    """The upper triangle of a symmetric matrix, row by row: ``n(n+1)/2`` values.

    Half the bytes of a Kronecker factor to store (``state_dict``) or to send (distributed K-FAC).
    """
    (matrix,) = _as_matrix_list([mat], "mat")
    n = matrix.shape[0]
    out = torch.empty(n * (n + 1) // 2, dtype=matrix.dtype)
    _ops.pack_symmetric(matrix, out)
    return out


def unpack_symmetric(packed: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The symmetric matrix from :func:`pack_symmetric`'s output (``n`` inferred if omitted)."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a torch.Tensor, received {type(packed).__name__}")
    if packed.dim() != 1:
        raise ValueError(f"packed: expected a 1-D tensor, received shape {tuple(packed.shape)}")
    if packed.dtype not in _FLOAT_TYPES:
        raise TypeError(f"packed: expected float32 or float64, received {packed.dtype}")
    length = packed.numel()
    if n is None:
        n = (math.isqrt(8 * length + 1) - 1) // 2
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n * (n + 1) // 2 != length:
        raise ValueError(
            f"packed: expected n(n+1)/2 values for some n, received {length} (n={n!r})"
        )
    out = torch.empty(n, n, dtype=packed.dtype)
    _ops.unpack_symmetric(packed.detach().contiguous(), n, out)
    return out
