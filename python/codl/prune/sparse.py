"""Pruned Linear layers that run sparse: :func:`to_sparse` turns a ``Linear`` whose weight is
mostly zeros (after :func:`codl.prune.magnitude_`) into a :class:`SparseLinear` that stores and
multiplies only the nonzero 1x4 blocks (:mod:`codl.kernels.sparse`: int8 values, per-row scale,
int8 activations, exact int32 sums), in 1x4-block rows or in row panels, whichever is faster at
the weight's sparsity. Below :data:`codl.kernels.sparse.SPARSE_MIN_SPARSITY` the
dense kernels are faster, so :func:`to_sparse` refuses unless told ``force=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from codl.kernels.sparse import (
    SPARSE_MIN_SPARSITY,
    PanelSparseWeight,
    SparseWeight,
    dequantize_sparse,
    pack_sparse,
    sparse_linear,
)

__all__ = ["SparseLinear", "to_sparse"]


class SparseLinear(nn.Module):
    """Inference-only ``Linear`` over a :class:`~codl.kernels.sparse.SparseWeight` (buffers
    ``row_ptr``, ``cols``) or a :class:`~codl.kernels.sparse.PanelSparseWeight` (``masks``,
    ``starts``), with ``values``, ``scale`` and ``bias``; ``layout`` says which."""

    values: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    # the index buffers of one layout or the other (see ``layout``)
    row_ptr: torch.Tensor
    cols: torch.Tensor
    masks: torch.Tensor
    starts: torch.Tensor

    def __init__(
        self, packed: SparseWeight | PanelSparseWeight, bias: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if not isinstance(packed, (SparseWeight, PanelSparseWeight)):
            raise TypeError(
                "packed: expected a SparseWeight or PanelSparseWeight (from pack_sparse), "
                f"received {type(packed).__name__}"
            )
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.layout = "blocks" if isinstance(packed, SparseWeight) else "panels"
        # Buffers, so state_dict() and .to() see them; the kernel reads them in place.
        if isinstance(packed, SparseWeight):
            self.register_buffer("row_ptr", packed.row_ptr)
            self.register_buffer("cols", packed.cols)
        else:
            self.register_buffer("masks", packed.masks)
            self.register_buffer("starts", packed.starts)
        self.register_buffer("values", packed.values)
        self.register_buffer("scale", packed.scale)
        self.register_buffer(
            "bias", None if bias is None else bias.detach().float().cpu().contiguous()
        )

    @property
    def packed(self) -> SparseWeight | PanelSparseWeight:
        n, k = self.out_features, self.in_features
        if self.layout == "blocks":
            return SparseWeight(self.row_ptr, self.cols, self.values, self.scale, k, n)
        return PanelSparseWeight(self.masks, self.starts, self.values, self.scale, k, n)

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
            f"layout={self.layout}, blocks={self.values.numel() // 4}, "
            f"sparsity={self.sparsity:.3f}"
        )


def to_sparse(linear: nn.Linear, *, force: bool = False, layout: str = "auto") -> SparseLinear:
    """A :class:`SparseLinear` computing ``linear`` with its weight quantized per row to int8,
    packed in ``layout`` (see :func:`~codl.kernels.sparse.pack_sparse`).

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
    return SparseLinear(pack_sparse(weight, layout=layout), linear.bias)
