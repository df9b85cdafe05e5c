"""Tests for codl.quantize_ / codl.TernaryConfig / codl.ternary.sparsity_report, and a short
training run of the ternary LeNet on the shipped Fashion-MNIST subset.

The reference for a quantized model's output is the untouched float model with each chosen
layer's weight replaced by ``alpha * codes`` from codl.ternary.ternarize.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

import codl
from codl.nn import TernaryConv2d, TernaryLinear, quantize_, sparsity_report
from codl.ternary import TernaryConfig, ternarize


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.depthwise(self.conv(x)))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # "0"
        nn.ReLU(),  # "1"
        Block(),  # "2": "2.conv", "2.depthwise" (groups=6, stays float)
        nn.Flatten(),  # "3"
        nn.Linear(6 * 8 * 8, 32),  # "4"
        nn.ReLU(),  # "5"
        nn.Linear(32, 10),  # "6"
    ).eval()


ELIGIBLE = ["0", "2.conv", "4", "6"]


def _inputs() -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _kinds(model: nn.Module) -> dict[str, str]:
    return {name: type(module).__name__ for name, module in model.named_modules() if name}


def _float_with_ternary_weights(
    float_model: nn.Module, settings: dict[str, tuple[str, float | None, str]]
) -> nn.Module:
    """The float model with the named layers' weights replaced by alpha * codes."""
    reference = copy.deepcopy(float_model)
    for name, (method, rho, granularity) in settings.items():
        layer = reference.get_submodule(name)
        result = ternarize(layer.weight, method=method, rho=rho, granularity=granularity)  # type: ignore[arg-type]
        with torch.no_grad():
            layer.weight.copy_(result.dequantize())
    return reference


def test_default_config_swaps_every_eligible_layer() -> None:
    float_model = _model()
    model = quantize_(copy.deepcopy(float_model), TernaryConfig())
    kinds = _kinds(model)
    assert kinds["0"] == kinds["2.conv"] == "TernaryConv2d"
    assert kinds["4"] == kinds["6"] == "TernaryLinear"
    assert kinds["2.depthwise"] == "Conv2d"  # groups=6: not eligible
    assert kinds["1"] == "ReLU" and kinds["3"] == "Flatten"

    reference = _float_with_ternary_weights(
        float_model, {name: ("twn", None, "row") for name in ELIGIBLE}
    )
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_quantize_returns_the_same_model_and_keeps_parameters_equal() -> None:
    float_model = _model()
    model = copy.deepcopy(float_model)
    assert quantize_(model) is model
    assert list(model.state_dict()) == list(float_model.state_dict())
    for name, value in float_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    assert not model.training  # the eval mode of the float layers is kept


def test_overrides_by_name() -> None:
    float_model = _model()
    config = TernaryConfig(
        method="twn",
        granularity="row",
        overrides={
            "0": None,
            "6": TernaryConfig(method="threshold", rho=0.05, granularity="tensor"),
        },
    )
    model = quantize_(copy.deepcopy(float_model), config)
    kinds = _kinds(model)
    assert kinds["0"] == "Conv2d" and kinds["2.conv"] == "TernaryConv2d"
    last = model.get_submodule("6")
    assert isinstance(last, TernaryLinear)
    assert (last.method, last.rho, last.granularity) == ("threshold", 0.05, "tensor")

    reference = _float_with_ternary_weights(
        float_model,
        {
            "2.conv": ("twn", None, "row"),
            "4": ("twn", None, "row"),
            "6": ("threshold", 0.05, "tensor"),
        },
    )
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_filter_fn_and_override_precedence() -> None:
    seen: list[str] = []

    def linear_only(module: nn.Module, name: str) -> bool:
        seen.append(name)
        return isinstance(module, nn.Linear)

    model = quantize_(_model(), TernaryConfig(filter_fn=linear_only))
    kinds = _kinds(model)
    assert [kinds[name] for name in ELIGIBLE] == [
        "Conv2d",
        "Conv2d",
        "TernaryLinear",
        "TernaryLinear",
    ]
    assert seen == ELIGIBLE  # asked about eligible modules only, in named_modules order

    # An explicit override wins over the filter.
    model = quantize_(
        _model(), TernaryConfig(filter_fn=linear_only, overrides={"0": TernaryConfig()})
    )
    assert _kinds(model)["0"] == "TernaryConv2d" and _kinds(model)["2.conv"] == "Conv2d"


