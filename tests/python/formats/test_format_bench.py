"""``codl bench formats`` runs small, both sides agree (run_cases checks), notes are filled."""

from __future__ import annotations

from codl import bench
from codl.bench.formats import PLANS


def test_formats_benchmark_runs_small_and_reports_rates() -> None:
    results = bench.run(["formats"], size=48, repeat=1, threads=1, progress=False)
    assert [r.case for r in results] == list(PLANS)
    for r in results:
        assert r.numel == 48 * 48 and r.codl_ms > 0 and r.baseline_ms > 0
        assert r.notes["codl_MB_per_s_float32_out_per_core"] > 0
        assert r.notes["codl_file_bytes"] > 0 and r.notes["baseline_file_bytes"] > 0
