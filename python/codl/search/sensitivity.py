"""Per-layer sensitivity: the accuracy a model loses, and the bytes a layer takes in a ``.codl``
file, when only that layer is pruned and quantized.

For each weight and each candidate :class:`Setting` (a sparsity and a bit width, or ternary, or
neither), :func:`measure_sensitivity` encodes the weight exactly as :func:`codl.save` would
(:func:`codl.formats.encodings.encode`: the magnitude mask, the k-means codebook or TWN codes,
the packing and the DEFLATE streams), so its packed size is the real number of bytes the file
spends on that tensor and its dequantized values are exactly what :func:`codl.load` returns;
it then puts those values into a copy of the model and measures the accuracy on the validation
data. This is the one-layer-at-a-time sensitivity analysis of Han et al. (Deep Compression's
"sensitivity of pruning each layer", NeurIPS 2015, Fig. 6) and of the accuracy-driven mixed
precision tuners (Intel Neural Compressor; HAWQ-V3, Yao et al., ICML 2021), with the drop
measured on data rather than estimated from curvature.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from codl.formats.codec import DEFAULT_LEVEL
from codl.formats.encodings import encode
from codl.formats.spec import CompressionSpec

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_SPARSITIES",
    "Bits",
    "SensitivityRow",
    "Setting",
    "candidate_settings",
    "measure_sensitivity",
    "packed_bytes",
    "searchable_weights",
]

Bits = Union[int, Literal["ternary"], None]
Split = tuple[torch.Tensor, torch.Tensor]

DEFAULT_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_BITS: tuple[Bits, ...] = ("ternary", 2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Setting:
    """How one weight is stored: ``prune`` (fraction of smallest magnitudes removed) and
    ``bits`` (k-means codebook width 1..8, ``"ternary"`` for TWN codes, ``None`` for the kept
    values stored exactly)."""

    prune: float = 0.0
    bits: Bits = None

    def spec(self) -> CompressionSpec | None:
        """The :class:`codl.formats.CompressionSpec` (``None``: lossless)."""
        if self.prune == 0.0 and self.bits is None:
            return None
        if self.bits == "ternary":
            return CompressionSpec(prune=self.prune, method="ternary")
        if self.bits is None:
            return CompressionSpec(prune=self.prune)
        return CompressionSpec(prune=self.prune, bits=self.bits, method="kmeans")

    def plan_entry(self) -> dict[str, Any] | None:
        """The JSON-ready plan value (``None``: stored losslessly)."""
        spec = self.spec()
        return None if spec is None else spec.to_dict()

    @property
    def precision(self) -> float:
        """Bits per stored value: 32 for exact float32 values, log2(3) for ternary codes."""
        if self.bits is None:
            return 32.0
        if self.bits == "ternary":
            return 1.585
        return float(self.bits)

    def label(self) -> str:
        bits = "float" if self.bits is None else str(self.bits)
        return f"prune {self.prune:g}, {bits}"


def candidate_settings(sparsities: Sequence[float], bits: Sequence[Bits]) -> list[Setting]:
    """Every pairing of a sparsity and a bit width (``None``, exact values, always included),
    lossless first; each is checked by building its spec, so a bad value fails here."""
    if not sparsities:
        raise ValueError("sparsities: expected at least one value, received none")
    for b in bits:
        if b is not None and b != "ternary" and (isinstance(b, bool) or not isinstance(b, int)):
            raise TypeError(f"bits: expected ints 1..8, 'ternary' or None, received {b!r}")
    settings = [Setting()]
    for prune in sorted(set(sparsities)):
        for width in [None, *(b for b in bits if b is not None)]:
            setting = Setting(float(prune), width)
            try:
                setting.spec()
            except (TypeError, ValueError) as error:
                raise type(error)(f"sparsities/bits: {error}") from None
            if setting not in settings:
                settings.append(setting)
    return settings


def packed_bytes(
    name: str, tensor: torch.Tensor, setting: Setting, level: int = DEFAULT_LEVEL
) -> int:
    """Bytes of ``tensor``'s streams in a ``.codl`` file when stored with ``setting`` (the
    header entry, ~200 bytes of JSON before DEFLATE, is not counted)."""
    encoded = encode(name, tensor, setting.spec(), level=level)
    return sum(len(stream.data) for stream in encoded.streams.values())


@dataclass(frozen=True)
class SensitivityRow:
    """One layer under one setting: its packed bytes and the accuracy (percent) of the model
    with only this layer compressed; ``drop`` = baseline - accuracy, in points."""

    layer: str
    prune: float
    bits: Bits
    packed_bytes: int
    accuracy: float
    drop: float

    @property
    def setting(self) -> Setting:
        return Setting(self.prune, self.bits)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(model: nn.Module, data: Split) -> float:
    from codl.prune import evaluate

    return evaluate(model, *data)


def _check_split(data: object) -> Split:
    if (
        not isinstance(data, tuple)
        or len(data) != 2
        or not all(isinstance(t, torch.Tensor) for t in data)
    ):
        raise TypeError("val_data: expected an (images, labels) tuple of tensors")
    images, labels = data
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            f"val_data: expected as many labels as images (at least one), received "
            f"{len(images)} images and {len(labels)} labels"
        )
    return images, labels


def searchable_weights(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """State_dict names of the weights to search: every Linear/Conv weight
    (:func:`codl.prune.prunable_weights`), or ``layers`` checked against the state_dict."""
    from codl.prune import prunable_weights

    if layers is None:
        return list(prunable_weights(model))
    state = model.state_dict()
    unknown = [name for name in layers if name not in state]
    if unknown:
        raise ValueError(f"layers: {unknown} are not tensors of the model's state_dict")
    bad = [n for n in layers if not state[n].is_floating_point() or state[n].dim() < 1]
    if bad:
        raise ValueError(f"layers: {bad} are not floating-point tensors of 1+ dimensions")
    return list(layers)


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    val_data: Split,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    bits: Sequence[Bits] = DEFAULT_BITS,
    layers: Sequence[str] | None = None,
    level: int = DEFAULT_LEVEL,
    progress: bool = True,
) -> tuple[float, list[SensitivityRow]]:
    """The baseline accuracy on ``val_data`` and one :class:`SensitivityRow` per layer and
    setting (``model`` itself is never modified: a copy is)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, received {type(model).__name__}")
    data = _check_split(val_data)
    names = searchable_weights(model, layers)
    settings = candidate_settings(sparsities, bits)
    work = copy.deepcopy(model).eval()
    baseline = _evaluate(work, data)
    state = work.state_dict()  # tensors sharing storage with the copy's parameters
    rows: list[SensitivityRow] = []
    total = len(names) * len(settings)
    with tqdm(total=total, desc="layer sensitivity", disable=not progress) as bar:
        for name in names:
            target = state[name]
            original = target.detach().clone()
            for setting in settings:
                encoded = encode(name, original, setting.spec(), level=level)
                size = sum(len(stream.data) for stream in encoded.streams.values())
                if setting.spec() is None:
                    accuracy = baseline  # stored exactly: the model is unchanged
                else:
                    assert encoded.preview is not None
                    target.copy_(encoded.preview)
                    accuracy = _evaluate(work, data)
                    target.copy_(original)
                rows.append(
                    SensitivityRow(
                        name, setting.prune, setting.bits, size, accuracy, baseline - accuracy
                    )
                )
                bar.update(1)
    return baseline, rows
