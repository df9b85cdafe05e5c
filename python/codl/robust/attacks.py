"""Adversarial examples: the fast gradient sign method and projected gradient descent (L∞).

* FGSM: I. J. Goodfellow, J. Shlens and C. Szegedy, "Explaining and harnessing adversarial
  examples", ICLR 2015, eq. (3): ``η = ε · sign(∇_x J(θ, x, y))``, ``x̃ = x + η``.
* PGD: A. Madry, A. Makelov, L. Schmidt, D. Tsipras and A. Vladu, "Towards deep learning models
  resistant to adversarial attacks", ICLR 2018, eq. (2): ``x^{t+1} = Π_{x+S}(x^t + alpha ·
  sign(∇_x L(θ, x^t, y)))`` with ``S`` the L∞ ball of radius ``ε``, started at a uniformly random
  point of the ball (their §3 "random restarts"; one start here).

Both keep the adversarial input inside ``clamp = (lo, hi)``, the valid range of the input in the
space the model reads: images normalised as ``(pixel - mean) / std`` live in
``[(0 - mean) / std, (1 - mean) / std]`` (:func:`fashion_mnist_range`), and a budget of ``ε``
pixel units is ``ε / std`` there (:func:`pixel_eps`). The model runs in eval mode during the
attack (batch norm uses its running statistics, dropout is off) and its mode is restored after;
gradients are taken with respect to the input only (``torch.autograd.grad``), so no ``.grad``
is left on the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from codl.data.checks import check_classifier_inputs
from codl.data.fashion_mnist import _PIXEL_MEAN, _PIXEL_STD

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "LossFn",
    "fashion_mnist_range",
    "fgsm",
    "pgd",
    "pixel_eps",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``attack(model, images, labels) -> adversarial images`` (what :func:`adversarial_finetune`
#: and :func:`codl.robust.robust_accuracy` call).
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Norm = Literal["linf"]


def _pixel_stats() -> tuple[float, float]:
    # The normalisation codl.data.load_split applies; one definition, read from there.
    return _PIXEL_MEAN, _PIXEL_STD


def fashion_mnist_range() -> tuple[float, float]:
    """The valid input range of images from :func:`codl.data.load_split`: pixels 0 and 1 in
    its normalised units, ``((0 - mean) / std, (1 - mean) / std)``."""
    mean, std = _pixel_stats()
    # Computed as load_split computes pixels (float32), so the bounds are the data's extremes.
    lo, hi = torch.tensor([0.0, 1.0]).sub_(mean).div_(std).tolist()
    return lo, hi


def pixel_eps(eps: float) -> float:
    """``eps`` pixel units (pixels in [0, 1]) in the normalised units of
    :func:`codl.data.load_split`: a shift of ``eps`` in a pixel is ``eps / std`` after
    normalisation."""
    _check_eps(eps)
    return eps / _pixel_stats()[1]


def _check_eps(eps: object, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{name}: expected a float >= 0, received {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name}: expected a finite float >= 0, received {eps!r}")
    return float(eps)


def _check_inputs(
    model: object,
    x: object,
    y: object,
    clamp: tuple[float, float] | None,
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    # Labels are class indices only for the default loss; a custom loss_fn takes any target.
    model, x, y = check_classifier_inputs(
        model, x, y, names=("x", "y"), class_labels=loss_fn is F.cross_entropy
    )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: expected finite values, received NaN or Inf")
    if clamp is not None:
        lo, hi = clamp
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"clamp: expected finite (lo, hi) with lo < hi, received {clamp!r}")
    return model, x, y


def _clamp(x: torch.Tensor, clamp: tuple[float, float] | None) -> torch.Tensor:
    return x if clamp is None else x.clamp(clamp[0], clamp[1])


def _input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∇_x loss`` and the loss, with respect to the input alone (parameters untouched)."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(leaf), y)
        (gradient,) = torch.autograd.grad(loss, [leaf])
    return gradient, loss.detach()


class _EvalMode:
    """Eval mode for the attack, the caller's mode restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *_: object) -> None:
        for module, training in self.modes.items():
            module.training = training


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    clamp: tuple[float, float] | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015, eq. 3).

    Returns ``clamp(x + eps · sign(∇_x loss_fn(model(x), y)))``, detached; ``x`` unchanged.

    Args:
        model: any classifier; run in eval mode, its mode restored afterwards.
        x: a batch of inputs (floating point, first dimension the batch).
        y: their labels (what ``loss_fn`` takes as target).
        eps: the L∞ budget, ``>= 0``, in the units of ``x`` (see :func:`pixel_eps`).
        clamp: ``(lo, hi)``, the valid range of ``x`` (see :func:`fashion_mnist_range`), or
            ``None`` for no limit.
        loss_fn: the loss ``J`` the attack increases (cross-entropy by default).
    """
    eps = _check_eps(eps)
    model, x, y = _check_inputs(model, x, y, clamp, loss_fn)
    if eps == 0:
        return x.detach().clone()
    with _EvalMode(model):
        gradient, _ = _input_gradient(model, x, y, loss_fn)
    return _clamp(x.detach() + eps * gradient.sign(), clamp)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    norm: Norm = "linf",
    *,
    clamp: tuple[float, float] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the negative loss, L∞ (Madry et al. 2018, eq. 2).

    ``x^0 = x + U(-eps, eps)`` (or ``x`` without ``random_start``), then ``steps`` times
    ``x^{t+1} = clamp(Π_{‖·-x‖∞ ≤ eps}(x^t + step_size · sign(∇_x loss)))``; returns the last
    iterate, detached. Madry et al. used 40 steps of 0.01 for ε = 0.3 on MNIST (step ≈ ε/30,
    with restarts); ``steps=10, step_size=eps/4`` is the common cheaper setting that still
    crosses the ball several times.

    Args:
        model, x, y, eps, clamp, loss_fn: as :func:`fgsm`.
        steps: gradient steps, ``>= 0`` (0 with ``random_start`` is random noise in the ball).
        step_size: ``alpha``, ``> 0``; ``eps / 4`` when ``None``.
        random_start: start at a uniformly random point of the ε-ball.
        norm: ``"linf"`` (the only one implemented).
        generator: seeds the random start, so the attack is deterministic.
    """
    eps = _check_eps(eps)
    model, x, y = _check_inputs(model, x, y, clamp, loss_fn)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, received {steps!r}")
    if norm != "linf":
        raise ValueError(f"norm: expected 'linf' (the only one implemented), received {norm!r}")
    alpha = eps / 4 if step_size is None else _check_eps(step_size, "step_size")
    if step_size is not None and alpha == 0 and eps > 0:
        raise ValueError("step_size: expected a float > 0, received 0")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, received {type(generator)}")
    original = x.detach()
    if eps == 0:
        return original.clone()
    lower, upper = original - eps, original + eps
    adversarial = original.clone()
    if random_start:
        noise = torch.rand(original.shape, generator=generator, dtype=original.dtype)
        adversarial = _clamp(original + (2 * noise - 1) * eps, clamp)
    with _EvalMode(model):
        for _ in range(steps):
            gradient, _ = _input_gradient(model, adversarial, y, loss_fn)
            stepped = adversarial + alpha * gradient.sign()
            adversarial = _clamp(torch.minimum(torch.maximum(stepped, lower), upper), clamp)
    return adversarial.detach()


@dataclass(frozen=True)
class FGSM:
    """:func:`fgsm` with its settings bound: ``FGSM(eps=0.3)(model, x, y)``."""

    eps: float
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fgsm(model, x, y, self.eps, clamp=self.clamp)


@dataclass
class PGD:
    """:func:`pgd` with its settings bound: ``PGD(eps=0.3, steps=10)(model, x, y)``.

    ``seed`` seeds one generator, created with the attack and advanced by every call, so a run
    of calls is reproducible as a whole.
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    clamp: tuple[float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_eps(self.eps)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: expected an int >= 0, received {self.steps!r}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd(
            model,
            x,
            y,
            self.eps,
            self.steps,
            self.step_size,
            self.random_start,
            clamp=self.clamp,
            generator=self.generator,
        )
