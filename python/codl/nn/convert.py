"""Model conversions around the ternary layers: float to ternary, and ternary to frozen.

* :func:`quantize_` swaps a float model's ``nn.Linear`` and ``nn.Conv2d`` for
  :class:`codl.nn.TernaryLinear` and :class:`codl.nn.TernaryConv2d`, in place. The settings are
  a :class:`codl.TernaryConfig` (torchao's idiom: ``quantize_(model, config)`` with a frozen
  config object, a ``filter_fn`` and per-module overrides by name); the rules are those of
  :func:`codl.ternary.ternarize` (Ternary Weight Networks, F. Li, B. Zhang and B. Liu,
  arXiv:1605.04711, 2016). :func:`sparsity_report` lists each ternary layer's sparsity.
* :func:`freeze` returns an inference copy in which every ternary layer is replaced by its
  packed twin (2-bit codes and a float32 scale per output row, run by codl's C++ kernels), and
  a BatchNorm that directly follows one of them inside an ``nn.Sequential`` is folded into that
  layer's scales and bias (:func:`codl.nn.ternary.fold_ternary`): the codes are unchanged, so
  the frozen model stays ternary. A BatchNorm after a float Linear or Conv2d in a Sequential is
  fused into it as well. ``packing="base3"`` stores 5 codes per byte (1.6 bits per code)
  instead of 4, and ``activations="float"`` keeps the activations float32 instead of quantizing
  them to int8 (see :mod:`codl.ternary.packed`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import TypedDict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from codl import _ops
from codl.kernels.conv import max_pool2x2_int8
from codl.kernels.sparse import SPARSE_MIN_SPARSITY
from codl.nn.ternary import (
    FrozenTernaryConv2d,
    FrozenTernaryLinear,
    TernaryConv2d,
    TernaryLinear,
    fold_ternary,
)
from codl.prune.sparse import SparseLinear, to_sparse
from codl.ternary.config import TernaryConfig
from codl.ternary.packed import Activations, Packing, check_inference_options

__all__ = [
    "FrozenLayer",
    "Int8MaxPool2d",
    "LayerSparsity",
    "freeze",
    "frozen_summary",
    "quantize_",
    "sparsity_report",
]

_BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)


class LayerSparsity(TypedDict):
    """One row of :func:`sparsity_report`."""

    name: str
    kind: str
    shape: tuple[int, ...]
    method: str
    granularity: str
    sparsity: float
    scale_mean: float


def _ineligibility(module: nn.Module) -> str | None:
    """Why ``module`` cannot be ternarized, or ``None`` if it can."""
    if isinstance(module, (TernaryLinear, TernaryConv2d)):
        return f"it is already a {type(module).__name__}"
    if type(module) is nn.Linear:
        return None
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            return f"it is an nn.Conv2d with groups={module.groups} (only groups=1 is supported)"
        return None
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return (
            f"its type {type(module).__name__} is a subclass of nn.Linear/nn.Conv2d, whose "
            "forward may not use the weight as the base class does"
        )
    return f"it is a {type(module).__name__}, expected exactly nn.Linear or nn.Conv2d"


def _is_eligible(module: nn.Module) -> bool:
    return _ineligibility(module) is None


def quantize_(model: nn.Module, config: TernaryConfig | None = None) -> nn.Module:
    """Replace the eligible layers of ``model`` by ternary layers, in place, and return it.

    Each ``nn.Linear`` becomes a :class:`codl.nn.TernaryLinear` and each ``nn.Conv2d``
    (``groups=1``) a :class:`codl.nn.TernaryConv2d`, with copies of the weight and bias, on the
    same device and dtype, in the same train/eval mode (see :class:`TernaryConfig` for which
    modules are chosen). A module reachable under several names is replaced everywhere by one
    ternary module. Build the optimizer after this call: the new layers own new parameters.

    Args:
        model: the model; modified in place.
        config: the settings; default ``TernaryConfig()`` (TWN, per-row scales, everything).

    Returns:
        ``model``, or the replacement module when ``model`` itself is an eligible layer
        (which cannot be replaced in place): use the return value.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``config`` not a ``TernaryConfig``.
        ValueError: ``overrides`` names modules that ``model`` does not have (all are listed),
            or gives a ``TernaryConfig`` for a module that cannot be ternarized, or a weight
            to ternarize has NaN/Inf entries.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config is None:
        config = TernaryConfig()
    if not isinstance(config, TernaryConfig):
        raise TypeError(f"config must be a codl.TernaryConfig, got {type(config).__name__}")

    modules = dict(model.named_modules())
    unknown = sorted(name for name in config.overrides if name not in modules)
    eligible_names = [name for name, module in modules.items() if _is_eligible(module)]
    if unknown:
        raise ValueError(
            f"overrides name modules that the model does not have: {unknown}; expected names "
            f"from model.named_modules(), e.g. the eligible ones: {eligible_names}"
        )
    for name, override in config.overrides.items():
        reason = _ineligibility(modules[name])
        if override is not None and reason is not None:
            raise ValueError(f"overrides[{name!r}] asks to ternarize {name!r}, but {reason}")

    edge_names = {eligible_names[0], eligible_names[-1]} if eligible_names else set()
    replacements: dict[int, nn.Module] = {}
    for name in eligible_names:
        module = modules[name]
        settings: TernaryConfig | None
        if name in config.overrides:
            settings = config.overrides[name]  # explicit, so it wins over the other rules
        else:
            rejected = config.filter_fn is not None and not config.filter_fn(module, name)
            edge = config.skip_first_and_last and name in edge_names
            settings = None if rejected or edge else config
        if settings is None:
            continue
        try:
            if isinstance(module, nn.Linear):
                replacements[id(module)] = TernaryLinear.from_float(module, settings)
            else:
                assert isinstance(module, nn.Conv2d)
                replacements[id(module)] = TernaryConv2d.from_float(module, settings)
        except ValueError as error:
            raise ValueError(f"cannot ternarize module {name!r}: {error}") from error

    if id(model) in replacements:
        return replacements[id(model)]
    # Walk every parent's children (duplicates included) so that a module registered under two
    # names is replaced under both and stays shared.
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return model


