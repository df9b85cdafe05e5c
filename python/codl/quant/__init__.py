"""Quantization of weights for storage: fewer bits per weight.

* :func:`kmeans_quantize` / :func:`kmeans_`: k-means weight sharing with ``b``-bit codebooks and
  codebook fine-tuning (Deep Compression, Han et al., ICLR 2016, §3).
* :func:`linear_quantize`: linear per-channel int8 and int4 codes with float32 scales.
* Ternary codes ({-1, 0, +1} with a scale per row, TWN) are one more encoding; they live in
  :mod:`codl.ternary` (:func:`codl.ternary.ternarize`), which also trains and runs them.

The ``.codl`` format stores each encoding packed and DEFLATE-compressed.
"""

from __future__ import annotations

from codl.quant.kmeans import (
    KMeansQuantizer,
    check_bits,
    kmeans_,
    kmeans_dequantize,
    kmeans_quantize,
)
from codl.quant.linear import linear_dequantize, linear_quantize

__all__ = [
    "KMeansQuantizer",
    "check_bits",
    "kmeans_",
    "kmeans_dequantize",
    "kmeans_quantize",
    "linear_dequantize",
    "linear_quantize",
]
