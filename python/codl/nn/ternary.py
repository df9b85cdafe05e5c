"""Ternary-weight layers trained with the straight-through estimator, and their frozen form.

:class:`TernaryLinear` and :class:`TernaryConv2d` subclass :class:`torch.nn.Linear` and
:class:`torch.nn.Conv2d`: ``.weight`` stays the latent float :class:`~torch.nn.Parameter` (so
optimizers, ``state_dict`` keys and initialisation are exactly those of the float layers), and
every forward pass uses the ternarized weight ``alpha * codes`` computed from it by
:func:`codl.ternary.ternarize`. The gradient reaches the latent weight through the
straight-through estimator (Y. Bengio, N. Leonard and A. Courville, "Estimating or Propagating
Gradients Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432, 2013), as in
Ternary Weight Networks (F. Li, B. Zhang and B. Liu, arXiv:1605.04711, 2016): ``dL/dW`` is
``dL/dW_ternary`` unchanged.

:meth:`TernaryLinear.freeze` turns a trained layer into a :class:`FrozenTernaryLinear`, which
keeps only the 2-bit packed codes, the per-row scales and the bias, and runs the packed ternary
kernel (:func:`codl.ternary.packed.ternary_linear`); :meth:`TernaryConv2d.freeze` gives a
:class:`FrozenTernaryConv2d`, run through im2col and the same kernel.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from codl import _ops
from codl.kernels.conv import BlockedConv, pack_conv_weight
from codl.ternary.config import TernaryConfig
from codl.ternary.packed import (
    Activations,
    PackedTernaryWeight,
    Packing,
    check_activations,
    check_conv_geometry,
    check_inference_options,
    pack_weight,
    ternary_conv2d,
    ternary_linear,
)
from codl.ternary.ternarize import (
    Granularity,
    Method,
    TernaryResult,
    check_ternary_options,
    ternarize,
)

__all__ = [
    "FrozenTernaryConv2d",
    "FrozenTernaryLinear",
    "TernaryConv2d",
    "TernaryLinear",
    "fold_ternary",
    "freeze_layer",
    "straight_through_ternary",
]

IntOrPair = int | tuple[int, int]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


def straight_through_ternary(
    weight: torch.Tensor, method: Method, rho: float | None, granularity: Granularity
) -> torch.Tensor:
    """Return ``alpha * codes`` of ``weight`` in the forward pass, with the identity as its
    derivative with respect to ``weight`` (straight-through estimator).

    The usual spelling ``w + (w_t - w).detach()`` rounds twice, so its values can differ from
    ``w_t`` in the last bit; ``w_t + (w - w.detach())`` adds an exact zero and gives ``w_t``
    bit for bit with the same gradient.
    """
    ternary = ternarize(weight, method, rho, granularity).dequantize(weight.dtype)
    return ternary + (weight - weight.detach())


def _ternary_settings(
    config: TernaryConfig | None,
) -> tuple[Method, float | None, Granularity]:
    if config is None:
        config = TernaryConfig()
    return config.method, config.rho, config.granularity


def _check_positive(**sizes: int) -> None:
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"{name} must be an int, got {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"{name} must be a positive int, got {size!r}")


class TernaryLinear(nn.Linear):
    """A linear layer ``y = x W_t^T + b`` whose weight is ternarized on the fly.

    ``W_t = alpha * codes`` with ``codes, alpha = ternarize(self.weight, method, rho,
    granularity)``; ``self.weight`` is the latent float weight that the optimizer updates.

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        method: ``"twn"`` or ``"threshold"`` (see :func:`codl.ternary.ternarize`).
        rho: the fixed threshold for ``method="threshold"``; ``None`` for ``"twn"``.
        granularity: ``"row"`` (one scale per output feature, the default: it is what the
            packed kernel stores) or ``"tensor"``.
        activations: what :meth:`freeze` does with the activations by default: ``"int8"``
            (quantized per row) or ``"float"`` (kept float32). Training is unaffected.
        device, dtype: as :class:`torch.nn.Linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        method: Method = "twn",
        rho: float | None = None,
        granularity: Granularity = "row",
        *,
        activations: Activations = "int8",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_ternary_options(method, rho, granularity)
        check_activations(activations)
        _check_positive(in_features=in_features, out_features=out_features)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.method: Method = method
        self.rho: float | None = rho
        self.granularity: Granularity = granularity
        self.activations: Activations = activations

    @classmethod
    def from_float(cls, module: nn.Linear, config: TernaryConfig | None = None) -> TernaryLinear:
        """A new :class:`TernaryLinear` with a copy of ``module``'s weight and bias.

        ``config`` (a :class:`codl.TernaryConfig`, default ``TernaryConfig()``) gives
        ``method``, ``rho`` and ``granularity``. The copy owns new parameters: build the
        optimizer after converting. Raises ``ValueError`` if the weight is not finite.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")
        method, rho, granularity = _ternary_settings(config)
        converted = cls(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            method=method,
            rho=rho,
            granularity=granularity,
            activations="int8" if config is None else config.activations,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        _copy_parameters(module, converted)
        # Fail at conversion time, not at the first forward, if the weight cannot be ternarized.
        converted.ternary_weight()
        return converted

    def ternary_weight(self) -> TernaryResult:
        """The ternarization of the current latent weight (codes, scale, sparsity, threshold)."""
        return ternarize(self.weight, self.method, self.rho, self.granularity)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = straight_through_ternary(self.weight, self.method, self.rho, self.granularity)
        return F.linear(input, weight, self.bias)

    def freeze(
        self, *, activations: Activations | None = None, packing: Packing = "2bit"
    ) -> FrozenTernaryLinear:
        """An inference-only :class:`FrozenTernaryLinear` with the current ternary weight packed
        in 2 bits per code (``packing="2bit"``) or 1.6 (``"base3"``) and one float32 scale per
        row (a per-tensor scale is repeated per row), and a float32 copy of the bias. Its
        activations are quantized to int8 per row or kept float32 (``activations``, default
        this layer's ``activations``). This layer is left unchanged."""
        frozen = freeze_layer(self, activations=activations, packing=packing)
        assert isinstance(frozen, FrozenTernaryLinear)
        return frozen

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_ternary_repr(self.method, self.rho, self.granularity)}"


class TernaryConv2d(nn.Conv2d):
    """A 2-D convolution whose weight is ternarized on the fly (see :class:`TernaryLinear`).

    The rows of the weight for ``granularity="row"`` are the output channels: each has
    ``in_channels * kh * kw`` values, the row of the im2col GEMM.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode,
            device, dtype: as :class:`torch.nn.Conv2d`.
        groups: must be 1 (grouped and depthwise convolutions are not ternarized: their
            weights are not one GEMM matrix); ``ValueError`` otherwise.
        method, rho, granularity, activations: as :class:`TernaryLinear`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: str | IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        method: Method = "twn",
        rho: float | None = None,
        granularity: Granularity = "row",
        *,
        activations: Activations = "int8",
        padding_mode: PaddingMode = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_ternary_options(method, rho, granularity)
        check_activations(activations)
        if groups != 1:
            raise ValueError(
                f"TernaryConv2d supports groups=1 only (its weight must be one "
                f"(out_channels, in_channels*kh*kw) matrix), got groups={groups!r}"
            )
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.method: Method = method
        self.rho: float | None = rho
        self.granularity: Granularity = granularity
        self.activations: Activations = activations

    @classmethod
    def from_float(cls, module: nn.Conv2d, config: TernaryConfig | None = None) -> TernaryConv2d:
        """A new :class:`TernaryConv2d` with a copy of ``module``'s weight, bias and geometry
        (see :meth:`TernaryLinear.from_float`). ``ValueError`` if ``module.groups != 1``."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(module).__name__}")
        method, rho, granularity = _ternary_settings(config)
        # nn.Conv2d stores its geometry as tuples (or a padding string); _pair narrows torch's
        # declared tuple[int, ...] to the pairs a 2-D convolution has.
        converted = cls(
            module.in_channels,
            module.out_channels,
            _pair(module.kernel_size),
            stride=_pair(module.stride),
            padding=module.padding if isinstance(module.padding, str) else _pair(module.padding),
            dilation=_pair(module.dilation),
            groups=module.groups,
            bias=module.bias is not None,
            method=method,
            rho=rho,
            granularity=granularity,
            activations="int8" if config is None else config.activations,
            padding_mode=module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        _copy_parameters(module, converted)
        # Fail at conversion time, not at the first forward, if the weight cannot be ternarized.
        converted.ternary_weight()
        return converted

    def ternary_weight(self) -> TernaryResult:
        """The ternarization of the current latent weight (rows = output channels)."""
        return ternarize(self.weight, self.method, self.rho, self.granularity)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = straight_through_ternary(self.weight, self.method, self.rho, self.granularity)
        # _conv_forward handles padding_mode (reflect, circular, ...) as nn.Conv2d does.
        output: torch.Tensor = self._conv_forward(input, weight, self.bias)
        return output

    def freeze(
        self, *, activations: Activations | None = None, packing: Packing = "2bit"
    ) -> nn.Module:
        """An inference-only :class:`FrozenTernaryConv2d`: the current ternary kernel packed
        row by row (``in_channels * kh * kw`` codes per output channel) with a float32 scale
        per channel, run through im2col and codl's kernels (``activations`` and ``packing`` as
        :meth:`TernaryLinear.freeze`)."""
        return freeze_layer(self, activations=activations, packing=packing)

    def extra_repr(self) -> str:
        # torch leaves _ConvNd.extra_repr unannotated.
        geometry: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return f"{geometry}, {_ternary_repr(self.method, self.rho, self.granularity)}"


class FrozenTernaryLinear(nn.Module):
    """Inference-only ternary linear layer: 2-bit packed codes, per-row scales and a bias.

    Built by :meth:`TernaryLinear.freeze`. The forward pass is
    :func:`codl.ternary.packed.ternary_linear`, which quantizes the activations to int8 per row
    (absmax), so its output matches the float ternary layer to about 1e-2 relative error, or
    keeps them float32 (``weight.activations == "float"``: float rounding only).
    It has no trainable parameters.

    Args:
        weight: a :class:`codl.ternary.PackedTernaryWeight` (from
            :func:`codl.ternary.pack_weight`), kept as the plain attribute ``weight`` (not a
            parameter or buffer), the form :func:`codl.ternary.export_c.export_c` recognises.
        bias: ``None`` or a float tensor of shape ``(out_features,)``, stored as a float32
            buffer (so it is in ``state_dict``).
    """

    bias: torch.Tensor | None

    def __init__(self, weight: PackedTernaryWeight, bias: torch.Tensor | None = None) -> None:
        if not isinstance(weight, PackedTernaryWeight):
            raise TypeError(
                f"weight must be a codl.ternary.PackedTernaryWeight, got {type(weight).__name__}"
            )
        super().__init__()
        self.weight = weight
        self.in_features = int(weight.in_features)
        self.out_features = int(weight.out_features)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
                got = bias.dtype if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise TypeError(f"bias must be a floating-point tensor, got {got}")
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(
                    f"bias must have shape ({self.out_features},) to match the packed weight, "
                    f"got {tuple(bias.shape)}"
                )
            bias = bias.detach().to(torch.float32).clone()
        self.register_buffer("bias", bias)
        self._bound: _ops.BoundTernaryLinear | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Eager 2-D float32 input: the bound kernel (a few microseconds); otherwise (traced,
        # batched shapes, anything to check) the op with its checks.
        if (
            type(input) is torch.Tensor
            and input.dim() == 2
            and input.dtype == torch.float32
            and input.shape[1] == self.in_features
            and not torch.compiler.is_compiling()
        ):
            if self._bound is None:
                layout: str = self.weight.packing
                if self.weight.activations == "float":
                    layout = "2bit_float"
                self._bound = _ops.BoundTernaryLinear(
                    layout, self.weight.packed, self.weight.alpha, self.in_features, self.bias
                )
            out = torch.empty(input.shape[0], self.out_features)
            self._bound(input.contiguous(), out)
            return out
        output: torch.Tensor = ternary_linear(input, self.weight, self.bias)
        return output

    def _apply(self, fn: Any, recurse: bool = True) -> FrozenTernaryLinear:
        self._bound = None  # the bias may move; bind again on the next call
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight_bytes={self.weight.nbytes()}"
        )


class FrozenTernaryConv2d(nn.Module):
    """Inference-only ternary 2-D convolution (groups=1): the kernel flattened to rows of
    ``in_channels * kh * kw`` codes, packed, with a float32 scale per output channel and a bias.

    With int8 activations (the default) the forward pass is codl's direct convolution
    (:class:`codl.kernels.conv.BlockedConv`: no im2col; the input quantized once per call, by
    its absmax or a calibrated ``input_scale``; the weights decoded once, here, into the
    kernels' blocked layout, one byte per code), which :func:`codl.nn.freeze` with calibration
    images also runs on int8 NHWC inputs and outputs with ReLU fused (:meth:`configure`). With
    float activations it is :func:`codl.ternary.packed.ternary_conv2d` (im2col + the float
    kernel).
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
        check_conv_geometry(self.kernel_size, self.stride, self.padding, self.dilation)
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
        self.relu = False
        self.input_scale: float | None = None
        self.output_scale: float | None = None
        self.int8_input = False
        self.direct: BlockedConv | None = None
        if weight.activations == "int8":
            codes = weight.unpack().reshape(self.out_channels, self.in_channels, *self.kernel_size)
            self._conv_weight = pack_conv_weight(codes.contiguous())
            self.configure()

    def configure(
        self,
        *,
        relu: bool = False,
        input_scale: float | None = None,
        output_scale: float | None = None,
        int8_input: bool = False,
    ) -> None:
        """Set the direct convolution's epilogue and activation formats (int8 activations
        only): ``relu`` fused; a float32 NCHW input quantized with ``input_scale`` (its absmax
        when None), or, with ``int8_input``, an int8 NHWC input of scale ``input_scale``; a
        float32 NCHW output, or, with ``output_scale``, an int8 NHWC output of that scale."""
        if self.weight.activations != "int8":
            raise ValueError("configure: the direct convolution needs int8 activations")
        self.direct = BlockedConv(
            self._conv_weight,
            self.weight.alpha,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            relu=relu,
            input_layout="int8_nhwc" if int8_input else "nchw",
            input_scale=input_scale,
            output_layout="nchw" if output_scale is None else "int8_nhwc",
            output_scale=output_scale,
        )
        self._conv_weight = self.direct.weight
        self.relu, self.input_scale, self.output_scale = relu, input_scale, output_scale
        self.int8_input = int8_input

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.direct is not None:
            return self.direct(input)
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
        fused = ""
        if self.direct is not None:
            fused = (
                f", relu={self.relu}, input={'int8' if self.int8_input else 'float32'}, "
                f"output={'float32' if self.output_scale is None else 'int8'}"
            )
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"weight_bytes={self.weight.nbytes()}{fused}"
        )


def fold_ternary(
    layer: TernaryLinear | TernaryConv2d,
    norm: nn.BatchNorm1d | nn.BatchNorm2d | None,
    activations: Activations | None,
    packing: Packing,
) -> FrozenTernaryLinear | FrozenTernaryConv2d:
    """The frozen twin of ``layer`` with the BatchNorm ``norm`` that follows it (if any) folded
    into its scales and bias: ``BN(alpha * (codes @ x) + b) = (g * alpha) * (codes @ x) +
    g * (b - mean) + beta`` with ``g = gamma / sqrt(var + eps)``. The codes are unchanged.
    ``activations=None`` takes the layer's own."""
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


def freeze_layer(
    layer: TernaryLinear | TernaryConv2d,
    *,
    activations: Activations | None = None,
    packing: Packing = "2bit",
) -> FrozenTernaryLinear | FrozenTernaryConv2d:
    """The frozen twin of one ternary layer, from an eval-mode copy (``layer`` is unchanged);
    :func:`codl.nn.freeze` does the same for whole models."""
    check_inference_options(packing, "int8" if activations is None else activations)
    return fold_ternary(copy.deepcopy(layer).eval(), None, activations, packing)


def _pair(value: tuple[int, ...] | int) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def _copy_parameters(source: nn.Linear | nn.Conv2d, target: nn.Linear | nn.Conv2d) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        if source.bias is not None and target.bias is not None:
            target.bias.copy_(source.bias)
    target.weight.requires_grad_(source.weight.requires_grad)
    if source.bias is not None and target.bias is not None:
        target.bias.requires_grad_(source.bias.requires_grad)
    target.train(source.training)


def _ternary_repr(method: str, rho: float | None, granularity: str) -> str:
    rho_text = "" if rho is None else f", rho={rho}"
    return f"method={method}{rho_text}, granularity={granularity}"