def sparsity_report(model: nn.Module) -> list[LayerSparsity]:
    """One entry per :class:`~codl.nn.TernaryLinear` / :class:`~codl.nn.TernaryConv2d` of
    ``model`` (``named_modules()`` order): its name, class, weight shape, method, granularity,
    sparsity (fraction of zero codes) and mean scale ``alpha``. Frozen layers are not listed."""
    report: list[LayerSparsity] = []
    for name, module in model.named_modules():
        if not isinstance(module, (TernaryLinear, TernaryConv2d)):
            continue
        result = module.ternary_weight()
        report.append(
            LayerSparsity(
                name=name,
                kind=type(module).__name__,
                shape=tuple(module.weight.shape),
                method=module.method,
                granularity=module.granularity,
                sparsity=result.sparsity,
                scale_mean=float(result.scale.float().mean()),
            )
        )
    return report


def _foldable(norm: nn.Module | None, features: int) -> bool:
    return (
        isinstance(norm, _BatchNorm)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.num_features == features
    )


def _freeze_children(module: nn.Module, activations: Activations | None, packing: Packing) -> None:
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
            module._modules[name] = fold_ternary(child, norm, activations, packing)  # type: ignore[arg-type]
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
    calibration: torch.Tensor | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> nn.Module:
    """An inference copy of ``model`` (in eval mode) with ternary layers packed and the
    BatchNorms that follow them folded in; ``model`` itself is not changed.

    Args:
        model: the trained model.
        activations: ``"int8"`` (quantized, integer sums) or ``"float"`` (float32 sums) for
            every ternary layer; ``None`` (the default) takes each layer's own ``activations``
            (set from :class:`codl.TernaryConfig`, ``"int8"`` by default).
        packing: ``"2bit"`` (the default) or ``"base3"`` (1.6 bits per code; int8 activations
            only).
        calibration: a few representative inputs (a batch of ``model``'s input). With them,
            the activation scales are fixed from their absmax (static quantization, as torch's
            and ONNX Runtime's static int8), and inside each ``nn.Sequential`` a ternary
            convolution followed by ReLU and 2x2 max-pooling and feeding another ternary
            convolution hands it int8 NHWC activations: ReLU and requantization run in the
            convolution's epilogue and the pooling on int8 (:class:`Int8MaxPool2d`), with no
            float tensor in between. Without them every convolution quantizes its float input
            by its absmax on each call. :func:`frozen_summary` says what runs where. The
            ranges measured are kept as the frozen model's ``calibrated_ranges``.
        ranges: instead of ``calibration``, the ranges a calibration measured (a frozen
            model's ``calibrated_ranges``: per convolution's name, its input's absmax and its
            output's largest value), so a model file can carry its static scales without
            images; the frozen model is then the calibrated one bit for bit.

    A float ``nn.Linear`` with at least :data:`codl.kernels.sparse.SPARSE_MIN_SPARSITY` (90%)
    zero weights (magnitude-pruned, ``torch.nn.utils.prune`` included) becomes a
    :class:`codl.prune.SparseLinear` (int8 values quantized per row, in 1x4 blocks or row panels
    by the sparsity), where the
    sparse kernel is faster than the dense ones. Layers codl has no kernel for stay torch float:
    a grouped or depthwise ``nn.Conv2d`` or one with a padding mode other than zeros raises a
    ``UserWarning`` naming it.

    When no torch float layer is left (the frozen model has no parameters), each call runs
    torch's own ops between codl's kernels (``torch.cat``, copies) on one thread and codl's
    kernels on the caller's thread count, so that no OpenMP worker spins on a core codl's pool
    needs (:func:`codl._ops.enter_torch_on_one_thread`); ``torch.set_num_threads`` is
    process-wide, so torch ops other Python threads run meanwhile get one thread too.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    check_inference_options(packing, "int8" if activations is None else activations)
    if calibration is not None and (
        not isinstance(calibration, torch.Tensor)
        or not calibration.is_floating_point()
        or calibration.dim() == 0
        or calibration.shape[0] == 0
    ):
        got = (
            f"{calibration.dtype} of shape {tuple(calibration.shape)}"
            if isinstance(calibration, torch.Tensor)
            else type(calibration).__name__
        )
        raise ValueError(
            f"calibration: expected a non-empty floating-point batch of inputs, received {got}"
        )
    frozen = copy.deepcopy(model).eval()
    if isinstance(frozen, (TernaryLinear, TernaryConv2d)):
        return fold_ternary(frozen, None, activations, packing)
    with torch.no_grad():
        _freeze_children(frozen, activations, packing)
        _sparsify(frozen)
        _warn_unsupported(frozen)
        if calibration is not None and ranges is not None:
            raise ValueError("pass calibration images or their ranges, not both")
        if calibration is not None:
            ranges = _calibrated_ranges(frozen, calibration.to(torch.float32))
        if ranges is not None:
            _chain_in_int8(frozen, _checked_ranges(frozen, ranges))
            frozen.__dict__["calibrated_ranges"] = dict(ranges)  # a plain attribute, not state
    if next(frozen.parameters(), None) is None:
        # Every product runs in codl's kernels: torch's glue between them (torch.cat, copies)
        # runs on one thread, so that no OpenMP worker spins on the core codl's pool needs.
        frozen.register_forward_pre_hook(_enter_torch_on_one_thread)
        frozen.register_forward_hook(_leave_torch_on_one_thread, always_call=True)
    return frozen


def _enter_torch_on_one_thread(module: nn.Module, args: object) -> None:
    if not torch.compiler.is_compiling():
        _ops.enter_torch_on_one_thread()


def _leave_torch_on_one_thread(module: nn.Module, args: object, output: object) -> None:
    if not torch.compiler.is_compiling():
        _ops.leave_torch_on_one_thread()


def _sparsify(module: nn.Module) -> None:
    """Replace every float ``nn.Linear`` under ``module`` that is sparse enough for the sparse
    kernel to pay by its :class:`SparseLinear`."""
    for name, child in module._modules.items():
        if child is None:
            continue
        if type(child) is nn.Linear:
            assert isinstance(child, nn.Linear)
            zeros = float((child.weight.detach() == 0).float().mean())
            if zeros >= SPARSE_MIN_SPARSITY:
                module._modules[name] = to_sparse(child)
        else:
            _sparsify(child)


def _warn_unsupported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if type(module) is nn.Conv2d and (module.groups != 1 or module.padding_mode != "zeros"):
            why = (
                f"groups={module.groups}"
                if module.groups != 1
                else f"padding_mode={module.padding_mode!r}"
            )
            warnings.warn(
                f"freeze: layer {name!r} ({why}) has no codl kernel and runs in torch float32",
                UserWarning,
                stacklevel=3,
            )


class Int8MaxPool2d(nn.Module):
    """2x2 max pooling, stride 2, of the int8 NHWC activations a frozen convolution hands on
    (:func:`codl.kernels.conv.max_pool2x2_int8`; max commutes with the monotone quantization,
    so the result is exact). With ``dequantize_scale`` it returns them as float32 NCHW values
    (int8 times the scale), for the float layers that follow; float NCHW inputs are pooled as
    :class:`torch.nn.MaxPool2d` does."""

    def __init__(self, dequantize_scale: float | None = None) -> None:
        super().__init__()
        self.dequantize_scale = dequantize_scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dtype != torch.int8:
            return nn.functional.max_pool2d(input, 2)
        pooled = max_pool2x2_int8(input)
        if self.dequantize_scale is None:
            return pooled
        return pooled.permute(0, 3, 1, 2).to(torch.float32).mul_(self.dequantize_scale)

    def extra_repr(self) -> str:
        if self.dequantize_scale is None:
            return "int8 -> int8"
        return f"int8 -> float32, dequantize_scale={self.dequantize_scale:.6g}"


def _is_pool2x2(module: nn.Module | None) -> bool:
    if type(module) is not nn.MaxPool2d:
        return False
    assert isinstance(module, nn.MaxPool2d)
    pair = {module.kernel_size, module.stride} <= {2, (2, 2)}
    return (
        pair
        and module.padding in (0, (0, 0))
        and module.dilation in (1, (1, 1))
        and not module.ceil_mode
        and not module.return_indices
    )


def _direct_convolutions(model: nn.Module) -> dict[str, FrozenTernaryConv2d]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, FrozenTernaryConv2d) and module.direct is not None
    }


def _calibrated_ranges(
    model: nn.Module, calibration: torch.Tensor
) -> dict[str, tuple[float, float]]:
    """Per direct convolution's name: its input's absmax and its output's largest value over
    ``calibration``."""
    convs = _direct_convolutions(model)
    names = {module: name for name, module in convs.items()}
    absmax: dict[str, float] = {}
    output_max: dict[str, float] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[module]  # type: ignore[index]
        absmax[name] = max(absmax.get(name, 0.0), float(args[0].detach().abs().max()))
        # The largest positive output: the range after a ReLU, which every pooled output has.
        output_max[name] = max(output_max.get(name, 0.0), float(output.detach().max()))

    handles = [conv.register_forward_hook(record) for conv in convs.values()]
    try:
        for start in range(0, len(calibration), 64):
            chunk = calibration[start : start + 64]
            model(chunk)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (absmax[name], output_max[name]) for name in convs if name in absmax}


def _checked_ranges(
    model: nn.Module, ranges: Mapping[str, tuple[float, float]]
) -> dict[FrozenTernaryConv2d, tuple[float, float]]:
    convs = _direct_convolutions(model)
    unknown = sorted(set(ranges) - set(convs))
    if unknown:
        raise ValueError(
            f"ranges: {unknown} name no direct convolution of the model (it has {sorted(convs)})"
        )
    checked = {}
    for name, value in ranges.items():
        pair = tuple(value)
        if len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair):
            raise ValueError(
                f"ranges[{name!r}]: expected (input absmax, output max), got {value!r}"
            )
        checked[convs[name]] = (float(pair[0]), float(pair[1]))
    return checked


def _chain_in_int8(
    model: nn.Module, ranges: Mapping[FrozenTernaryConv2d, tuple[float, float]]
) -> None:
    """Fix every direct convolution's input scale from its calibrated range, then chain the
    convolutions of each Sequential in int8 (see :func:`freeze`)."""
    scales = {conv: a / 127.0 for conv, (a, _) in ranges.items() if 0.0 < a < float("inf")}
    relu_scales = {conv: m / 127.0 for conv, (_, m) in ranges.items() if 0.0 < m < float("inf")}
    int8_inputs: set[FrozenTernaryConv2d] = set()
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        _chain(sequential, scales, relu_scales, int8_inputs)
    for conv in _direct_convolutions(model).values():  # outside any chain: static float scale
        if conv.input_scale is None and conv in scales and conv not in int8_inputs:
            conv.configure(relu=conv.relu, input_scale=scales[conv], output_scale=conv.output_scale)


def _chain(
    sequential: nn.Sequential,
    scales: dict[FrozenTernaryConv2d, float],
    relu_scales: dict[FrozenTernaryConv2d, float],
    int8_inputs: set[FrozenTernaryConv2d],
) -> None:
    """Chain the direct convolutions of ``sequential`` in int8 (see :func:`freeze`):
    ``scales`` holds each one's calibrated input scale, ``relu_scales`` its output's after a
    ReLU; ``int8_inputs`` collects the convolutions that now take int8."""
    modules = sequential._modules
    names = list(modules)

    def next_index(index: int) -> int:
        while index < len(names) and isinstance(modules[names[index]], nn.Identity):
            index += 1
        return index

    for index, name in enumerate(names):
        conv = modules[name]
        if not isinstance(conv, FrozenTernaryConv2d) or conv.direct is None:
            continue
        position = next_index(index + 1)
        relu_at = pool_at = None
        if position < len(names) and type(modules[names[position]]) is nn.ReLU:
            relu_at, position = position, next_index(position + 1)
        if position < len(names) and _is_pool2x2(modules[names[position]]):
            pool_at, position = position, next_index(position + 1)
        consumer = modules[names[position]] if position < len(names) else None
        chained = (
            isinstance(consumer, FrozenTernaryConv2d)
            and consumer.direct is not None
            and consumer in scales
        )
        int8_input = conv in int8_inputs
        input_scale = scales.get(conv)
        if int8_input and input_scale is None:
            continue
        output_scale = None
        if chained:
            assert isinstance(consumer, FrozenTernaryConv2d)
            output_scale = scales[consumer]
            int8_inputs.add(consumer)
            if pool_at is not None:
                modules[names[pool_at]] = Int8MaxPool2d()
        elif pool_at is not None and relu_at is not None and conv in relu_scales:
            # Pooling float NCHW costs more than the whole convolution (torch's max_pool2d
            # at batch 64): pool the int8 output, then hand the float layers float32.
            output_scale = relu_scales[conv]
            modules[names[pool_at]] = Int8MaxPool2d(dequantize_scale=output_scale)
        conv.configure(
            relu=relu_at is not None,
            input_scale=input_scale,
            output_scale=output_scale,
            int8_input=int8_input,
        )
        if relu_at is not None:
            modules[names[relu_at]] = nn.Identity()


class FrozenLayer(TypedDict):
    """One row of :func:`frozen_summary`."""

    name: str
    layer: str
    runs_on: str
    weight_bytes: int


def frozen_summary(model: nn.Module) -> list[FrozenLayer]:
    """What runs where in a model from :func:`freeze`: one row per layer with weights (and
    per int8 pooling), saying whether codl's kernels or torch float32 run it, in which
    activation formats, and the bytes its weights take in memory."""
    rows: list[FrozenLayer] = []
    for name, module in model.named_modules():
        if isinstance(module, FrozenTernaryConv2d):
            if module.direct is not None:
                source = "int8 NHWC" if module.int8_input else "float32 NCHW"
                quant = "static scale" if module.input_scale is not None else "absmax per call"
                target = "int8 NHWC" if module.output_scale is not None else "float32 NCHW"
                relu = " + ReLU" if module.relu else ""
                runs = f"codl direct conv{relu}: {source} ({quant}) -> {target}"
                direct = module.direct.weight.nbytes()
            else:
                runs, direct = "codl im2col + ternary GEMM, float32 activations", 0
            rows.append(
                FrozenLayer(
                    name=name,
                    layer=f"FrozenTernaryConv2d {module.in_channels}->{module.out_channels}",
                    runs_on=runs,
                    weight_bytes=module.weight.nbytes() + direct,
                )
            )
        elif isinstance(module, FrozenTernaryLinear):
            rows.append(
                FrozenLayer(
                    name=name,
                    layer=f"FrozenTernaryLinear {module.in_features}->{module.out_features}",
                    runs_on=f"codl ternary GEMM, {module.weight.activations} activations",
                    weight_bytes=module.weight.nbytes(),
                )
            )
        elif isinstance(module, SparseLinear):
            rows.append(
                FrozenLayer(
                    name=name,
                    layer=f"SparseLinear {module.in_features}->{module.out_features}",
                    runs_on=f"codl sparse int8 ({module.layout}), {module.sparsity:.1%} zeros",
                    weight_bytes=sum(
                        b.numel() * b.element_size() for b in module.buffers() if b is not None
                    ),
                )
            )
        elif isinstance(module, Int8MaxPool2d):
            target = "int8" if module.dequantize_scale is None else "float32 NCHW"
            rows.append(
                FrozenLayer(
                    name=name,
                    layer="max-pool 2x2",
                    runs_on=f"codl int8 -> {target}",
                    weight_bytes=0,
                )
            )
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            parameters = sum(p.numel() * p.element_size() for p in module.parameters())
            rows.append(
                FrozenLayer(
                    name=name,
                    layer=type(module).__name__,
                    runs_on="torch float32",
                    weight_bytes=parameters,
                )
            )
    return rows
