"""Frozen ternary weights for inference: codes in the ``codl.kernels`` "2bit" layout (rows
padded to whole 128-value blocks, 2 bits per code) or "base3" layout (rows padded to whole
160-value blocks, 5 codes per byte: 1.6 bits per code), one row per output feature, and a
float32 scale per row.

``ternary_linear`` runs the C++ kernels. With ``activations="int8"`` (the default) activations
are quantized per row to int8 (absmax), dot products accumulate exactly in int32 (AVX2
``vpmaddubsw``, AVX-512 VNNI ``vpdpbusd`` or SVE ``sdot``; base-3 trits are decoded in
registers with the multiply trick of llama.cpp's TQ1_0), and the result is scaled back to
float32: both layouts give the same floats bit for bit. With ``activations="float"`` (2-bit
layout only) the float32 activations are summed as they are, ``y = alpha * sum_k x_k c_k``,
which removes the int8 rounding of x at some cost in speed. The three paths are the torch
operators ``codl::ternary_linear``, ``codl::ternary_linear_base3`` and
``codl::ternary_linear_f32act``, so they run under ``torch.compile`` and appear in
``torch.export`` graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from codl import _ops, kernels

BLOCK_VALUES = 128
BASE3_BLOCK_VALUES = 160

Packing = Literal["2bit", "base3"]
Activations = Literal["int8", "float"]
PACKINGS: tuple[Packing, ...] = ("2bit", "base3")
ACTIVATIONS: tuple[Activations, ...] = ("int8", "float")


def padded_in_features(in_features: int, packing: Packing = "2bit") -> int:
    """Row length in codes after padding to whole blocks (128 values for "2bit", 160 for
    "base3")."""
    block = BASE3_BLOCK_VALUES if packing == "base3" else BLOCK_VALUES
    return -(-in_features // block) * block


def row_bytes(in_features: int, packing: Packing = "2bit") -> int:
    """Bytes of one packed row: 4 codes per byte for "2bit", 5 for "base3"."""
    return padded_in_features(in_features, packing) // (5 if packing == "base3" else 4)


def check_activations(activations: object) -> None:
    """Raise ``ValueError`` unless ``activations`` is ``"int8"`` or ``"float"``: the check of
    the settings (:class:`codl.TernaryConfig`, the ternary layers) that a kernel reads later."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations: expected 'int8' or 'float', received {activations!r}")


def check_inference_options(packing: object, activations: object) -> None:
    """Raise ``ValueError`` unless ``packing`` and ``activations`` name a kernel that exists."""
    if packing not in PACKINGS:
        raise ValueError(f"packing: expected one of {PACKINGS}, received {packing!r}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations: expected one of {ACTIVATIONS}, received {activations!r}")
    if packing == "base3" and activations == "float":
        raise ValueError(
            "activations: expected 'int8' with packing='base3' (the base-3 kernel takes int8 "
            "activations; use packing='2bit' for float activations), received 'float'"
        )


