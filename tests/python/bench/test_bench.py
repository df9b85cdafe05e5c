from __future__ import annotations

import pytest
import torch

from codl import bench


def test_run_cases_refuses_to_time_disagreeing_sides() -> None:
    case = bench.Case("broken", 4, lambda: torch.zeros(4), lambda: torch.ones(4), torch.equal)
    with pytest.raises(RuntimeError, match="disagree"):
        bench.run_cases("t", [case], repeat=1, threads=1, progress=False)


def test_run_cases_restores_threads_and_reports_ratio() -> None:
    before = torch.get_num_threads()
    slow = bench.Case("same", 10, lambda: torch.arange(10), lambda: torch.arange(10), torch.equal)
    (result,) = bench.run_cases("t", [slow], repeat=3, threads=1, progress=False)
    assert torch.get_num_threads() == before
    assert result.threads == 1 and result.numel == 10
    assert result.ratio == pytest.approx(result.baseline_ms / result.codl_ms, rel=0.05, abs=0.02)


def test_unknown_benchmark_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="available"):
        bench.run(["nope"])


def test_format_table_lists_every_case() -> None:
    rows = [bench.Result("pack", "pack_signs", 8, 1.0, 10.0, 10.0, "avx2", 2)]
    table = bench.format_table(rows)
    assert "pack_signs" in table and "10.0x" in table and "avx2" in table


def test_linalg_benchmark_runs_small_and_reports_ratios() -> None:
    results = bench.run(["linalg"], size=24, repeat=1, threads=1, progress=False)
    assert [r.case for r in results] == [
        "inverse ResNet-20 mix",
        "inverse ResNet-50 large",
        "eigen ResNet-20 mix",
    ]
    for result in results:
        assert result.ratio == pytest.approx(
            result.baseline_ms / result.codl_ms, rel=0.05, abs=0.02
        )
    assert results[0].notes["ratio_vs_bucketed"] > 0
