"""codl._finite.all_finite against torch.isfinite(...).all()."""

from __future__ import annotations

import pytest
import torch

from codl._finite import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
@pytest.mark.parametrize("numel", [0, 1, 1000, 100_003])
def test_matches_isfinite(dtype: torch.dtype, bad: float | None, numel: int) -> None:
    generator = torch.Generator().manual_seed(numel)
    values = (torch.randn(numel, generator=generator) * 100).to(dtype)
    if bad is not None and numel:
        where = int(torch.randint(numel, (1,), generator=generator))
        values[where] = bad
    assert all_finite(values) == bool(torch.isfinite(values).all())


def test_largest_finite_values_do_not_overflow() -> None:
    # A float32 sum of these is Inf; every entry is finite.
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        biggest = torch.finfo(dtype).max
        values = torch.full((1_000_000,), biggest, dtype=dtype)
        values[::2] = -biggest if dtype == torch.float64 else biggest
        assert all_finite(values)
        values[-1] = float("inf")
        assert not all_finite(values)


def test_inf_minus_inf_is_caught() -> None:
    values = torch.zeros(10)
    values[2], values[7] = float("inf"), float("-inf")  # sums to NaN: still non-finite
    assert not all_finite(values)
    assert not all_finite(values.view(2, 5))
