"""``TernaryConfig``: how :func:`codl.quantize_` ternarizes a model.

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

from torch import nn

from codl.ternary.packed import Activations, check_activations
from codl.ternary.ternarize import Granularity, Method, check_ternary_options

__all__ = ["FilterFn", "TernaryConfig"]

#: ``filter_fn(module, fully_qualified_name) -> bool``: ``False`` keeps the module float.
FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class TernaryConfig:
    """How :func:`codl.quantize_` ternarizes a model.

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
        activations: what :func:`codl.nn.freeze` does with the swapped layers'
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
        check_activations(self.activations)
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
