"""Tests for codl.nn.TernaryLinear, TernaryConv2d and FrozenTernaryLinear.

References: the plain float functionals (F.linear, F.conv2d) evaluated on ``alpha * codes`` from
codl.ternary.ternarize, and their gradients from torch autograd with the ternary weight as the
leaf (the straight-through estimator passes exactly that gradient to the latent weight). The
frozen layer is checked against an int64 reference of the integer product where the int8
activation quantization is exact, and within int8 rounding error elsewhere.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import codl
from codl.nn import FrozenTernaryLinear, TernaryConv2d, TernaryLinear
from codl.ternary import PackedTernaryWeight, TernaryConfig, ternarize

SETTINGS = [
    ("twn", None, "row"),
    ("twn", None, "tensor"),
    ("threshold", 0.05, "row"),
    ("threshold", 0.05, "tensor"),
]


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# TernaryLinear: forward and straight-through gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "rho", "granularity"), SETTINGS)
def test_linear_forward_uses_alpha_times_codes(
    method: str, rho: float | None, granularity: str
) -> None:
    torch.manual_seed(0)
    layer = TernaryLinear(24, 10, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    x = torch.randn(6, 24, generator=_seeded(1))
    result = ternarize(layer.weight, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    ternary_weight = result.codes.float() * result.scale.reshape(-1, 1)
    assert torch.equal(layer(x), F.linear(x, ternary_weight, layer.bias))
    # ternary_weight() is that same ternarization.
    assert torch.equal(layer.ternary_weight().codes, result.codes)
    assert torch.equal(layer.ternary_weight().scale, result.scale)


@pytest.mark.parametrize(("method", "rho", "granularity"), SETTINGS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_straight_through_gradient(
    method: str, rho: float | None, granularity: str, bias: bool
) -> None:
    torch.manual_seed(1)
    layer = TernaryLinear(16, 8, bias=bias, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    x = torch.randn(5, 3, 16, generator=_seeded(2), requires_grad=True)
    upstream = torch.randn(5, 3, 8, generator=_seeded(3))
    (layer(x) * upstream).sum().backward()

    # Reference: the float layer with the ternary weight as a leaf tensor.
    result = ternarize(layer.weight, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    leaf_weight = result.dequantize().requires_grad_(True)
    leaf_bias = None if layer.bias is None else layer.bias.detach().clone().requires_grad_(True)
    leaf_x = x.detach().clone().requires_grad_(True)
    (F.linear(leaf_x, leaf_weight, leaf_bias) * upstream).sum().backward()

    assert layer.weight.grad is not None and leaf_weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, leaf_weight.grad, rtol=1e-6, atol=1e-6)
    assert x.grad is not None and leaf_x.grad is not None
    torch.testing.assert_close(x.grad, leaf_x.grad, rtol=1e-6, atol=1e-6)
    if bias:
        assert layer.bias is not None and leaf_bias is not None
        torch.testing.assert_close(layer.bias.grad, leaf_bias.grad)


def test_optimizer_updates_the_latent_weight() -> None:
    torch.manual_seed(2)
    layer = TernaryLinear(12, 4)
    before = layer.weight.detach().clone()
    x = torch.randn(7, 12, generator=_seeded(4))
    leaf_weight = layer.ternary_weight().dequantize().requires_grad_(True)
    F.linear(x, leaf_weight, layer.bias.detach()).square().sum().backward()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01)
    layer(x).square().sum().backward()
    optimizer.step()
    assert leaf_weight.grad is not None
    torch.testing.assert_close(layer.weight.detach(), before - 0.01 * leaf_weight.grad)


def test_linear_state_dict_matches_nn_linear_and_round_trips() -> None:
    torch.manual_seed(3)
    layer = TernaryLinear(10, 6, method="threshold", rho=0.1)
    float_layer = nn.Linear(10, 6)
    assert list(layer.state_dict()) == list(float_layer.state_dict()) == ["weight", "bias"]
    restored = TernaryLinear(10, 6, method="threshold", rho=0.1)
    restored.load_state_dict(layer.state_dict())
    x = torch.randn(3, 10, generator=_seeded(5))
    assert torch.equal(restored(x), layer(x))
    # A float checkpoint loads directly into the ternary layer.
    restored.load_state_dict(float_layer.state_dict())
    assert torch.equal(restored.weight, float_layer.weight)


def test_linear_from_float_copies_weights() -> None:
    torch.manual_seed(4)
    source = nn.Linear(9, 5).double().eval()
    layer = TernaryLinear.from_float(source, TernaryConfig(method="threshold", rho=0.2))
    assert type(layer) is TernaryLinear
    assert (layer.method, layer.rho, layer.granularity) == ("threshold", 0.2, "row")
    assert torch.equal(layer.weight, source.weight) and torch.equal(layer.bias, source.bias)
    assert layer.weight.data_ptr() != source.weight.data_ptr()
    assert layer.weight.dtype == torch.float64 and not layer.training
    default = TernaryLinear.from_float(nn.Linear(3, 2, bias=False))
    assert (default.method, default.rho, default.granularity) == ("twn", None, "row")
    assert default.bias is None


def test_linear_extra_repr_names_the_settings() -> None:
    text = repr(TernaryLinear(4, 3, method="threshold", rho=0.25, granularity="tensor"))
    assert "in_features=4, out_features=3, bias=True" in text
    assert "method=threshold, rho=0.25, granularity=tensor" in text
    assert "method=twn, granularity=row" in repr(TernaryLinear(4, 3))


# --------------------------------------------------------------------------------------------
# TernaryConv2d
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "rho", "granularity"), SETTINGS)
@pytest.mark.parametrize(
    ("stride", "padding", "dilation"), [(1, 0, 1), (2, 1, 1), (1, 2, 2), (1, "same", 1)]
)
def test_conv_forward_and_gradient_match_f_conv2d(
    method: str,
    rho: float | None,
    granularity: str,
    stride: int,
    padding: int | str,
    dilation: int,
) -> None:
    torch.manual_seed(5)
    layer = TernaryConv2d(
        3,
        8,
        3,
        stride=stride,
        padding=padding,
        dilation=dilation,
        method=method,  # type: ignore[arg-type]
        rho=rho,
        granularity=granularity,  # type: ignore[arg-type]
    )
    x = torch.randn(2, 3, 11, 11, generator=_seeded(6))
    result = ternarize(layer.weight, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
    if granularity == "row":
        assert result.scale.shape == (8,)
    alpha = result.scale.reshape(-1, 1, 1, 1)
    leaf_weight = (alpha * result.codes.float()).requires_grad_(True)
    expected = F.conv2d(x, leaf_weight, layer.bias, stride, padding, dilation)
    output = layer(x)
    assert torch.equal(output, expected)

    upstream = torch.randn(expected.shape, generator=_seeded(7))
    (output * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert layer.weight.grad is not None and leaf_weight.grad is not None
    torch.testing.assert_close(layer.weight.grad, leaf_weight.grad, rtol=1e-6, atol=1e-6)


def test_conv_padding_mode_is_kept() -> None:
    torch.manual_seed(6)
    source = nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular")
    layer = TernaryConv2d.from_float(source)
    x = torch.randn(1, 2, 6, 6, generator=_seeded(8))
    reference = copy.deepcopy(source)
    with torch.no_grad():
        reference.weight.copy_(layer.ternary_weight().dequantize())
    assert layer.padding_mode == "circular"
    assert torch.equal(layer(x), reference(x))


def test_conv_from_float_copies_geometry_and_weights() -> None:
    source = nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False)
    layer = TernaryConv2d.from_float(source, TernaryConfig(granularity="tensor"))
    for attribute in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
        assert getattr(layer, attribute) == getattr(source, attribute)
    assert layer.dilation == source.dilation and layer.bias is None
    assert torch.equal(layer.weight, source.weight)
    assert layer.granularity == "tensor"
    assert "method=twn, granularity=tensor" in repr(layer)
    assert list(layer.state_dict()) == list(source.state_dict())


def test_conv_groups_other_than_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"groups=1 only.*got groups=2"):
        TernaryConv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"groups=1 only.*got groups=4"):
        TernaryConv2d.from_float(nn.Conv2d(4, 8, 3, groups=4))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"needs rho.*got rho=None"):
        TernaryLinear(4, 4, method="threshold")
    with pytest.raises(ValueError, match=r"rho must be a finite number >= 0, got -1"):
        TernaryConv2d(1, 1, 3, method="threshold", rho=-1.0)
    with pytest.raises(ValueError, match=r"granularity must be one of .*got 'channel'"):
        TernaryLinear(4, 4, granularity="channel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in_features must be a positive int, got 0"):
        TernaryLinear(0, 4)
    with pytest.raises(ValueError, match=r"out_channels must be a positive int, got 0"):
        TernaryConv2d(3, 0, 3)
    with pytest.raises(TypeError, match=r"in_features must be an int, got float"):
        TernaryLinear(4.0, 4)  # type: ignore[arg-type]


def test_from_float_wrong_module_type() -> None:
    with pytest.raises(TypeError, match=r"expected an nn.Linear, got Conv2d"):
        TernaryLinear.from_float(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"expected an nn.Conv2d, got Linear"):
        TernaryConv2d.from_float(nn.Linear(1, 1))  # type: ignore[arg-type]


def test_non_finite_latent_weight_is_reported() -> None:
    source = nn.Linear(3, 2)
    with torch.no_grad():
        source.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite values \(1 NaN, 0 Inf\)"):
        TernaryLinear.from_float(source)
    layer = TernaryLinear(3, 2)
    with torch.no_grad():
        layer.weight[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"\(0 NaN, 1 Inf\)"):
        layer(torch.randn(1, 3))


# --------------------------------------------------------------------------------------------
# FrozenTernaryLinear (the packed inference form)
# --------------------------------------------------------------------------------------------


def _integer_activations(rows: int, in_features: int, seed: int) -> torch.Tensor:
    """Integer activations in [-127, 127] with 127 in every row: absmax int8 quantization of
    these is exact (scale 1), so the frozen layer must give the float result."""
    x = torch.randint(-127, 128, (rows, in_features), generator=_seeded(seed)).float()
    x[:, 0] = 127.0
    return x


@pytest.mark.parametrize("granularity", ["row", "tensor"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("in_features", [1, 37, 300])
def test_freeze_matches_the_ternary_layer(granularity: str, bias: bool, in_features: int) -> None:
    torch.manual_seed(7)
    layer = TernaryLinear(in_features, 19, bias=bias, granularity=granularity)  # type: ignore[arg-type]
    frozen = layer.freeze()
    assert isinstance(frozen, FrozenTernaryLinear)
    assert isinstance(frozen.weight, PackedTernaryWeight)
    assert (frozen.in_features, frozen.out_features) == (in_features, 19)
    assert list(frozen.parameters()) == []

    result = layer.ternary_weight()
    alpha = result.scale.expand(19)
    torch.testing.assert_close(frozen.weight.alpha, alpha)

    # Exact int8 quantization: an int64 reference of the integer product.
    x = _integer_activations(4, in_features, seed=9)
    accumulated = x.long() @ result.codes.long().T
    expected = accumulated.double() * alpha.double()
    if layer.bias is not None:
        expected = expected + layer.bias.detach().double()
    with torch.no_grad():
        torch.testing.assert_close(frozen(x).double(), expected, rtol=1e-5, atol=1e-4)

    # General input: within int8 rounding of the float ternary layer, batch dimensions kept.
    x = torch.randn(2, 3, in_features, generator=_seeded(10))
    with torch.no_grad():
        reference = layer(x)
        output = frozen(x)
    assert output.shape == (2, 3, 19) and output.dtype == torch.float32
    relative_error = (output - reference).norm() / reference.norm()
    assert relative_error < 2e-2, f"relative error {relative_error:.3e}"


def test_freeze_leaves_the_layer_alone_and_packs_small() -> None:
    torch.manual_seed(8)
    layer = TernaryLinear(256, 64)
    before = copy.deepcopy(layer.state_dict())
    frozen = layer.freeze()
    for name, value in layer.state_dict().items():
        assert torch.equal(value, before[name])
    # 2 bits per code: at least 15x smaller than the float32 weight (plus 4 bytes per scale).
    assert frozen.weight.nbytes() * 15 <= 4 * 256 * 64
    assert "in_features=256, out_features=64, bias=True" in repr(frozen)
    assert frozen.bias is not None and frozen.bias.dtype == torch.float32
    assert "bias" in frozen.state_dict()


def test_frozen_bias_shape_is_checked() -> None:
    packed = TernaryLinear(8, 4).freeze().weight
    with pytest.raises(ValueError, match=re.escape("bias must have shape (4,)") + ".*got \\(5,\\)"):
        FrozenTernaryLinear(packed, torch.zeros(5))
    with pytest.raises(TypeError, match=r"floating-point tensor, got torch.int64"):
        FrozenTernaryLinear(packed, torch.zeros(4, dtype=torch.int64))
    assert FrozenTernaryLinear(packed, None).bias is None
    with pytest.raises(TypeError, match=r"PackedTernaryWeight, got Tensor"):
        FrozenTernaryLinear(torch.zeros(4, 8), None)  # type: ignore[arg-type]


def test_codl_nn_is_reachable_from_the_package() -> None:
    assert codl.nn.TernaryLinear is TernaryLinear
    assert codl.nn.TernaryConv2d is TernaryConv2d
    assert codl.nn.FrozenTernaryLinear is FrozenTernaryLinear
