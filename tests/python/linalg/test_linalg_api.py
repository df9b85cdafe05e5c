"""codl.linalg's public API against torch.linalg in float64 (the independent reference)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from codl import linalg


def spd(
    n: int, condition: float, dtype: torch.dtype = torch.float64, seed: int = 0
) -> torch.Tensor:
    """A symmetric positive definite matrix with eigenvalues log-spaced from 1 to ``condition``."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    eigenvalues = torch.logspace(0, math.log10(condition), n, dtype=torch.float64)
    return ((q * eigenvalues) @ q.T).to(dtype)


def inverse_residual(mat: torch.Tensor, damping: float, inverse: torch.Tensor) -> float:
    """||(F + λI)X - I||_F / sqrt(n), computed in float64."""
    n = mat.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    return float(
        torch.linalg.norm((mat.double() + damping * eye) @ inverse.double() - eye)
    ) / math.sqrt(n)


SIZES = [1, 2, 3, 7, 16, 31, 64, 65, 127, 130, 300]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_damped_inverse_of_mixed_sizes_matches_float64(dtype: torch.dtype) -> None:
    mats = [spd(n, 1e2, dtype, seed=n) for n in SIZES]
    dampings = [0.01 * (i + 1) for i in range(len(mats))]
    inverses = linalg.damped_inverse(mats, dampings)
    bound = 1e-5 if dtype == torch.float32 else 1e-12
    for mat, damping, inverse in zip(mats, dampings, inverses):
        assert inverse.dtype == dtype and inverse.shape == mat.shape
        assert inverse_residual(mat, damping, inverse) <= bound
        assert torch.equal(inverse, inverse.T)


@pytest.mark.parametrize("condition", [1e3, 1e4, 1e6])
def test_float32_accuracy_at_high_condition_is_that_of_lapack(condition: float) -> None:
    # Rounding even the exact inverse to float32 leaves ||AX - I||/sqrt(n) near 1e-3 at
    # condition 1e6, so 1e-5 is out of reach in float32 there: codl must stay within a small
    # factor of LAPACK's float32 potrf + potri (through torch), and float64 meets 1e-9.
    for n in (2, 40, 200):
        mat = spd(n, condition, torch.float32, seed=n)
        lapack = inverse_residual(mat, 0.0, torch.cholesky_inverse(torch.linalg.cholesky(mat)))
        (ours,) = linalg.damped_inverse([mat], 0.0)
        assert inverse_residual(mat, 0.0, ours) <= 3 * lapack
        (ours64,) = linalg.damped_inverse([mat.double()], 0.0)
        assert inverse_residual(mat, 0.0, ours64) <= 1e-9


