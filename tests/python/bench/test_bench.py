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
    # A cap on the sides is in the case names: these are not ResNet's sizes any more.
    assert [r.case for r in results] == [
        "inverse ResNet-20 mix <=24",
        "inverse ResNet-50 large <=24",
        "eigen ResNet-20 mix <=24",
    ]
    for result in results:
        assert result.ratio == pytest.approx(
            result.baseline_ms / result.codl_ms, rel=0.05, abs=0.02
        )
    notes = results[0].notes
    assert notes["ratio_vs_bucketed"] > 0
    # The reference rate is torch's 2048² sgemm, and the note says so (no "peak").
    assert not any("peak" in key for r in results for key in r.notes)
    rate = notes["codl_GFLOP_per_s"] / notes["torch_sgemm_2048_GFLOP_per_s"]
    assert notes["fraction_of_torch_sgemm_2048_rate"] == pytest.approx(rate, abs=0.01)


def test_every_benchmark_says_what_size_means() -> None:
    assert sorted(bench.MICROBENCHMARKS) == bench.available()
    helped = bench.size_help()
    listed = bench.listing().splitlines()
    for name, (summary, size) in bench.MICROBENCHMARKS.items():
        assert f"{name}: {size}" in helped
        assert any(line.startswith(name) and size in line and summary in line for line in listed)
    assert "values per case" in bench.MICROBENCHMARKS["pack"][1]
    assert "steps per timed window" in bench.MICROBENCHMARKS["kfac"][1]
    assert "cap on the factor matrices' side" in bench.MICROBENCHMARKS["linalg"][1]


def test_bad_size_is_refused_before_running() -> None:
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        bench.run(["pack"], size=0)
    with pytest.raises(TypeError, match="size must be an int or None, got str"):
        bench.run(["pack"], size="128")  # type: ignore[arg-type]


def test_kfac_table_names_its_sides_kfac_and_sgd() -> None:
    results = bench.run(["kfac"], size=1, repeat=1, threads=1, progress=False)
    assert {(r.codl_label, r.baseline_label) for r in results} == {("K-FAC", "SGD")}
    header = bench.format_table(results).splitlines()[0]
    assert "K-FAC ms" in header and "SGD ms" in header and "torch ms" not in header
    for r in results:
        assert r.notes["overhead_x"] == pytest.approx(r.codl_ms / r.baseline_ms, rel=0.01)


def test_comm_table_names_its_sides_as_projections() -> None:
    from codl.bench import comm

    results = comm.run(size=4096, repeat=1, threads=1, progress=False)
    assert {(r.codl_label, r.baseline_label) for r in results} == {
        ("projected codec", "projected fp32")
    }
    header = bench.format_table(results).splitlines()[0]
    assert "projected codec ms" in header and "projected fp32 ms" in header
    assert "torch ms" not in header
    assert all(r.load_average is not None for r in results)


def test_table_heads_change_with_the_benchmark() -> None:
    rows = [
        bench.Result("pack", "pack_signs", 8, 1.0, 10.0, 10.0, "avx2", 2),
        bench.Result("kfac", "w", 8, 2.0, 1.0, 0.5, "avx2", 2, codl_label="K-FAC",
                     baseline_label="SGD"),
    ]  # fmt: skip
    heads = [line for line in bench.format_table(rows).splitlines() if "IQR" in line[:120]]
    assert "codl ms" in heads[0] and "torch ms" in heads[0]
    assert "K-FAC ms" in heads[1] and "SGD ms" in heads[1]
