"""Sparse linear layers for pruned weights: ``y = x W^T + b`` that skips the zeros.

Format (``cpp/include/codl/sparse.h`` is the normative description): ``W`` is cut into 1x4
blocks, 4 consecutive input features of one output row; only blocks holding a nonzero are kept,
as 4 int8 values (zeros included) with the block column ``feature // 4`` (uint16), and the rows
are CSR over blocks: row ``j`` owns blocks ``row_ptr[j]:row_ptr[j + 1]`` (int32). Each output row
has one float32 scale: int8 weights are ``round(w / scale)`` with ``scale = max|w_row| / 127``;
ternary codes ``{-1, 0, +1}`` are int8 values with their per-row ``alpha`` as the scale.

A second layout, row panels (:class:`PanelSparseWeight`), groups the output rows by 4 and the
block columns by 4: per panel step (4 x 4 block positions) a uint16 mask of the positions that
keep a block (bit ``4 * r + t``: row ``4 * panel + r``, block column ``4 * step + t``) and the
index of the first such block; the kept blocks' values follow in that order. A call broadcasts a
step's activations once per row and expands the step's blocks into their lanes, at a cost that
does not depend on the sparsity: faster than 1x4 blocks at batch 1 up to about
:data:`PANEL_MAX_SPARSITY` zeros (1.6x at 90%), and at batch 8 and 64 up to 95%; slower
above. ``pack_sparse(..., layout="auto")`` picks by the weight's sparsity; both layouts give the
same outputs bit for bit.

The kernel quantizes each row of ``x`` to int8 with its absmax (as the ternary layers do) and
sums int8 products exactly in int32, so every ISA gives the same output bit for bit. Measured
against torch dynamic int8 on a 4096 x 4096 layer (benchmarks/README.md, "Row panels"; Zen 5):
at batch 1 and 1 thread it pays from about 80-90% zeros, at 2 threads and at batch 8 and 64
from about 95%; below, a dense kernel is faster. :func:`pack_sparse` does not choose between
sparse and dense for you: :func:`worth_sparse` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codl import _ops

__all__ = [
    "PANEL_MAX_SPARSITY",
    "SPARSE_MIN_SPARSITY",
    "PanelSparseWeight",
    "SparseWeight",
    "dequantize_sparse",
    "pack_sparse",
    "sparse_linear",
    "worth_sparse",
]

#: The crossover measured at batch 1 (benchmarks/README.md, "Sparse linear"): below this
#: fraction of zero weights torch's dense dynamic int8 was faster than the sparse kernel.
SPARSE_MIN_SPARSITY = 0.9

#: Above this fraction of zero weights ``layout="auto"`` packs 1x4 blocks, at or below it row
#: panels: the crossover of the two at batch 1 (benchmarks/README.md, "Sparse linear").
PANEL_MAX_SPARSITY = 0.93

_MAX_IN_FEATURES = 4 * 65536  # uint16 block columns
_PANEL_ROWS = 4  # output rows per panel
_STEP_BLOCKS = 4  # block columns per step


class _PackedTensors:
    @property
    def nbytes(self) -> int:
        """Bytes of the weight's tensors: what a call reads of it."""
        tensors = [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class SparseWeight(_PackedTensors):
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


@dataclass(frozen=True)
class PanelSparseWeight(_PackedTensors):
    """A weight in row panels; see the module docstring. Built by :func:`pack_sparse`."""

    masks: torch.Tensor  # uint16, (panels * steps,): bit 4 * r + t for row 4 * panel + r and
    # block column 4 * step + t
    starts: torch.Tensor  # int32, (panels * steps,): the step's first kept block
    values: torch.Tensor  # int8, (blocks * 4,)
    scale: torch.Tensor  # float32, (out_features,)
    in_features: int
    out_features: int

    @property
    def blocks(self) -> int:
        return self.values.numel() // 4


def worth_sparse(weight: torch.Tensor) -> bool:
    """Whether ``weight`` has enough zeros (:data:`SPARSE_MIN_SPARSITY`) for the sparse kernel."""
    return bool((weight == 0).float().mean().item() >= SPARSE_MIN_SPARSITY)


def pack_sparse(
    weight: torch.Tensor, scale: torch.Tensor | None = None, *, layout: str = "auto"
) -> SparseWeight | PanelSparseWeight:
    """Pack a pruned weight ``(out_features, in_features)`` into 1x4 blocks or row panels.

    A float weight is quantized per output row to int8 (``scale = max|w_row| / 127``; an all-zero
    row gets scale 1); an int8 weight (int8 values, or ternary codes) is packed as it is with the
    per-row ``scale`` given (required then, float32 ``(out_features,)``). ``layout``: ``"blocks"``
    (:class:`SparseWeight`), ``"panels"`` (:class:`PanelSparseWeight`) or ``"auto"``: panels
    up to :data:`PANEL_MAX_SPARSITY` zeros, blocks above.
    """
    if layout not in ("auto", "blocks", "panels"):
        raise ValueError(f"layout: expected 'auto', 'blocks' or 'panels', received {layout!r}")
    q, row_scale = _int8_rows(weight, scale)
    out_features, in_features = q.shape
    if layout == "auto":
        layout = "blocks" if float((q == 0).float().mean()) > PANEL_MAX_SPARSITY else "panels"
    k_blocks = (in_features + 3) // 4
    if layout == "blocks":
        grouped = torch.zeros(out_features, k_blocks, 4, dtype=torch.int8)
        grouped.view(out_features, -1)[:, :in_features] = q
        kept = (grouped != 0).any(dim=2)
        row_ptr = torch.zeros(out_features + 1, dtype=torch.int32)
        row_ptr[1:] = kept.sum(dim=1).cumsum(0).to(torch.int32)
        cols = kept.nonzero()[:, 1].to(torch.int32).to(torch.uint16).contiguous()
        values = grouped[kept].reshape(-1).contiguous()
        return SparseWeight(row_ptr, cols, values, row_scale, in_features, out_features)
    panels, steps = -(-out_features // _PANEL_ROWS), -(-k_blocks // _STEP_BLOCKS)
    # [panel, row, step, column, byte] -> [panel, step, row, column, byte]: lane order in a step
    padded = torch.zeros(panels, _PANEL_ROWS, steps, _STEP_BLOCKS, 4, dtype=torch.int8)
    padded.view(panels * _PANEL_ROWS, -1)[:out_features, :in_features] = q
    lanes = padded.permute(0, 2, 1, 3, 4).reshape(panels, steps, _PANEL_ROWS * _STEP_BLOCKS, 4)
    kept = (lanes != 0).any(dim=3)
    masks = (kept.to(torch.int32) * _lane_bits()).sum(dim=2).reshape(-1)
    counts = kept.sum(dim=2).reshape(-1)
    starts = torch.zeros_like(counts)
    starts[1:] = counts.cumsum(0)[:-1]
    values = lanes[kept].reshape(-1).contiguous()
    return PanelSparseWeight(
        masks.to(torch.uint16).contiguous(),
        starts.to(torch.int32).contiguous(),
        values,
        row_scale,
        in_features,
        out_features,
    )


def _lane_bits() -> torch.Tensor:
    lanes = _PANEL_ROWS * _STEP_BLOCKS
    return torch.tensor([1 << lane for lane in range(lanes)], dtype=torch.int32)


def _int8_rows(
    weight: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 rows of ``weight`` and their float32 scales (see :func:`pack_sparse`)."""
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
        return weight, scale.detach().cpu().contiguous()
    if weight.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        if scale is not None:
            raise ValueError(
                "scale: expected None for a float weight (it is quantized here), received a tensor"
            )
        w = weight.float()
        if not torch.isfinite(w).all():
            raise ValueError("weight: expected finite values, received NaN or Inf")
        absmax = w.abs().amax(dim=1)
        row_scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax)).contiguous()
        return torch.round(w / row_scale[:, None]).clamp_(-127, 127).to(torch.int8), row_scale
    raise TypeError(f"weight: expected a float or int8 tensor, received {weight.dtype}")


def dequantize_sparse(packed: SparseWeight | PanelSparseWeight) -> torch.Tensor:
    """The dense float32 weight ``scale[:, None] * W`` that ``packed`` stands for."""
    _check_packed(packed)
    n, k_blocks = packed.out_features, (packed.in_features + 3) // 4
    if isinstance(packed, SparseWeight):
        dense = torch.zeros(n, k_blocks, 4)
        rows = torch.repeat_interleave(
            torch.arange(n), (packed.row_ptr[1:] - packed.row_ptr[:-1]).long()
        )
        dense[rows, packed.cols.to(torch.int32).long()] = packed.values.view(-1, 4).float()
    else:
        panels, steps = -(-n // _PANEL_ROWS), -(-k_blocks // _STEP_BLOCKS)
        kept = (packed.masks.to(torch.int32).view(panels, steps, 1) & _lane_bits()) != 0
        lanes = torch.zeros(panels, steps, _PANEL_ROWS * _STEP_BLOCKS, 4)
        lanes[kept] = packed.values.view(-1, 4).float()
        dense = lanes.view(panels, steps, _PANEL_ROWS, _STEP_BLOCKS * 4).permute(0, 2, 1, 3)
        dense = dense.reshape(panels * _PANEL_ROWS, -1)[:n, : 4 * k_blocks]
    return dense.reshape(n, -1)[:, : packed.in_features] * packed.scale[:, None]


def sparse_linear(
    x: torch.Tensor, packed: SparseWeight | PanelSparseWeight, bias: torch.Tensor | None = None
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
    bias = None if bias is None else bias.contiguous()
    if rows.shape[0] == 0:
        pass
    elif isinstance(packed, SparseWeight):
        _ops.sparse_linear_f32(
            rows, packed.row_ptr, packed.cols, packed.values, packed.scale, bias, out
        )
    else:
        _ops.sparse_panel_linear_f32(
            rows, packed.masks, packed.starts, packed.values, packed.scale, bias, out
        )
    return out.view(*x.shape[:-1], packed.out_features)


def _check_packed(packed: object) -> None:
    """Shapes and dtypes here (TypeError/ValueError), indices once per tensor version in _ops."""
    if not isinstance(packed, (SparseWeight, PanelSparseWeight)):
        raise TypeError(
            "packed: expected a SparseWeight or PanelSparseWeight (from pack_sparse),"
            f" received {type(packed).__name__}"
        )
    n, k = packed.out_features, packed.in_features
    if not (isinstance(n, int) and isinstance(k, int) and 0 < k <= _MAX_IN_FEATURES and n > 0):
        raise ValueError(
            f"packed: expected 0 < in_features <= {_MAX_IN_FEATURES} and out_features > 0,"
            f" received {k} and {n}"
        )
    if isinstance(packed, SparseWeight):
        indices = (("row_ptr", packed.row_ptr, torch.int32), ("cols", packed.cols, torch.uint16))
    else:
        indices = (("masks", packed.masks, torch.uint16), ("starts", packed.starts, torch.int32))
    for name, tensor, dtype in (
        *indices,
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
    if packed.scale.numel() != n:
        raise ValueError(
            f"packed.scale: expected {n} elements (out_features), received {packed.scale.numel()}"
        )
    if isinstance(packed, PanelSparseWeight):
        steps = -(-n // _PANEL_ROWS) * -(-((k + 3) // 4) // _STEP_BLOCKS)
        for name, tensor in (("masks", packed.masks), ("starts", packed.starts)):
            if tensor.numel() != steps:
                raise ValueError(
                    f"packed.{name}: expected {steps} elements (one per panel of 4 rows and"
                    f" step of 4 block columns), received {tensor.numel()}"
                )
        if packed.values.numel() % 4 != 0:
            raise ValueError(
                f"packed.values: expected a multiple of 4 elements (4 per kept block),"
                f" received {packed.values.numel()}"
            )
        _ops.check_sparse_panels(packed.masks, packed.starts, packed.values, k, n)
        return
    if packed.row_ptr.numel() != n + 1:
        raise ValueError(
            f"packed.row_ptr: expected {n + 1} elements (out_features + 1),"
            f" received {packed.row_ptr.numel()}"
        )
    if packed.values.numel() != 4 * packed.cols.numel():
        raise ValueError(
            f"packed.values: expected {4 * packed.cols.numel()} elements (4 per block column),"
            f" received {packed.values.numel()}"
        )
    _ops.check_sparse_blocks(packed.row_ptr, packed.cols, packed.values, k, n)
