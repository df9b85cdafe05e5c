"""Direct 2-D convolution with int8 activations and int8 or ternary (2-bit) weights.

No im2col: activations are quantized once per call to int8 NHWC (one scale per tensor, absmax
or a calibrated ``input_scale``), input channels are padded to a multiple of 4 (not 128), and
the C++ core (``cpp/include/codl/conv.h``, the normative description) sums int8 products
exactly in int32, then applies the fused epilogue

    y = acc * (input_scale * weight_scale[co]) + bias[co],  then max(y, 0) if ``relu``,

written as float32 (NCHW or NHWC) or requantized to int8 NHWC with ``output_scale``
(``q = clamp(round_half_even(y * (1 / output_scale)), -127, 127)``), so layers chain in int8
without a float round trip. :func:`max_pool2x2_int8` pools int8 NHWC activations (max commutes
with the monotone quantization).

Weights are prepared once with :func:`pack_conv_weight` from an int8 tensor in torch's
``(out_channels, in_channels, kh, kw)`` layout: the result holds them as
``[out_channels][kh][kw][in_channels padded to 4]``, int8 or as a 2-bit ternary stream
(``pack_ternary(..., format="2bit")`` of the same values). Either is decoded into the kernels'
blocked layout on every call, a share of 1 / (output pixels) of the work; :func:`block_conv_weight`
does that once (``format="blocked"``, 1 byte per weight plus a sum per output channel), for layers
run many times on small images, where the decoding was a third of the time.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from codl import _ops

ConvWeightFormat = Literal["int8", "ternary2", "blocked"]
OutputLayout = Literal["nchw", "nhwc", "int8_nhwc"]

__all__ = [
    "BlockedConv",
    "ConvWeight",
    "ConvWeightFormat",
    "block_conv_weight",
    "conv2d_int8",
    "max_pool2x2_int8",
    "pack_conv_weight",
]

CHANNEL_GROUP = 4  # input channels are padded to a multiple of this (one VNNI dword)


@dataclass(frozen=True)
class ConvWeight:
    """Convolution weights in the core's layout (see the module docstring)."""

    data: torch.Tensor  # int8 codes, uint8 2-bit stream for "ternary2", int8 blocks for "blocked"
    format: ConvWeightFormat
    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    sums: torch.Tensor | None = None  # "blocked" only: int32 sum of each output channel's weights

    def nbytes(self) -> int:
        """Bytes of weight data held (the blocked form's sums included)."""
        sums = 0 if self.sums is None else self.sums.numel() * 4
        return self.data.numel() * self.data.element_size() + sums


