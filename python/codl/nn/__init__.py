"""Neural-network layers of codl (``codl.nn``), used next to :mod:`torch.nn`.

* :class:`TernaryLinear`, :class:`TernaryConv2d`: ternary-weight layers trained through the
  straight-through estimator (latent float weights, forward with ``alpha * codes``); usually
  created by :func:`codl.quantize_` from a float model.
* :class:`FrozenTernaryLinear`: the packed inference form, from :meth:`TernaryLinear.freeze`.
"""

from __future__ import annotations

from codl.nn.ternary import FrozenTernaryLinear, TernaryConv2d, TernaryLinear

__all__ = ["FrozenTernaryLinear", "TernaryConv2d", "TernaryLinear"]
