"""The benchmarks' timer, and the rules that decide whether a ratio of two timings means
anything.

:func:`measure_pair` times codl and its baseline **interleaved**: after a warm-up call of each,
it runs rounds of one timed block of codl then one timed block of the baseline, so a change of
clock, load or cache state during the run falls on both sides alike. Each side is summarised by
the median and interquartile range of its blocks (per call), with the 1-minute load average and,
on Linux, its **CPU wait**: the seconds this process's threads spent runnable but waiting for a
CPU (``/proc/self/task/*/schedstat``) per second of its timed blocks. On a quiet machine it is
near 0; when other work competes for the CPUs (or more threads are asked for than there are
CPUs) it approaches the number of threads.

A ratio is **refused** (:func:`refusal_reason`) when

1. the two sides' spreads overlap grossly: with medians ``a`` and ``b`` and interquartile ranges
   ``iqr_a`` and ``iqr_b``, ``|a - b| <= (iqr_a + iqr_b) / 2``, that is when the spans
   ``a ± iqr_a / 2`` and ``b ± iqr_b / 2`` meet: the gap between the medians is no larger than
   the run-to-run spread of a typical timing, and the ratio would only report noise;
2. a side is unstable: its interquartile range is more than half its median
   (:data:`MAX_RELATIVE_IQR`);
3. the CPUs were contended: the 1-minute load average exceeded :data:`MAX_LOAD_PER_CPU` times
   the CPUs this process may use (the CPU wait is reported but not judged: it also counts this
   process's own threads waiting for each other, about 0.9 on a quiet 2-core machine).
   Then the threads of both sides are descheduled by other work, and a baseline made of
   many short torch ops (each a parallel region that waits for its slowest thread) slows down
   by far more than one fused kernel: under load, ``codl bench pack`` once printed 7459x, and
   with four busy processes on a 2-core machine its ``pack_ternary base3`` case printed 964x at
   4M values where the quiet machine gives 49.5x. Such a ratio says how the machine was loaded, not
   how the two codes compare.

The rules are checked in the order 3, 2, 1: contention explains the other two.
"""

from __future__ import annotations

import math
import os
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.benchmark import Measurement, Timer
from torch.utils.benchmark.utils.common import TaskSpec

#: Measurements shorter than this are stretched: blocks of a few microseconds would be timed
#: with the timer's own overhead in them.
MIN_RUN_TIME_S = 0.02
#: :func:`measure_pair` puts this many seconds' worth of calls at least into one timed block.
#: Not less: on the 2-vCPU EPYC a block of one call of codl's 2-thread LeNet-5 batch 64 took
#: 2.9-3.5 ms, blocks of 6 calls 1.8-2.1 ms a call (the pool's workers sleep between blocks and
#: the first call wakes them), so 1 ms blocks timed the wake-up, not the model.
MIN_BLOCK_S = 0.01
#: Rule 2: a side whose interquartile range exceeds this fraction of its median is unstable.
MAX_RELATIVE_IQR = 0.5
#: Rule 3: a load average above this many times the usable CPUs.
MAX_LOAD_PER_CPU = 1.5

_TASK = TaskSpec(stmt="fn()", setup="pass")
_THREADS = Path("/proc/self/task")


@dataclass(frozen=True)
class Timing:
    """Per-call time of one function: median and interquartile range (milliseconds) over
    ``blocks`` timed blocks, the 1-minute load average when the last block ended, and the CPU
    wait while the blocks ran (None where the system does not report it)."""

    median_ms: float
    iqr_ms: float
    blocks: int
    load_average: float
    cpu_wait: float | None = None


