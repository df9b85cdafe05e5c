"""codl.quant linear per-channel quantization: codes in the symmetric range, scales from the
channel maxima, the half-step error bound, any axis, and bad input."""

from __future__ import annotations

import pytest
import torch

from codl.quant import linear_dequantize, linear_quantize


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_codes_scales_and_error_bound(bits: int, axis: int) -> None:
    weight = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(bits)) * 3
    codes, scales = linear_quantize(weight, bits, axis)
    levels = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.shape == weight.shape
    assert scales.dtype == torch.float32 and scales.shape == (weight.shape[axis],)
    assert int(codes.min()) >= -levels and int(codes.max()) <= levels
    dim = axis % 3
    maxima = weight.double().abs().amax(dim=[d for d in range(3) if d != dim])
    torch.testing.assert_close(scales.double(), maxima / levels, rtol=1e-6, atol=0)
    # Each channel's largest entry maps to ±levels.
    assert bool((codes.abs().amax(dim=[d for d in range(3) if d != dim]) == levels).all())
    shape = [1, 1, 1]
    shape[dim] = -1
    decoded = linear_dequantize(codes, scales, axis)
    error = (decoded.double() - weight.double()).abs()
    bound = scales.double().reshape(shape) / 2 * (1 + 1e-5) + 1e-7
    assert bool((error <= bound).all())
    # Independent reference: round(w / s) with the stored scales.
    expected = torch.round(weight.double() / scales.double().reshape(shape)).clamp(-levels, levels)
    assert torch.equal(codes.double(), expected)


def test_zero_channel_gets_zero_scale() -> None:
    weight = torch.randn(3, 4)
    weight[1] = 0.0
    codes, scales = linear_quantize(weight, 8)
    assert float(scales[1]) == 0.0
    assert bool((codes[1] == 0).all())
    assert bool((linear_dequantize(codes, scales)[1] == 0).all())


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        linear_quantize(torch.randn(4, 4), bits)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="weight"):
        linear_quantize(torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight"):
        linear_quantize(torch.tensor(1.0))
    with pytest.raises(ValueError, match="weight"):
        linear_quantize(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match="axis"):
        linear_quantize(torch.randn(4, 4), 8, axis=2)
    with pytest.raises(TypeError, match="bits"):
        linear_quantize(torch.randn(4, 4), 4.0)  # type: ignore[arg-type]
    codes, scales = linear_quantize(torch.randn(4, 3), 8)
    with pytest.raises(ValueError, match="scales"):
        linear_dequantize(codes, scales, axis=1)
    with pytest.raises(TypeError, match="codes"):
        linear_dequantize(codes.int(), scales)
