"""FGSM and PGD: budgets, valid ranges, an analytic solution, strength ordering, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codl.data import load_split
from codl.robust import FGSM, PGD, fashion_mnist_range, fgsm, pgd, pixel_eps, robust_accuracy
from codl.training import evaluate, fine_tune


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP trained for two epochs on the shipped subset, and 500 test images."""
    images, labels, _ = load_split("train", "subset")
    test_images, test_labels, _ = load_split("test", "subset")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fine_tune(model, images, labels, epochs=2, lr=3e-3, seed=0)
    assert evaluate(model, test_images, test_labels) > 70.0
    return model, test_images[:500], test_labels[:500]


def test_fashion_mnist_range_is_pixels_zero_and_one() -> None:
    images, _, _ = load_split("test", "subset")
    lo, hi = fashion_mnist_range()
    # Pixels 0 and 255 occur in the data: the bounds are exactly its extremes.
    assert float(images.min()) == lo and float(images.max()) == hi
    assert pixel_eps(0.1) == pytest.approx(0.1 * (hi - lo))


def test_fgsm_on_a_linear_model_is_the_hand_computed_step() -> None:
    # Two classes, logits W x: the cross-entropy gradient for label 0 is p1 (w1 - w0), p1 > 0,
    # so FGSM moves x by eps * sign(w1 - w0) whatever the probabilities are.
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, 1.0, 0.5 - 1.0, -1.0]]))
    x = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    expected = x + 0.25 * torch.tensor([[1.0, 1.0, -1.0, -1.0]])  # sign(w1 - w0)
    assert torch.equal(fgsm(model, x, torch.tensor([0]), 0.25), expected)
    # Label 1 moves the other way.
    assert torch.equal(
        fgsm(model, x, torch.tensor([1]), 0.25), x + 0.25 * torch.tensor([[-1.0, -1.0, 1.0, 1.0]])
    )


def test_perturbations_stay_in_the_ball_and_the_valid_range(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    lo, hi = fashion_mnist_range()
    eps = pixel_eps(0.1)
    for adversarial in (
        fgsm(model, images, labels, eps, clamp=(lo, hi)),
        pgd(model, images, labels, eps, clamp=(lo, hi), generator=torch.Generator().manual_seed(0)),
    ):
        assert float((adversarial - images).abs().max()) <= eps + 1e-6
        assert float(adversarial.min()) >= lo and float(adversarial.max()) <= hi
        assert not torch.equal(adversarial, images)


def test_attack_strength_orders_clean_fgsm_pgd(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    clamp = fashion_mnist_range()
    eps = pixel_eps(0.05)

    def loss(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), labels))

    clean = loss(images)
    one_step = loss(fgsm(model, images, labels, eps, clamp=clamp))
    iterated = loss(pgd(model, images, labels, eps, clamp=clamp, generator=torch.Generator()))
    # Over 500 images the gaps are large, not noise: FGSM ~2x the clean loss here.
    assert one_step > 1.3 * clean
    assert iterated > one_step


def test_accuracy_falls_as_eps_grows(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    clamp = fashion_mnist_range()
    accuracies = [
        robust_accuracy(
            model, images, labels, PGD(pixel_eps(e), steps=5, clamp=clamp), progress=False
        )
        for e in (0.0, 0.02, 0.05, 0.1)
    ]
    assert accuracies[0] == evaluate(model, images, labels)
    assert all(a > b for a, b in itertools.pairwise(accuracies))


def test_eps_zero_returns_x_and_model_state_is_untouched(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    x = images[:20]
    assert torch.equal(fgsm(model, x, labels[:20], 0.0), x)
    assert torch.equal(pgd(model, x, labels[:20], 0.0), x)
    model.train()
    model.zero_grad(set_to_none=True)  # fine_tune leaves the last step's gradients
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, labels[:20], 0.3, steps=3)
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


def test_pgd_is_deterministic_with_a_generator(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, images, labels = trained
    x, y = images[:50], labels[:50]
    a = pgd(model, x, y, 0.2, steps=3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, 0.2, steps=3, generator=torch.Generator().manual_seed(5))
    c = pgd(model, x, y, 0.2, steps=3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(
        PGD(0.2, steps=3, seed=1)(model, x, y), PGD(0.2, steps=3, seed=1)(model, x, y)
    )
    # Without the random start PGD's first step is FGSM's at step_size.
    assert torch.equal(
        pgd(model, x, y, 0.2, steps=1, step_size=0.2, random_start=False), fgsm(model, x, y, 0.2)
    )
    assert torch.equal(FGSM(0.2)(model, x, y), fgsm(model, x, y, 0.2))


def test_bad_input_is_named() -> None:
    model = nn.Linear(3, 2)
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        PGD(eps=float("nan"))
    with pytest.raises(TypeError, match="eps"):
        pgd(model, x, y, "0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, 0.1, norm="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=-1)
    with pytest.raises(ValueError, match="y: expected 4 labels"):
        fgsm(model, x, y[:3], 0.1)
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        fgsm(model, x.long(), y, 0.1)
    with pytest.raises(ValueError, match="clamp"):
        fgsm(model, x, y, 0.1, clamp=(1.0, 0.0))
