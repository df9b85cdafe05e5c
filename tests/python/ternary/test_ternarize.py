"""Tests for codl.ternary.ternarize: TWN and fixed-threshold ternarization, per tensor and per row.

Expected values come from sources other than the code under test: hand computations on small
tensors, a numpy implementation written here from the paper's formulas (one row at a time, in
float64), and exact algebraic properties (sign symmetry, power-of-two scaling, least squares).
"""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from codl.ternary import TernaryResult, ternarize

HAND_WEIGHT = [[0.1, -0.5, 0.9, 0.0], [1.0, 1.0, 1.0, -1.0]]


def _numpy_ternarize(
    w: npt.NDArray[np.float64], method: str, rho: float | None, granularity: str
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Reference: returns (codes, alpha per group, delta per group), one group at a time."""
    groups = w.reshape(1, -1) if granularity == "tensor" else w.reshape(w.shape[0], -1)
    codes = np.zeros(groups.shape, dtype=np.int8)
    alphas = np.zeros(groups.shape[0])
    deltas = np.zeros(groups.shape[0])
    for index, row in enumerate(groups):
        delta = 0.7 * np.mean(np.abs(row)) if method == "twn" else float(rho)  # type: ignore[arg-type]
        kept = np.abs(row) > delta
        codes[index] = np.where(kept, np.sign(row), 0)
        alphas[index] = np.abs(row[kept]).mean() if kept.any() else 0.0
        deltas[index] = delta
    return codes.reshape(w.shape), alphas, deltas


# --------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------


def test_twn_per_tensor_by_hand() -> None:
    # mean|W| = (0.1 + 0.5 + 0.9 + 0 + 4) / 8 = 0.6875, delta = 0.48125; kept: -0.5, 0.9 and
    # the four 1s, alpha = (0.5 + 0.9 + 4) / 6 = 0.9.
    result = ternarize(torch.tensor(HAND_WEIGHT), method="twn", granularity="tensor")
    assert isinstance(result, TernaryResult)
    assert result.codes.dtype == torch.int8
    assert result.codes.tolist() == [[0, -1, 1, 0], [1, 1, 1, -1]]
    assert result.scale.shape == () and result.scale.dtype == torch.float32
    assert result.scale.item() == pytest.approx(0.9, rel=1e-6)
    assert result.threshold.shape == ()
    assert result.threshold.item() == pytest.approx(0.48125, rel=1e-6)
    assert result.sparsity == 0.25


def test_twn_per_row_by_hand() -> None:
    # Row 0: mean|W| = 1.5 / 4 = 0.375, delta = 0.2625, kept -0.5 and 0.9, alpha = 0.7.
    # Row 1: mean|W| = 1, delta = 0.7, all kept, alpha = 1.
    result = ternarize(torch.tensor(HAND_WEIGHT), method="twn", granularity="row")
    assert result.codes.tolist() == [[0, -1, 1, 0], [1, 1, 1, -1]]
    assert result.scale.shape == (2,)
    assert result.scale.tolist() == pytest.approx([0.7, 1.0], rel=1e-6)
    assert result.threshold.tolist() == pytest.approx([0.2625, 0.7], rel=1e-6)
    assert result.sparsity == 0.25


def test_threshold_rule_by_hand() -> None:
    w = torch.tensor([[0.2, -0.6, 0.5, 0.7], [-0.1, 0.0, 0.3, -0.4]])
    # rho = 0.5 is strict: 0.5 itself is dropped. Kept: -0.6, 0.7 -> alpha = 0.65.
    result = ternarize(w, method="threshold", rho=0.5, granularity="tensor")
    assert result.codes.tolist() == [[0, -1, 0, 1], [0, 0, 0, 0]]
    assert result.scale.item() == pytest.approx(0.65, rel=1e-6)
    assert result.threshold.item() == 0.5
    assert result.sparsity == 0.75
    # Per row, the same rho; row 1 keeps nothing, so its alpha is 0 by definition.
    per_row = ternarize(w, method="threshold", rho=0.5, granularity="row")
    assert per_row.codes.tolist() == result.codes.tolist()
    assert per_row.scale.tolist() == pytest.approx([0.65, 0.0])
    assert per_row.threshold.tolist() == [0.5, 0.5]


def test_threshold_zero_keeps_every_nonzero_entry() -> None:
    w = torch.tensor([0.25, -0.0, 0.0, -0.75])
    result = ternarize(w, method="threshold", rho=0.0)
    assert result.codes.tolist() == [1, 0, 0, -1]
    assert result.scale.item() == 0.5
    assert result.sparsity == 0.5


def test_alpha_is_zero_when_nothing_exceeds_the_threshold() -> None:
    zeros = torch.zeros(3, 5)
    for granularity in ("tensor", "row"):
        result = ternarize(zeros, granularity=granularity)  # type: ignore[arg-type]
        assert torch.equal(result.codes, torch.zeros(3, 5, dtype=torch.int8))
        assert torch.equal(result.scale, torch.zeros_like(result.scale))
        assert result.sparsity == 1.0
    # One zero row among non-zero rows: only that row's alpha is 0.
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 3.0]])
    result = ternarize(w, granularity="row")
    assert result.scale[0].item() == 0.0
    assert result.codes[0].tolist() == [0, 0, 0]
    # rho above every magnitude.
    high = ternarize(torch.tensor([0.1, -0.2]), method="threshold", rho=1.0)
    assert high.scale.item() == 0.0 and high.sparsity == 1.0
    assert torch.equal(high.dequantize(), torch.zeros(2))


def test_conv_weight_rows_are_output_channels() -> None:
    w = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    result = ternarize(w, granularity="row")
    flat = ternarize(w.reshape(6, -1), granularity="row")
    assert result.codes.shape == w.shape
    assert result.scale.shape == (6,)
    assert torch.equal(result.codes.reshape(6, -1), flat.codes)
    assert torch.equal(result.scale, flat.scale)


def test_dequantize_broadcasts_the_scale_per_row() -> None:
    w = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(2))
    result = ternarize(w, granularity="row")
    expected = torch.stack([result.scale[i] * result.codes[i].float() for i in range(4)])
    assert torch.equal(result.dequantize(), expected)
    assert result.dequantize(torch.float64).dtype == torch.float64
    whole = ternarize(w)
    assert torch.equal(whole.dequantize(), whole.scale * whole.codes.float())


# --------------------------------------------------------------------------------------------
# against the numpy reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (5, 13), (8, 3, 3, 3), (64, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("method", ["twn", "threshold"])
def test_matches_numpy_reference(
    shape: tuple[int, ...], dtype: torch.dtype, granularity: str, method: str
) -> None:
    # crc32, not hash(): str hashes change from run to run.
    seed = zlib.crc32(repr((shape, granularity, method)).encode())
    generator = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=generator) * 0.05).to(dtype)
    rho = 0.03 if method == "threshold" else None
    codes, alphas, deltas = _numpy_ternarize(w.double().numpy(), method, rho, granularity)
    result = ternarize(w, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.codes.numpy(), codes)
    expected_shape = () if granularity == "tensor" else (shape[0],)
    assert result.scale.shape == expected_shape and result.threshold.shape == expected_shape
    np.testing.assert_allclose(result.scale.numpy().reshape(-1), alphas, rtol=1e-5)
    np.testing.assert_allclose(result.threshold.numpy().reshape(-1), deltas, rtol=1e-5)
    assert result.sparsity == pytest.approx(float(np.mean(codes == 0)), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_gives_float32_scale(dtype: torch.dtype) -> None:
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(3)).to(dtype)
    result = ternarize(w, granularity="row")
    widened = ternarize(w.float(), granularity="row")
    assert result.scale.dtype == torch.float32 and result.codes.dtype == torch.int8
    assert torch.equal(result.codes, widened.codes)
    assert torch.equal(result.scale, widened.scale)


def test_input_is_not_modified_and_result_has_no_graph() -> None:
    w = torch.randn(5, 7, requires_grad=True)
    before = w.detach().clone()
    result = ternarize(w, granularity="row")
    assert torch.equal(w.detach(), before)
    assert not result.codes.requires_grad and not result.scale.requires_grad


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

# Magnitudes of at least 2**-20 (or exactly 0): scaled by 2**-8 they stay normal floats, so
# power-of-two scaling is exact and the equivariance property can hold.
finite_weights = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.one_of(
        st.just(0.0), st.floats(2**-20, 4.0, width=32), st.floats(-4.0, -(2**-20), width=32)
    ),
)
any_setting = st.sampled_from(
    [("twn", None), ("threshold", 0.0), ("threshold", 0.5), ("threshold", 2.0)]
)
granularities = st.sampled_from(["tensor", "row"])


@settings(max_examples=150, deadline=None)
@given(w=finite_weights, setting=any_setting, granularity=granularities)
def test_codes_follow_the_returned_threshold(
    w: npt.NDArray[np.float32], setting: tuple[str, float | None], granularity: str
) -> None:
    method, rho = setting
    tensor = torch.from_numpy(w)
    result = ternarize(tensor, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    rows = tensor.reshape(1, -1) if granularity == "tensor" else tensor.reshape(w.shape[0], -1)
    codes = result.codes.reshape(rows.shape)
    threshold = result.threshold.reshape(-1, 1)
    kept = rows.abs() > threshold
    assert torch.equal(codes != 0, kept)
    assert torch.equal(codes[kept], torch.sign(rows[kept]).to(torch.int8))
    # alpha is the least-squares scale for these codes: <W, c> / <c, c> (0 if c = 0).
    numerator = (rows.double() * codes.double()).sum(dim=1)
    denominator = (codes.double() ** 2).sum(dim=1)
    least_squares = torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)
    torch.testing.assert_close(
        result.scale.reshape(-1).double(), least_squares, rtol=1e-5, atol=1e-7
    )
    assert result.sparsity == pytest.approx(float((codes == 0).double().mean()), abs=1e-12)
    assert bool((result.scale >= 0).all())


@settings(max_examples=100, deadline=None)
@given(w=finite_weights, granularity=granularities, exponent=st.integers(-8, 8))
def test_twn_is_odd_and_scale_equivariant(
    w: npt.NDArray[np.float32], granularity: str, exponent: int
) -> None:
    tensor = torch.from_numpy(w)
    result = ternarize(tensor, granularity=granularity)  # type: ignore[arg-type]
    negated = ternarize(-tensor, granularity=granularity)  # type: ignore[arg-type]
    assert torch.equal(negated.codes, -result.codes)
    assert torch.equal(negated.scale, result.scale)
    # Scaling by a power of two is exact in floating point, so the codes cannot move.
    factor = 2.0**exponent
    scaled = ternarize(tensor * factor, granularity=granularity)  # type: ignore[arg-type]
    assert torch.equal(scaled.codes, result.codes)
    torch.testing.assert_close(scaled.scale, result.scale * factor, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_non_finite_weights_name_the_count() -> None:
    w = torch.randn(4, 5)
    w[0, 1] = float("nan")
    w[2, 2] = float("nan")
    w[3, 4] = float("-inf")
    with pytest.raises(ValueError, match=r"3 non-finite values \(2 NaN, 1 Inf\) among 20"):
        ternarize(w)
    with pytest.raises(ValueError, match="must be finite"):
        ternarize(torch.tensor([math.inf]), granularity="row")


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0)])
def test_empty_tensor_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(f"non-empty tensor, got shape {shape}")):
        ternarize(torch.empty(shape))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.complex64])
def test_non_float_dtype_is_a_type_error(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=re.escape("floating-point tensor") + ".*" + str(dtype)):
        ternarize(torch.zeros(3, 3, dtype=dtype))


def test_non_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"torch.Tensor, got list"):
        ternarize([[1.0, 2.0]])  # type: ignore[arg-type]


def test_threshold_needs_rho() -> None:
    with pytest.raises(ValueError, match=r"method='threshold' needs rho.*got rho=None"):
        ternarize(torch.randn(3), method="threshold")


@pytest.mark.parametrize("rho", [-0.1, math.nan, math.inf])
def test_rho_must_be_finite_and_non_negative(rho: float) -> None:
    with pytest.raises(ValueError, match=r"rho must be a finite number >= 0, got"):
        ternarize(torch.randn(3), method="threshold", rho=rho)


def test_rho_must_be_a_number() -> None:
    with pytest.raises(TypeError, match=r"rho must be a real number.*got str"):
        ternarize(torch.randn(3), method="threshold", rho="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got bool"):
        ternarize(torch.randn(3), method="threshold", rho=True)


def test_rho_with_twn_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected rho=None, got rho=0.1"):
        ternarize(torch.randn(3), method="twn", rho=0.1)


def test_unknown_method_and_granularity() -> None:
    with pytest.raises(
        ValueError, match=r"method must be one of \('twn', 'threshold'\), got 'ttq'"
    ):
        ternarize(torch.randn(3), method="ttq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"granularity must be one of .*got 'column'"):
        ternarize(torch.randn(3), granularity="column")  # type: ignore[arg-type]


def test_row_granularity_needs_a_dimension() -> None:
    with pytest.raises(ValueError, match=r"at least 1 dimension.*0-dimensional"):
        ternarize(torch.tensor(1.5), granularity="row")
    assert ternarize(torch.tensor(1.5)).codes.item() == 1