def test_skip_first_and_last() -> None:
    model = quantize_(_model(), TernaryConfig(skip_first_and_last=True))
    kinds = _kinds(model)
    assert [kinds[name] for name in ELIGIBLE] == [
        "Conv2d",
        "TernaryConv2d",
        "TernaryLinear",
        "Linear",
    ]
    model = quantize_(
        _model(), TernaryConfig(skip_first_and_last=True, overrides={"6": TernaryConfig()})
    )
    assert _kinds(model)["6"] == "TernaryLinear" and _kinds(model)["0"] == "Conv2d"


def test_root_module_is_returned_converted() -> None:
    layer = nn.Linear(5, 3)
    converted = quantize_(layer)
    assert isinstance(converted, TernaryLinear)
    assert torch.equal(converted.weight, layer.weight)
    assert type(layer) is nn.Linear


def test_shared_module_is_replaced_under_every_name() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    quantize_(model)
    assert isinstance(model[0], TernaryLinear)
    assert model[0] is model[2]


def test_already_ternary_and_subclasses_are_left_alone() -> None:
    model = quantize_(_model())
    layers = {name: module for name, module in model.named_modules()}
    quantize_(model)
    for name, module in model.named_modules():
        assert module is layers[name]

    attention = nn.MultiheadAttention(8, 2)
    wrapper = nn.Sequential(attention, nn.Linear(8, 8))
    # out_proj is a NonDynamicallyQuantizableLinear (an nn.Linear subclass) read directly by
    # the attention functional: swapping it would silently keep float arithmetic.
    quantize_(wrapper)
    assert type(attention.out_proj) is not TernaryLinear
    assert isinstance(wrapper[1], TernaryLinear)


def test_state_dict_round_trip_of_a_quantized_model() -> None:
    trained = quantize_(_model())
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    fresh = quantize_(_model())
    fresh.load_state_dict(trained.state_dict())
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))
    # A float checkpoint of the same architecture loads into the quantized model.
    float_model = _model()
    fresh.load_state_dict(float_model.state_dict())


def test_sparsity_report() -> None:
    model = quantize_(_model(), TernaryConfig(overrides={"0": None}))
    report = sparsity_report(model)
    assert [entry["name"] for entry in report] == ["2.conv", "4", "6"]
    for entry in report:
        layer = model.get_submodule(entry["name"])
        assert isinstance(layer, (TernaryLinear, TernaryConv2d))
        result = ternarize(layer.weight, granularity="row")
        assert entry["kind"] == type(layer).__name__
        assert entry["shape"] == tuple(layer.weight.shape)
        assert entry["sparsity"] == result.sparsity
        assert 0.2 < entry["sparsity"] < 0.6  # TWN on a uniform init zeroes about 35-40%
        assert entry["scale_mean"] == pytest.approx(float(result.scale.mean()))
        assert (entry["method"], entry["granularity"]) == ("twn", "row")
    assert sparsity_report(_model()) == []


def test_package_level_names() -> None:
    assert codl.quantize_ is quantize_
    assert codl.TernaryConfig is TernaryConfig


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_unknown_override_names_are_listed() -> None:
    config = TernaryConfig(overrides={"4": None, "features.9": None, "classifier": None})
    with pytest.raises(
        ValueError,
        match=re.escape("does not have: ['classifier', 'features.9']")
        + r".*eligible ones: \['0', '2.conv', '4', '6'\]",
    ):
        quantize_(_model(), config)


