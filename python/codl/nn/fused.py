"""A frozen CNN as one call into codl's core: :func:`fuse`.

At batch 1 a small frozen model spends more time going from Python to the kernels and back,
layer after layer, than in the kernels (LeNet-5: about 20 us of products among 140-190 us). The
issue that asked for the whole-model path allows, where that happens, "a fused chain of codl
kernels run by one call into the core". :func:`fuse` builds it from the model's own graph, as
``torch.fx`` captures it (no home-made graph runtime): a straight line of the layers
:func:`codl.nn.freeze` makes (direct int8 convolutions with their fused ReLU and requantization,
int8 2x2 max-pooling, ternary linear layers, ReLU after them, Flatten/Identity/Dropout). The
core runs them back to back on buffers it keeps (``codl::run_chain`` in ``cpp/core/conv.cpp``).

The result gives the same floats as the frozen model, bit for bit: the first linear layer after
int8 pooling reads the pooled NHWC bytes with its weight's columns permuted to match, instead of
permuting the activations. Under ``torch.compile``/``torch.export``, for other input shapes, or
for a tensor subclass, :class:`FusedChain` runs the frozen model itself (its registered ops).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from codl import _ops
from codl.nn.convert import Int8MaxPool2d
from codl.nn.ternary import FrozenTernaryConv2d, FrozenTernaryLinear
from codl.ternary.packed import pack_weight

__all__ = ["FusedChain", "fuse"]

_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)
_FROZEN_LAYERS = (FrozenTernaryConv2d, FrozenTernaryLinear, Int8MaxPool2d)


class _LayerTracer(torch.fx.Tracer):
    """torch.fx's tracer with codl's frozen layers as leaves (their forward branches on the
    input's type and dtype, which a symbolic trace cannot follow)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _FROZEN_LAYERS) or super().is_leaf_module(m, module_qualified_name)


class FusedChain(nn.Module):
    """``model`` (from :func:`codl.nn.freeze`) with its layers run by one call into the core
    for float32 inputs of ``input_shape`` (C, H, W); see :mod:`codl.nn.fused`."""

    def __init__(
        self,
        model: nn.Module,
        chain: _ops.ConvChain,
        input_shape: tuple[int, int, int],
        output_shape: tuple[int, ...],
        keep: list[torch.Tensor],
    ) -> None:
        super().__init__()
        self.model = model
        self.input_shape = input_shape
        self.output_shape = output_shape
        self._chain = chain
        self._keep = keep  # tensors whose memory the chain reads (permuted weights)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            type(input) is torch.Tensor
            and input.dtype == torch.float32
            and input.dim() == 4
            and tuple(input.shape[1:]) == self.input_shape
            and not torch.compiler.is_compiling()
        ):
            out = torch.empty((input.shape[0], *self.output_shape))
            self._chain(input.contiguous(), out)
            return out
        result: torch.Tensor = self.model(input)
        return result

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, layers={self._chain.layers}"


def fuse(model: nn.Module, example: torch.Tensor) -> FusedChain:
    """The frozen ``model`` as one call into the core for inputs shaped like ``example``
    (float32, N x C x H x W; only its shape matters).

    Raises ``ValueError`` naming the first layer that cannot be chained (the graph must be a
    straight line of the layers listed in :mod:`codl.nn.fused`, convolutions with int8
    activations, linear layers with 2-bit weights and int8 activations), or when ``torch.fx``
    cannot trace the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or example.shape[0] == 0:
        got = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example)
        raise ValueError(f"example: expected a non-empty N x C x H x W tensor, received {got}")
    try:
        graph = torch.fx.GraphModule(model, _LayerTracer().trace(model))
    except Exception as error:  # fx raises many kinds on untraceable code
        raise ValueError(f"model: torch.fx cannot trace it ({error})") from error
    modules = dict(graph.named_modules())
    order: list[tuple[str, nn.Module]] = []
    previous: torch.fx.Node | None = None
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise ValueError("model: its output is not the last layer's (not a straight chain)")
            break
        if node.op != "call_module" or list(node.all_input_nodes) != [previous]:
            raise ValueError(
                f"model: {node.name} ({node.op} {node.target}) is not a layer of a chain"
            )
        order.append((str(node.target), modules[str(node.target)]))
        previous = node
    inputs = _layer_inputs(model, [module for _, module in order], example[:1].to(torch.float32))
    specs, keep = _specs(order, inputs)
    specs = _int8_between_convolutions(specs)
    if not specs:
        raise ValueError("model: no layer to chain")
    channels, height, width = (int(v) for v in example.shape[1:])
    chain = _ops.ConvChain(specs, (channels, height, width))
    with torch.no_grad():
        output = model(example[:1].to(torch.float32))
    return FusedChain(model, chain, (channels, height, width), tuple(output.shape[1:]), keep)


def _layer_inputs(
    model: nn.Module, layers: list[nn.Module], example: torch.Tensor
) -> dict[nn.Module, torch.Tensor]:
    """Each layer's input on ``example`` (its shape and dtype fix the layer's geometry)."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.setdefault(module, args[0])

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# Fields of a "conv" spec (the tuple ``_ops.ConvChain`` takes).
_CONV_INPUT_LAYOUT, _CONV_OUTPUT_LAYOUT, _CONV_INPUT_SCALE, _CONV_OUTPUT_SCALE = 1, 13, 14, 15


