"""adversarial_finetune: it raises robustness, and pruning, k-means sharing and ternary layers
keep their constraints through it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import codl
from codl.data import load_split
from codl.nn import TernaryLinear
from codl.prune import magnitude_
from codl.quant import kmeans_
from codl.robust import (
    FGSM,
    PGD,
    adversarial_finetune,
    fashion_mnist_range,
    pixel_eps,
    robust_accuracy,
)
from codl.training import evaluate, fine_tune


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, _ = load_split("train", "subset")
    test_images, test_labels, _ = load_split("test", "subset")
    return images, labels, test_images, test_labels


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def trained(data: tuple[torch.Tensor, ...]) -> nn.Module:
    images, labels, _, _ = data
    model = _mlp()
    fine_tune(model, images, labels, epochs=2, lr=3e-3, seed=0)
    return model


def _attack() -> PGD:
    return PGD(pixel_eps(0.1), steps=3, clamp=fashion_mnist_range())


def test_adversarial_finetune_raises_pgd_accuracy(
    data: tuple[torch.Tensor, ...], trained: nn.Module
) -> None:
    images, labels, test_images, test_labels = data
    model = copy.deepcopy(trained)
    evaluation = PGD(pixel_eps(0.1), steps=10, clamp=fashion_mnist_range())
    before = robust_accuracy(model, test_images, test_labels, evaluation, progress=False)
    history = adversarial_finetune(
        model, (images, labels), FGSM(pixel_eps(0.1), fashion_mnist_range()), 2, progress=False
    )
    assert history.steps == math.ceil(2 * len(images) / 128)
    assert all(math.isfinite(v) for v in history.losses)
    evaluation = PGD(pixel_eps(0.1), steps=10, clamp=fashion_mnist_range())
    after = robust_accuracy(model, test_images, test_labels, evaluation, progress=False)
    assert after > before + 10.0
    assert evaluate(model, test_images, test_labels) > 65.0


def test_pruning_masks_hold(data: tuple[torch.Tensor, ...], trained: nn.Module) -> None:
    images, labels, _, _ = data
    model = copy.deepcopy(trained)
    pruner = magnitude_(model, 0.8)
    zeros = {name: w.detach() == 0 for name, w in pruner.weights.items()}
    before = {name: w.detach().clone() for name, w in pruner.weights.items()}
    adversarial_finetune(
        model, (images[:1024], labels[:1024]), _attack(), 1, compressor=pruner, progress=False
    )
    for name, weight in pruner.weights.items():
        assert torch.equal(weight.detach() == 0, zeros[name])  # the same entries, no others
        assert not torch.equal(weight.detach(), before[name])  # and it did train
    assert pruner.sparsity() == pytest.approx(0.8, abs=1e-4)


def test_kmeans_codebooks_hold(data: tuple[torch.Tensor, ...], trained: nn.Module) -> None:
    images, labels, _, _ = data
    model = copy.deepcopy(trained)
    pruner = magnitude_(model, 0.5)
    pruner.remove()
    quantizer = kmeans_(model, 3)
    codebooks = {name: c.clone() for name, c in quantizer.codebooks.items()}
    adversarial_finetune(
        model, (images[:1024], labels[:1024]), _attack(), 1, compressor=quantizer, progress=False
    )
    for name, weight in quantizer.weights.items():
        kept = weight.detach()[quantizer.masks[name]]
        assert bool((weight.detach()[~quantizer.masks[name]] == 0).all())
        values = torch.unique(kept)
        assert values.numel() == codebooks[name].numel() <= 8  # still 2^3 shared values
        assert torch.equal(values, torch.unique(quantizer.codebooks[name]))
        assert not torch.equal(quantizer.codebooks[name], codebooks[name])  # the centroids moved


def test_ternary_layers_stay_ternary(data: tuple[torch.Tensor, ...], trained: nn.Module) -> None:
    images, labels, test_images, test_labels = data
    model = codl.quantize_(copy.deepcopy(trained), codl.TernaryConfig())
    layers = [m for m in model.modules() if isinstance(m, TernaryLinear)]
    assert len(layers) == 2
    latent = [layer.weight.detach().clone() for layer in layers]
    adversarial_finetune(
        model, (images[:1024], labels[:1024]), _attack(), 1, lr=1e-3, progress=False
    )
    for layer, old in zip(layers, latent):
        assert isinstance(layer, TernaryLinear)
        assert not torch.equal(layer.weight.detach(), old)
        ternary = layer.ternary_weight()
        assert set(torch.unique(ternary.codes).tolist()) <= {-1, 0, 1}
        # The layer computes with alpha * codes, nothing else.
        x = test_images[:8].flatten(1) if layer.in_features == 784 else torch.randn(8, 64)
        expected = x @ ternary.dequantize(torch.float32).T + layer.bias
        assert torch.allclose(layer(x), expected, atol=1e-5)
    assert evaluate(model, test_images, test_labels) > 50.0


def test_nan_loss_is_reported(data: tuple[torch.Tensor, ...]) -> None:
    images, labels, _, _ = data
    model = _mlp()
    with torch.no_grad():
        model[3].bias[0] = float("nan")  # every logit row then holds a NaN
    with pytest.raises(FloatingPointError, match="step 0"):
        adversarial_finetune(model, (images[:256], labels[:256]), FGSM(0.0), 1, progress=False)


def test_bad_arguments_are_named(data: tuple[torch.Tensor, ...]) -> None:
    images, labels, _, _ = data
    model = _mlp()
    with pytest.raises(ValueError, match="mix"):
        adversarial_finetune(model, (images, labels), FGSM(0.1), mix=1.5, progress=False)
    with pytest.raises(TypeError, match="compressor"):
        adversarial_finetune(model, (images, labels), FGSM(0.1), compressor=3, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data"):
        adversarial_finetune(model, (images, labels[:10]), FGSM(0.1), progress=False)
