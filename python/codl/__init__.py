"""codl: co-design for deep learning on CPUs.

Submodules load on first use (PEP 562), so ``import codl.data`` does not pay for the C++
extension and ``import codl`` stays cheap until a kernel is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY_SUBMODULES = (
    "apps",
    "bench",
    "cli",
    "comm",
    "data",
    "demo",
    "distill",
    "formats",
    "kernels",
    "linalg",
    "models",
    "nn",
    "optim",
    "prune",
    "quant",
    "robust",
    "search",
    "ternary",
    "training",
)
_LAZY_ATTRIBUTES = {
    "info": "codl._info",
    "get_num_threads": "codl._ops",
    "set_num_threads": "codl._ops",
    "get_dispatch_level": "codl._ops",
    "set_dispatch_level": "codl._ops",
    "quantize_": "codl.nn",
    "TernaryConfig": "codl.ternary",
    "save": "codl.formats",
    "load": "codl.formats",
    "load_into": "codl.formats",
    "FormatError": "codl.formats",
}

__all__ = [*_LAZY_SUBMODULES, *_LAZY_ATTRIBUTES, "__version__"]

if TYPE_CHECKING:
    from codl import bench as bench
    from codl import cli as cli
    from codl import comm as comm
    from codl import data as data
    from codl import demo as demo
    from codl import distill as distill
    from codl import formats as formats
    from codl import kernels as kernels
    from codl import linalg as linalg
    from codl import models as models
    from codl import nn as nn
    from codl import optim as optim
    from codl import prune as prune
    from codl import quant as quant
    from codl import robust as robust
    from codl import search as search
    from codl import ternary as ternary
    from codl import training as training
    from codl._info import info as info
    from codl._ops import get_dispatch_level as get_dispatch_level
    from codl._ops import get_num_threads as get_num_threads
    from codl._ops import set_dispatch_level as set_dispatch_level
    from codl._ops import set_num_threads as set_num_threads
    from codl.formats import FormatError as FormatError
    from codl.formats import load as load
    from codl.formats import load_into as load_into
    from codl.formats import save as save
    from codl.nn import quantize_ as quantize_
    from codl.ternary import TernaryConfig as TernaryConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"codl.{name}")
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'codl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
