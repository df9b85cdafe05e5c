"""Sparse linear layers for pruned weights: ``y = x W^T + b`` that skips the zeros.

Format (``cpp/include/codl/sparse.h`` is the normative description): ``W`` is cut into 1x4
blocks, 4 consecutive input features of one output row; only blocks holding a nonzero are kept,
as 4 int8 values (zeros included) with the block column ``feature // 4`` (uint16), and the rows
are CSR over blocks: row ``j`` owns blocks ``row_ptr[j]:row_ptr[j + 1]`` (int32). Each output row
has one float32 scale: int8 weights are ``round(w / scale)`` with ``scale = max|w_row| / 127``;
ternary codes ``{-1, 0, +1}`` are int8 values with their per-row ``alpha`` as the scale.

The kernel quantizes each row of ``x`` to int8 with its absmax (as the ternary layers do) and
sums int8 products exactly in int32, so every ISA gives the same output bit for bit. Measured
against torch dynamic int8 (benchmarks/README.md, "Sparse linear"; a loaded machine, so
rough): at batch 1 it pays from about 90% zeros, at batch 8 and 64 from about 95%; below, a
dense kernel is faster. :func:`pack_sparse` does not choose for you: :func:`worth_sparse` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codl import _ops

__all__ = [
    "SPARSE_MIN_SPARSITY",
    "SparseWeight",
    "dequantize_sparse",
    "pack_sparse",
    "sparse_linear",
    "worth_sparse",
]

#: The crossover measured at batch 1 (benchmarks/README.md, "Sparse linear"): below this
#: fraction of zero weights torch's dense dynamic int8 was faster than the sparse kernel.
SPARSE_MIN_SPARSITY = 0.9

_MAX_IN_FEATURES = 4 * 65536  # uint16 block columns


@dataclass(frozen=True)
class SparseWeight:
    """A weight in 1x4 blocks; see the module docstring. Built by :func:`pack_sparse`."""

    row_ptr: torch.Tensor  # int32, (out_features + 1,)
    cols: torch.Tensor  # uint16, (blocks,)
    values: torch.Tensor  # int8, (blocks * 4,)
    scale: torch.Tensor  # float32, (out_features,)
    in_features: int
    out_features: int

    @property
    def blocks(self) -> int:
        return self.cols.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of the four tensors: what a call reads of the weight."""
        return sum(
            t.numel() * t.element_size() for t in (self.row_ptr, self.cols, self.values, self.scale)
        )


def worth_sparse(weight: torch.Tensor) -> bool:
    """Whether ``weight`` has enough zeros (:data:`SPARSE_MIN_SPARSITY`) for the sparse kernel."""
    return bool((weight == 0).float().mean().item() >= SPARSE_MIN_SPARSITY)


