"""A small training loop for fine-tuning after pruning or weight sharing.

Each ``callbacks`` object's ``step()`` runs after every optimizer step: a
:class:`codl.prune.Pruner` re-applies its masks (and follows its schedule), a
:class:`codl.quant.KMeansQuantizer` snaps the weights back onto its codebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Stepper", "evaluate", "fine_tune"]


class Stepper(Protocol):
    """Anything with a ``step()`` to run after each optimizer step."""

    def step(self) -> None: ...


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (eval mode, batches of 1000)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            logits = model(images[start : start + 1000])
            correct += int((logits.argmax(dim=1) == labels[start : start + 1000]).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(images))


def fine_tune(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: float = 1.0,
    batch_size: int = 128,
    lr: float = 1e-3,
    callbacks: Sequence[Stepper] = (),
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` with cross-entropy for ``epochs`` (may be fractional) passes; returns the
    loss of every step. Adam at ``lr`` with cosine decay unless an ``optimizer`` is given;
    batches in the order of a generator seeded by ``seed``."""
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not epochs >= 0:
        raise ValueError(f"epochs: expected a number >= 0, received {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, received {batch_size!r}")
    if len(images) != len(labels):
        raise ValueError(
            f"labels: expected {len(images)} labels like images, received {len(labels)}"
        )
    steps = math.ceil(epochs * len(images) / batch_size)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    losses = []
    model.train()
    for _ in range(steps):
        if position + batch_size > len(order):
            order = torch.randperm(len(images), generator=generator)
            position = 0
        batch = order[position : position + batch_size]
        position += batch_size
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        schedule.step()
        for callback in callbacks:
            callback.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
