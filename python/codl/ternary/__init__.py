"""Ternary weights ``{-alpha, 0, +alpha}`` for PyTorch models (``codl.ternary``).

* :func:`ternarize`: codes in {-1, 0, +1} and scales, by Ternary Weight Networks' rule
  (``delta = 0.7 * mean|W|``; F. Li, B. Zhang and B. Liu, arXiv:1605.04711, 2016) or a fixed
  threshold ``rho``, per tensor or per row.
* :class:`TernaryConfig`, :func:`quantize_`: swap a model's ``nn.Linear``/``nn.Conv2d`` for
  :class:`codl.nn.TernaryLinear`/:class:`codl.nn.TernaryConv2d` in place (torchao's idiom),
  with per-module overrides by name; :func:`sparsity_report` lists each layer's sparsity.
* :class:`PackedTernaryWeight`, :func:`pack_weight`, :func:`ternary_linear`,
  :func:`ternary_conv2d`: the frozen inference weight (2-bit or base-3 1.6-bit packing) and its
  kernels (int8 activations with integer sums, or float32 activations with the 2-bit packing).
* :func:`freeze`: an inference copy of a trained model, ternary layers packed
  (``packing="2bit"|"base3"``, ``activations="int8"|"float"``) and their BatchNorms folded in;
  :func:`export_c`: a frozen model as portable C.

>>> model = codl.quantize_(model, codl.TernaryConfig(overrides={"0": None}))  # doctest: +SKIP
>>> codl.ternary.sparsity_report(model)  # doctest: +SKIP
"""

from __future__ import annotations

from codl.ternary.config import LayerSparsity, TernaryConfig, quantize_, sparsity_report
from codl.ternary.export_c import export_c
from codl.ternary.freeze import FrozenTernaryConv2d, freeze
from codl.ternary.packed import PackedTernaryWeight, pack_weight, ternary_conv2d, ternary_linear
from codl.ternary.ternarize import TernaryResult, ternarize

__all__ = [
    "FrozenTernaryConv2d",
    "LayerSparsity",
    "PackedTernaryWeight",
    "TernaryConfig",
    "TernaryResult",
    "export_c",
    "freeze",
    "pack_weight",
    "quantize_",
    "sparsity_report",
    "ternarize",
    "ternary_conv2d",
    "ternary_linear",
]
