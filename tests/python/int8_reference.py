"""The activation quantization of codl's int8 kernels, written independently for tests: each row
of ``rows`` to int8 by its absmax (round half to even), with its scale."""

from __future__ import annotations

import torch


def quantize_rows_int8(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``q`` int64 in [-127, 127] and ``scale`` float32 ``(rows, 1)`` with
    ``rows ~= q * scale`` (an all-zero row: q = 0, scale 1)."""
    absmax = rows.abs().amax(dim=1, keepdim=True)
    # A true division, as the kernels': torch computes 127.0 / t as t.reciprocal() * 127, which
    # is an ulp off at times and then rounds a product that lands on a tie the other way.
    inverse = torch.where(
        absmax > 0, torch.full_like(absmax, 127.0) / absmax, torch.zeros_like(absmax)
    )
    q = torch.round(rows * inverse).to(torch.int64)
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))
    return q, scale
