"""``codl.info()``: what codl was built with and what it chose for this CPU."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

import codl
from codl import _ops


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def info() -> dict[str, Any]:
    """A dict: version, compiler, ISAs built, CPU features, dispatch level selected, threads.

    ``dispatch`` is the level the kernels run at now; ``best_dispatch`` is what detection chose
    (they differ when ``CODL_CPU_DISPATCH`` or :func:`codl.set_dispatch_level` forced another).
    """
    native = _ops.native_info()
    return {
        "version": codl.__version__,
        "compiler": native["compiler"],
        "arch": native["arch"],
        "cpu": _cpu_model(),
        "isas_built": native["isas_built"],
        "isas_runnable": native["isas_runnable"],
        "cpu_features": native["cpu_features"],
        "sve_vector_bits": native["sve_vector_bits"],
        "dispatch": native["dispatch"],
        "best_dispatch": native["best_dispatch"],
        "threads": _ops.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