def _padded(channels: int) -> int:
    return -(-channels // CHANNEL_GROUP) * CHANNEL_GROUP


def pack_conv_weight(weight: torch.Tensor, format: ConvWeightFormat = "int8") -> ConvWeight:
    """Prepare int8 weights of shape ``(out_channels, in_channels, kh, kw)`` (torch's layout).

    ``format="ternary2"`` requires values in {-1, 0, +1} and stores them 2 bits each.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, received {type(weight).__name__}")
    if weight.dtype != torch.int8:
        raise TypeError(f"weight: expected dtype torch.int8, received {weight.dtype}")
    if weight.dim() != 4 or 0 in weight.shape:
        raise ValueError(
            f"weight: expected a non-empty 4-D tensor (out_channels, in_channels, kh, kw), "
            f"received shape {tuple(weight.shape)}"
        )
    if format not in ("int8", "ternary2"):
        raise ValueError(f"format: expected 'int8' or 'ternary2', received {format!r}")
    co, ci, kh, kw = weight.shape
    canonical = torch.zeros((co, kh, kw, _padded(ci)), dtype=torch.int8)
    canonical[..., :ci] = weight.detach().cpu().permute(0, 2, 3, 1)
    if format == "ternary2":
        # pack_ternary rejects codes outside {-1, 0, +1} with their index.
        from_codes = _pack_ternary(canonical.reshape(-1))
        return ConvWeight(from_codes, "ternary2", co, ci, (kh, kw))
    return ConvWeight(canonical, "int8", co, ci, (kh, kw))


def block_conv_weight(weight: ConvWeight) -> ConvWeight:
    """``weight`` decoded once into the kernels' blocked layout (``format="blocked"``):
    ``[ceil(out_channels / 16)][kh][kw][in_channels padded to 4 / 4][16][4]`` int8 and the
    int32 sum of each output channel's weights (``cpp/include/codl/conv.h``)."""
    if not isinstance(weight, ConvWeight):
        raise TypeError(
            f"weight: expected a ConvWeight from pack_conv_weight, received {type(weight).__name__}"
        )
    if weight.format == "blocked":
        return weight
    padded_out = -(-weight.out_channels // 16) * 16
    size = _ops.conv_blocked_bytes(weight.out_channels, weight.in_channels, weight.kernel_size)
    blocked = torch.empty(size, dtype=torch.int8)
    sums = torch.empty(padded_out, dtype=torch.int32)
    _ops.conv_prepare_weights(
        weight.data,
        weight.format,
        weight.out_channels,
        weight.in_channels,
        weight.kernel_size,
        blocked,
        sums,
    )
    return ConvWeight(
        blocked, "blocked", weight.out_channels, weight.in_channels, weight.kernel_size, sums
    )


def _pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    out = torch.empty((codes.numel() + 3) // 4, dtype=torch.uint8)
    _ops.pack_ternary(codes, out, "2bit")
    return out


def _pair(value: int | tuple[int, int], name: str, minimum: int) -> tuple[int, int]:
    values = value if isinstance(value, (tuple, list)) else (value, value)
    ok = len(values) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
    )
    if not ok:
        raise TypeError(f"{name}: expected an int or a pair of ints, received {value!r}")
    if any(int(v) < minimum for v in values):
        bound = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{name}: expected {bound} values, received {value!r}")
    return int(values[0]), int(values[1])


def _scale(value: float | None, name: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or None, received {type(value).__name__}")
    if not 0.0 < float(value) < float("inf"):
        raise ValueError(f"{name}: expected a positive finite scale, received {value!r}")
    return float(value)


def conv2d_int8(
    x: torch.Tensor,
    weight: ConvWeight,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    relu: bool = False,
    input_scale: float | None = None,
    output_scale: float | None = None,
    output_layout: OutputLayout | None = None,
) -> torch.Tensor:
    """Direct convolution of ``x`` with prepared int8 or ternary weights (zero padding).

    ``x``: float32 ``(N, C, H, W)``, quantized once with ``input_scale`` (values beyond
    ``127 * input_scale`` clamp) or, if None, its absmax / 127; or int8 ``(N, H, W, C)`` (a
    previous layer's int8 output), which requires ``input_scale``. ``weight_scale``: float32
    ``(out_channels,)``; ``bias``: float32 ``(out_channels,)`` or None (fold BatchNorm into
    both). Returns float32 NCHW by default, float32 NHWC with ``output_layout="nhwc"``, or
    int8 NHWC requantized with ``output_scale`` (which selects ``"int8_nhwc"``).
    """
    if not isinstance(weight, ConvWeight):
        raise TypeError(
            f"weight: expected a ConvWeight from pack_conv_weight, received {type(weight).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, received {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.int8):
        raise TypeError(f"x: expected dtype torch.float32 or torch.int8, received {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor, received shape {tuple(x.shape)}")
    int8_input = x.dtype == torch.int8
    if int8_input:
        n, h, w, c = x.shape
        if input_scale is None:
            raise ValueError("input_scale: expected the scale of the int8 input, received None")
    else:
        n, c, h, w = x.shape
    if c != weight.in_channels:
        raise ValueError(
            f"x: expected {weight.in_channels} channels (the weight's in_channels), received {c} "
            f"(shape {tuple(x.shape)}, {'NHWC' if int8_input else 'NCHW'})"
        )
    in_scale = _scale(input_scale, "input_scale")
    out_scale = _scale(output_scale, "output_scale")
    if output_layout is None:
        output_layout = "int8_nhwc" if output_scale is not None else "nchw"
    if output_layout not in ("nchw", "nhwc", "int8_nhwc"):
        raise ValueError(
            f"output_layout: expected 'nchw', 'nhwc' or 'int8_nhwc', received {output_layout!r}"
        )
    if (output_layout == "int8_nhwc") != (output_scale is not None):
        raise ValueError(
            f"output_scale: expected a scale exactly when output_layout is 'int8_nhwc', received "
            f"{output_scale!r} with {output_layout!r}"
        )
    co = weight.out_channels
    for name, tensor in (("weight_scale", weight_scale), ("bias", bias)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, received {type(tensor).__name__}")
        if tensor.dtype != torch.float32:
            raise TypeError(f"{name}: expected dtype torch.float32, received {tensor.dtype}")
        if tuple(tensor.shape) != (co,):
            raise ValueError(f"{name}: expected shape ({co},), received {tuple(tensor.shape)}")
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    kh, kw = weight.kernel_size
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1 or 0 in (n, h, w):
        raise ValueError(
            f"x: expected a non-empty input that the dilated {kh}x{kw} kernel fits after padding "
            f"({ph}, {pw}), received shape {tuple(x.shape)}"
        )
    if output_layout == "nchw":
        out = torch.empty((n, co, oh, ow), dtype=torch.float32)
    else:
        dtype = torch.int8 if output_layout == "int8_nhwc" else torch.float32
        out = torch.empty((n, oh, ow, co), dtype=dtype)
    _ops.conv2d_i8(
        x.contiguous(),
        "int8_nhwc" if int8_input else "nchw",
        (n, c, h, w),
        weight.data,
        weight.format,
        co,
        (kh, kw),
        (sh, sw),
        (ph, pw),
        (dh, dw),
        weight_scale.contiguous(),
        None if bias is None else bias.contiguous(),
        bool(relu),
        out,
        output_layout,
        in_scale,
        out_scale,
        weight.sums,
    )
    return out


def max_pool2x2_int8(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling with stride 2 (odd sizes floored) of int8 NHWC activations (the
    registered op ``codl::max_pool2x2_int8`` under ``torch.compile``/``torch.export``)."""
    if isinstance(x, torch.Tensor) and (
        type(x) is not torch.Tensor or torch.compiler.is_compiling()
    ):
        result: torch.Tensor = _max_pool2x2_op(x)
        return result
    return _max_pool2x2_eager(x)


def _max_pool2x2_eager(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, received {type(x).__name__}")
    if x.dtype != torch.int8:
        raise TypeError(f"x: expected dtype torch.int8, received {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D NHWC tensor, received shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    out = torch.empty((n, h // 2, w // 2, c), dtype=torch.int8)
    _ops.maxpool2x2_i8_nhwc(x.contiguous(), out)
    return out


def _conv_output_shape(
    x: torch.Tensor,
    input_layout: str,
    out_channels: int,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    output_layout: str,
) -> tuple[tuple[int, int, int, int], torch.dtype]:
    if input_layout == "int8_nhwc":
        n, h, w = x.shape[0], x.shape[1], x.shape[2]
    else:
        n, h, w = x.shape[0], x.shape[2], x.shape[3]
    oh = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    if output_layout == "nchw":
        return (n, out_channels, oh, ow), torch.float32
    dtype = torch.int8 if output_layout == "int8_nhwc" else torch.float32
    return (n, oh, ow, out_channels), dtype


@torch.library.custom_op("codl::conv2d_int8_blocked", mutates_args=())
def _conv2d_blocked_op(
    x: torch.Tensor,
    blocked: torch.Tensor,
    sums: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_channels: int,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    relu: bool,
    input_layout: str,
    input_scale: float,
    output_layout: str,
    output_scale: float,
) -> torch.Tensor:
    out_channels = weight_scale.shape[0]
    shape, dtype = _conv_output_shape(
        x, input_layout, out_channels, kernel_size, stride, padding, dilation, output_layout
    )
    out = torch.empty(shape, dtype=dtype)
    if input_layout == "int8_nhwc":
        n, h, w, c = x.shape
    else:
        n, c, h, w = x.shape
    _ops.conv2d_i8(
        x.contiguous(),
        input_layout,
        (n, c, h, w),
        blocked,
        "blocked",
        out_channels,
        (kernel_size[0], kernel_size[1]),
        (stride[0], stride[1]),
        (padding[0], padding[1]),
        (dilation[0], dilation[1]),
        weight_scale,
        bias,
        relu,
        out,
        output_layout,
        input_scale,
        output_scale,
        sums,
    )
    return out


@_conv2d_blocked_op.register_fake
def _conv2d_blocked_fake(
    x: torch.Tensor,
    blocked: torch.Tensor,
    sums: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_channels: int,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    relu: bool,
    input_layout: str,
    input_scale: float,
    output_layout: str,
    output_scale: float,
) -> torch.Tensor:
    shape, dtype = _conv_output_shape(
        x,
        input_layout,
        weight_scale.shape[0],
        kernel_size,
        stride,
        padding,
        dilation,
        output_layout,
    )
    return x.new_empty(shape, dtype=dtype)


@torch.library.custom_op("codl::max_pool2x2_int8", mutates_args=())
def _max_pool2x2_op(x: torch.Tensor) -> torch.Tensor:
    return _max_pool2x2_eager(x)


@_max_pool2x2_op.register_fake
def _max_pool2x2_fake(x: torch.Tensor) -> torch.Tensor:
    n, h, w, c = x.shape
    return x.new_empty((n, h // 2, w // 2, c))


class BlockedConv:
    """One convolution layer with blocked weights, its epilogue and its activation scales fixed,
    called many times: the checks run once here, and :meth:`__call__` hands the core only the
    input and output (about 4 us of Python per call instead of 25). Under ``torch.compile`` and
    ``torch.export`` (or any tensor subclass) it calls the registered op
    ``codl::conv2d_int8_blocked``, whose fake kernel gives the output's shape.

    ``input_layout``: ``"nchw"`` (float32, quantized with ``input_scale``, or its absmax when
    that is None) or ``"int8_nhwc"`` (``input_scale`` required); ``output_layout``: ``"nchw"``
    (float32) or ``"int8_nhwc"`` (requantized with ``output_scale``).
    """

    def __init__(
        self,
        weight: ConvWeight,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        relu: bool,
        input_layout: str,
        input_scale: float | None,
        output_layout: str,
        output_scale: float | None,
    ) -> None:
        weight = block_conv_weight(weight)
        assert weight.sums is not None
        co = weight.out_channels
        for name, tensor in (("weight_scale", weight_scale), ("bias", bias)):
            if tensor is not None and (
                tensor.dtype != torch.float32 or tuple(tensor.shape) != (co,)
            ):
                raise ValueError(
                    f"{name}: expected float32 of shape ({co},), received {tensor.dtype} of "
                    f"shape {tuple(tensor.shape)}"
                )
        if input_layout not in ("nchw", "int8_nhwc"):
            raise ValueError(
                f"input_layout: expected 'nchw' or 'int8_nhwc', received {input_layout!r}"
            )
        if output_layout not in ("nchw", "int8_nhwc"):
            raise ValueError(
                f"output_layout: expected 'nchw' or 'int8_nhwc', received {output_layout!r}"
            )
        if input_layout == "int8_nhwc" and input_scale is None:
            raise ValueError("input_scale: expected the scale of the int8 input, received None")
        if (output_layout == "int8_nhwc") != (output_scale is not None):
            raise ValueError(
                f"output_scale: expected a scale exactly when output_layout is 'int8_nhwc', "
                f"received {output_scale!r} with {output_layout!r}"
            )
        self.weight = weight
        self.weight_scale = weight_scale.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.relu = bool(relu)
        self.input_layout = input_layout
        self.input_scale = _scale(input_scale, "input_scale")
        self.output_layout = output_layout
        self.output_scale = _scale(output_scale, "output_scale")
        self._bound = _ops.BoundConv(
            weight.data,
            weight.sums,
            weight.out_channels,
            weight.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.weight_scale,
            self.bias,
            self.relu,
            input_layout,
            self.input_scale,
            output_layout,
            self.output_scale,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if type(x) is not torch.Tensor or torch.compiler.is_compiling():
            assert self.weight.sums is not None
            traced: torch.Tensor = _conv2d_blocked_op(
                x,
                self.weight.data,
                self.weight.sums,
                self.weight_scale,
                self.bias,
                self.weight.in_channels,
                list(self.weight.kernel_size),
                list(self.stride),
                list(self.padding),
                list(self.dilation),
                self.relu,
                self.input_layout,
                self.input_scale,
                self.output_layout,
                self.output_scale,
            )
            return traced
        channels = x.shape[3] if self.input_layout == "int8_nhwc" else x.shape[1]
        if x.dim() != 4 or channels != self.weight.in_channels:
            raise ValueError(
                f"x: expected a 4-D {self.input_layout.upper()} tensor with "
                f"{self.weight.in_channels} channels, received shape {tuple(x.shape)}"
            )
        shape, dtype = _conv_output_shape(
            x,
            self.input_layout,
            self.weight.out_channels,
            list(self.weight.kernel_size),
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.output_layout,
        )
        if shape[1] < 1 or shape[2] < 1 or shape[3] < 1:
            raise ValueError(
                f"x: expected an input that the dilated {self.weight.kernel_size} kernel fits "
                f"after padding {self.padding}, received shape {tuple(x.shape)}"
            )
        out = torch.empty(shape, dtype=dtype)
        self._bound(x.contiguous(), out)
        return out
