"""``quantize_``: swap a float model's linear and convolution layers for ternary ones, in place.

The idiom is torchao's (``quantize_(model, config)`` with a frozen config object and a
``filter_fn``), extended with per-module overrides by name::

    model = codl.quantize_(model, codl.TernaryConfig(
        method="twn", granularity="row",
        overrides={"features.0": None,                       # keep the first conv float
                   "classifier.4": codl.TernaryConfig(method="threshold", rho=0.05)},
    ))

The ternary layers and the rules are described in :mod:`codl.nn.ternary` and
:func:`codl.ternary.ternarize` (Ternary Weight Networks, F. Li, B. Zhang and B. Liu,
arXiv:1605.04711, 2016).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from torch import nn

from codl.ternary.ternarize import Granularity, Method, check_ternary_options

if TYPE_CHECKING:
    from codl.ternary.packed import Activations

__all__ = ["LayerSparsity", "TernaryConfig", "quantize_", "sparsity_report"]

#: ``filter_fn(module, fully_qualified_name) -> bool``: ``False`` keeps the module float.
FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class TernaryConfig:
    """How :func:`quantize_` ternarizes a model.

    Attributes:
        method: ``"twn"`` (threshold ``0.7 * mean|W|``) or ``"threshold"`` (fixed ``rho``).
        rho: the threshold for ``method="threshold"`` (required there, ``>= 0``); ``None``
            for ``"twn"``.
        granularity: ``"row"`` (a scale per output feature / channel, the default, as the
            packed kernel stores) or ``"tensor"``.
        skip_first_and_last: keep the first and the last eligible module (in
            ``model.named_modules()`` order, which is registration order: the forward order
            for ``nn.Sequential`` models) in float, as XNOR-Net (Rastegari et al. 2016),
            DoReFa-Net (Zhou et al. 2016) and Trained Ternary Quantization (Zhu et al. 2017)
            do: those layers are small and the most sensitive to quantization. Default
            ``False``: everything eligible is ternarized.
        overrides: per-module settings keyed by the fully qualified name of
            ``model.named_modules()`` (``"features.0"``): a :class:`TernaryConfig` (its
            ``method``, ``rho`` and ``granularity`` apply to that module; it must not carry
            overrides, a ``filter_fn`` or ``skip_first_and_last`` itself) or ``None`` to keep
            that module float. An override wins over ``filter_fn`` and
            ``skip_first_and_last``.
        filter_fn: optional ``filter_fn(module, name) -> bool``; modules for which it returns
            ``False`` stay float (unless named in ``overrides``).
        activations: what :func:`codl.ternary.freeze` does with the swapped layers'
            activations: ``"int8"`` (the default: quantized per row, integer sums) or
            ``"float"`` (kept float32: slower, no activation rounding). Overrides may set it
            per module.

    Eligible modules are exactly :class:`torch.nn.Linear` and :class:`torch.nn.Conv2d` with
    ``groups=1``. Subclasses are left alone (their forward may differ from the base class's,
    e.g. the output projection of :class:`torch.nn.MultiheadAttention`, whose weight is read
    directly), and so are modules that are already ternary.
    """

    method: Method = "twn"
    rho: float | None = None
    granularity: Granularity = "row"
    skip_first_and_last: bool = False
    overrides: Mapping[str, TernaryConfig | None] = field(default_factory=dict)
    filter_fn: FilterFn | None = None
    activations: Activations = "int8"

    def __post_init__(self) -> None:
        check_ternary_options(self.method, self.rho, self.granularity)
        if self.activations not in ("int8", "float"):
            raise ValueError(
                f"activations: expected 'int8' or 'float', received {self.activations!r}"
            )
        if not isinstance(self.overrides, Mapping):
            raise TypeError(
                "overrides must be a mapping from module name to TernaryConfig or None, "
                f"got {type(self.overrides).__name__}"
            )
        for name, override in self.overrides.items():
            if not isinstance(name, str):
                raise TypeError(f"override names must be str, got {type(name).__name__}")
            if override is None:
                continue
            if not isinstance(override, TernaryConfig):
                raise TypeError(
                    f"overrides[{name!r}] must be a TernaryConfig or None, "
                    f"got {type(override).__name__}"
                )
            if override.overrides or override.filter_fn is not None or override.skip_first_and_last:
                raise ValueError(
                    f"overrides[{name!r}] applies to one module: expected only method, rho and "
                    "granularity set, got a config with its own overrides, filter_fn or "
                    "skip_first_and_last"
                )
        if self.filter_fn is not None and not callable(self.filter_fn):
            raise TypeError(f"filter_fn must be callable, got {type(self.filter_fn).__name__}")
        # A private copy, so that mutating the caller's dict later does not change this config.
        object.__setattr__(self, "overrides", dict(self.overrides))


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
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

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
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

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
    from codl.nn.ternary import TernaryConv2d, TernaryLinear

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
