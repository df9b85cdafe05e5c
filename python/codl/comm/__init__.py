"""Compressed gradient communication on torch.distributed (gloo on CPU, NCCL on GPU).

Codecs (:mod:`codl.comm.codecs`) turn a flat float32 gradient into an exact byte payload; the
collectives built on them keep every rank's result bitwise identical.
"""

from __future__ import annotations

from codl.comm.codecs import BF16, FP16, Codec
from codl.comm.collectives import CollectiveState, NonFiniteGradientError, allreduce

__all__ = ["BF16", "FP16", "Codec"]
__all__ += ["CollectiveState", "NonFiniteGradientError", "allreduce"]
