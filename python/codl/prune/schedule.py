"""Gradual pruning schedules.

:class:`AGPSchedule` is the automated gradual pruner of M. Zhu and S. Gupta, "To prune, or not
to prune: exploring the efficacy of pruning for model compression", arXiv:1710.01878, 2017,
eq. (1): starting at step ``t0`` with sparsity ``s_i``, the sparsity rises every ``Δt`` steps
over ``n`` pruning steps to the final ``s_f``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt)) ** 3,   t in {t0, t0 + Δt, ..., t0 + nΔt}

It prunes fast while the network has many redundant weights and slowly near the end, when the
few remaining weights matter most. Between pruning steps the sparsity holds its last value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AGPSchedule", "check_sparsity"]


def check_sparsity(sparsity: object, name: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1); TypeError or ValueError naming ``name`` otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name}: expected a float in [0, 1), received {type(sparsity).__name__}")
    value = float(sparsity)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), received {sparsity!r}")
    return value


def _check_step(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, received {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, received {value}")
    return value


@dataclass(frozen=True)
class AGPSchedule:
    """Zhu & Gupta's cubic sparsity ramp from ``initial_sparsity`` at ``begin_step`` to the
    final sparsity at ``end_step``, updated every ``frequency`` steps (their ``Δt``; the number
    of pruning steps ``n`` is ``(end_step - begin_step) / frequency``, rounded up).

    The final sparsity is the one given to :func:`codl.prune.magnitude_`, so one schedule
    object can drive several targets. ``schedule(step, final)`` is the sparsity at ``step``.
    """

    end_step: int
    begin_step: int = 0
    frequency: int = 1
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        _check_step(self.begin_step, "begin_step", 0)
        _check_step(self.end_step, "end_step", self.begin_step + 1)
        _check_step(self.frequency, "frequency", 1)
        check_sparsity(self.initial_sparsity, "initial_sparsity")

    @property
    def pruning_steps(self) -> int:
        """``n``: how many times the sparsity rises between ``begin_step`` and ``end_step``."""
        return math.ceil((self.end_step - self.begin_step) / self.frequency)

    def __call__(self, step: int, final_sparsity: float) -> float:
        """Sparsity at optimizer step ``step`` (Zhu & Gupta eq. 1), held between updates."""
        _check_step(step, "step", 0)
        final = check_sparsity(final_sparsity, "final_sparsity")
        if step < self.begin_step:
            return self.initial_sparsity
        span = self.pruning_steps * self.frequency
        # The last pruning step at or before `step`: the sparsity only changes every Δt.
        elapsed = min((step - self.begin_step) // self.frequency * self.frequency, span)
        remaining = 1.0 - elapsed / span
        return final + (self.initial_sparsity - final) * remaining**3
