"""Hyperparameters that are a number or a callable of the step (the kfac-pytorch convention).

``damping=1e-3`` and ``damping=lambda step: 1e-2 if step < 500 else 1e-3`` are both accepted.
Numbers are checked when the optimizer is built; a callable's value is checked each time it is
read, and a bad value raises the same ``ValueError``/``TypeError`` naming the hyperparameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

__all__ = ["FloatHyper", "IntHyper", "check_float", "check_int", "resolve_float", "resolve_int"]

FloatHyper = float | Callable[[int], float]
IntHyper = int | Callable[[int], int]


def _float_value(value: object, name: str, low: float, high: float, *, open_low: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, received {type(value).__name__} {value!r}")
    number = float(value)
    below = number <= low if open_low else number < low
    if not math.isfinite(number) or below or number > high:
        bound = "(" if open_low else "["
        raise ValueError(
            f"{name}: expected a finite number in {bound}{low}, {high}], received {value!r}"
        )
    return number


def check_float(
    value: object, name: str, *, low: float = 0.0, high: float = math.inf, open_low: bool = False
) -> FloatHyper:
    """Validate a float hyperparameter (a number in range, or any callable)."""
    if callable(value):
        return cast(Callable[[int], float], value)
    return _float_value(value, name, low, high, open_low=open_low)


def resolve_float(
    value: FloatHyper,
    name: str,
    step: int,
    *,
    low: float = 0.0,
    high: float = math.inf,
    open_low: bool = False,
) -> float:
    """The value at ``step``: the number itself or ``value(step)``, checked like a number."""
    if callable(value):
        return _float_value(value(step), f"{name}({step})", low, high, open_low=open_low)
    return float(value)


def _int_value(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, received {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, received {value}")
    return value


def check_int(value: object, name: str, *, low: int = 1) -> IntHyper:
    """Validate an int hyperparameter (an int >= ``low``, or any callable)."""
    if callable(value):
        return cast(Callable[[int], int], value)
    return _int_value(value, name, low)


def resolve_int(value: IntHyper, name: str, step: int, *, low: int = 1) -> int:
    if callable(value):
        return _int_value(value(step), f"{name}({step})", low)
    return value
