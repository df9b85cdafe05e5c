"""Compressed gradient communication on torch.distributed (gloo on CPU, NCCL on GPU).

Codecs (:mod:`codl.comm.codecs`) turn a flat float32 gradient into an exact byte payload; the
collectives built on them keep every rank's result bitwise identical.
"""

from __future__ import annotations

from codl.comm.codecs import BF16, FP16, QSGD, Codec, Int8, SignEF, TernGrad, TopK
from codl.comm.collectives import CollectiveState, NonFiniteGradientError, allreduce
from codl.comm.hook import HookState, ddp_hook
from codl.comm.linkmodel import (
    EmulatedLink,
    StepProfile,
    profile_step,
    project,
    with_measured_overhead,
)
from codl.comm.powersgd import PowerSGD

__all__ = ["BF16", "FP16", "Codec"]
__all__ += ["QSGD", "Int8", "SignEF", "TernGrad", "TopK"]
__all__ += ["CollectiveState", "NonFiniteGradientError", "allreduce"]
__all__ += ["HookState", "PowerSGD", "ddp_hook"]
__all__ += ["EmulatedLink", "StepProfile", "profile_step", "project", "with_measured_overhead"]