def load_average() -> float:
    """The 1-minute load average (0.0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_wait_s() -> float | None:
    """Seconds, summed over this process's threads, that they spent runnable but waiting for a
    CPU (Linux scheduler statistics), or None where the system does not report it."""
    total = 0
    try:
        tasks = list(_THREADS.iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        except (OSError, IndexError, ValueError):
            return None
    return total / 1e9


def measure(fn: Callable[[], object], repeat: int) -> Timing:
    """Times ``fn`` alone after one warm-up call, in at least ``repeat`` blocks, with the
    current torch thread count (to compare two functions, use :func:`measure_pair`).

    ``Timer.blocked_autorange`` sizes its blocks so that the timer's overhead is negligible and
    runs blocks until ``min_run_time`` has passed. One timed call after the warm-up sets that
    time to ``repeat`` calls' worth (the warm-up itself can be many times slower: lazy set-up),
    so a slow case gets one-call blocks, that timed call among them; a fast case gets blocks of
    many calls, and more runs are merged in while fewer than ``repeat`` blocks were timed.
    """
    _check_repeat(repeat)
    fn()  # warm up caches, lazy allocations and the thread pool
    waited = cpu_wait_s()
    wall = time.perf_counter()
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
    return summarize(measurement, cpu_wait=_cpu_wait(waited, time.perf_counter() - wall))


#: Pause before each block of :func:`measure_pair`: longer than the spin of the thread pools
#: involved (libgomp's default spin is well under a millisecond, codl's 20 us; ONNX Runtime
#: and OpenVINO keep theirs spinning for milliseconds: 5 ms left codl's 2-thread rows 2-3x slow,
#: and after 20 ms an ONNX Runtime session with 2 intra-op threads still slowed codl's next
#: 2-thread FashionCNN batch from 3.5 to 5.3-5.4 ms on the 2-vCPU EPYC; after 100 ms it did not,
#: nor with its spinning turned off).
SETTLE_S = 0.1

#: After the pause each block of :func:`measure_pair` of calls shorter than this starts with
#: untimed calls for this long: the pause idles the CPUs, and the first calls after it run slow
#: (on the 2-vCPU EPYC, codl's 2-thread LeNet-5 batch 64 took 2.0-2.2 ms for its first call
#: after a 100 ms sleep against 1.6-1.9 ms in steady state).
WARM_UP_S = 0.01


def measure_pair(
    first: Callable[[], object], second: Callable[[], object], repeat: int
) -> tuple[Timing, Timing]:
    """Times ``first`` and ``second`` interleaved: one warm-up call each, then rounds of one
    timed block of ``first`` followed by one timed block of ``second``, at least ``repeat``
    rounds and at least :data:`MIN_RUN_TIME_S` of blocks per side, each block after a pause of
    :data:`SETTLE_S` (so neither side is timed against the other's spinning threads) and, for
    short calls, :data:`WARM_UP_S` of untimed ones (the cores back from idle). A block holds as
    many calls as make it last :data:`MIN_BLOCK_S` (one call for anything slower); when both
    sides take one call per block, the calls that showed it are the first round."""
    _check_repeat(repeat)
    sides = (_Side(first), _Side(second))
    for side in sides:
        side.fn()  # warm up caches, lazy allocations and the thread pool
    single = [side.size() for side in sides]
    rounds = max(repeat, *(side.rounds_needed() for side in sides))
    if not all(single):  # the sizing blocks are not blocks of the chosen size
        for side in sides:
            side.reset()
    while len(sides[0].per_call_s) < rounds:
        for side in sides:
            # The threads the other side left spinning (OpenMP's, ONNX Runtime's, codl's pool)
            # would otherwise share the cores with this block's first calls.
            time.sleep(SETTLE_S)
            side.wake()
            side.time_block()
    load = load_average()
    return sides[0].timing(load), sides[1].timing(load)


class _Side:
    """One side of :func:`measure_pair`: its calls per block, its per-call block times and the
    seconds its threads waited for a CPU while they ran."""

    MAX_CALLS = 1 << 20

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.calls = 1
        self.reset()

    def reset(self) -> None:
        self.per_call_s: list[float] = []
        self.wall_s = 0.0
        self.waited_s: float | None = 0.0

    def size(self) -> bool:
        """Sets the calls per block: one call, then more until a block lasts
        :data:`MIN_BLOCK_S`. True when one call does (it is then a timed block)."""
        self.calls = 1
        self.time_block()
        while self.per_call_s[-1] * self.calls < MIN_BLOCK_S and self.calls < self.MAX_CALLS:
            block_s = max(self.per_call_s[-1] * self.calls, 1e-9)
            self.calls = max(2 * self.calls, math.ceil(self.calls * MIN_BLOCK_S / block_s))
            self.time_block()
        return self.calls == 1

    def wake(self) -> None:
        """Untimed calls for :data:`WARM_UP_S` when a call is shorter than that (a longer call
        leaves the idle start a small part of itself)."""
        if not self.per_call_s or self.per_call_s[-1] >= WARM_UP_S:
            return
        start = time.perf_counter()
        while time.perf_counter() - start < WARM_UP_S:
            self.fn()

    def time_block(self) -> None:
        before = cpu_wait_s()
        seconds = timeit.Timer(self.fn, timer=time.perf_counter).timeit(self.calls)
        after = cpu_wait_s()
        self.per_call_s.append(seconds / self.calls)
        self.wall_s += seconds
        if self.waited_s is not None and before is not None and after is not None:
            self.waited_s += max(after - before, 0.0)
        else:
            self.waited_s = None

    def rounds_needed(self) -> int:
        """Blocks for :data:`MIN_RUN_TIME_S` of timed calls, from the last block's time."""
        block_s = self.per_call_s[-1] * self.calls
        return math.ceil(MIN_RUN_TIME_S / max(block_s, 1e-9))

    def timing(self, load: float) -> Timing:
        summary = summarize(Measurement(1, self.per_call_s, _TASK))
        wait = None
        if self.waited_s is not None and self.wall_s > 0:
            wait = self.waited_s / self.wall_s
        return Timing(summary.median_ms, summary.iqr_ms, summary.blocks, load, wait)


def _cpu_wait(wait_before: float | None, wall_s: float) -> float | None:
    wait_after = cpu_wait_s()
    if wait_before is None or wait_after is None or wall_s <= 0:
        return None
    return max(wait_after - wait_before, 0.0) / wall_s


def _check_repeat(repeat: int) -> None:
    if isinstance(repeat, bool) or not isinstance(repeat, int):
        raise TypeError(f"repeat must be an int, got {type(repeat).__name__}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")


def _merged(first: Measurement, second: Measurement) -> Measurement:
    """Both measurements' blocks, as per-call times."""
    return Measurement(1, first.times + second.times, first.task_spec)


def summarize(measurement: Measurement, *, cpu_wait: float | None = None) -> Timing:
    """The figures of a ``torch.utils.benchmark`` measurement, per call, with the load average
    now."""
    return Timing(
        median_ms=1e3 * measurement.median,
        iqr_ms=1e3 * measurement.iqr,
        blocks=len(measurement.raw_times),
        load_average=load_average(),
        cpu_wait=cpu_wait,
    )


def spreads_overlap(a_ms: float, a_iqr_ms: float, b_ms: float, b_iqr_ms: float) -> bool:
    """True when the ratio of ``a`` and ``b`` is refused by rule 1: ``|a - b| <= (iqr_a +
    iqr_b) / 2`` (the module docstring)."""
    return abs(a_ms - b_ms) <= (a_iqr_ms + b_iqr_ms) / 2


def refusal_reason(
    a_ms: float,
    a_iqr_ms: float,
    b_ms: float,
    b_iqr_ms: float,
    *,
    cpu_wait: float | None = None,
    load_average: float | None = None,
    cpus: int | None = None,
) -> str | None:
    """Why the ratio of ``a`` and ``b`` is not shown, or None when it is: the rules of the
    module docstring, contention first (it explains the others). ``cpu_wait`` is the higher of
    the two sides'; ``load_average`` is judged against ``cpus`` only when ``cpu_wait`` is
    None."""
    # The CPU wait is reported, not judged: it also counts this process's own threads waiting
    # for each other (torch's and codl's pools), about 0.9 on a quiet 2-core machine.
    if load_average is not None and cpus is not None and load_average > MAX_LOAD_PER_CPU * cpus:
        return (
            f"CPU contended: load average {load_average:.2f} over {MAX_LOAD_PER_CPU:g} x {cpus} "
            "CPUs; rerun on a quiet machine"
        )
    for median, iqr in ((a_ms, a_iqr_ms), (b_ms, b_iqr_ms)):
        if iqr > MAX_RELATIVE_IQR * median:
            return (
                f"unstable: IQR {iqr:.4g} ms is more than {MAX_RELATIVE_IQR:g} of its median "
                f"{median:.4g} ms"
            )
    if spreads_overlap(a_ms, a_iqr_ms, b_ms, b_iqr_ms):
        return (
            f"spreads overlap: |{a_ms:.4g} - {b_ms:.4g}| ms <= "
            f"({a_iqr_ms:.4g} + {b_iqr_ms:.4g}) / 2 ms (medians closer than their mean IQR)"
        )
    return None
