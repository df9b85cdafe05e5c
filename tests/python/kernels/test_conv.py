"""codl.kernels.conv: the direct int8/ternary convolution against torch's float conv2d on the
dequantized tensors (equal up to float rounding), across layouts, ISAs and thread counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codl import _ops
from codl.kernels import conv as cv

# (in_channels, height, width, out_channels, kernel, stride, padding, dilation, batch):
# LeNet-5, FashionCNN and CSRNet-like layers and odd shapes.
SHAPES = [
    (1, 28, 28, 6, 5, 1, 2, 1, 1),
    (6, 14, 14, 16, 5, 1, 0, 1, 3),
    (1, 28, 28, 32, 3, 1, 1, 1, 2),
    (32, 14, 14, 64, 3, 1, 1, 1, 1),
    (32, 13, 11, 24, 3, 1, 2, 2, 2),
    (3, 17, 19, 40, 5, 2, 2, 1, 2),
    (5, 9, 7, 3, 3, 2, 1, 2, 1),
]


def quantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The stated quantization: round half to even of x * (1 / scale), clamped to +-127."""
    inverse = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return torch.round(x * inverse).clamp(-127, 127)


def absmax_scale(x: torch.Tensor) -> tuple[float, torch.Tensor]:
    absmax = x.abs().max()
    return float(absmax / 127), torch.round(x * (127 / absmax))


