"""Adversarial fine-tuning that keeps a compressed model compressed.

The loss of each step mixes clean and adversarial examples, Goodfellow et al., "Explaining and
harnessing adversarial examples", ICLR 2015, eq. (6):
``J̃(θ, x, y) = (1 - mix) · J(θ, x, y) + mix · J(θ, x̃, y)`` (their ``alpha = 1 - mix``, 0.5 in
their experiments), with ``x̃ = attack(model, x, y)`` made against the current weights. With
``mix = 1`` and a PGD attack it is the saddle-point training of Madry et al., ICLR 2018 (eq. 2.1).

Compression stays in the loop (Deep Compression's "retrain with the constraint held", and
robustness-aware compression in the spirit of Ye et al., "Adversarial robustness vs. model
compression, or both?", ICCV 2019): every ``compressor`` object's ``step()`` runs after each
optimizer step, so a :class:`codl.prune.Pruner` re-zeroes its masked weights and a
:class:`codl.quant.KMeansQuantizer` (whose gradient hook gives each member its centroid's summed
gradient, Deep Compression eq. 3) writes the shared values back. Ternary modules
(:class:`codl.nn.TernaryLinear`, :class:`codl.nn.TernaryConv2d`) need no callback: their forward
always ternarizes the latent weight and the straight-through estimator trains it.

The loop is separate from :func:`codl.training.fine_tune` because its loss differs: each batch
needs a fresh attack against the weights of that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from codl.data.checks import check_classifier_inputs
from codl.robust.attacks import Attack
from codl.training import Stepper

__all__ = ["AdversarialHistory", "adversarial_finetune"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Data = tuple[torch.Tensor, torch.Tensor] | Batches


@dataclass
class AdversarialHistory:
    """Per-step losses of :func:`adversarial_finetune` (mixed, clean and adversarial parts)."""

    losses: list[float] = field(default_factory=list)
    clean_losses: list[float] = field(default_factory=list)
    adversarial_losses: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)


def _check_number(value: object, name: str, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, received {type(value).__name__}")
    if not (math.isfinite(value) or high == math.inf) or not low <= value <= high:
        raise ValueError(f"{name}: expected a number in [{low}, {high}], received {value!r}")
    return float(value)


def _compressors(compressor: Stepper | Sequence[Stepper] | None) -> list[Stepper]:
    if compressor is None:
        return []
    items: list[Stepper] = (
        list(compressor) if isinstance(compressor, (list, tuple)) else [compressor]  # type: ignore[list-item]
    )
    for item in items:
        if not callable(getattr(item, "step", None)):
            raise TypeError(
                "compressor: expected objects with a step() method (a Pruner, a "
                f"KMeansQuantizer), received {type(item).__name__}"
            )
    return items


def _tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int
) -> Batches:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    for _ in range(steps):
        if position + batch_size > len(order):
            order = torch.randperm(len(images), generator=generator)
            position = 0
        batch = order[position : position + batch_size]
        position += batch_size
        yield images[batch], labels[batch]


def adversarial_finetune(
    model: nn.Module,
    data: Data,
    attack: Attack,
    epochs: float = 1.0,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    mix: float = 0.5,
    compressor: Stepper | Sequence[Stepper] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> AdversarialHistory:
    """Fine-tune ``model`` on a mix of clean and adversarial examples (Goodfellow et al. 2015,
    eq. 6), keeping its compression (see the module docstring).

    Args:
        model: trained in place (train mode during the steps, eval mode afterwards).
        data: ``(images, labels)`` tensors, shuffled by a generator seeded by ``seed`` into
            batches of ``batch_size`` for ``epochs`` passes (fractions allowed); or any iterable
            of ``(images, labels)`` batches (a ``DataLoader``), read once per whole epoch.
        attack: ``attack(model, images, labels) -> adversarial images``, e.g.
            :class:`codl.robust.PGD` or :class:`codl.robust.FGSM`.
        epochs: passes over ``data``.
        optimizer: Adam at ``lr`` with cosine decay when ``None``.
        mix: weight of the adversarial loss, in [0, 1] (Goodfellow et al.'s ``1 - alpha``).
        compressor: a :class:`codl.prune.Pruner`, a :class:`codl.quant.KMeansQuantizer`, or a
            list of objects with ``step()``, each run after every optimizer step.
        progress: show a tqdm progress bar.

    Returns:
        The per-step losses.

    Raises:
        FloatingPointError: a loss is NaN or Inf (the step and both parts are named); the
            weights of that step are not updated.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, received {type(model).__name__}")
    if not callable(attack):
        raise TypeError(f"attack: expected a callable, received {type(attack).__name__}")
    epochs = _check_number(epochs, "epochs", 0.0)
    mix = _check_number(mix, "mix", 0.0, 1.0)
    lr = _check_number(lr, "lr", 0.0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, received {batch_size!r}")
    callbacks = _compressors(compressor)
    batches: Batches
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        if not isinstance(labels, torch.Tensor) or len(images) != len(labels):
            raise ValueError("data: expected (images, labels) tensors of the same length")
        if len(images) == 0:
            raise ValueError("data: expected at least one example, received none")
        _, images, labels = check_classifier_inputs(
            model, images, labels, names=("data images", "data labels")
        )
        steps = math.ceil(epochs * len(images) / batch_size)
        batches = _tensor_batches(images, labels, steps, batch_size, seed)
    else:
        if epochs != int(epochs):
            raise ValueError(f"epochs: expected whole epochs for an iterable, received {epochs}")
        loader = data
        # An iterable without a length gets no schedule (steps 0).
        steps = int(epochs) * len(loader) if isinstance(loader, Sized) else 0

        def repeated() -> Batches:
            for _ in range(int(epochs)):
                yield from loader

        batches = repeated()
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay over the known number of steps (none for an iterable without a length).
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if steps else None
    history = AdversarialHistory()
    bar = tqdm(total=steps or None, desc="adversarial fine-tuning", disable=not progress)
    try:
        for step, (x, y) in enumerate(batches):
            model.train()
            zero = torch.zeros(())
            if mix == 0:
                clean_loss, adversarial_loss = F.cross_entropy(model(x), y), zero
            elif mix == 1:
                clean_loss, adversarial_loss = zero, F.cross_entropy(model(attack(model, x, y)), y)
            else:
                # One forward over both halves: batch norm sees the mixed batch, as in
                # Kurakin et al., "Adversarial machine learning at scale", ICLR 2017 (§3).
                adversarial = attack(model, x, y)
                logits = model(torch.cat([x, adversarial]))
                clean_loss = F.cross_entropy(logits[: len(x)], y)
                adversarial_loss = F.cross_entropy(logits[len(x) :], y)
            loss = (1 - mix) * clean_loss + mix * adversarial_loss
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"adversarial_finetune: the loss is {value} at step {step} (clean "
                    f"{float(clean_loss.detach())}, adversarial {float(adversarial_loss.detach())})"
                    "; lower lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            for callback in callbacks:
                callback.step()
            history.losses.append(value)
            history.clean_losses.append(float(clean_loss.detach()))
            history.adversarial_losses.append(float(adversarial_loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    finally:
        bar.close()
        model.eval()
    return history