def test_damped_cholesky_and_solve_on_both_sides() -> None:
    mats = [spd(n, 1e2, seed=n) for n in (5, 33, 70)]
    lowers = linalg.damped_cholesky(mats, 0.5)
    for mat, lower in zip(mats, lowers):
        n = mat.shape[0]
        assert torch.equal(lower, lower.tril())
        torch.testing.assert_close(lower @ lower.T, mat + 0.5 * torch.eye(n, dtype=mat.dtype))
    generator = torch.Generator().manual_seed(1)
    left = [torch.randn(m.shape[0], 4, dtype=torch.float64, generator=generator) for m in mats]
    right = [torch.randn(3, m.shape[0], dtype=torch.float64, generator=generator) for m in mats]
    for mat, b, x in zip(mats, left, linalg.cholesky_solve(lowers, left)):
        torch.testing.assert_close((mat + 0.5 * torch.eye(mat.shape[0], dtype=mat.dtype)) @ x, b)
    for mat, b, x in zip(mats, right, linalg.cholesky_solve(lowers, right, side="right")):
        torch.testing.assert_close(x @ (mat + 0.5 * torch.eye(mat.shape[0], dtype=mat.dtype)), b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sym_eig_matches_eigh(dtype: torch.dtype) -> None:
    mats = [spd(n, 1e2, dtype, seed=n) for n in (1, 4, 17, 64, 150)]
    values, vectors = linalg.sym_eig(mats)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    for mat, w, v in zip(mats, values, vectors):
        expected = torch.linalg.eigvalsh(mat.double())
        assert float((w.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())
        assert bool((w[1:] >= w[:-1]).all())
        rebuilt = (v.double() * w.double()) @ v.double().T
        assert float(torch.linalg.norm(rebuilt - mat.double())) <= tolerance * float(
            torch.linalg.norm(mat.double())
        )


def test_a_3d_batch_is_accepted_like_a_list() -> None:
    batch = torch.stack([spd(6, 10.0, seed=s) for s in range(3)])
    for inverse, mat in zip(linalg.damped_inverse(batch, 0.1), batch):
        torch.testing.assert_close(
            inverse, torch.linalg.inv(mat + 0.1 * torch.eye(6, dtype=mat.dtype))
        )


def test_failures_are_named_and_the_rest_still_returned() -> None:
    good = spd(8, 10.0)
    nan = good.clone()
    nan[3, 2] = float("nan")
    indefinite = -torch.eye(5, dtype=torch.float64)
    with pytest.raises(linalg.LinAlgError) as raised:
        linalg.damped_inverse([good, nan, indefinite, good], 0.0)
    error = raised.value
    assert set(error.failures) == {1, 2}
    assert "NaN" in error.failures[1] and "positive definite" in error.failures[2]
    assert error.results[1] is None and error.results[2] is None
    torch.testing.assert_close(error.results[0], torch.linalg.inv(good))
    assert isinstance(error, torch.linalg.LinAlgError)
    # Damping that makes the indefinite matrix definite fixes it.
    (fixed,) = linalg.damped_inverse([indefinite], 2.0)
    torch.testing.assert_close(fixed, torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("function", [linalg.damped_inverse, linalg.damped_cholesky])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_upper_triangle_is_reported_with_its_index(
    function: Callable[..., list[torch.Tensor]], bad: float
) -> None:
    # The kernels read the lower triangle only; a NaN above the diagonal used to pass unseen.
    good = spd(6, 10.0)
    upper = good.clone()
    upper[1, 4] = bad
    with pytest.raises(linalg.LinAlgError) as raised:
        function([good, upper], 0.1)
    assert set(raised.value.failures) == {1}
    assert "NaN or Inf (first at [1, 4])" in raised.value.failures[1]
    assert "matrix 1" in str(raised.value)
    torch.testing.assert_close(
        raised.value.results[0],
        torch.linalg.inv(good + 0.1 * torch.eye(6, dtype=torch.float64))
        if function is linalg.damped_inverse
        else torch.linalg.cholesky(good + 0.1 * torch.eye(6, dtype=torch.float64)),
    )


def test_an_overflowing_inverse_raises_instead_of_returning_inf() -> None:
    # 1e-40 is a float32 subnormal: the input is finite and positive definite, 1e40 is not a
    # float32. It used to come back as inf without an error.
    tiny = torch.eye(3) * 1e-40
    assert bool(torch.isfinite(tiny).all()) and float(1 / tiny[0, 0]) == math.inf
    with pytest.raises(linalg.LinAlgError, match="matrix 1") as raised:
        linalg.damped_inverse([torch.eye(2), tiny])
    assert "not finite" in raised.value.failures[1] and "float32" in raised.value.failures[1]
    torch.testing.assert_close(raised.value.results[0], torch.eye(2))
    # Its Cholesky factor sqrt(1e-40) = 1e-20 is representable: no error, the exact value.
    (lower,) = linalg.damped_cholesky([tiny])
    assert torch.equal(lower, torch.eye(3) * torch.tensor(1e-40).sqrt())
    # float64 holds 1e40: the same matrix in float64 inverts exactly.
    (inverse,) = linalg.damped_inverse([torch.eye(3, dtype=torch.float64) * 1e-40])
    torch.testing.assert_close(inverse, torch.eye(3, dtype=torch.float64) * 1e40)
    # Damping that overflows the diagonal: the Cholesky factor would be inf.
    big = torch.eye(2) * torch.finfo(torch.float32).max
    with pytest.raises(linalg.LinAlgError, match="not finite"):
        linalg.damped_cholesky([big], float(torch.finfo(torch.float32).max))


def test_sym_eig_reports_non_finite_input() -> None:
    bad = torch.eye(4)
    bad[0, 0] = float("inf")
    with pytest.raises(linalg.LinAlgError, match="matrix 1"):
        linalg.sym_eig([torch.eye(3), bad])


def test_pi_damping_follows_martens_grosse() -> None:
    a = torch.diag(torch.tensor([4.0, 4.0, 4.0]))
    g = torch.diag(torch.tensor([1.0, 1.0]))
    damping_a, damping_g = linalg.pi_damping(a, g, 0.01)
    # π = sqrt((12/3) / (2/2)) = 2: A gets π√λ = 0.2 and G gets √λ/π = 0.05.
    assert damping_a == pytest.approx(0.2) and damping_g == pytest.approx(0.05)
    assert damping_a * damping_g == pytest.approx(0.01)
    assert linalg.pi_damping(torch.tensor([4.0, 4.0]), g, 0.01) == pytest.approx((0.2, 0.05))
    assert linalg.pi_damping(torch.zeros(3, 3), g, 0.04) == pytest.approx((0.2, 0.2))


@pytest.mark.parametrize("n", [1, 2, 5, 64, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_symmetric_packing_round_trips(n: int, dtype: torch.dtype) -> None:
    mat = spd(n, 10.0, dtype, seed=n)
    packed = linalg.pack_symmetric(mat)
    rows, cols = torch.triu_indices(n, n)
    assert torch.equal(packed, mat[rows, cols])
    assert torch.equal(linalg.unpack_symmetric(packed), mat.triu() + mat.triu(1).T)
    assert torch.equal(linalg.unpack_symmetric(packed, n), linalg.unpack_symmetric(packed))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: linalg.damped_inverse(torch.eye(3), 0.1), TypeError, "one 2-D tensor"),
        (lambda: linalg.damped_inverse([torch.ones(2, 3)], 0.1), ValueError, "square"),
        (
            lambda: linalg.damped_inverse([torch.eye(2, dtype=torch.int32)], 0.1),
            TypeError,
            "float32",
        ),
        (
            lambda: linalg.damped_inverse([torch.eye(2), torch.eye(2, dtype=torch.float64)], 0.1),
            TypeError,
            "like mats",
        ),
        (lambda: linalg.damped_inverse([torch.eye(2)], -1.0), ValueError, "damping"),
        (lambda: linalg.damped_inverse([torch.eye(2)], float("nan")), ValueError, "finite"),
        (lambda: linalg.damped_inverse([torch.eye(2)] * 2, [0.1]), ValueError, "2 values"),
        (lambda: linalg.damped_inverse(["x"], 0.1), TypeError, "torch.Tensor"),
        (
            lambda: linalg.cholesky_solve([torch.eye(3)], [torch.ones(2, 2)]),
            ValueError,
            r"\(3, m\)",
        ),
        (
            lambda: linalg.cholesky_solve([torch.eye(3)], [torch.ones(3, 2)], side="up"),
            ValueError,
            "side",
        ),
        (lambda: linalg.unpack_symmetric(torch.ones(4)), ValueError, "n\\(n\\+1\\)/2"),
        (lambda: linalg.pi_damping(torch.ones(2, 3), torch.eye(2), 0.1), ValueError, "square"),
    ],
)
def test_bad_input_is_reported(call: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()  # type: ignore[operator]


def test_non_contiguous_input_is_read_correctly() -> None:
    mat = spd(9, 10.0)
    wide = torch.zeros(9, 18, dtype=torch.float64)
    wide[:, ::2] = mat
    (inverse,) = linalg.damped_inverse([wide[:, ::2]], 0.0)
    torch.testing.assert_close(inverse, torch.linalg.inv(mat))
