"""``run_cases`` times codl and the baseline interleaved (rounds of a codl block then a baseline
block), and refuses ratios that the timings cannot support."""

from __future__ import annotations

import itertools
import sys
import time

import pytest
import torch

from codl import bench
from codl.bench.timing import cpu_wait_s, measure_pair, refusal_reason


def _runs(calls: list[str]) -> list[tuple[str, int]]:
    """``calls`` as (label, consecutive count) runs."""
    return [(label, len(list(group))) for label, group in itertools.groupby(calls)]


def _recording(calls: list[str], label: str, seconds: float = 0.0) -> object:
    def fn() -> torch.Tensor:
        calls.append(label)
        if seconds:
            time.sleep(seconds)
        return torch.zeros(1)

    return fn


def test_run_cases_alternates_single_call_blocks_of_slow_sides() -> None:
    calls: list[str] = []
    case = bench.Case(
        "slow",
        1,
        # Calls longer than a block's minimum and the warm-up: one call a block, no warm-up.
        _recording(calls, "codl", 0.012),  # type: ignore[arg-type]
        _recording(calls, "torch", 0.012),  # type: ignore[arg-type]
        torch.equal,
    )
    bench.run_cases("t", [case], repeat=5, threads=1, progress=False)
    # Agreement check, warm-up, then rounds of one call each: strictly alternating.
    assert calls[0] == "codl" and all(a != b for a, b in itertools.pairwise(calls))
    assert len(calls) >= 2 * (2 + 5)


def test_run_cases_alternates_blocks_of_fast_sides() -> None:
    calls: list[str] = []
    case = bench.Case(
        "fast",
        1,
        _recording(calls, "codl"),  # type: ignore[arg-type]
        _recording(calls, "torch"),  # type: ignore[arg-type]
        torch.equal,
    )
    (result,) = bench.run_cases("t", [case], repeat=6, threads=1, progress=False)
    runs = _runs(calls)
    # Blocks of many calls, codl's block first in every round, never two blocks of one side
    # in a row; at least 6 timed rounds after the check, warm-up and sizing calls.
    assert [label for label, _ in runs] == ["codl", "torch"] * (len(runs) // 2)
    assert len(runs) >= 2 * (3 + 6)
    assert max(count for _, count in runs) > 1  # fast calls are timed in blocks
    assert result.codl_ms > 0 and result.baseline_ms > 0


def test_measure_pair_reports_each_side_and_the_cpu_wait() -> None:
    quick, slow = measure_pair(lambda: time.sleep(0.002), lambda: time.sleep(0.01), repeat=5)
    assert quick.blocks >= 5 and slow.blocks >= 5
    assert 2.0 <= quick.median_ms < slow.median_ms and 10.0 <= slow.median_ms < 60.0
    if sys.platform == "linux":  # scheduler statistics: sleeping threads wait for no CPU
        assert quick.cpu_wait is not None and quick.cpu_wait >= 0.0
        assert isinstance(cpu_wait_s(), float)


def test_a_contended_cpu_refuses_the_ratio() -> None:
    # Medians 1 and 100 ms with tight spreads: printed on a quiet machine.
    assert refusal_reason(1.0, 0.01, 100.0, 1.0, load_average=1.9, cpus=2) is None
    reason = refusal_reason(1.0, 0.01, 100.0, 1.0, load_average=7.5, cpus=2)
    assert reason is not None and "load average 7.50 over 1.5 x 2 CPUs" in reason


def test_an_unstable_side_refuses_the_ratio() -> None:
    # A 7459x "ratio" from a 0.1 ms codl median whose IQR is 0.06 ms.
    reason = refusal_reason(0.1, 0.06, 745.9, 1.0, cpu_wait=0.0)
    assert reason is not None and reason.startswith("unstable")
    assert refusal_reason(0.1, 0.04, 745.9, 1.0, cpu_wait=0.0) is None


def test_refused_ratio_is_not_printed() -> None:
    row = bench.Result(
        "pack", "pack_ternary base3", 8, 0.1, 745.9, 7459.0, "avx512", 2,
        codl_iqr_ms=0.001, baseline_iqr_ms=1.0, load_average=7.0, cpu_wait=1.3, cpus=2,
    )  # fmt: skip
    table = bench.format_table([row])
    assert "7459" not in table and "n/a (CPU contended)" in table
    assert "no ratio: CPU contended: load average 7.00" in table


def test_measure_pair_refuses_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeat"):
        measure_pair(lambda: None, lambda: None, repeat=0)
    with pytest.raises(TypeError, match="repeat"):
        measure_pair(lambda: None, lambda: None, repeat=2.5)  # type: ignore[arg-type]
