"""Ternary weights ``{-alpha, 0, +alpha}``: the primitives under :mod:`codl.nn`'s ternary layers
(``codl.ternary``).

* :func:`ternarize`: codes in {-1, 0, +1} and scales, by Ternary Weight Networks' rule
  (``delta = 0.7 * mean|W|``; F. Li, B. Zhang and B. Liu, arXiv:1605.04711, 2016) or a fixed
  threshold ``rho``, per tensor or per row.
* :class:`TernaryConfig`: the settings of :func:`codl.quantize_`, which swaps a model's
  ``nn.Linear``/``nn.Conv2d`` for :class:`codl.nn.TernaryLinear`/:class:`codl.nn.TernaryConv2d`
  in place (torchao's idiom), with per-module overrides by name.
* :class:`PackedTernaryWeight`, :func:`pack_weight`, :func:`ternary_linear`,
  :func:`ternary_conv2d`: the frozen inference weight (2-bit or base-3 1.6-bit packing) and its
  kernels (int8 activations with integer sums, or float32 activations with the 2-bit packing).
* :func:`export_c`: a frozen model (:func:`codl.nn.freeze`) as portable C.
"""

from __future__ import annotations

from codl.ternary.config import TernaryConfig
from codl.ternary.export_c import export_c
from codl.ternary.packed import PackedTernaryWeight, pack_weight, ternary_conv2d, ternary_linear
from codl.ternary.ternarize import TernaryResult, ternarize

__all__ = [
    "PackedTernaryWeight",
    "TernaryConfig",
    "TernaryResult",
    "export_c",
    "pack_weight",
    "ternarize",
    "ternary_conv2d",
    "ternary_linear",
]
