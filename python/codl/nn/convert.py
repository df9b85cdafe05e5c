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
from typing import TypedDict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from codl.nn.ternary import TernaryConv2d, TernaryLinear, fold_ternary
from codl.ternary.config import TernaryConfig
from codl.ternary.packed import Activations, Packing, check_inference_options

__all__ = ["LayerSparsity", "freeze", "quantize_", "sparsity_report"]

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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    check_inference_options(packing, "int8" if activations is None else activations)
    frozen = copy.deepcopy(model).eval()
    if isinstance(frozen, (TernaryLinear, TernaryConv2d)):
        return fold_ternary(frozen, None, activations, packing)
    with torch.no_grad():
        _freeze_children(frozen, activations, packing)
    return frozen
