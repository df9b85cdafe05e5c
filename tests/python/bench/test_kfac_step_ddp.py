"""codl bench kfac_step_ddp: the amortized step against a whole inverse cycle, and a run on two
processes whose rows have every kind of step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codl.bench import kfac_step_ddp


def test_the_amortized_step_is_the_mean_step_of_a_whole_cycle() -> None:
    """The formula against a cycle written out step by step: factors every 10 steps, inverses
    every 100, an inverse step (step 0) also updating the factors."""
    row = {"plain_ms": 100.0, "factor_ms": 150.0, "inverse_ms": 400.0}
    cycle = []
    for step in range(100):
        ms = row["plain_ms"]
        if step % 10 == 0:
            ms += row["factor_ms"] - row["plain_ms"]
        if step % 100 == 0:
            ms += row["inverse_ms"] - row["plain_ms"]
        cycle.append(ms)
    assert kfac_step_ddp.amortized_ms(row, 10, 100) == pytest.approx(sum(cycle) / 100)


@pytest.mark.slow
def test_two_processes_time_sgd_and_each_kind_of_kfac_step(tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    kfac_step_ddp.main(
        ["--procs", "2", "--batch-per-rank", "8", "--plain-steps", "2", "--out", str(out)]
    )
    rows = json.loads(out.read_text())["rows"]
    sgd, kfac = rows
    assert sgd["config"] == "SGD" and sgd["step_ms"] > 0
    assert kfac["config"] == "K-FAC fraction 1" and kfac["procs"] == 2
    for key in ("plain_ms", "factor_ms", "inverse_ms"):
        assert kfac[key] > 0
    expected = kfac_step_ddp.amortized_ms(kfac, 10, 100)
    assert kfac["amortized_ms"] == pytest.approx(expected, abs=1e-3)
    assert kfac["vs_sgd"] == pytest.approx(kfac["amortized_ms"] / sgd["step_ms"], rel=1e-2)