@dataclass(frozen=True)
class PackedTernaryWeight:
    """A ternary weight ``diag(alpha) @ codes`` of shape (out_features, in_features), packed."""

    packed: torch.Tensor  # uint8 (out_features, row_bytes(in_features, packing))
    alpha: torch.Tensor  # float32 (out_features,)
    in_features: int
    packing: Packing = "2bit"
    activations: Activations = "int8"

    def __post_init__(self) -> None:
        check_inference_options(self.packing, self.activations)
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
        expected = row_bytes(self.in_features, self.packing)
        if self.packed.shape[1] != expected:
            raise ValueError(
                f"packed: expected {expected} bytes per row for in_features="
                f"{self.in_features} and packing={self.packing!r}, received "
                f"{self.packed.shape[1]}"
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
            self.packed.reshape(-1),
            (self.out_features, padded_in_features(self.in_features, self.packing)),
            format=self.packing,
        )
        return rows[:, : self.in_features]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``alpha[:, None] * codes``."""
        return self.alpha[:, None] * self.unpack().to(torch.float32)


def pack_weight(
    codes: torch.Tensor,
    alpha: torch.Tensor | float,
    *,
    packing: Packing = "2bit",
    activations: Activations = "int8",
) -> PackedTernaryWeight:
    """Pack int8 ``codes`` (out_features, in_features) in {-1, 0, 1} with per-row (or one)
    scale ``alpha`` for :func:`ternary_linear`.

    ``packing``: ``"2bit"`` (4 codes per byte) or ``"base3"`` (5 codes per byte, 1.6 bits per
    code: about 20x smaller than float32 against 16x). ``activations``: ``"int8"`` (quantized
    per row, integer sums) or ``"float"`` (float32 sums; ``"2bit"`` only).
    """
    check_inference_options(packing, activations)
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
    rows = torch.zeros(out_features, padded_in_features(in_features, packing), dtype=torch.int8)
    rows[:, :in_features] = codes
    packed = kernels.pack_ternary(rows, format=packing).reshape(out_features, -1)
    return PackedTernaryWeight(
        packed, scales.contiguous().clone(), in_features, packing, activations
    )


LinearKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", torch.Tensor], None
]


class _LinearOp:
    """``codl::<name>`` (the registered op, traced by torch.compile and torch.export) and the
    same computation called directly: eager calls skip the op's dispatch, tens of microseconds
    that are most of a small layer's time at batch 1."""

    def __init__(self, name: str, kernel: LinearKernel) -> None:
        self.op, self.eager = _linear_op(name, kernel)

    def __call__(
        self,
        x: torch.Tensor,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        if type(x) is torch.Tensor and not torch.compiler.is_compiling():
            eager: torch.Tensor = self.eager(x, packed, alpha, in_features, bias)
            return eager
        traced: torch.Tensor = self.op(x, packed, alpha, in_features, bias)
        return traced


def _linear_op(name: str, kernel: LinearKernel) -> tuple[Any, Callable[..., torch.Tensor]]:
    """Registers ``codl::<name>``: rows of ``x`` times a packed ternary weight through
    ``kernel``, with the fake (shape-only) twin that torch.compile and torch.export trace;
    returns the op and its eager implementation. Every packed layout shares this signature;
    only the kernel differs."""

    def forward(
        x: torch.Tensor,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        rows = x.reshape(-1, in_features)
        out = torch.empty(rows.shape[0], alpha.shape[0], dtype=torch.float32)
        kernel(rows, packed, alpha, bias, out)
        return out.reshape(*x.shape[:-1], alpha.shape[0])

    def fake(
        x: torch.Tensor,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], alpha.shape[0])

    op = torch.library.custom_op(f"codl::{name}", forward, mutates_args=())
    op.register_fake(fake)
    return op, forward


def _checked(kernel: LinearKernel) -> LinearKernel:
    """``kernel`` behind the 2-bit layout's code check (:func:`codl._ops.check_ternary2_rows`:
    once per weight tensor and version), so no operator computes with a field 0b11."""

    def run(
        x: torch.Tensor,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        bias: torch.Tensor | None,
        out: torch.Tensor,
    ) -> None:
        rows = alpha.shape[0] if alpha.dim() == 1 else 0
        if rows > 0 and packed.numel() % rows == 0:  # else the kernel names the size mismatch
            _ops.check_ternary2_rows(packed, rows)
        kernel(x, packed, alpha, bias, out)

    return run


_ternary_linear_op = _LinearOp("ternary_linear", _checked(_ops.ternary_linear_f32))
_ternary_linear_base3_op = _LinearOp("ternary_linear_base3", _ops.ternary3_linear_f32)
_ternary_linear_f32act_op = _LinearOp("ternary_linear_f32act", _checked(_ops.ternary_linear_f32act))


def ternary_linear(
    x: torch.Tensor, weight: PackedTernaryWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.dequantize().T + bias``, with x quantized to int8 per row (absmax) when
    ``weight.activations == "int8"`` or kept float32 when it is ``"float"``.

    x: float32 (..., in_features), finite (NaN/Inf raise ValueError).
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
    if weight.activations == "float":
        op = _ternary_linear_f32act_op
    elif weight.packing == "base3":
        op = _ternary_linear_base3_op
    else:
        op = _ternary_linear_op
    result: torch.Tensor = op(x.contiguous(), weight.packed, weight.alpha, weight.in_features, bias)
    return result


def check_conv_geometry(
    kernel_size: object, stride: object, padding: object, dilation: object
) -> None:
    """Raise ``ValueError`` unless each is a pair of ints: kernel_size, stride and dilation
    >= 1, padding >= 0 (a stride of 0 would divide by zero in the output size)."""
    for name, value, minimum in (
        ("kernel_size", kernel_size, 1),
        ("stride", stride, 1),
        ("padding", padding, 0),
        ("dilation", dilation, 1),
    ):
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 2
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
            )
        ):
            raise ValueError(
                f"{name}: expected a pair of integers >= {minimum}, received {value!r}"
            )


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
    is one row of :func:`ternary_linear` (int8-quantized or float, as the weight says).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        received = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, received {received}")
    check_conv_geometry(kernel_size, stride, padding, dilation)
    batch, channels, height, width = x.shape
    patch = channels * kernel_size[0] * kernel_size[1]
    if patch != weight.in_features:
        raise ValueError(
            f"x: expected {weight.in_features // (kernel_size[0] * kernel_size[1])} input "
            f"channels for this weight, received {channels}"
        )
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"x: expected an input of at least the dilated kernel's size, received "
            f"{height}x{width} (padding {padding}, dilation {dilation}, kernel {kernel_size})"
        )
    columns = torch.nn.functional.unfold(x, kernel_size, dilation, padding, stride)
    rows = columns.transpose(1, 2).reshape(batch * out_h * out_w, patch)
    y = ternary_linear(rows, weight, bias)
    return y.reshape(batch, out_h, out_w, weight.out_features).permute(0, 3, 1, 2)
