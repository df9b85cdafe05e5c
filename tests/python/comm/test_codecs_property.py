"""Property tests (hypothesis) of the native gradient codecs: for any gradient, block size and
error buffer, the payload has the stated length, decode(encode) equals an independent torch
computation where the codec is deterministic, and error feedback loses nothing (decoded plus
the new residual equals the input plus the old residual)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codl.comm import QSGD, Int8, SignEF, TernGrad, TopK
from codl.comm.codecs import Codec

finite_floats = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32
)
gradients = st.lists(finite_floats, min_size=0, max_size=300).map(
    lambda values: torch.tensor(values, dtype=torch.float32).reshape(-1)
)


def _codec(kind: str, block: int) -> Codec:
    if kind == "int8":
        return Int8(block=block, error_feedback=True)
    if kind == "sign":
        return SignEF(block=8 * block)
    if kind == "terngrad":
        return TernGrad(block=8 * block, error_feedback=True)
    if kind == "qsgd":
        return QSGD(levels=1 + block % 31 + 1, block=8 * block, error_feedback=True)
    return TopK(density=min(1.0, block / 40))


@settings(max_examples=60, deadline=None)
@given(
    x=gradients,
    kind=st.sampled_from(["int8", "sign", "terngrad", "qsgd", "topk"]),
    block=st.integers(min_value=1, max_value=40),
    step=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_error_feedback_loses_nothing(x: torch.Tensor, kind: str, block: int, step: int) -> None:
    codec = _codec(kind, block)
    error = torch.linspace(-1.0, 1.0, x.numel())
    before = x + error
    payload = codec.encode(x, error=error, key=7, step=step)
    assert payload.numel() == codec.encoded_nbytes(x.numel())
    decoded = codec.decode(payload, x.numel())
    tolerance = float(before.abs().max()) * 2.0**-23 if x.numel() else 0.0
    torch.testing.assert_close(decoded + error, before, rtol=0.0, atol=tolerance)


@settings(max_examples=60, deadline=None)
@given(x=gradients, block=st.integers(min_value=1, max_value=600))
def test_int8_round_trip_error_is_within_half_a_step(x: torch.Tensor, block: int) -> None:
    """|decode - x| <= scale / 2 per block (round to nearest), plus float32 rounding; blocks
    below 127 / FLT_MAX are sent as zeros."""
    codec = Int8(block=block)
    decoded = codec.decode(codec.encode(x), x.numel())
    for begin in range(0, x.numel(), block):
        chunk, got = x[begin : begin + block], decoded[begin : begin + block]
        largest = float(chunk.abs().max())
        if torch.isinf(127.0 / chunk.abs().max()) and largest > 0:
            assert bool((got == 0).all())
            continue
        bound = 0.5 * largest / 127.0 + 4 * 2.0**-24 * largest + 1e-44
        assert float((got - chunk).abs().max()) <= bound


@settings(max_examples=60, deadline=None)
@given(x=gradients, block=st.integers(min_value=1, max_value=80))
def test_sign_decodes_to_the_block_mean_magnitude_with_the_sign(
    x: torch.Tensor, block: int
) -> None:
    codec = SignEF(block=8 * block)
    decoded = codec.decode(codec.encode(x), x.numel())
    for begin in range(0, x.numel(), 8 * block):
        chunk, got = x[begin : begin + 8 * block], decoded[begin : begin + 8 * block]
        mean = float(chunk.double().abs().mean())
        assert math.isclose(float(got.abs()[0]), mean, rel_tol=1e-5, abs_tol=1e-30)
        assert bool((got.abs() == got.abs()[0]).all())
        assert torch.equal(torch.signbit(got), torch.signbit(chunk))


@settings(max_examples=40, deadline=None)
@given(x=gradients, density=st.floats(min_value=0.001, max_value=1.0))
def test_topk_keeps_exactly_k_of_the_largest(x: torch.Tensor, density: float) -> None:
    codec = TopK(density=density, error_feedback=False)
    decoded = codec.decode(codec.encode(x), x.numel())
    k = codec.count(x.numel())
    sent = decoded != 0
    # Sent values are exact copies, and no unsent magnitude exceeds a sent one.
    assert torch.equal(decoded[sent], x[sent])
    assert int(sent.sum()) <= k
    if k and x.numel() > k:
        kth = torch.topk(x.abs(), k).values[-1]
        assert bool((x.abs()[~sent] <= kth).all())
