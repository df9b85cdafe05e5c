"""codl.bench.ternary's rate of the ternary GEMM: what it times and how it reports it."""

import itertools

import pytest

from codl.bench import ternary


def test_gemm_rate_is_multiply_adds_over_the_median_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that advances 1 ms between readings: every timed call takes exactly 1 ms.
    ticks = itertools.count()
    monkeypatch.setattr(ternary.time, "perf_counter", lambda: next(ticks) * 1e-3)
    rate = ternary.gemm_gmacs_per_s(1, side=128, batch=4, repeat=3)
    assert rate == pytest.approx(4 * 128 * 128 / 1e-3 / 1e9)


def test_gemm_rate_runs_the_kernel_at_each_thread_count() -> None:
    for threads in (1, 2):
        rate = ternary.gemm_gmacs_per_s(threads, side=256, batch=8, repeat=3)
        assert 0.0 < rate < 1e5
