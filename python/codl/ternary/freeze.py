"""Freezing trained ternary models for inference.

:func:`freeze` returns a copy of a model in which every :class:`codl.nn.TernaryLinear` and
:class:`codl.nn.TernaryConv2d` is replaced by its packed, inference-only twin (2-bit codes and a
float32 scale per output row, run by codl's C++ kernels), and a BatchNorm that directly follows
one of them inside an ``nn.Sequential`` is folded into that layer's scales and bias:
``BN(alpha * (codes @ x) + b) = (g * alpha) * (codes @ x) + g * (b - mean) + beta`` with
``g = gamma / sqrt(var + eps)``. The codes are unchanged, so the frozen model stays ternary.
A BatchNorm after a float Linear or Conv2d in a Sequential is fused into it as well.

``packing="base3"`` stores 5 codes per byte (1.6 bits per code) instead of 4, and
``activations="float"`` keeps the activations float32 instead of quantizing them to int8 (see
:mod:`codl.ternary.packed`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from codl.ternary.packed import (
    Activations,
    PackedTernaryWeight,
    Packing,
    check_inference_options,
    pack_weight,
    ternary_conv2d,
)

if TYPE_CHECKING:  # codl.nn.ternary imports codl.ternary: import it late to avoid a cycle
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

_BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class FrozenTernaryConv2d(nn.Module):
    """Inference-only ternary 2-D convolution (groups=1): the kernel flattened to rows of
    ``in_channels * kh * kw`` codes, packed, with a float32 scale per output channel and a bias.
    The forward pass is :func:`codl.ternary.packed.ternary_conv2d` (im2col + the int8 kernel).
    """

    bias: torch.Tensor | None

    def __init__(
        self,
        weight: PackedTernaryWeight,
        bias: torch.Tensor | None,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        if not isinstance(weight, PackedTernaryWeight):
            raise TypeError(
                f"weight: expected a PackedTernaryWeight, received {type(weight).__name__}"
            )
        self.weight = weight
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        if weight.in_features % (self.kernel_size[0] * self.kernel_size[1]):
            raise ValueError(
                f"weight: rows of {weight.in_features} codes do not hold whole "
                f"{self.kernel_size} kernels"
            )
        self.in_channels = weight.in_features // (self.kernel_size[0] * self.kernel_size[1])
        self.out_channels = weight.out_features
        if bias is not None and tuple(bias.shape) != (self.out_channels,):
            raise ValueError(
                f"bias: expected shape ({self.out_channels},), received {tuple(bias.shape)}"
            )
        self.register_buffer(
            "bias", None if bias is None else bias.detach().to(torch.float32).clone()
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ternary_conv2d(
            input,
            self.weight,
            self.bias,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"weight_bytes={self.weight.nbytes()}"
        )


def _fold(
    layer: TernaryLinear | TernaryConv2d,
    norm: nn.BatchNorm1d | nn.BatchNorm2d | None,
    activations: Activations | None,
    packing: Packing,
) -> nn.Module:
    from codl.nn.ternary import FrozenTernaryLinear, TernaryConv2d

    result = layer.ternary_weight()
    rows = result.codes.reshape(result.codes.shape[0], -1).contiguous()
    alpha = result.scale.to(torch.float32).expand(rows.shape[0]).clone()
    bias = (
        torch.zeros(rows.shape[0]) if layer.bias is None else layer.bias.detach().to(torch.float32)
    )
    if norm is not None:
        assert norm.running_mean is not None and norm.running_var is not None
        gain = 1.0 / torch.sqrt(norm.running_var.to(torch.float32) + norm.eps)
        shift = torch.zeros_like(gain)
        if norm.affine:
            gain = gain * norm.weight.detach()
            shift = norm.bias.detach().to(torch.float32)
        alpha = alpha * gain
        bias = (bias - norm.running_mean) * gain + shift
    elif layer.bias is None:
        bias = None  # type: ignore[assignment]
    chosen: Activations = layer.activations if activations is None else activations
    check_inference_options(packing, chosen)
    packed = pack_weight(rows, alpha, packing=packing, activations=chosen)
    if isinstance(layer, TernaryConv2d):
        if isinstance(layer.padding, str):
            raise ValueError(f"padding={layer.padding!r} cannot be frozen; use explicit padding")
        return FrozenTernaryConv2d(
            packed,
            bias,
            _pair(layer.kernel_size),
            _pair(layer.stride),
            _pair(layer.padding),
            _pair(layer.dilation),
        )
    return FrozenTernaryLinear(packed, bias)


def _foldable(norm: nn.Module | None, features: int) -> bool:
    return (
        isinstance(norm, _BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.num_features == features
    )


def _freeze_children(module: nn.Module, activations: Activations | None, packing: Packing) -> None:
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

    names = list(module._modules)
    for index, name in enumerate(names):
        child = module._modules[name]
        if isinstance(child, (TernaryLinear, TernaryConv2d)):
            features = (
                child.out_features if isinstance(child, TernaryLinear) else child.out_channels
            )
            following = module._modules[names[index + 1]] if index + 1 < len(names) else None
            # Registration order is execution order only in a Sequential.
            norm = (
                following
                if isinstance(module, nn.Sequential) and _foldable(following, features)
                else None
            )
            module._modules[name] = _fold(child, norm, activations, packing)  # type: ignore[arg-type]
            if norm is not None:
                module._modules[names[index + 1]] = nn.Identity()
        elif isinstance(child, (nn.Linear, nn.Conv2d)) and isinstance(module, nn.Sequential):
            # A float layer kept beside the ternary ones: fold its BatchNorm the same way, so
            # the frozen model has no normalisation left (and export_c can take it).
            features = child.out_features if isinstance(child, nn.Linear) else child.out_channels
            following = module._modules[names[index + 1]] if index + 1 < len(names) else None
            if _foldable(following, features):
                assert isinstance(following, _BatchNorm)
                module._modules[name] = (
                    fuse_linear_bn_eval(child, following)
                    if isinstance(child, nn.Linear)
                    else fuse_conv_bn_eval(child, following)
                )
                module._modules[names[index + 1]] = nn.Identity()
        elif child is not None:
            _freeze_children(child, activations, packing)


def freeze(
    model: nn.Module,
    *,
    activations: Activations | None = None,
    packing: Packing = "2bit",
) -> nn.Module:
    """An inference copy of ``model`` (in eval mode) with ternary layers packed and the
    BatchNorms that follow them folded in; ``model`` itself is not changed.

    Args:
        model: the trained model.
        activations: ``"int8"`` (quantized per row, integer sums) or ``"float"`` (float32
            sums) for every ternary layer; ``None`` (the default) takes each layer's own
            ``activations`` (set from :class:`codl.TernaryConfig`, ``"int8"`` by default).
        packing: ``"2bit"`` (the default) or ``"base3"`` (1.6 bits per code; int8 activations
            only).
    """
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    if activations is not None:
        check_inference_options(packing, activations)
    else:
        check_inference_options(packing, "int8")
    frozen = copy.deepcopy(model).eval()
    if isinstance(frozen, (TernaryLinear, TernaryConv2d)):
        return _fold(frozen, None, activations, packing)
    with torch.no_grad():
        _freeze_children(frozen, activations, packing)
    return frozen
