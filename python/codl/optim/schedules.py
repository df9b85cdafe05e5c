"""Learning-rate warm-up then polynomial decay, for large mini-batches (Osawa et al. 2019).

Osawa et al. (CVPR 2019, "Large-scale distributed second-order optimization using
Kronecker-factored approximate curvature", §5) train ResNet-50 with K-FAC at batch 32K using a
warm-up of the learning rate over the first epochs followed by the polynomial decay
``η(e) = η₀ (1 - (e - e_start)/(e_end - e_start))^p_decay``.
:func:`warmup_polynomial_decay_factor` is that schedule as a factor of the base learning rate;
:func:`warmup_polynomial_decay` wraps it in a ``LambdaLR`` for any torch optimizer (SGD, Adam,
KFAC).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["warmup_polynomial_decay", "warmup_polynomial_decay_factor"]


def _check_number(value: object, name: str, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, received {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise ValueError(f"{name}: expected a finite number in [{low}, {high}], received {value!r}")
    return float(value)


def _check_steps(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, received {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, received {value}")
    return value


def warmup_polynomial_decay_factor(
    total_steps: int,
    warmup_steps: int = 0,
    *,
    start_factor: float = 0.0,
    end_factor: float = 0.0,
    warmup_power: float = 1.0,
    decay_power: float = 2.0,
) -> Callable[[int], float]:
    """The factor ``f(step)`` of the base learning rate.

    Warm-up for ``step < warmup_steps``: ``start + (1 - start)·(step / warmup_steps)^warmup_power``
    (linear by default). Then polynomial decay to ``end_factor`` at ``total_steps``:
    ``end + (1 - end)·(1 - t)^decay_power`` with ``t = (step - warmup)/(total - warmup)``,
    clamped to [0, 1] (so the factor stays at ``end_factor`` after ``total_steps``).
    """
    total = _check_steps(total_steps, "total_steps", 1)
    warmup = _check_steps(warmup_steps, "warmup_steps", 0)
    if warmup >= total:
        raise ValueError(
            f"warmup_steps: expected fewer than total_steps={total}, received {warmup}"
        )
    start = _check_number(start_factor, "start_factor", 0.0, 1.0)
    end = _check_number(end_factor, "end_factor", 0.0, 1.0)
    p_warmup = _check_number(warmup_power, "warmup_power", 0.0)
    p_decay = _check_number(decay_power, "decay_power", 0.0)

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * float((step / warmup) ** p_warmup)
        t = min(1.0, max(0.0, (step - warmup) / (total - warmup)))
        return end + (1.0 - end) * float((1.0 - t) ** p_decay)

    return factor


def warmup_polynomial_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    **options: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR(optimizer, warmup_polynomial_decay_factor(...))``: call ``scheduler.step()``
    once per optimizer step. Works with SGD, Adam, KFAC or any ``torch.optim.Optimizer``;
    ``options`` are those of :func:`warmup_polynomial_decay_factor`."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer: expected a torch.optim.Optimizer, received {type(optimizer).__name__}"
        )
    factor = warmup_polynomial_decay_factor(total_steps, warmup_steps, **options)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
