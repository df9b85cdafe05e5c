"""codl.bench.ternary's rate of the ternary GEMM: what it times and how it reports it."""

from collections.abc import Callable

import pytest
import torch

from codl.bench import ternary
from codl.bench.timing import Timing


def test_gemm_rate_is_multiply_adds_over_the_median_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shared timer, replaced by one that runs the call once and says it took 1 ms.
    seen: list[tuple[torch.Tensor, int, int]] = []

    def one_millisecond(fn: Callable[[], torch.Tensor], repeat: int) -> Timing:
        seen.append((fn(), repeat, torch.get_num_threads()))
        return Timing(median_ms=1.0, iqr_ms=0.0, blocks=repeat, load_average=0.0)

    monkeypatch.setattr(ternary, "measure", one_millisecond)
    rate = ternary.gemm_gmacs_per_s(2, side=128, batch=4, repeat=3)
    assert rate == pytest.approx(4 * 128 * 128 / 1e-3 / 1e9)
    (output, repeat, threads) = seen[0]
    assert output.shape == (4, 128) and repeat == 3 and threads == 2


def test_gemm_rate_runs_the_kernel_at_each_thread_count() -> None:
    for threads in (1, 2):
        rate = ternary.gemm_gmacs_per_s(threads, side=256, batch=8, repeat=3)
        assert 0.0 < rate < 1e5