def pack_sparse(weight: torch.Tensor, scale: torch.Tensor | None = None) -> SparseWeight:
    """Pack a pruned weight ``(out_features, in_features)`` into 1x4 blocks.

    A float weight is quantized per output row to int8 (``scale = max|w_row| / 127``; an all-zero
    row gets scale 1); an int8 weight (int8 values, or ternary codes) is packed as it is with the
    per-row ``scale`` given (required then, float32 ``(out_features,)``).
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, received {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(
            f"weight: expected a non-empty 2-D (out_features, in_features) tensor,"
            f" received shape {tuple(weight.shape)}"
        )
    out_features, in_features = weight.shape
    if in_features > _MAX_IN_FEATURES:
        raise ValueError(
            f"weight: expected at most {_MAX_IN_FEATURES} input features (uint16 block columns),"
            f" received {in_features}"
        )
    weight = weight.detach().cpu()
    if weight.dtype == torch.int8:
        if scale is None:
            raise ValueError(
                "scale: expected the per-row float32 scale of an int8 weight, received None"
            )
        if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32:
            raise TypeError(
                f"scale: expected a float32 tensor,"
                f" received {getattr(scale, 'dtype', type(scale).__name__)}"
            )
        if scale.shape != (out_features,):
            raise ValueError(
                f"scale: expected shape ({out_features},), received {tuple(scale.shape)}"
            )
        q = weight
        row_scale = scale.detach().cpu().contiguous()
    elif weight.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        if scale is not None:
            raise ValueError(
                "scale: expected None for a float weight (it is quantized here), received a tensor"
            )
        w = weight.float()
        if not torch.isfinite(w).all():
            raise ValueError("weight: expected finite values, received NaN or Inf")
        absmax = w.abs().amax(dim=1)
        row_scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).contiguous()
        q = torch.round(w / row_scale[:, None]).clamp_(-127, 127).to(torch.int8)
    else:
        raise TypeError(f"weight: expected a float or int8 tensor, received {weight.dtype}")
    k_blocks = (in_features + 3) // 4
    padded = torch.zeros(out_features, 4 * k_blocks, dtype=torch.int8)
    padded[:, :in_features] = q
    grouped = padded.view(out_features, k_blocks, 4)
    kept = (grouped != 0).any(dim=2)
    row_ptr = torch.zeros(out_features + 1, dtype=torch.int32)
    row_ptr[1:] = kept.sum(dim=1).cumsum(0).to(torch.int32)
    cols = kept.nonzero()[:, 1].to(torch.int32).to(torch.uint16).contiguous()
    values = grouped[kept].reshape(-1).contiguous()
    return SparseWeight(row_ptr, cols, values, row_scale, in_features, out_features)


def dequantize_sparse(packed: SparseWeight) -> torch.Tensor:
    """The dense float32 weight ``scale[:, None] * W`` that ``packed`` stands for."""
    _check_packed(packed)
    k_blocks = (packed.in_features + 3) // 4
    dense = torch.zeros(packed.out_features, k_blocks, 4)
    rows = torch.repeat_interleave(
        torch.arange(packed.out_features), (packed.row_ptr[1:] - packed.row_ptr[:-1]).long()
    )
    dense[rows, packed.cols.to(torch.int32).long()] = packed.values.view(-1, 4).float()
    return dense.view(packed.out_features, -1)[:, : packed.in_features] * packed.scale[:, None]


def sparse_linear(
    x: torch.Tensor, packed: SparseWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x`` float32 ``(..., in_features)`` and ``W`` packed by
    :func:`pack_sparse`; rows of ``x`` are quantized to int8 (absmax per row) on the way."""
    _check_packed(packed)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, received {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x: expected dtype torch.float32, received {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != packed.in_features:
        raise ValueError(
            f"x: expected shape (..., {packed.in_features}), received {tuple(x.shape)}"
        )
    if bias is not None and (
        not isinstance(bias, torch.Tensor) or bias.shape != (packed.out_features,)
    ):
        raise ValueError(
            f"bias: expected a tensor of shape ({packed.out_features},),"
            f" received {getattr(bias, 'shape', type(bias).__name__)}"
        )
    rows = x.reshape(-1, packed.in_features).contiguous()
    out = torch.empty(rows.shape[0], packed.out_features)
    if rows.shape[0] > 0:
        _ops.sparse_linear_f32(
            rows, packed.row_ptr, packed.cols, packed.values, packed.scale,
            None if bias is None else bias.contiguous(), out,
        )  # fmt: skip
    return out.view(*x.shape[:-1], packed.out_features)


def _check_packed(packed: object) -> None:
    """Shapes and dtypes here (TypeError/ValueError), indices once per tensor version in _ops."""
    if not isinstance(packed, SparseWeight):
        raise TypeError(
            f"packed: expected a SparseWeight (from pack_sparse), received {type(packed).__name__}"
        )
    n, k = packed.out_features, packed.in_features
    if not (isinstance(n, int) and isinstance(k, int) and 0 < k <= _MAX_IN_FEATURES and n > 0):
        raise ValueError(
            f"packed: expected 0 < in_features <= {_MAX_IN_FEATURES} and out_features > 0,"
            f" received {k} and {n}"
        )
    for name, tensor, dtype in (
        ("row_ptr", packed.row_ptr, torch.int32),
        ("cols", packed.cols, torch.uint16),
        ("values", packed.values, torch.int8),
        ("scale", packed.scale, torch.float32),
    ):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"packed.{name}: expected a torch.Tensor, received {type(tensor).__name__}"
            )
        if tensor.dtype != dtype:
            raise TypeError(f"packed.{name}: expected dtype {dtype}, received {tensor.dtype}")
        if tensor.dim() != 1:
            raise ValueError(
                f"packed.{name}: expected a 1-D tensor, received shape {tuple(tensor.shape)}"
            )
    if packed.row_ptr.numel() != n + 1:
        raise ValueError(
            f"packed.row_ptr: expected {n + 1} elements (out_features + 1),"
            f" received {packed.row_ptr.numel()}"
        )
    if packed.scale.numel() != n:
        raise ValueError(
            f"packed.scale: expected {n} elements (out_features), received {packed.scale.numel()}"
        )
    if packed.values.numel() != 4 * packed.cols.numel():
        raise ValueError(
            f"packed.values: expected {4 * packed.cols.numel()} elements (4 per block column),"
            f" received {packed.values.numel()}"
        )
    _ops.check_sparse_blocks(packed.row_ptr, packed.cols, packed.values, k, n)
