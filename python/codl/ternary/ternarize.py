"""Ternarization of weight tensors: codes in {-1, 0, +1} and a positive scale ``alpha``.

A ternary weight approximates ``W`` by ``alpha * codes`` where ``codes = sign(W)`` on the
entries with ``|W| > threshold`` and ``0`` elsewhere. Two rules choose the threshold:

* ``"twn"``: Ternary Weight Networks (F. Li, B. Zhang and B. Liu, "Ternary Weight Networks",
  arXiv:1605.04711, 2016). Minimising ``||W - alpha * codes||^2`` has the exact solution
  ``alpha* = mean(|W_i| for i in I_delta)`` with ``I_delta = {i : |W_i| > delta}``; the
  optimal ``delta`` has no closed form, and the paper's approximation for roughly uniform or
  normal weights is ``delta* = 0.7 * mean(|W|)`` (their eq. 10 and 11).
* ``"threshold"``: a fixed threshold ``rho`` given by the caller, ``codes = sign(W)`` where
  ``|W| > rho`` (the rule of the ternary CNNs for FPGAs, with ``rho`` chosen per model and per
  layer), and the same least-squares ``alpha`` over the kept entries.

With ``granularity="row"`` both the threshold and ``alpha`` are computed per output row
(dimension 0, all other dimensions flattened: an ``(out, in, kh, kw)`` convolution weight has
``out`` rows of ``in * kh * kw`` values), which is what the per-row scales of the packed
inference weight want.

When no entry of a row (or of the tensor) exceeds the threshold, all its codes are zero and its
``alpha`` is defined as ``0``: the least-squares scale of an all-zero code vector is arbitrary,
and 0 makes ``alpha * codes`` (and any per-row scale stored with it) exactly zero. With TWN this
happens only for an all-zero row, since ``max|W| >= mean|W| > 0.7 mean|W|`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import torch

__all__ = [
    "GRANULARITIES",
    "METHODS",
    "TWN_DELTA_FACTOR",
    "Granularity",
    "Method",
    "TernaryResult",
    "check_ternary_options",
    "ternarize",
]

Method = Literal["twn", "threshold"]
Granularity = Literal["tensor", "row"]

METHODS: Final[tuple[str, ...]] = ("twn", "threshold")
GRANULARITIES: Final[tuple[str, ...]] = ("tensor", "row")

#: TWN's approximation of the optimal threshold: ``delta* = 0.7 * mean|W|`` (Li & Liu 2016).
TWN_DELTA_FACTOR: Final = 0.7


@dataclass(frozen=True)
class TernaryResult:
    """A ternarized tensor ``alpha * codes``.

    Attributes:
        codes: int8 tensor of the input's shape with values in {-1, 0, 1}.
        scale: float32 ``alpha``: shape ``()`` for ``granularity="tensor"``, ``(rows,)`` for
            ``granularity="row"`` (rows = size of dimension 0).
        sparsity: fraction of zero codes, in [0, 1].
        threshold: float32 threshold used (``delta`` for TWN, ``rho`` for the fixed rule), same
            shape as ``scale``; entries with ``|w| > threshold`` are kept.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    sparsity: float
    threshold: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return ``scale * codes`` with the scale broadcast over each row, in ``dtype``."""
        codes = self.codes.to(dtype)
        if self.scale.dim() == 0:
            return codes * self.scale.to(dtype)
        # One scale per row: shape (rows, 1, 1, ...) so it broadcasts over the rest.
        per_row = self.scale.to(dtype).reshape(-1, *([1] * (codes.dim() - 1)))
        return codes * per_row


def check_ternary_options(method: str, rho: float | None, granularity: str) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``method``, ``rho`` and ``granularity`` form a
    valid ternarization setting (shared by :func:`ternarize`, the layers and the config, so that
    a bad setting fails where it is written rather than at the first forward pass)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if method == "threshold":
        if rho is None:
            raise ValueError("method='threshold' needs rho (a finite threshold >= 0), got rho=None")
        # bool is an int subclass; a threshold of True is a bug, not a number.
        if isinstance(rho, bool) or not isinstance(rho, (int, float)):
            raise TypeError(f"rho must be a real number (float), got {type(rho).__name__}")
        if not math.isfinite(rho) or rho < 0:
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    elif rho is not None:
        # Silently ignoring rho would hide a config mistake (TWN computes its own threshold).
        raise ValueError(
            f"rho is only used by method='threshold'; method={method!r} computes its own "
            f"threshold, so expected rho=None, got rho={rho!r}"
        )


def _check_weight(w: torch.Tensor, granularity: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(
            "w must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {w.dtype}"
        )
    if w.numel() == 0:
        raise ValueError(f"w must be a non-empty tensor, got shape {tuple(w.shape)}")
    if granularity == "row" and w.dim() == 0:
        raise ValueError(
            "granularity='row' needs a tensor with at least 1 dimension (rows = dimension 0), "
            "got a 0-dimensional tensor"
        )
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        nan_count = int(torch.isnan(w).sum())
        inf_count = int(torch.isinf(w).sum())
        raise ValueError(
            f"w must be finite, got {nan_count + inf_count} non-finite values "
            f"({nan_count} NaN, {inf_count} Inf) among {w.numel()} in shape {tuple(w.shape)}"
        )


def ternarize(
    w: torch.Tensor,
    method: Method = "twn",
    rho: float | None = None,
    granularity: Granularity = "tensor",
) -> TernaryResult:
    """Ternarize ``w`` into ``alpha * codes`` (see the module docstring for the rules).

    Args:
        w: floating-point tensor (any shape, at least one element; at least one dimension for
            ``granularity="row"``). It is read, never modified, and no gradient flows through
            the result.
        method: ``"twn"`` (``delta = 0.7 * mean|W|``, Li & Liu 2016) or ``"threshold"``
            (``delta = rho``).
        rho: the fixed threshold (``>= 0``) for ``method="threshold"``; must be ``None`` for
            ``"twn"``.
        granularity: ``"tensor"`` (one threshold and one ``alpha``) or ``"row"`` (one per row
            of dimension 0).

    Returns:
        A :class:`TernaryResult`; ``alpha`` is the mean of ``|W_i|`` over the kept entries,
        and ``0`` for a row (or tensor) where nothing is kept.

    Raises:
        TypeError: ``w`` is not a floating-point tensor, or ``rho`` is not a number.
        ValueError: ``w`` is empty or has NaN/Inf entries, or the options are invalid.
    """
    check_ternary_options(method, rho, granularity)
    _check_weight(w, granularity)
    # float16/bfloat16 are widened so that the means over large rows do not lose precision.
    compute_dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        values = w.detach().to(compute_dtype)
        rows = values.reshape(1, -1) if granularity == "tensor" else values.reshape(w.shape[0], -1)
        magnitude = rows.abs()
        if method == "twn":
            threshold = TWN_DELTA_FACTOR * magnitude.mean(dim=1)
        else:
            assert rho is not None  # checked above; this narrows the type
            threshold = torch.full(
                (rows.shape[0],), float(rho), dtype=compute_dtype, device=rows.device
            )
        keep = magnitude > threshold[:, None]
        kept_count = keep.sum(dim=1)
        kept_magnitude_sum = torch.where(keep, magnitude, 0.0).sum(dim=1)
        scale = torch.where(
            kept_count > 0,
            kept_magnitude_sum / kept_count.clamp(min=1).to(compute_dtype),
            0.0,
        )
        codes = torch.where(keep, torch.sign(rows), 0.0).to(torch.int8).reshape(w.shape)
        sparsity = 1.0 - float(kept_count.sum()) / w.numel()
        if granularity == "tensor":
            scale = scale.reshape(())
            threshold = threshold.reshape(())
        return TernaryResult(
            codes=codes,
            scale=scale.to(torch.float32),
            sparsity=sparsity,
            threshold=threshold.to(torch.float32),
        )
