"""Freezing trained ternary models: packed layers, BatchNorm folded, outputs kept, and the
frozen LeNet exported to C and checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import codl
from codl.models import LeNet5
from codl.nn import FrozenTernaryConv2d, FrozenTernaryLinear, TernaryConv2d, TernaryLinear, freeze


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm non-trivial statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            count = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(count, generator=generator))
                module.bias.copy_(torch.randn(count, generator=generator) * 0.1)
    return model.eval()


def ternary_lenet(skip_first_and_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = codl.quantize_(LeNet5(), codl.TernaryConfig(skip_first_and_last=skip_first_and_last))
    return trained_like(model)


@pytest.mark.parametrize("skip_first_and_last", [False, True])
def test_freeze_packs_ternary_layers_and_folds_batchnorm(skip_first_and_last: bool) -> None:
    model = ternary_lenet(skip_first_and_last)
    frozen = freeze(model)
    kinds = [type(m) for m in frozen.modules()]
    assert not any(issubclass(k, (nn.BatchNorm1d, nn.BatchNorm2d)) for k in kinds)
    assert not any(issubclass(k, (TernaryLinear, TernaryConv2d)) for k in kinds)
    assert FrozenTernaryConv2d in kinds and FrozenTernaryLinear in kinds
    # the original is untouched and still trains
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    images = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
        got = frozen(images)
    # int8 activations: a few percent of the logits' scale.
    assert (got - expected).norm() <= 0.05 * expected.norm()
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9


def test_folded_layer_matches_layer_then_batchnorm() -> None:
    torch.manual_seed(3)
    layer = TernaryLinear(64, 32)
    norm = nn.BatchNorm1d(32)
    model = trained_like(nn.Sequential(layer, norm))
    frozen = freeze(model)
    assert isinstance(frozen[0], FrozenTernaryLinear) and isinstance(frozen[1], nn.Identity)
    # Same codes as the trained layer: folding changes scales and bias only.
    assert torch.equal(frozen[0].weight.unpack(), layer.ternary_weight().codes)
    x = torch.randn(8, 64)
    with torch.no_grad():
        expected = model(x)
    assert (frozen(x) - expected).norm() <= 0.02 * expected.norm()


def test_freeze_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module, received int"):
        freeze(3)  # type: ignore[arg-type]


def test_frozen_lenet_exports_to_c_and_matches(tmp_path: Path) -> None:
    from test_export_c import compile_and_run  # the gcc harness of the export tests

    frozen = freeze(ternary_lenet(skip_first_and_last=True))
    example = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = frozen(example).reshape(-1)
    got = compile_and_run(frozen, example, tmp_path)
    # The float first and last layers sum in another order than torch's GEMM.
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