def test_override_of_an_ineligible_module() -> None:
    with pytest.raises(ValueError, match=r"'2.depthwise'.*groups=6 \(only groups=1"):
        quantize_(_model(), TernaryConfig(overrides={"2.depthwise": TernaryConfig()}))
    with pytest.raises(ValueError, match=r"'1'.*it is a ReLU, expected exactly nn.Linear"):
        quantize_(_model(), TernaryConfig(overrides={"1": TernaryConfig()}))
    # None for an ineligible module is harmless: it stays as it is anyway.
    model = quantize_(_model(), TernaryConfig(overrides={"2.depthwise": None}))
    assert _kinds(model)["2.depthwise"] == "Conv2d"


def test_non_finite_weight_names_the_module() -> None:
    model = _model()
    with torch.no_grad():
        model[4].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"cannot ternarize module '4'.*\(0 NaN, 1 Inf\)"):
        quantize_(model)


def test_bad_config_values() -> None:
    with pytest.raises(ValueError, match=r"needs rho.*got rho=None"):
        TernaryConfig(method="threshold")
    with pytest.raises(ValueError, match=r"expected rho=None, got rho=0.3"):
        TernaryConfig(rho=0.3)
    with pytest.raises(
        TypeError, match=r"overrides\['4'\] must be a TernaryConfig or None, got str"
    ):
        TernaryConfig(overrides={"4": "twn"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"overrides\['4'\] applies to one module"):
        TernaryConfig(overrides={"4": TernaryConfig(overrides={"6": None})})
    with pytest.raises(TypeError, match=r"overrides must be a mapping.*got list"):
        TernaryConfig(overrides=["4"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="filter_fn must be callable, got int"):
        TernaryConfig(filter_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got int"):
        quantize_(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"config must be a codl.TernaryConfig, got dict"):
        quantize_(_model(), {"method": "twn"})  # type: ignore[arg-type]


def test_config_is_frozen_and_owns_its_overrides() -> None:
    overrides: dict[str, TernaryConfig | None] = {"0": None}
    config = TernaryConfig(overrides=overrides)
    overrides["4"] = None
    assert dict(config.overrides) == {"0": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "threshold"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# training smoke test (the 1-point goal on the full data is measured by codl.nn.lenet)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ternary_lenet_learns_on_the_shipped_subset() -> None:
    from codl.nn.lenet import train_and_compare

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        # The default twin: first conv and last linear float; 3 epochs = 72 Adam steps.
        report = train_and_compare(epochs=3, data="subset", seed=0, progress=False)
        # Every layer ternary, 1 epoch = 24 steps.
        all_ternary = train_and_compare(
            epochs=1, data="subset", seed=0, progress=False, config=TernaryConfig()
        )
    finally:
        torch.set_num_threads(threads)
    assert report["data"] == "subset" and report["train_examples"] == 3000
    assert report["test_examples"] == 1000 and report["epochs"] == 3
    # Chance is 10%; these few steps on 3000 images reach about 80%.
    assert report["float_accuracy"] > 60.0
    assert report["ternary_accuracy"] > 60.0
    assert report["gap"] == report["float_accuracy"] - report["ternary_accuracy"]
    assert report["float_layers"] == ["features.0", "classifier.4"]
    assert [entry["name"] for entry in report["sparsity"]] == ["features.4", "classifier.1"]
    assert all(0.0 < entry["sparsity"] < 1.0 for entry in report["sparsity"])

    assert all_ternary["ternary_accuracy"] > 60.0
    assert all_ternary["float_layers"] == []
    assert len(all_ternary["sparsity"]) == 4


def test_lenet_data_choice_is_checked() -> None:
    from codl.nn.lenet import train_and_compare

    with pytest.raises(ValueError, match=r"data must be 'full' or 'subset', got 'mnist'"):
        train_and_compare(data="mnist")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"epochs must be a positive int, got 0"):
        train_and_compare(epochs=0)
