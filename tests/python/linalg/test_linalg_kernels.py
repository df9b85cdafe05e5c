"""codl._ops' batched damped Cholesky / inverse / solve and symmetric packing against
torch.linalg in float64, at every dispatch level; statuses; bad input errors."""

import functools
import math

import pytest
import torch

from codl import _ops

SIZES = [1, 2, 7, 16, 17, 33, 64, 65, 129, 300]


@functools.cache
def _spd(n: int, dtype: torch.dtype, cond: float = 100.0, seed: int = 0) -> torch.Tensor:
    """A random symmetric positive definite matrix with eigenvalues from 1/cond to 1 (cached:
    callers must not modify it)."""
    generator = torch.Generator().manual_seed(seed + n)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    values = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64)
    return ((q * values) @ q.T).to(dtype)


def _damped64(f: torch.Tensor, damping: float) -> torch.Tensor:
    f64 = f.double().tril()
    f64 = f64 + f64.tril(-1).T
    return f64 + damping * torch.eye(f.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_damped_cholesky_and_inverse_match_float64_torch(level: str, dtype: torch.dtype) -> None:
    mats = [_spd(n, dtype) for n in SIZES]
    dampings = [0.01 * (i + 1) for i in range(len(mats))]
    lowers = [torch.empty_like(m) for m in mats]
    inverses = [torch.empty_like(m) for m in mats]
    assert _ops.damped_cholesky(mats, dampings, lowers) == [(0, 0)] * len(mats)
    assert _ops.damped_inverse(mats, dampings, inverses) == [(0, 0)] * len(mats)
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    for f, d, lower, inverse in zip(mats, dampings, lowers, inverses):
        a = _damped64(f, d)
        expected_lower = torch.linalg.cholesky(a)
        assert torch.equal(lower.triu(1), torch.zeros_like(lower.triu(1)))
        assert (lower.double() - expected_lower).abs().max().item() < tol * 10
        n = f.shape[0]
        residual = torch.linalg.norm(a @ inverse.double() - torch.eye(n, dtype=torch.float64))
        assert residual.item() / math.sqrt(n) < tol * 100  # cond(a) <= 100
        assert torch.equal(inverse, inverse.T)
        torch.testing.assert_close(
            inverse.double(), torch.linalg.inv(a), rtol=tol * 100, atol=tol * 100
        )


def test_float32_inverse_accuracy_near_the_rounding_floor(level: str) -> None:
    # The floor is the correctly rounded inverse (float64 inverse, then .float()). Storing L in
    # float32 alone costs ~4x the floor at cond 1e6 (the exact inverse of the rounded factor),
    # and torch's float32 cholesky + cholesky_inverse reaches ~6x; codl must stay within 1.5x of
    # torch's float32 path and within 10x of the floor.
    n = 200
    eye = torch.eye(n, dtype=torch.float64)
    for cond in (1e3, 1e6):
        f = _spd(n, torch.float64, cond=cond, seed=3).float()
        a = f.double()  # the matrix codl actually saw

        def residual(x: torch.Tensor, a: torch.Tensor = a) -> float:
            return torch.linalg.norm(a @ x.double() - eye).item() / math.sqrt(n)

        out = [torch.empty(n, n)]
        assert _ops.damped_inverse([f], [0.0], out) == [(0, 0)]
        floor = residual(torch.linalg.inv(a).float())
        torch_float32 = residual(torch.cholesky_inverse(torch.linalg.cholesky(f)))
        assert residual(out[0]) < 1.5 * torch_float32, (residual(out[0]), torch_float32)
        assert residual(out[0]) < 10 * floor, (residual(out[0]), floor)
        if cond == 1e3:
            assert residual(out[0]) < 2e-5


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_solve_both_sides(level: str, side: str, dtype: torch.dtype) -> None:
    mats = [_spd(n, dtype) for n in (1, 16, 45, 130)]
    lowers = [torch.empty_like(m) for m in mats]
    assert _ops.damped_cholesky(mats, [0.0] * len(mats), lowers) == [(0, 0)] * len(mats)
    rhs = [
        torch.randn(m.shape[0], 5, dtype=dtype) if side == "left" else torch.randn(7, m.shape[0])
        for m in mats
    ]
    rhs = [b.to(dtype) for b in rhs]
    outs = [torch.empty_like(b) for b in rhs]
    _ops.cholesky_solve(lowers, rhs, outs, side)
    for f, b, x in zip(mats, rhs, outs):
        a = _damped64(f, 0.0)
        expected = (
            torch.linalg.solve(a, b.double())
            if side == "left"
            else b.double() @ torch.linalg.inv(a)
        )
        tol = 1e-3 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(x.double(), expected, rtol=tol, atol=tol)


def test_statuses_name_failures_and_outputs_are_nan(level: str) -> None:
    good = _spd(20, torch.float32)
    not_pd = torch.eye(20)
    not_pd[11, 11] = -1.0
    nan = _spd(20, torch.float32).clone()
    nan[5, 2] = float("nan")
    inf_upper_only = _spd(20, torch.float32).clone()
    inf_upper_only[2, 5] = float("inf")  # not read for the result, but reported (issue 14)
    overflows = torch.eye(20) * 1e-40  # finite; its float32 inverse is not
    mats = [good, not_pd, nan, inf_upper_only, overflows]
    outs = [torch.empty(20, 20) for _ in mats]
    statuses = _ops.damped_inverse(mats, [0.0, 0.5, 0.0, 0.0, 0.0], outs)
    assert statuses == [(0, 0), (1, 11), (2, 0), (2, 0), (3, 0)]
    assert all(out.isnan().all() for out in outs[1:])
    assert torch.isfinite(outs[0]).all()


def test_thread_counts_give_identical_bits() -> None:
    mats = [_spd(n, torch.float32, seed=n) for n in (300, 5, 64, 129, 17, 600)]
    results = []
    for threads in (1, 2):
        outs = [torch.empty_like(m) for m in mats]
        with _ops.using_threads(threads):
            _ops.damped_inverse(mats, [0.01] * len(mats), outs)
        results.append(outs)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_unpack_symmetric(dtype: torch.dtype) -> None:
    for n in (0, 1, 5, 33):
        m = torch.randn(n, n, dtype=dtype)
        packed = torch.empty(n * (n + 1) // 2, dtype=dtype)
        _ops.pack_symmetric(m, packed)
        rows, cols = torch.triu_indices(n, n)
        assert torch.equal(packed, m[rows, cols])
        back = torch.empty(n, n, dtype=dtype)
        _ops.unpack_symmetric(packed, n, back)
        upper = m.triu()
        assert torch.equal(back, upper + upper.triu(1).T)


def test_bad_input_errors_name_the_argument() -> None:
    f = _spd(4, torch.float32)
    out = torch.empty(4, 4)
    with pytest.raises(
        TypeError, match=r"mats\[0\]: expected dtype torch.float32 or torch.float64"
    ):
        _ops.damped_inverse([f.half()], [0.0], [out])
    with pytest.raises(
        TypeError, match=r"mats\[1\]: expected dtype torch.float32, received torch.float64"
    ):
        _ops.damped_inverse([f, f.double()], [0.0, 0.0], [out, out.double()])
    with pytest.raises(
        ValueError, match=r"mats\[0\]: expected a square matrix, received shape \(4, 3\)"
    ):
        _ops.damped_inverse([f[:, :3].contiguous()], [0.0], [out])
    with pytest.raises(
        ValueError, match=r"mats\[0\]: expected a 2-D matrix, received shape \(16,\)"
    ):
        _ops.damped_cholesky([f.reshape(16)], [0.0], [out])
    with pytest.raises(ValueError, match=r"mats\[0\]: expected a contiguous tensor"):
        _ops.damped_inverse([torch.empty(8, 8)[::2, ::2]], [0.0], [out])
    with pytest.raises(ValueError, match=r"outs\[0\]: expected shape \(4, 4\) like its input"):
        _ops.damped_inverse([f], [0.0], [torch.empty(5, 5)])
    with pytest.raises(ValueError, match=r"expected one per matrix \(2\), received 1 and 2"):
        _ops.damped_inverse([f, f], [0.0], [out, out])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"dampings\[0\]: expected a finite value >= 0"):
            _ops.damped_inverse([f], [bad], [out])
    with pytest.raises(ValueError, match=r"side: expected 'left' or 'right'"):
        _ops.cholesky_solve([f], [f], [out], "middle")
    with pytest.raises(ValueError, match=r"rhs\[0\]: expected shape \(4, m\)"):
        _ops.cholesky_solve([f], [torch.empty(3, 4)], [torch.empty(3, 4)], "left")
    with pytest.raises(ValueError, match=r"rhs, outs: expected one per factor \(1\)"):
        _ops.cholesky_solve([f], [], [], "left")
    with pytest.raises(ValueError, match=r"out: expected 10 elements"):
        _ops.pack_symmetric(f, torch.empty(9))
    with pytest.raises(ValueError, match=r"packed: expected 10 elements"):
        _ops.unpack_symmetric(torch.empty(9), 4, out)
    with pytest.raises(TypeError, match=r"mat: expected dtype torch.float32 or torch.float64"):
        _ops.pack_symmetric(f.int(), torch.empty(10))
