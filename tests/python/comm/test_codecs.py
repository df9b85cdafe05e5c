"""The native gradient codecs (Int8, SignEF, TernGrad, QSGD, TopK) against independent references:
each codec's math written in torch/NumPy (float32 where the kernels work in float32, exact
sequential sums where the kernels define an order) and the counter-based generator written in
Python integers. Payloads must match byte for byte, across dispatch levels and thread counts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from codl import _ops
from codl.comm import QSGD, Int8, SignEF, TernGrad, TopK
from codl.comm.codecs import Codec

MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_uniform(seed: int, key: int, step: int, n: int) -> torch.Tensor:
    """The codecs' generator from its definition (cpp/include/codl/comm.h), in Python ints for
    the stream and wrapping NumPy uint64 for the draws."""
    stream = _mix64_int(_mix64_int(_mix64_int(seed) ^ key) ^ step)
    with np.errstate(over="ignore"):
        index = np.arange(n, dtype=np.uint64)
        z = _mix64(np.uint64(stream) + index * np.uint64(0x9E3779B97F4A7C15))
    bits = (z >> np.uint64(40)).astype(np.float32)
    return torch.from_numpy(bits * np.float32(2.0**-24))


def _blocks(v: torch.Tensor, block: int) -> Iterator[tuple[int, torch.Tensor]]:
    for begin in range(0, v.numel(), block):
        yield begin, v[begin : begin + block]


def reference_int8(v: torch.Tensor, block: int) -> tuple[bytes, torch.Tensor]:
    """Payload bytes and decoded values: scale = max|v| / 127, codes round-half-even of
    v * (127 / max|v|) in float32."""
    scales, codes, decoded = [], [], []
    for _, chunk in _blocks(v, block):
        largest = chunk.abs().max()
        inverse = 127.0 / largest if largest > 0 else torch.tensor(0.0)
        if torch.isinf(inverse):  # below 127 / FLT_MAX: sent as zeros
            inverse = torch.tensor(0.0)
        scale = largest / 127.0 if inverse > 0 else torch.tensor(0.0)
        q = torch.round(chunk * inverse)
        scales.append(scale.reshape(1))
        codes.append(q.to(torch.int8))
        decoded.append(q * scale)
    if not scales:
        return b"", torch.empty(0)
    payload = torch.cat(scales).numpy().tobytes() + torch.cat(codes).numpy().tobytes()
    return payload, torch.cat(decoded)


def reference_sign_scale(chunk: torch.Tensor) -> float:
    """mean |v| in the kernels' order: value i into float32 lane i % 16 (sequential), lanes in
    float64."""
    magnitudes = chunk.abs().numpy()
    padded = np.zeros(-(-len(magnitudes) // 16) * 16, dtype=np.float32)
    padded[: len(magnitudes)] = magnitudes
    lanes = np.cumsum(padded.reshape(-1, 16), axis=0, dtype=np.float32)[-1]
    total = 0.0
    for lane in lanes:
        total += float(lane)
    return float(np.float32(total / len(magnitudes)))


def reference_sign(v: torch.Tensor, block: int) -> tuple[bytes, torch.Tensor]:
    scales, decoded = [], []
    for _, chunk in _blocks(v, block):
        scale = reference_sign_scale(chunk)
        scales.append(scale)
        decoded.append(torch.where(torch.signbit(chunk), -scale, scale))
    bits = np.packbits(torch.signbit(v).numpy(), bitorder="little")
    payload = np.asarray(scales, dtype=np.float32).tobytes() + bits.tobytes()
    return payload, torch.cat(decoded) if decoded else torch.empty(0)


def reference_terngrad(v: torch.Tensor, block: int, u: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    scales, codes = [], []
    for begin, chunk in _blocks(v, block):
        s = chunk.abs().max()
        keep = (
            u[begin : begin + len(chunk)] < chunk.abs() / s
            if s > 0
            else torch.zeros_like(chunk, dtype=torch.bool)
        )
        code = torch.where(torch.signbit(chunk), -1, 1) * keep
        scales.append(s.reshape(1))
        codes.append(code.to(torch.int64))
    if not scales:
        return b"", torch.empty(0)
    scale = torch.cat(scales)
    code = torch.cat(codes)
    fields = np.zeros(-(-len(code) // 4) * 4, dtype=np.uint8)
    fields[: len(code)] = (code + 1).numpy()
    packed = fields.reshape(-1, 4)
    packed = packed[:, 0] | packed[:, 1] << 2 | packed[:, 2] << 4 | packed[:, 3] << 6
    per_value_scale = scale.repeat_interleave(block)[: len(code)]
    return scale.numpy().tobytes() + packed.astype(
        np.uint8
    ).tobytes(), code.float() * per_value_scale


def reference_qsgd(
    v: torch.Tensor, block: int, levels: int, u: torch.Tensor
) -> tuple[bytes, torch.Tensor]:
    intervals = np.float32(levels - 1)
    width = (levels - 1).bit_length() + 1
    norms, fields, decoded = [], [], []
    for begin, chunk in _blocks(v, block):
        squares = np.cumsum(chunk.numpy().astype(np.float64) ** 2)[-1]
        norm = np.float32(math.sqrt(squares))
        magnitude = chunk.abs().numpy()
        if norm > 0:
            r = magnitude / norm * intervals
            lower = np.floor(r)
            level = lower + (u[begin : begin + len(chunk)].numpy() < r - lower)
            level = np.minimum(level, levels - 1).astype(np.int64)
        else:
            level = np.zeros(len(chunk), dtype=np.int64)
        negative = (level != 0) & torch.signbit(chunk).numpy()
        norms.append(norm)
        fields.append(level | negative.astype(np.int64) << (width - 1))
        value = norm * level.astype(np.float32) / intervals
        decoded.append(torch.from_numpy(np.where(negative, -value, value).astype(np.float32)))
    if not norms:
        return b"", torch.empty(0)
    all_fields = np.concatenate(fields)
    bits = (all_fields[:, None] >> np.arange(width)) & 1
    packed = np.packbits(bits.reshape(-1).astype(np.uint8), bitorder="little")
    return np.asarray(norms, dtype=np.float32).tobytes() + packed.tobytes(), torch.cat(decoded)


LENGTHS = [0, 1, 7, 8, 511, 512, 513, 1000, 2049, 4099]


def _gradient(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g))
    if n > 3:
        x[3] = -0.0  # a negative zero has a sign bit
    if n > 8:
        x[8] = 3e-39  # a subnormal
    return x


def dispatch_levels() -> list[str]:
    info = _ops.native_info()
    runnable = info["isas_runnable"]
    assert isinstance(runnable, list)
    return ["scalar", *[str(level) for level in runnable if level != "sve"]]


@pytest.fixture(params=dispatch_levels())
def dispatch(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = _ops.get_dispatch_level()
    _ops.set_dispatch_level(request.param)
    yield str(request.param)
    _ops.set_dispatch_level(previous)


def test_generator_matches_its_definition() -> None:
    drawn = torch.empty(1000)
    _ops.comm_counter_uniform(7, 3, 11, drawn)
    assert torch.equal(drawn, reference_uniform(7, 3, 11, 1000))
    assert float(drawn.min()) >= 0.0 and float(drawn.max()) < 1.0
    # Uniform: the mean and the decile counts of 1000 draws stay near their expectations.
    assert abs(float(drawn.mean()) - 0.5) < 0.05
    counts = torch.histc(drawn, bins=10, min=0.0, max=1.0)
    assert float(((counts - 100.0) ** 2 / 100.0).sum()) < 35.0  # chi-square, 9 dof, p ~ 1e-4
    other = torch.empty(1000)
    _ops.comm_counter_uniform(7, 4, 11, other)
    assert not torch.equal(drawn, other)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("block", [512, 24])
def test_int8_payload_matches_the_reference(dispatch: str, n: int, block: int) -> None:
    x, error = _gradient(n), _gradient(n, seed=1) * 0.1
    v = x + error
    codec = Int8(block=block, error_feedback=True)
    payload = codec.encode(x, error=error)
    expected_payload, expected_decoded = reference_int8(v, block)
    assert payload.numel() == codec.encoded_nbytes(n) == 4 * -(-n // block) + n
    assert payload.numpy().tobytes() == expected_payload
    decoded = codec.decode(payload, n)
    assert torch.equal(decoded, expected_decoded)
    assert torch.equal(error, v - expected_decoded)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("block", [2048, 16, 40])
def test_sign_payload_matches_the_reference(dispatch: str, n: int, block: int) -> None:
    x, error = _gradient(n), _gradient(n, seed=2) * 0.5
    v = x + error
    if n > 3:
        x[3], error[3] = -0.0, 0.0  # -0 + 0 = +0: the sign of v, not of x, is sent
        v[3] = 0.0
    codec = SignEF(block=block)
    payload = codec.encode(x, error=error)
    expected_payload, expected_decoded = reference_sign(v, block)
    assert payload.numel() == codec.encoded_nbytes(n)
    assert payload.numpy().tobytes() == expected_payload
    assert torch.equal(codec.decode(payload, n), expected_decoded)
    assert torch.equal(error, v - expected_decoded)


def test_sign_without_error_keeps_the_sign_of_negative_zero() -> None:
    x = torch.tensor([-0.0, 0.0, 1.0, -3.0, 2.0, -0.0, 5.0, 1.0])
    payload = SignEF(block=8).encode(x)
    assert payload[4] == 0b00101001
    assert torch.equal(
        SignEF(block=8).decode(payload, 8),
        torch.where(torch.signbit(x), -1.5, 1.5),  # mean |x| = 12 / 8
    )


@pytest.mark.parametrize("n", LENGTHS)
def test_terngrad_payload_matches_the_reference(dispatch: str, n: int) -> None:
    x, error = _gradient(n), _gradient(n, seed=3) * 0.1
    v = x + error
    codec = TernGrad(block=64, seed=5, error_feedback=True, clip=None)
    payload = codec.encode(x, error=error, key=2, step=9)
    expected_payload, expected_decoded = reference_terngrad(v, 64, reference_uniform(5, 2, 9, n))
    assert payload.numel() == codec.encoded_nbytes(n)
    assert payload.numpy().tobytes() == expected_payload
    assert torch.equal(codec.decode(payload, n), expected_decoded)
    assert torch.equal(error, v - expected_decoded)


@pytest.mark.parametrize("n", [64, 1000, 4099])
@pytest.mark.parametrize("error_feedback", [False, True])
def test_terngrad_clips_at_clip_times_the_rms(n: int, error_feedback: bool) -> None:
    # Wen et al. section 3.3: values clamped to c * sigma before ternarizing; heavy tails so
    # that clipping changes the scales of the blocks.
    x = _gradient(n) * (1.0 + 20.0 * (torch.arange(n) % 97 == 0))
    error = _gradient(n, seed=3) * 0.1 if error_feedback else None
    v = x if error is None else x + error
    values = v.double().numpy()
    bound = np.float32(2.5 * np.sqrt(np.mean(values * values)))
    clamped = torch.from_numpy(np.clip(v.numpy(), -bound, bound))
    assert bool((clamped != v).any())
    codec = TernGrad(block=64, seed=5, error_feedback=error_feedback)
    payload = codec.encode(x, error=error, key=2, step=9)
    expected_payload, expected_decoded = reference_terngrad(
        clamped, 64, reference_uniform(5, 2, 9, n)
    )
    assert payload.numpy().tobytes() == expected_payload
    decoded = codec.decode(payload, n)
    assert torch.equal(decoded, expected_decoded)
    if error is not None:
        # What was clipped off is fed back: the error is v - decode, as without clipping (up
        # to the rounding of subtracting and adding the old error around the kernel).
        torch.testing.assert_close(error, v - decoded, rtol=0, atol=1e-6 * float(v.abs().max()))


def test_terngrad_clip_is_checked() -> None:
    for bad in (0.0, -1.0, True, "2.5"):
        with pytest.raises(ValueError, match="clip"):
            TernGrad(clip=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("levels", [2, 16, 5, 256])
def test_qsgd_payload_matches_the_reference(dispatch: str, n: int, levels: int) -> None:
    x, error = _gradient(n), _gradient(n, seed=4) * 0.1
    v = x + error
    codec = QSGD(levels=levels, block=128, seed=1, error_feedback=True)
    payload = codec.encode(x, error=error, key=4, step=1)
    expected_payload, expected_decoded = reference_qsgd(
        v, 128, levels, reference_uniform(1, 4, 1, n)
    )
    assert payload.numel() == codec.encoded_nbytes(n)
    assert payload.numpy().tobytes() == expected_payload
    assert torch.equal(codec.decode(payload, n), expected_decoded)
    assert torch.equal(error, v - expected_decoded)


@pytest.mark.parametrize("n", [1, 7, 100, 1000, 5000, 70_000])
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 1.0])
def test_topk_sends_exactly_the_largest_magnitudes(dispatch: str, n: int, density: float) -> None:
    x, error = _gradient(n), _gradient(n, seed=5) * 0.3
    v = x + error
    codec = TopK(density=density, seed=3)
    k = codec.count(n)
    assert k == min(n, max(1, math.ceil(density * n)))
    payload = codec.encode(x, error=error, key=1, step=2)
    assert payload.numel() == codec.encoded_nbytes(n) == 4 + 8 * k
    fields = payload.view(torch.int32)
    assert int(fields[0]) == k
    indices = fields[1 : 1 + k].long()
    values = payload[4 + 4 * k :].view(torch.float32)
    expected = torch.topk(v.abs(), k).indices.sort().values
    assert torch.equal(indices, expected)
    assert torch.equal(values, v[expected])
    remaining = v.clone()
    remaining[expected] = 0.0
    assert torch.equal(error, remaining)
    decoded = codec.decode(payload, n)
    assert torch.equal(decoded + error, v)


def test_topk_ties_go_to_the_lower_index() -> None:
    x = torch.tensor([1.0, -2.0, 2.0, 0.5, -2.0, 2.0, 1.0, 0.0])
    payload = TopK(density=0.25, error_feedback=False).encode(x)
    assert payload[4:12].view(torch.int32).tolist() == [1, 2]


def test_topk_momentum_correction() -> None:
    n = 3000
    x, error, velocity = _gradient(n), _gradient(n, seed=6) * 0.2, _gradient(n, seed=7) * 0.1
    u = 0.9 * velocity + x
    v = error + u
    codec = TopK(density=0.02, momentum=0.9)
    payload = codec.encode(x, error=error, momentum_buffer=velocity)
    k = codec.count(n)
    sent = payload[4 : 4 + 4 * k].view(torch.int32).long()
    assert torch.equal(sent, torch.topk(v.abs(), k).indices.sort().values)
    v[sent] = 0.0
    u[sent] = 0.0
    assert torch.equal(error, v)
    assert torch.equal(velocity, u)


def test_topk_threshold_search_copes_with_ties_and_zeros() -> None:
    zeros = torch.zeros(10_000)
    payload = TopK(density=0.01, error_feedback=False).encode(zeros)
    assert payload[4 : 4 + 400].view(torch.int32).tolist() == list(range(100))
    spike = torch.zeros(10_000)
    spike[9_999] = 5.0
    spike[17] = -4.0
    decoded = TopK(density=0.0002).decode(TopK(density=0.0002).encode(spike), 10_000)
    assert torch.equal(decoded, spike)


CODECS: list[Codec] = [
    Int8(block=512, error_feedback=True),
    SignEF(),
    TernGrad(error_feedback=True),
    QSGD(error_feedback=True),
    TopK(density=0.05),
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_error_feedback_invariant_over_steps(codec: Codec) -> None:
    """decode(payload) + error_new == x + error_old, step after step (what was sent plus the
    residual is what came in), to float32 rounding of the subtraction."""
    n = 3001
    error = torch.zeros(n)
    for step in range(5):
        x = _gradient(n, seed=10 + step)
        before = x + error
        payload = codec.encode(x, error=error, key=0, step=step)
        decoded = codec.decode(payload, n)
        tolerance = float(before.abs().max()) * 2.0**-23
        torch.testing.assert_close(decoded + error, before, rtol=0.0, atol=tolerance)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_payload_is_independent_of_thread_count(codec: Codec) -> None:
    n = 300_001  # several threads' worth of chunks
    x = _gradient(n, seed=21)
    payloads, errors = [], []
    for threads in (1, 2):
        error = _gradient(n, seed=22) * 0.1
        with _ops.using_threads(threads):
            payloads.append(codec.encode(x, error=error, key=3, step=4))
        errors.append(error)
    assert torch.equal(payloads[0], payloads[1])
    assert torch.equal(errors[0], errors[1])
    with _ops.using_threads(2):
        decoded = codec.decode(payloads[0], n)
    with _ops.using_threads(1):
        assert torch.equal(codec.decode(payloads[0], n), decoded)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_decode_accumulates_into_out(codec: Codec) -> None:
    n = 1500
    payload = codec.encode(_gradient(n), key=0, step=0)
    base = _gradient(n, seed=30)
    out = base.clone()
    assert codec.decode(payload, n, out=out, accumulate=True) is out
    assert torch.equal(out, base + codec.decode(payload, n))
    codec.decode(payload, n, out=out)
    assert torch.equal(out, codec.decode(payload, n))


@pytest.mark.parametrize(
    ("codec", "quantum"),
    [
        # The spacing of the levels each value is rounded between: s = max|x| for TernGrad,
        # ||x|| / (levels - 1) for QSGD.
        (TernGrad(block=64, clip=None), lambda block: block.abs().max()),
        (QSGD(levels=4, block=64), lambda block: block.double().norm() / 3),
    ],
    ids=["terngrad", "qsgd"],
)
def test_stochastic_codecs_are_unbiased_and_keyed(
    codec: Codec, quantum: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    n, draws = 256, 1500
    x = _gradient(n, seed=40)
    total = torch.zeros(n, dtype=torch.float64)
    for step in range(draws):
        total += codec.decode(codec.encode(x, key=1, step=step), n).double()
    mean = total / draws
    # Stochastic rounding between multiples of q: variance q^2 f (1 - f), f = frac(|x| / q).
    q = torch.cat([quantum(block).double().expand(64) for block in x.split(64)])
    f = torch.frac(x.double().abs() / q)
    sigma = q * (f * (1 - f)).sqrt() / math.sqrt(draws)
    # 6 standard errors, plus two quanta over the draws for values that are rarely rounded up
    # (a Poisson count near 0 is not normal), plus float32 rounding.
    bound = 6.0 * sigma + 2.0 * q / draws + 1e-6 * q
    assert bool(((mean - x.double()).abs() <= bound).all())
    assert torch.equal(codec.encode(x, key=1, step=3), codec.encode(x, key=1, step=3))
    assert not torch.equal(codec.encode(x, key=1, step=3), codec.encode(x, key=2, step=3))
    assert not torch.equal(codec.encode(x, key=1, step=3), codec.encode(x, key=1, step=4))


def test_compression_ratios_meet_the_issue_goals() -> None:
    n = 25_557_032  # ResNet-50's parameter count
    assert Int8().encoded_nbytes(n) / (4 * n) <= 0.26
    assert SignEF().encoded_nbytes(n) / (4 * n) <= 0.035
    assert SignEF().block == 512  # 1 / 32 + 1 / 512 = 0.0332 of float32
    assert SignEF().encoded_nbytes(n) == 4 * -(-n // 512) + -(-n // 8)
    assert TernGrad().encoded_nbytes(n) / (4 * n) <= 0.07
    assert QSGD().encoded_nbytes(n) / (4 * n) <= 0.16


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_non_finite_values_are_reported(codec: Codec) -> None:
    for bad in (math.nan, math.inf, -math.inf):
        x = _gradient(1000)
        x[517] = bad
        with pytest.raises(ValueError, match="non-finite gradient values"):
            codec.encode(x, error=torch.zeros(1000))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_bad_tensors_are_rejected(codec: Codec) -> None:
    with pytest.raises(ValueError, match="float32"):
        codec.encode(torch.zeros(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous"):
        codec.encode(torch.zeros(32)[::2])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        codec.encode([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="error"):
        codec.encode(torch.zeros(16), error=torch.zeros(15))
    payload = codec.encode(torch.ones(64))
    with pytest.raises(ValueError, match="bytes"):
        codec.decode(torch.cat([payload, payload]), 64)
    with pytest.raises(ValueError, match="out"):
        codec.decode(payload, 64, out=torch.zeros(63))


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="block"):
        Int8(block=0)
    with pytest.raises(ValueError, match="block"):
        SignEF(block=-8)
    with pytest.raises(ValueError, match="divisible by 8"):
        SignEF(block=100)
    with pytest.raises(ValueError, match="levels"):
        QSGD(levels=1)
    with pytest.raises(ValueError, match="levels"):
        QSGD(levels=257)
    for density in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="density"):
            TopK(density=density)
    with pytest.raises(ValueError, match="momentum"):
        TopK(momentum=1.0)
    with pytest.raises(ValueError, match="seed"):
        TernGrad(seed=-1)
    with pytest.raises(ValueError, match="step"):
        TernGrad().encode(torch.ones(8), step=-1)
    with pytest.raises(ValueError, match="momentum_buffer"):
        TopK(momentum=0.9).encode(torch.ones(8), error=torch.zeros(8))


def test_corrupt_payloads_are_rejected() -> None:
    terngrad = TernGrad(block=8)
    payload = terngrad.encode(torch.ones(8))
    payload[4] = 0xFF
    with pytest.raises(ValueError, match="0b11"):
        terngrad.decode(payload, 8)
    qsgd = QSGD(levels=5, block=8)  # 3 bits per level: 5, 6 and 7 are not levels
    payload = qsgd.encode(torch.ones(8))
    payload[4] = 0x07
    with pytest.raises(ValueError, match="level"):
        qsgd.decode(payload, 8)
    topk = TopK(density=0.25)
    payload = topk.encode(torch.arange(8.0))
    swapped = payload.clone()
    swapped[4:12] = torch.cat([payload[8:12], payload[4:8]])
    with pytest.raises(ValueError, match="increasing"):
        topk.decode(swapped, 8)
    with pytest.raises(ValueError, match="count"):
        topk.decode(payload[:-4], 8)
    too_far = payload.clone()
    too_far[8:12] = torch.tensor([200], dtype=torch.int32).view(torch.uint8)
    with pytest.raises(ValueError, match="increasing below"):
        topk.decode(too_far, 8)


def test_int8_tiny_blocks() -> None:
    """127 / max|v| overflows float32 for the first block: it is sent as zeros and error
    feedback keeps it; the second (max|v| = 1e-36) still quantizes to within half a step."""
    v = torch.tensor([1e-39, -2e-39, 5e-40, 0.0, -1e-45, 2e-39, 1e-40, -3e-37])
    v = torch.cat([v, v * 0 + torch.tensor([1e-36, -5e-37, 2e-37, 0.0, 1e-38, 0.0, 0.0, 3e-37])])
    codec = Int8(block=8, error_feedback=True)
    error = torch.zeros(16)
    payload = codec.encode(v, error=error)
    expected_payload, expected_decoded = reference_int8(v, 8)
    assert payload.numpy().tobytes() == expected_payload
    decoded = codec.decode(payload, 16)
    assert torch.equal(decoded, expected_decoded)
    assert bool((decoded[:8] == 0).all()) and torch.equal(error[:8], v[:8])
    assert float((decoded[8:] - v[8:]).abs().max()) <= 0.5 * 1e-36 / 127 * 1.01
