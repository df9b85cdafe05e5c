"""The training and evaluation helpers that codl's compression and robustness workflows share.

* :func:`evaluate`: top-1 accuracy of a classifier on tensors, in eval mode.
* :func:`fine_tune`: a small cross-entropy training loop (Adam with cosine decay by default)
  that runs ``callbacks`` after every optimizer step, so that a :class:`codl.prune.Pruner`
  re-applies its masks and a :class:`codl.quant.KMeansQuantizer` snaps the weights back onto
  its codebook.
* :func:`prunable_weights`: the layer weights that pruning, weight sharing and the compression
  search act on.
* :func:`checked_state_tensors`: the per-weight tensors of a pruner's or quantizer's
  ``state_dict``, checked against the weights they belong to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

__all__ = [
    "EVALUATION_BATCH",
    "PRUNABLE_TYPES",
    "Stepper",
    "checked_state_tensors",
    "evaluate",
    "fine_tune",
    "prunable_weights",
]

#: The batch size of :func:`evaluate`: the same batches give the same logits bit for bit.
EVALUATION_BATCH = 1000

#: Modules whose ``weight`` :func:`prunable_weights` returns by default.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Stepper(Protocol):
    """Anything with a ``step()`` to run after each optimizer step."""

    def step(self) -> None: ...


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = EVALUATION_BATCH,
) -> float:
    """Top-1 accuracy in percent, in eval mode and without gradients, ``batch_size`` images at
    a time; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
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
    partial_batches: bool = False,
    progress: bool = False,
    description: str | None = None,
) -> list[float]:
    """Train ``model`` with cross-entropy for ``epochs`` (may be fractional) passes; returns the
    loss of every step and leaves the model in eval mode.

    Adam at ``lr`` with a cosine decay to 0 over all steps unless an ``optimizer`` is given
    (the low final rate lets pruned, shared or ternary weights settle). Batches follow
    permutations drawn from a generator seeded by ``seed``, so two models trained with the same
    seed see the same batches. ``partial_batches=False`` takes only full batches (a new
    permutation when the next batch would not fit); ``True`` runs whole epochs, each ending
    with the remainder batch.
    """
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or not epochs >= 0:
        raise ValueError(f"epochs: expected a number >= 0, received {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, received {batch_size!r}")
    if len(images) != len(labels):
        raise ValueError(
            f"labels: expected {len(images)} labels like images, received {len(labels)}"
        )
    if partial_batches:
        steps = math.ceil(epochs * math.ceil(len(images) / batch_size))
    else:
        steps = math.ceil(epochs * len(images) / batch_size)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    losses = []
    model.train()
    with tqdm(total=steps, desc=description, disable=not progress, unit="step") as bar:
        for _ in range(steps):
            end = position + (1 if partial_batches else batch_size)
            if end > len(order):
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
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses


def prunable_weights(
    model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None
) -> dict[str, nn.Parameter]:
    """``{"<module>.weight": parameter}`` of every ``Linear`` and ``Conv1d/2d/3d`` of ``model``
    (or of the modules ``include(name, module)`` accepts): what :func:`codl.prune.magnitude_`
    prunes and :func:`codl.quant.kmeans_` shares."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, received {type(model).__name__}")
    chosen = {}
    for name, module in model.named_modules():
        wanted = (
            include(name, module) if include is not None else isinstance(module, PRUNABLE_TYPES)
        )
        weight = getattr(module, "weight", None)
        if wanted and isinstance(weight, nn.Parameter):
            chosen[f"{name}.weight" if name else "weight"] = weight
    return chosen


def checked_state_tensors(
    given: object,
    weights: Mapping[str, torch.Tensor],
    key: str,
    spec: Callable[[torch.Tensor], tuple[torch.Size, torch.dtype]] | None,
) -> dict[str, torch.Tensor]:
    """Clones of ``given[name]`` (the entry ``key`` of a ``state_dict``) for every weight name,
    each on its weight's device and of the shape and dtype ``spec(weight)`` says (any tensor
    when ``spec`` is None); ``ValueError`` naming the first mismatch (a state saved for other
    weights). :class:`codl.prune.Pruner` and :class:`codl.quant.KMeansQuantizer` load with it."""
    if not isinstance(given, Mapping) or set(given) != set(weights):
        names = sorted(given) if isinstance(given, Mapping) else type(given).__name__
        raise ValueError(
            f"state_dict[{key!r}]: expected tensors for the weights {sorted(weights)}, "
            f"received {names}"
        )
    out = {}
    for name, weight in weights.items():
        tensor = given[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"state_dict[{key!r}][{name!r}]: expected a tensor, received "
                f"{type(tensor).__name__}"
            )
        if spec is not None:
            shape, dtype = spec(weight)
            if tensor.shape != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"state_dict[{key!r}][{name!r}]: expected {dtype} of shape "
                    f"{tuple(shape)}, received {tensor.dtype} of shape {tuple(tensor.shape)}"
                )
        out[name] = tensor.detach().clone().to(weight.device)
    return out
