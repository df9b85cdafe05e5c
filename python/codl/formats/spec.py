"""Compression plans: which tensors :func:`codl.save` prunes and quantizes, and how.

A plan is a plain mapping, serialisable as JSON (``codl.search.compression_plan`` produces
one; ``codl compress --prune --bits`` builds ``{"*": {...}}``)::

    plan = {
        "features.0.weight": {"bits": 8, "method": "linear"},    # exact name
        "classifier.*": {"prune": 0.9, "bits": 5},               # glob, k-means by default
        "features.*": {"method": "ternary"},
        "classifier.2.weight": None,                             # keep this one lossless
    }

Each value is a :class:`CompressionSpec` or a dict of its fields (or ``None``: lossless).
A tensor takes the entry of its exact name if there is one, else the first glob (``fnmatch``
syntax, in the plan's order) that matches it. Globs match only floating-point tensors of at
least two dimensions (weight matrices and convolution kernels), so ``"*"`` leaves biases,
BatchNorm statistics and counters lossless; name a 1-D tensor exactly to compress it. Tensors
no entry matches are stored losslessly.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

import torch

__all__ = ["METHODS", "CompressionSpec", "Method", "Plan", "resolve_plan"]

Method = Literal["kmeans", "linear", "ternary"]
METHODS: Final[tuple[str, ...]] = ("kmeans", "linear", "ternary")

#: Bits each method accepts (ternary is always 2-bit codes).
_BITS: Final[dict[str, tuple[int, int]]] = {"kmeans": (1, 8), "linear": (2, 8), "ternary": (2, 2)}


@dataclass(frozen=True)
class CompressionSpec:
    """How one tensor is stored.

    Attributes:
        prune: fraction of entries (smallest magnitudes, :func:`codl.prune.magnitude_mask`)
            removed, in [0, 1); the kept ones are stored with their positions (delta-coded).
        bits: bits per stored value: k-means codebook of ``2^bits`` float32 centroids
            (1..8), linear per-channel codes (2..8: int8 and int4 are 8 and 4), or ``None``
            to keep the (kept) values exactly.
        method: ``"kmeans"`` (Deep Compression's weight sharing, the default when ``bits`` is
            given), ``"linear"`` (symmetric per-output-channel scales) or ``"ternary"`` (TWN
            codes {-1, 0, +1} with per-row scales, codl's 2-bit packing; ``bits`` 2 or None).
    """

    prune: float = 0.0
    bits: int | None = None
    method: Method | None = None

    def __post_init__(self) -> None:
        prune = self.prune
        if isinstance(prune, bool) or not isinstance(prune, (int, float)):
            raise TypeError(f"prune: expected a float in [0, 1), received {type(prune).__name__}")
        if not math.isfinite(prune) or not 0.0 <= prune < 1.0:
            raise ValueError(f"prune: expected a float in [0, 1), received {prune!r}")
        object.__setattr__(self, "prune", float(prune))
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, received {self.method!r}")
        if self.bits is not None and (
            isinstance(self.bits, bool) or not isinstance(self.bits, int)
        ):
            raise TypeError(f"bits: expected an int or None, received {type(self.bits).__name__}")
        method = self.method
        if method is None and self.bits is not None:
            method = "kmeans"
        if method == "ternary" and self.bits is None:
            object.__setattr__(self, "bits", 2)
        if method is not None:
            low, high = _BITS[method]
            if self.bits is None:
                raise ValueError(f"bits: method {method!r} needs bits ({low}..{high})")
            if not low <= self.bits <= high:
                raise ValueError(
                    f"bits: expected {low}..{high} for method {method!r}, received {self.bits}"
                )
        object.__setattr__(self, "method", method)

    @property
    def lossless(self) -> bool:
        return self.prune == 0.0 and self.method is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, value: CompressionSpec | Mapping[str, Any], where: str = "spec") -> CompressionSpec:
        """A spec from itself or a dict of its fields; errors name ``where``."""
        if isinstance(value, CompressionSpec):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{where}: expected a CompressionSpec, a dict or None, received "
                f"{type(value).__name__}"
            )
        unknown = sorted(set(value) - {"prune", "bits", "method"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown} (expected prune, bits, method)")
        try:
            return cls(**value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from None


Plan = Mapping[str, CompressionSpec | Mapping[str, Any] | None]


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _glob_eligible(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.dim() >= 2


def resolve_plan(
    plan: Plan | None, tensors: Mapping[str, torch.Tensor]
) -> dict[str, CompressionSpec | None]:
    """The spec of every tensor (None: lossless), following the rules in the module docstring.

    Raises ValueError for an exact name that is not a tensor of ``tensors`` (a typo would
    otherwise silently store it losslessly) or that names a tensor no method can compress.
    """
    if plan is None:
        return dict.fromkeys(tensors)
    if not isinstance(plan, Mapping):
        raise TypeError(
            f"plan: expected a dict of name or glob -> spec, received {type(plan).__name__}"
        )
    specs: dict[str, CompressionSpec | None] = {}
    for key, value in plan.items():
        if not isinstance(key, str):
            raise TypeError(f"plan: expected str keys (names or globs), received {key!r}")
        specs[key] = None if value is None else CompressionSpec.of(value, f"plan[{key!r}]")
    exact = {k: v for k, v in specs.items() if not _is_glob(k)}
    missing = sorted(set(exact) - set(tensors))
    if missing:
        raise ValueError(f"plan: names {missing} are not tensors of the state_dict")
    globs = [(k, v) for k, v in specs.items() if _is_glob(k)]
    resolved: dict[str, CompressionSpec | None] = {}
    for name, tensor in tensors.items():
        if name in exact:
            spec = exact[name]
            if spec is not None and not spec.lossless and not tensor.is_floating_point():
                raise ValueError(
                    f"plan[{name!r}]: expected a floating-point tensor to prune or quantize, "
                    f"received {tensor.dtype}"
                )
            if spec is not None and not spec.lossless and tensor.dim() == 0:
                raise ValueError(f"plan[{name!r}]: a 0-dim tensor cannot be pruned or quantized")
        else:
            spec = None
            if _glob_eligible(tensor):
                spec = next((s for k, s in globs if fnmatch.fnmatchcase(name, k)), None)
        resolved[name] = None if spec is None or spec.lossless else spec
    return resolved


def plan_to_json(plan: Plan | None) -> dict[str, Any] | None:
    """The plan as JSON-ready data (for the file's metadata)."""
    if plan is None:
        return None
    return {
        k: None if v is None else CompressionSpec.of(v, f"plan[{k!r}]").to_dict()
        for k, v in plan.items()
    }
