"""Frozen ternary weights for inference: 2-bit codes in the ``codl.kernels`` "2bit" layout, one
row per output feature padded to whole 128-value blocks, and a float32 scale per row.

``ternary_linear`` runs the C++ kernel: activations are quantized per row to int8 (absmax), dot
products accumulate exactly in int32 (AVX2 ``vpmaddubsw``, AVX-512 VNNI ``vpdpbusd`` or SVE
``sdot``), and the result is scaled back to float32. It is registered as the torch operator
``codl::ternary_linear``, so it runs under ``torch.compile`` and appears in ``torch.export``
graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codl import _ops, kernels

BLOCK_VALUES = 128


def padded_in_features(in_features: int) -> int:
    """Row length in codes after padding to whole 128-value blocks."""
    return -(-in_features // BLOCK_VALUES) * BLOCK_VALUES


@dataclass(frozen=True)
class PackedTernaryWeight:
    """A ternary weight ``diag(alpha) @ codes`` of shape (out_features, in_features), packed."""

    packed: torch.Tensor  # uint8 (out_features, padded_in_features / 4)
    alpha: torch.Tensor  # float32 (out_features,)
    in_features: int

    def __post_init__(self) -> None:
        if self.packed.dtype != torch.uint8 or self.packed.dim() != 2:
            raise TypeError(
                f"packed: expected a 2-D uint8 tensor, received {self.packed.dtype} "
                f"with shape {tuple(self.packed.shape)}"
            )
        if self.alpha.dtype != torch.float32 or self.alpha.shape != (self.packed.shape[0],):
            raise ValueError(
                f"alpha: expected float32 of shape ({self.packed.shape[0]},), received "
                f"{self.alpha.dtype} of shape {tuple(self.alpha.shape)}"
            )
        expected = padded_in_features(self.in_features) // 4
        if self.packed.shape[1] != expected:
            raise ValueError(
                f"packed: expected {expected} bytes per row for in_features="
                f"{self.in_features}, received {self.packed.shape[1]}"
            )

    @property
    def out_features(self) -> int:
        return int(self.packed.shape[0])

    def nbytes(self) -> int:
        """Bytes of weight memory: the packed codes and the scales."""
        return self.packed.numel() + 4 * self.alpha.numel()

    def unpack(self) -> torch.Tensor:
        """The int8 codes (out_features, in_features)."""
        rows = kernels.unpack_ternary(
            self.packed.reshape(-1), (self.out_features, padded_in_features(self.in_features))
        )
        return rows[:, : self.in_features]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``alpha[:, None] * codes``."""
        return self.alpha[:, None] * self.unpack().to(torch.float32)


def pack_weight(codes: torch.Tensor, alpha: torch.Tensor | float) -> PackedTernaryWeight:
    """Pack int8 ``codes`` (out_features, in_features) in {-1, 0, 1} with per-row (or one)
    scale ``alpha`` for :func:`ternary_linear`."""
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8 or codes.dim() != 2:
        received = (
            f"{codes.dtype} with shape {tuple(codes.shape)}"
            if isinstance(codes, torch.Tensor)
            else type(codes).__name__
        )
        raise TypeError(f"codes: expected a 2-D torch.int8 tensor, received {received}")
    out_features, in_features = codes.shape
    if out_features == 0 or in_features == 0:
        raise ValueError(f"codes: expected a non-empty weight, received shape {tuple(codes.shape)}")
    scales = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    if scales.numel() == 1:
        scales = scales.expand(out_features)
    if scales.shape != (out_features,):
        raise ValueError(
            f"alpha: expected a scalar or {out_features} values, received {scales.numel()}"
        )
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("alpha: expected finite scales, received NaN or Inf")
    rows = torch.zeros(out_features, padded_in_features(in_features), dtype=torch.int8)
    rows[:, :in_features] = codes
    packed = kernels.pack_ternary(rows).reshape(out_features, -1)
    return PackedTernaryWeight(packed, scales.contiguous().clone(), in_features)


@torch.library.custom_op("codl::ternary_linear", mutates_args=())
def _ternary_linear_op(
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    in_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    rows = x.reshape(-1, in_features)
    out = torch.empty(rows.shape[0], alpha.shape[0], dtype=torch.float32)
    _ops.ternary_linear_f32(rows, packed, alpha, bias, out)
    return out.reshape(*x.shape[:-1], alpha.shape[0])


@_ternary_linear_op.register_fake
def _(
    x: torch.Tensor,
    packed: torch.Tensor,
    alpha: torch.Tensor,
    in_features: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], alpha.shape[0])


def ternary_linear(
    x: torch.Tensor, weight: PackedTernaryWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.dequantize().T + bias`` with x quantized to int8 per row (absmax).

    x: float32 (..., in_features), contiguous, finite (NaN/Inf raise ValueError).
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        received = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x: expected a float32 tensor, received {received}")
    if x.dim() == 0 or x.shape[-1] != weight.in_features:
        raise ValueError(
            f"x: expected shape (..., {weight.in_features}), received {tuple(x.shape)}"
        )
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (weight.out_features,)):
        raise ValueError(
            f"bias: expected float32 of shape ({weight.out_features},), received "
            f"{bias.dtype} of shape {tuple(bias.shape)}"
        )
    result: torch.Tensor = _ternary_linear_op(
        x.contiguous(), weight.packed, weight.alpha, weight.in_features, bias
    )
    return result


def ternary_conv2d(
    x: torch.Tensor,
    weight: PackedTernaryWeight,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """2-D convolution (groups=1) with a packed ternary weight, through im2col.

    ``weight`` holds the kernel flattened to (out_channels, in_channels * kh * kw), as
    ``pack_weight(codes.reshape(out_channels, -1), alpha)`` makes it; each output pixel's patch
    is one int8-quantized row of :func:`ternary_linear`.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        received = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, received {received}")
    batch, channels, height, width = x.shape
    patch = channels * kernel_size[0] * kernel_size[1]
    if patch != weight.in_features:
        raise ValueError(
            f"x: expected {weight.in_features // (kernel_size[0] * kernel_size[1])} input "
            f"channels for this weight, received {channels}"
        )
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    columns = torch.nn.functional.unfold(x, kernel_size, dilation, padding, stride)
    rows = columns.transpose(1, 2).reshape(batch * out_h * out_w, patch)
    y = ternary_linear(rows, weight, bias)
    return y.reshape(batch, out_h, out_w, weight.out_features).permute(0, 3, 1, 2)
