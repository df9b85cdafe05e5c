"""Adapting the pretrained teacher to a new domain: the backend and output layer fine-tuned on
cached frontend features (the VGG-16 frontend stays as trained), with codl's K-FAC or with SGD
or Adam for comparison. The loss is CSRNet's: the squared error of the density map, summed over
its pixels and averaged over the batch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from codl.apps.crowd.data import count_errors
from codl.apps.crowd.teacher import normalize_frames
from codl.models import CSRNet
from codl.optim import KFAC

OPTIMIZERS = ("kfac", "sgd", "adam")
#: K-FAC's settings for this loss (``kfac_options`` overrides them).
KFAC_DEFAULTS: dict[str, Any] = {
    "damping": 1.0,
    "momentum": 0.5,
    "kl_clip": 3e-3,
    "factor_update_steps": 2,
    "inv_update_steps": 8,
    "max_factor_rows": 1024,
}
#: Frames per step of each optimizer. K-FAC's step preconditions each 512-channel 3x3 layer's
#: gradient with a 4608 x 4608 inverse (2 * 512 * 4608^2 flops, more than the layer's forward
#: pass on a batch of four 15 x 20 maps): it pays only over larger batches.
BATCH_SIZES = {"kfac": 16, "sgd": 4, "adam": 4}


@dataclass
class Adaptation:
    """What :func:`adapt_teacher` did: per epoch, the seconds since it started (feature caching
    included), the mean training loss and the counts' MAE on the held-out frames."""

    optimizer: str
    seconds: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_mae: list[float] = field(default_factory=list)
    mae_before: float = float("nan")


def frontend_features(
    teacher: CSRNet, data: Dataset[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's frontend features of every frame of ``data`` (frames in [0, 1], normalized
    as the teacher was trained) and the frames' density maps, stacked (no gradients; the
    frontend is not trained). Frames are rendered a batch at a time, so only the features are
    kept."""
    features, densities = [], []
    teacher.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):  # type: ignore[arg-type]
            chunk = [data[i] for i in range(start, min(start + batch_size, len(data)))]  # type: ignore[arg-type]
            frames = normalize_frames(torch.stack([image for image, _ in chunk]))
            features.append(teacher.frontend(frames))
            densities.append(torch.stack([density for _, density in chunk]))
    return torch.cat(features), torch.cat(densities).unsqueeze(1)


def _head(teacher: CSRNet) -> nn.Sequential:
    return nn.Sequential(teacher.backend, teacher.output_layer)


@dataclass
class CachedFeatures:
    """The teacher's frontend features and the density maps of a training and a held-out set
    (:func:`cache_features`), and the seconds computing them took: computed once, shared by
    every optimizer :func:`adapt_teacher` compares."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    seconds: float


def cache_features(
    teacher: CSRNet,
    train: Dataset[tuple[torch.Tensor, torch.Tensor]],
    val: Dataset[tuple[torch.Tensor, torch.Tensor]],
) -> CachedFeatures:
    """:func:`frontend_features` of ``train`` and ``val``, timed."""
    start = time.perf_counter()
    features, densities = frontend_features(teacher, train)
    val_features, val_densities = frontend_features(teacher, val)
    if features.shape[-2:] != densities.shape[-2:]:
        raise ValueError(
            f"density maps of {tuple(densities.shape[-2:])} for features of "
            f"{tuple(features.shape[-2:])}: the maps must be at 1/8 of the frames (downsample=8)"
        )
    return CachedFeatures(
        (features, densities), (val_features, val_densities), time.perf_counter() - start
    )


def _mae(head: nn.Module, features: torch.Tensor, densities: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return count_errors(head(features), densities)[0]


def adapt_teacher(
    teacher: CSRNet,
    train: Dataset[tuple[torch.Tensor, torch.Tensor]] | CachedFeatures,
    val: Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    optimizer: str = "kfac",
    epochs: int = 5,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    kfac_options: Mapping[str, Any] | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
) -> Adaptation:
    """Fine-tunes ``teacher``'s backend and output layer in place on ``train`` (frames and their
    density maps at the teacher's 1/8 resolution) and returns the :class:`Adaptation`, with the
    MAE on ``val`` before and after every epoch. ``train`` may be the :class:`CachedFeatures`
    of both sets instead (``val`` is then not read), so optimizers are compared on the same
    features computed once. ``max_seconds``: stop after the first epoch that ends past this
    time (features included), so optimizers can be given the same time.

    ``lr`` and ``batch_size`` default per optimizer: K-FAC lr 0.2 on 16 frames a step
    (:data:`KFAC_DEFAULTS`: damping 1, momentum 0.5, KL clip 3e-3, factors every 2 steps,
    inverses every 8; ``kfac_options`` overrides them), SGD lr 1e-6 with momentum 0.95 and Adam
    lr 1e-5 on 4 frames. Tuning (128 synthetic 120 x 160 frames, held-out MAE 61.2 before):
    K-FAC with damping 0.01-0.1 diverged (MAE 92-220), with damping 1 at 4 frames a step it
    reached 9.4-9.7 in 2-3 epochs at 36 s an epoch, at 16 frames 7.6-8.8 in 3 epochs at 22 s
    an epoch; Adam reached 12.2 in 2 epochs and 8.9 in 5 at 10 s an epoch."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs: expected an int >= 0, got {epochs!r}")
    if isinstance(train, CachedFeatures):
        cached = train
    elif val is None:
        raise ValueError("val: the held-out frames are needed unless train is CachedFeatures")
    else:
        cached = cache_features(teacher, train, val)
    # The clock starts as if the features had just been computed, so every optimizer's curve
    # includes them once.
    start = time.perf_counter() - cached.seconds
    (features, densities), (val_features, val_densities) = cached.train, cached.val
    head = _head(teacher)
    result = Adaptation(optimizer, mae_before=_mae(head, val_features, val_densities))
    parameters = list(head.parameters())
    if optimizer == "kfac":
        step_size = 0.05 if lr is None else lr
        options = {**KFAC_DEFAULTS, **(kfac_options or {})}
        opt: torch.optim.Optimizer = KFAC(head, lr=step_size, **options)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(parameters, lr=1e-6 if lr is None else lr, momentum=0.95)
    else:
        opt = torch.optim.Adam(parameters, lr=1e-5 if lr is None else lr)
    if batch_size is None:
        batch_size = BATCH_SIZES[optimizer]
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs, desc=f"adapting ({optimizer})", disable=not progress)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(features.shape[0], generator=generator)
        losses = []
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            opt.zero_grad()
            loss = (head(features[batch]) - densities[batch]).pow(2).flatten(1).sum(1).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"adapting with {optimizer}: the loss became {float(loss)}"
                )
            loss.backward()
            opt.step()
            losses.append(loss.item())
        result.seconds.append(time.perf_counter() - start)
        result.train_loss.append(sum(losses) / len(losses))
        result.val_mae.append(_mae(head, val_features, val_densities))
        bar.update(1)
        if max_seconds is not None and result.seconds[-1] >= max_seconds:
            break
    bar.close()
    teacher.eval()
    return result
