"""Neural-network layers of codl (``codl.nn``), used next to :mod:`torch.nn`, and the model
conversions built on them.

* :class:`TernaryLinear`, :class:`TernaryConv2d`: ternary-weight layers trained through the
  straight-through estimator (latent float weights, forward with ``alpha * codes``).
* :class:`FrozenTernaryLinear`, :class:`FrozenTernaryConv2d`: the packed inference forms, from
  ``layer.freeze()``.
* :func:`quantize_` (also ``codl.quantize_``): swap a float model's ``nn.Linear``/``nn.Conv2d``
  for ternary layers in place, configured by :class:`codl.TernaryConfig`;
  :func:`sparsity_report` lists each layer's sparsity.
* :func:`freeze`: an inference copy of a trained model, ternary layers packed
  (``packing="2bit"|"base3"``, ``activations="int8"|"float"``) and their BatchNorms folded in;
  with ``calibration=`` images, static activation scales and convolutions chained in int8;
  :func:`frozen_summary` lists what runs where; :func:`fuse` runs a frozen chain of layers by
  one call into the core (small models at small batches).

>>> model = codl.quantize_(model, codl.TernaryConfig(overrides={"0": None}))  # doctest: +SKIP
>>> codl.nn.sparsity_report(model)  # doctest: +SKIP
"""

from __future__ import annotations

from codl.nn.convert import (
    FrozenLayer,
    Int8MaxPool2d,
    LayerSparsity,
    freeze,
    frozen_summary,
    quantize_,
    sparsity_report,
)
from codl.nn.fused import FusedChain, fuse
from codl.nn.ternary import (
    FrozenTernaryConv2d,
    FrozenTernaryLinear,
    TernaryConv2d,
    TernaryLinear,
)

__all__ = [
    "FrozenLayer",
    "FrozenTernaryConv2d",
    "FrozenTernaryLinear",
    "FusedChain",
    "Int8MaxPool2d",
    "LayerSparsity",
    "TernaryConv2d",
    "TernaryLinear",
    "freeze",
    "frozen_summary",
    "fuse",
    "quantize_",
    "sparsity_report",
]
