"""The benchmarks' timer: ``torch.utils.benchmark.Timer`` blocks, summarised by their median and
interquartile range, with the machine's load average while they ran, and the rule that decides
whether a ratio of two such figures means anything.

A ratio is **refused** when the two sides' spreads overlap grossly: with medians ``a`` and
``b`` and interquartile ranges ``iqr_a`` and ``iqr_b``, when

    |a - b| <= (iqr_a + iqr_b) / 2,

that is when the spans ``a ± iqr_a / 2`` and ``b ± iqr_b / 2`` (each as wide as its side's
interquartile range, centred on its median) meet. Then the gap between the medians is no larger
than the run-to-run spread of a typical timing, and the printed ratio would only report noise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.common import TaskSpec

#: Measurements shorter than this are stretched: blocks of a few microseconds would be timed
#: with the timer's own overhead in them.
MIN_RUN_TIME_S = 0.02

_TASK = TaskSpec(stmt="fn()", setup="pass")


@dataclass(frozen=True)
class Timing:
    """Per-call time of one function: median and interquartile range (milliseconds) over
    ``blocks`` timed blocks, and the 1-minute load average when the last block ended."""

    median_ms: float
    iqr_ms: float
    blocks: int
    load_average: float


def load_average() -> float:
    """The 1-minute load average (0.0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def measure(fn: Callable[[], object], repeat: int) -> Timing:
    """Times ``fn`` after one warm-up call, in at least ``repeat`` blocks, with the current
    torch thread count.

    ``Timer.blocked_autorange`` sizes its blocks so that the timer's overhead is negligible and
    runs blocks until ``min_run_time`` has passed. One timed call after the warm-up sets that
    time to ``repeat`` calls' worth (the warm-up itself can be many times slower: lazy set-up),
    so a slow case gets one-call blocks, that timed call among them; a fast case gets blocks of
    many calls, and more runs are merged in while fewer than ``repeat`` blocks were timed.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    fn()  # warm up caches, lazy allocations and the thread pool
    start = time.perf_counter()
    fn()
    one_call = Measurement(1, [time.perf_counter() - start], _TASK)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    # Half a call short of repeat - 1 calls: the autorange stops on the block that crosses it.
    min_run_time = max((repeat - 1.5) * one_call.raw_times[0], MIN_RUN_TIME_S)
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    # Blocks of one call each: the timed call above is one more of them.
    if measurement.number_per_run == 1:
        measurement = _merged(measurement, one_call)
    while len(measurement.raw_times) < repeat:
        more = timer.blocked_autorange(min_run_time=min_run_time)
        measurement = _merged(measurement, more)
    return summarize(measurement)


def _merged(first: Measurement, second: Measurement) -> Measurement:
    """Both measurements' blocks, as per-call times."""
    return Measurement(1, first.times + second.times, first.task_spec)


def summarize(measurement: Measurement) -> Timing:
    """The figures of a ``torch.utils.benchmark`` measurement, per call, with the load average
    now."""
    return Timing(
        median_ms=1e3 * measurement.median,
        iqr_ms=1e3 * measurement.iqr,
        blocks=len(measurement.raw_times),
        load_average=load_average(),
    )


def spreads_overlap(a_ms: float, a_iqr_ms: float, b_ms: float, b_iqr_ms: float) -> bool:
    """True when the ratio of ``a`` and ``b`` is refused: ``|a - b| <= (iqr_a + iqr_b) / 2``
    (the rule of the module docstring)."""
    return abs(a_ms - b_ms) <= (a_iqr_ms + b_iqr_ms) / 2


def refusal_reason(a_ms: float, a_iqr_ms: float, b_ms: float, b_iqr_ms: float) -> str | None:
    """Why the ratio of ``a`` and ``b`` is not shown, or None when it is."""
    if not spreads_overlap(a_ms, a_iqr_ms, b_ms, b_iqr_ms):
        return None
    return (
        f"spreads overlap: |{a_ms:.4g} - {b_ms:.4g}| ms <= "
        f"({a_iqr_ms:.4g} + {b_iqr_ms:.4g}) / 2 ms (medians closer than their mean IQR)"
    )