def random_weight(co: int, ci: int, k: int, ternary: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low, high = (-1, 2) if ternary else (-127, 128)
    return torch.randint(low, high, (co, ci, k, k), generator=g, dtype=torch.int8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ternary", [False, True])
def test_float_output_matches_torch_on_the_dequantized_tensors(shape, ternary):
    ci, h, w, co, k, stride, padding, dilation, n = shape
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    x = torch.randn(n, ci, h, w, generator=g)
    weight = random_weight(co, ci, k, ternary, seed=ci * 7 + co)
    w_scale = torch.rand(co, generator=g) * 0.05 + 0.01
    bias = torch.randn(co, generator=g)
    packed = cv.pack_conv_weight(weight, "ternary2" if ternary else "int8")
    for relu in (False, True):
        y = cv.conv2d_int8(
            x, packed, w_scale, bias, stride=stride, padding=padding, dilation=dilation, relu=relu
        )
        scale, xq = absmax_scale(x)
        expected = F.conv2d(
            xq * scale,
            weight.float() * w_scale[:, None, None, None],
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        if relu:
            expected = expected.clamp_min(0)
        assert y.shape == expected.shape
        tolerance = 1e-5 * float(expected.abs().max()) + 1e-6
        torch.testing.assert_close(y, expected, rtol=0, atol=tolerance)
        # The NHWC float output holds the same values.
        y_nhwc = cv.conv2d_int8(
            x,
            packed,
            w_scale,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            relu=relu,
            output_layout="nhwc",
        )
        assert torch.equal(y_nhwc, y.permute(0, 2, 3, 1))


def test_ternary_and_int8_weights_give_identical_outputs():
    x = torch.randn(2, 6, 14, 14)
    weight = random_weight(16, 6, 5, True, seed=3)
    w_scale = torch.full((16,), 0.02)
    a = cv.conv2d_int8(x, cv.pack_conv_weight(weight, "int8"), w_scale, padding=2)
    b = cv.conv2d_int8(x, cv.pack_conv_weight(weight, "ternary2"), w_scale, padding=2)
    assert torch.equal(a, b)


def test_int8_chain_requantizes_and_pools_without_float():
    """conv -> int8 NHWC -> max-pool -> conv, against the float computation of each step."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 28, 28, generator=g)
    w1, w2 = random_weight(6, 1, 5, False, 1), random_weight(16, 6, 5, False, 2)
    s1, s2 = torch.full((6,), 0.004), torch.full((16,), 0.002)
    b1, b2 = torch.randn(6, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1
    out_scale = 0.02
    q1 = cv.conv2d_int8(
        x, cv.pack_conv_weight(w1), s1, b1, padding=2, relu=True, output_scale=out_scale
    )
    assert q1.dtype == torch.int8 and q1.shape == (3, 28, 28, 6)
    scale, xq = absmax_scale(x)
    y1 = F.conv2d(xq * scale, w1.float() * s1[:, None, None, None], b1, padding=2).clamp_min(0)
    expected_q1 = quantize(y1, out_scale).to(torch.int8).permute(0, 2, 3, 1)
    # Float rounding may move a value across a rounding boundary: at most one step, rarely.
    difference = (q1.int() - expected_q1.int()).abs()
    assert int(difference.max()) <= 1 and float((difference > 0).float().mean()) < 0.01
    pooled = cv.max_pool2x2_int8(q1)
    assert torch.equal(
        pooled, F.max_pool2d(q1.permute(0, 3, 1, 2).float(), 2).to(torch.int8).permute(0, 2, 3, 1)
    )
    y2 = cv.conv2d_int8(pooled, cv.pack_conv_weight(w2), s2, b2, input_scale=out_scale)
    expected = F.conv2d(
        pooled.permute(0, 3, 1, 2).float() * out_scale, w2.float() * s2[:, None, None, None], b2
    )
    torch.testing.assert_close(y2, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_results_do_not_depend_on_threads_or_isa():
    x = torch.randn(4, 32, 14, 14)
    weight = cv.pack_conv_weight(random_weight(64, 32, 3, False, 9))
    w_scale = torch.full((64,), 0.01)
    baseline = cv.conv2d_int8(x, weight, w_scale, padding=1)
    original = _ops.get_dispatch_level()
    runnable = [str(level) for level in _ops.native_info()["isas_runnable"]]  # type: ignore[union-attr]
    try:
        for level in runnable:
            _ops.set_dispatch_level(level)
            for threads in (1, 2, 3):
                with _ops.using_threads(threads):
                    assert torch.equal(cv.conv2d_int8(x, weight, w_scale, padding=1), baseline)
    finally:
        _ops.set_dispatch_level(original)


def test_calibrated_input_scale_clamps():
    x = torch.tensor([[[[3.0, -0.5, 0.25]]]])
    weight = cv.pack_conv_weight(torch.ones((1, 1, 1, 1), dtype=torch.int8))
    y = cv.conv2d_int8(x, weight, torch.ones(1), input_scale=0.01)
    # 3.0 lies beyond 127 * 0.01: it clamps to 127.
    expected = torch.tensor([[[[127.0, -50.0, 25.0]]]]) * torch.tensor(0.01)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_bad_input_raises_with_what_was_expected():
    x = torch.randn(1, 3, 8, 8)
    weight = cv.pack_conv_weight(random_weight(4, 3, 3, False, 1))
    scale = torch.ones(4)
    with pytest.raises(ValueError, match="stride: expected positive"):
        cv.conv2d_int8(x, weight, scale, stride=0)
    with pytest.raises(ValueError, match="dilation: expected positive"):
        cv.conv2d_int8(x, weight, scale, dilation=(1, 0))
    with pytest.raises(ValueError, match="padding: expected non-negative"):
        cv.conv2d_int8(x, weight, scale, padding=-1)
    with pytest.raises(TypeError, match="stride: expected an int"):
        cv.conv2d_int8(x, weight, scale, stride=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected 3 channels .* received 2"):
        cv.conv2d_int8(torch.randn(1, 2, 8, 8), weight, scale)
    with pytest.raises(TypeError, match=r"expected dtype torch\.float32 or torch\.int8"):
        cv.conv2d_int8(x.double(), weight, scale)
    with pytest.raises(ValueError, match=r"weight_scale: expected shape \(4,\)"):
        cv.conv2d_int8(x, weight, torch.ones(3))
    with pytest.raises(TypeError, match=r"bias: expected dtype torch\.float32"):
        cv.conv2d_int8(x, weight, scale, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel fits"):
        cv.conv2d_int8(torch.randn(1, 3, 2, 2), weight, scale)
    with pytest.raises(ValueError, match="input_scale: expected the scale"):
        cv.conv2d_int8(torch.zeros(1, 8, 8, 3, dtype=torch.int8), weight, scale)
    with pytest.raises(ValueError, match="output_scale: expected a positive"):
        cv.conv2d_int8(x, weight, scale, output_scale=0.0)
    with pytest.raises(ValueError, match="finite"):
        cv.conv2d_int8(x.index_fill(3, torch.tensor([2]), float("nan")), weight, scale)
    with pytest.raises(TypeError, match="ConvWeight"):
        cv.conv2d_int8(x, torch.zeros(4, 3, 3, 3, dtype=torch.int8), scale)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="codes: expected values in"):
        cv.pack_conv_weight(torch.full((1, 1, 1, 1), 2, dtype=torch.int8), "ternary2")
    with pytest.raises(TypeError, match=r"weight: expected dtype torch\.int8"):
        cv.pack_conv_weight(torch.zeros(1, 1, 1, 1))
    # 2-bit fields 0b11 are rejected, never computed with.
    ternary = cv.pack_conv_weight(random_weight(4, 3, 3, True, 2), "ternary2")
    corrupt = ternary.data.clone()
    corrupt[3] |= 0xC0
    bad = cv.ConvWeight(corrupt, "ternary2", 4, 3, (3, 3))
    with pytest.raises(ValueError, match="0b11"):
        cv.conv2d_int8(x, bad, scale)
    with pytest.raises(TypeError, match=r"expected dtype torch\.int8"):
        cv.max_pool2x2_int8(torch.zeros(1, 2, 2, 1))
