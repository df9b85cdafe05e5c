"""codl.prune.channel_: removed channels give exactly the outputs of the original model with
those channels zeroed at the consumer's input; batch norms and flatten-to-linear handled; the
L1 criterion keeps the largest filters; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codl.models import FashionCNN, LeNet5, LeNet300100
from codl.prune import channel_, find_channel_groups


class FunctionalNet(nn.Module):
    """Functional ReLU, pooling and torch.flatten: only a torch.fx trace sees the structure."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 12, 3, padding=1)
        self.norm = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 14 * 14, 20)
        self.out = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.norm(self.conv(x))), 2)
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.c(h + self.b(h))


def _randomise_norms(model: nn.Module) -> None:
    """Non-trivial running statistics and affine terms, so the batch-norm surgery matters."""
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))


def _zeroed_reference(model: nn.Module, kept: dict[str, list[int]]) -> nn.Module:
    """The original model with each removed channel zeroed at its consumer's input."""
    reference = copy.deepcopy(model)
    for group in find_channel_groups(reference):
        if group.producer not in kept:
            continue
        consumer = reference.get_submodule(group.consumer)
        channels = group.channels(reference)
        removed = sorted(set(range(channels)) - set(kept[group.producer]))
        with torch.no_grad():
            weight = consumer.weight
            view = weight.view(weight.shape[0], channels, -1)
            view[:, removed] = 0.0
    return reference


MODELS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "fashion_cnn": (FashionCNN, (1, 28, 28)),
    "lenet300100": (LeNet300100, (1, 28, 28)),
    "functional": (FunctionalNet, (1, 28, 28)),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
def test_pruned_model_equals_original_with_channels_zeroed(name: str, ratio: float) -> None:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    _randomise_norms(model)
    model.eval()
    original = copy.deepcopy(model)
    inputs = torch.randn(6, *shape, generator=torch.Generator().manual_seed(1))
    parameters_before = sum(p.numel() for p in model.parameters())
    kept = channel_(model, ratio, example_input=inputs)
    groups = find_channel_groups(original)
    assert set(kept) == {g.producer for g in groups}
    for group in groups:
        channels = group.channels(original)
        expected_width = max(1, channels - round(ratio * channels))
        assert len(kept[group.producer]) == expected_width
        assert group.channels(model) == expected_width
    reference = _zeroed_reference(original, kept)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), reference(inputs), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < parameters_before


def test_groups_of_lenet5_include_batch_norms_and_flatten() -> None:
    groups = {g.producer: g for g in find_channel_groups(LeNet5())}
    assert set(groups) == {"features.0", "features.4", "classifier.1"}
    assert groups["features.0"].norms == ["features.1"]
    assert groups["features.4"].consumer == "classifier.1"
    assert groups["features.4"].spatial == 25  # 64 channels of 5x5 flattened into 1600 inputs
    assert groups["classifier.1"].norms == ["classifier.2"]


def test_l1_keeps_the_filters_of_largest_l1_norm() -> None:
    torch.manual_seed(3)
    model = FashionCNN()
    norms = model[0].weight.detach().abs().sum(dim=(1, 2, 3))
    kept = channel_(model, 0.75)
    expected = sorted(torch.topk(norms, 8).indices.tolist())
    assert kept["0"] == expected
    torch.testing.assert_close(model[0].weight.detach().abs().sum(dim=(1, 2, 3)), norms[expected])


def test_widths_prune_only_the_named_layers() -> None:
    model = FashionCNN()
    kept = channel_(model, widths={"3": 10})
    assert list(kept) == ["3"] and len(kept["3"]) == 10
    assert model[0].out_channels == 32 and model[3].out_channels == 10
    assert model[7].in_features == 10 * 49
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_branching_producers_are_left_alone() -> None:
    producers = {g.producer for g in find_channel_groups(Residual())}
    assert producers == set()  # a's output feeds b and the addition; b's feeds the addition
    kept = channel_(Residual(), 0.5)
    assert kept == {}


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="ratio"):
        channel_(FashionCNN(), 1.0)
    with pytest.raises(ValueError, match="ratio"):
        channel_(FashionCNN(), -0.5)
    with pytest.raises(TypeError, match="ratio"):
        channel_(FashionCNN(), "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="criterion"):
        channel_(FashionCNN(), 0.5, criterion="l0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly one"):
        channel_(FashionCNN())
    with pytest.raises(ValueError, match="widths"):
        channel_(FashionCNN(), widths={"9": 3})
    with pytest.raises(ValueError, match="widths"):
        channel_(FashionCNN(), widths={"0": 0})
    with pytest.raises(TypeError, match="model"):
        channel_("model", 0.5)  # type: ignore[arg-type]
