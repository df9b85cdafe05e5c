"""The bench timer: medians and interquartile ranges from torch.utils.benchmark, the load
average, and the rule that refuses a ratio whose two sides' spreads overlap."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

from codl import bench
from codl.bench.timing import Timing, measure, refusal_reason, spreads_overlap, summarize


def _timing(seconds: list[float]) -> Timing:
    """What the timer reports for blocks of one call that took ``seconds`` on a quiet machine."""
    timing = summarize(Measurement(1, seconds, TaskSpec(stmt="fn()", setup="pass")))
    return dataclasses.replace(timing, load_average=0.0, cpu_wait=0.0)


# Per-call times of two sides, in seconds: medians 10 and 11 ms, IQRs 3 ms each (quartiles
# interpolated linearly: 8.5 to 11.5 ms and 9.5 to 12.5 ms).
OVERLAPPING = (
    [0.006, 0.008, 0.009, 0.010, 0.011, 0.012, 0.014],
    [0.007, 0.009, 0.010, 0.011, 0.012, 0.013, 0.015],
)
# Medians 10 and 25 ms, IQRs 0.7 and 1.8 ms.
SEPARATED = (
    [0.0090, 0.0095, 0.0098, 0.0100, 0.0102, 0.0105, 0.0110],
    [0.0230, 0.0238, 0.0244, 0.0250, 0.0256, 0.0262, 0.0270],
)


def test_summary_is_the_median_and_interquartile_range_in_milliseconds() -> None:
    timing = _timing(OVERLAPPING[0])
    assert timing.median_ms == pytest.approx(10.0)
    assert timing.iqr_ms == pytest.approx(3.0)
    assert timing.blocks == 7 and timing.load_average >= 0.0


def test_overlapping_spreads_refuse_the_ratio(tmp_path: Path) -> None:
    codl, baseline = (_timing(times) for times in OVERLAPPING)
    result = bench.compare("t", "overlap", 8, codl, baseline, dispatch="scalar", threads=1)
    assert spreads_overlap(codl.median_ms, codl.iqr_ms, baseline.median_ms, baseline.iqr_ms)
    reason = result.ratio_refused()
    assert reason is not None and reason.startswith("spreads overlap")
    table = bench.format_table([result])
    assert "n/a (spreads overlap)" in table and "1.1x" not in table
    payload = json.loads(bench.write_json([result], tmp_path / "b.json").read_text())
    (row,) = payload["results"]
    assert row["ratio_refused"] == reason
    assert row["codl_iqr_ms"] == pytest.approx(3.0) and row["baseline_iqr_ms"] == pytest.approx(3.0)
    assert row["load_average"] is not None and "load_average" in payload["machine"]


def test_separated_spreads_print_the_ratio_of_the_medians(tmp_path: Path) -> None:
    codl, baseline = (_timing(times) for times in SEPARATED)
    result = bench.compare("t", "separated", 8, codl, baseline, dispatch="scalar", threads=1)
    assert result.ratio_refused() is None
    assert result.ratio == pytest.approx(25.0 / 10.0)
    assert "2.5x" in bench.format_table([result])
    payload = json.loads(bench.write_json([result], tmp_path / "b.json").read_text())
    assert payload["results"][0]["ratio_refused"] is None
    assert payload["results"][0]["ratio"] == pytest.approx(2.5)


def test_the_rule_is_medians_closer_than_their_mean_iqr() -> None:
    # |a - b| <= (iqr_a + iqr_b) / 2 refuses; one step past it prints.
    assert refusal_reason(10.0, 2.0, 12.0, 2.0) is not None
    assert refusal_reason(10.0, 2.0, 12.01, 2.0) is None
    assert refusal_reason(10.0, 0.0, 10.0, 0.0) is not None  # the same figure both sides
    assert refusal_reason(1.0, 0.0, 10.0, 0.0) is None


def test_measure_times_real_work_in_at_least_repeat_blocks() -> None:
    quick = measure(lambda: time.sleep(0.002), repeat=5)
    slow = measure(lambda: time.sleep(0.02), repeat=5)
    assert quick.blocks >= 5 and slow.blocks >= 5
    assert 2.0 <= quick.median_ms < 15.0 and 20.0 <= slow.median_ms < 60.0
    result = bench.compare("t", "sleep", 1, quick, slow, dispatch="scalar", threads=1)
    assert result.ratio == pytest.approx(slow.median_ms / quick.median_ms, rel=0.01)


def test_measure_refuses_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeat"):
        measure(lambda: None, repeat=0)