def _int8_between_convolutions(specs: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """``freeze`` hands float32 across the boundary of two Sequentials (CSRNet's frontend and
    backend: it cannot see that one's output is the other's input), where the second
    convolution quantizes the floats with its static calibration scale. In the chain the first
    can requantize with that scale itself: the same quantize_i8 of the same float y (conv.h),
    so the outputs stay bit for bit those of the frozen layers, and the float32 NCHW round trip
    (a tenth of CSRNet's time in its 512-channel layer's float epilogue) goes."""
    result = list(specs)
    for i in range(len(result) - 1):
        first, second = result[i], result[i + 1]
        input_scale = second[_CONV_INPUT_SCALE] if second[0] == "conv" else 0.0
        if (
            first[0] == "conv"
            and second[0] == "conv"
            and first[_CONV_OUTPUT_LAYOUT] == "nchw"
            and second[_CONV_INPUT_LAYOUT] == "nchw"
            and isinstance(input_scale, float)
            and input_scale > 0.0  # a static scale: 0 would take each input's absmax
        ):
            result[i] = (
                *first[:_CONV_OUTPUT_LAYOUT],
                "int8_nhwc",
                first[_CONV_INPUT_SCALE],
                input_scale,
            )
            result[i + 1] = (*second[:_CONV_INPUT_LAYOUT], "int8_nhwc", *second[2:])
    return result


def _specs(
    order: list[tuple[str, nn.Module]], inputs: dict[nn.Module, torch.Tensor]
) -> tuple[list[tuple[object, ...]], list[torch.Tensor]]:
    specs: list[tuple[object, ...]] = []
    keep: list[torch.Tensor] = []
    dequantize: tuple[float, tuple[int, int, int]] | None = None  # after int8 pooling
    for name, module in order:
        x = inputs.get(module)
        if isinstance(module, _PASS_THROUGH) or (x is None and isinstance(module, nn.ReLU)):
            continue
        if x is None:
            raise ValueError(f"layer {name!r} did not run on the example")
        if isinstance(module, FrozenTernaryConv2d) and module.direct is not None:
            conv = module.direct
            c = x.shape[3] if module.int8_input else x.shape[1]
            h, w = (x.shape[1], x.shape[2]) if module.int8_input else (x.shape[2], x.shape[3])
            assert conv.weight.sums is not None
            specs.append(
                (
                    "conv",
                    conv.input_layout,
                    (int(c), int(h), int(w)),
                    _ops.as_buffer(conv.weight.data, "blocked", torch.int8),
                    _ops.as_buffer(conv.weight.sums, "w_sums", torch.int32),
                    conv.weight.out_channels,
                    conv.weight.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    _ops.as_buffer(conv.weight_scale, "weight_scale", torch.float32),
                    None if conv.bias is None else _ops.as_buffer(conv.bias, "bias", torch.float32),
                    conv.relu,
                    conv.output_layout,
                    conv.input_scale,
                    conv.output_scale,
                )
            )
        elif isinstance(module, Int8MaxPool2d) and x.dtype == torch.int8:
            _, h, w, c = (int(v) for v in x.shape)
            specs.append(("maxpool2x2", (h, w, c)))
            if module.dequantize_scale is not None:
                dequantize = (module.dequantize_scale, (h // 2, w // 2, c))
        elif isinstance(module, nn.ReLU) and specs and specs[-1][0] == "linear":
            specs[-1] = (*specs[-1][:7], True)
        elif (
            isinstance(module, FrozenTernaryLinear)
            and module.weight.packing == "2bit"
            and module.weight.activations == "int8"
        ):
            packed, scale = module.weight.packed, 0.0
            if dequantize is not None:
                # The pooled activations stay NHWC: permute the weight's columns to match.
                scale, (h, w, c) = dequantize
                codes = module.weight.unpack().reshape(module.out_features, c, h, w)
                codes = codes.permute(0, 2, 3, 1).reshape(module.out_features, -1)
                packed = pack_weight(codes.contiguous(), module.weight.alpha).packed
                keep.append(packed)
                dequantize = None
            _ops.check_ternary2_rows(packed, module.out_features)
            specs.append(
                (
                    "linear",
                    _ops.as_buffer(packed, "packed", torch.uint8),
                    _ops.as_buffer(module.weight.alpha, "alpha", torch.float32),
                    None
                    if module.bias is None
                    else _ops.as_buffer(module.bias, "bias", torch.float32),
                    module.in_features,
                    module.out_features,
                    scale,
                    False,
                )
            )
        else:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) cannot be chained: expected frozen "
                f"int8 convolutions, int8 2x2 pooling, 2-bit ternary linear layers, ReLU after "
                f"a linear layer, Flatten, Identity or Dropout"
            )
    return specs, keep
