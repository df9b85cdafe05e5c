"""Pruned Linear layers that run sparse: :func:`to_sparse` turns a ``Linear`` whose weight is
mostly zeros (after :func:`codl.prune.magnitude_`) into a :class:`SparseLinear` that stores and
multiplies only the nonzero 1x4 blocks (:mod:`codl.kernels.sparse`: int8 values, per-row scale,
int8 activations, exact int32 sums). Below :data:`codl.kernels.sparse.SPARSE_MIN_SPARSITY` the
dense kernels are faster, so :func:`to_sparse` refuses unless told ``force=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from codl.kernels.sparse import (
    SPARSE_MIN_SPARSITY,
    SparseWeight,
    dequantize_sparse,
    pack_sparse,
    sparse_linear,
)

__all__ = ["SparseLinear", "to_sparse"]


class SparseLinear(nn.Module):
    """Inference-only ``Linear`` over a :class:`~codl.kernels.sparse.SparseWeight`."""

    row_ptr: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, packed: SparseWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(packed, SparseWeight):
            raise TypeError(
                "packed: expected a SparseWeight (from pack_sparse), "
                f"received {type(packed).__name__}"
            )
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        # Buffers, so state_dict() and .to() see them; the kernel reads them in place.
        self.register_buffer("row_ptr", packed.row_ptr)
        self.register_buffer("cols", packed.cols)
        self.register_buffer("values", packed.values)
        self.register_buffer("scale", packed.scale)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().float().cpu().contiguous()
        )

    @property
    def packed(self) -> SparseWeight:
        return SparseWeight(
            self.row_ptr, self.cols, self.values, self.scale, self.in_features, self.out_features
        )

    @property
    def sparsity(self) -> float:
        """The fraction of zero weights, counted over the int8 values (blocks kept hold zeros)."""
        return 1.0 - float((self.values != 0).sum()) / (self.in_features * self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The float weight the layer computes with (int8 values times the row scales)."""
        return dequantize_sparse(self.packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"blocks={self.cols.numel()}, sparsity={self.sparsity:.3f}"
        )


def to_sparse(linear: nn.Linear, *, force: bool = False) -> SparseLinear:
    """A :class:`SparseLinear` computing ``linear`` with its weight quantized per row to int8.

    Raises ``ValueError`` when fewer than :data:`SPARSE_MIN_SPARSITY` of the weights are zero
    (the dense kernels are faster there; ``force=True`` converts anyway).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear: expected a torch.nn.Linear, received {type(linear).__name__}")
    weight = linear.weight.detach()
    sparsity = float((weight == 0).float().mean())
    if sparsity < SPARSE_MIN_SPARSITY and not force:
        raise ValueError(
            f"linear: expected at least {SPARSE_MIN_SPARSITY:.0%} zero weights for the sparse "
            f"kernel to pay, received {sparsity:.1%} (prune first, or pass force=True)"
        )
    return SparseLinear(pack_sparse(weight), linear.bias)
