"""The student: a counting net of a few tens of thousands of parameters distilled from the
teacher on unlabeled frames, ternarized, and stored as a ``.codl`` file that runs on codl's
whole-model inference path.

Its design is for speed on a 2-core CPU. CSRNet and MCNN spend most of their work at full and
half resolution; the student goes to 1/8 at once with three stride-2 3x3 convolutions (the
early stride of fast detectors), so three quarters of its work (332 of 454 million
multiply-adds at 640 x 480) is at the density map's own resolution, and widens its view there
with dilated 3x3 convolutions (CSRNet's backend idea, at 48 channels instead of 512). Every
layer is a plain convolution + ReLU in one ``nn.Sequential``: a straight chain, which
:func:`codl.nn.freeze` runs in int8 from the first convolution to the last.

Training is distillation only (:class:`codl.distill.DensityKDLoss`: the teacher's density map
pixel by pixel plus its count): the frames need no labels. Then the weights are ternarized
(:func:`codl.quantize_`, TWN per output channel) and fine-tuned with the same loss
(quantization-aware, straight-through), and :func:`save_student` writes 2-bit codes, their
scales, the biases and the activation ranges of a calibration.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import codl
from codl.distill import DensityKDLoss, Distiller
from codl.formats import FormatError, load_into, read_header, save
from codl.nn import freeze

#: Output channels of the student's convolutions before the 1x1 density layer: three stride-2
#: layers, then three dilated ones at 1/8 (74,417 parameters; (16, 24, 32, 32, 32, 32), 38,649
#: parameters, distilled to 1.19x the teacher's held-out MAE against 1.11x, on 768 frames).
STUDENT_WIDTHS = (16, 32, 48, 48, 48, 32)
#: Every weight 2-bit ternary, one scale per output channel (TWN); biases stay float32.
TERNARY_PLAN = {"*.weight": {"method": "ternary"}}
_FORMAT_KEY = "codl.apps.crowd.student"


class CrowdStudent(nn.Sequential):
    """The student counting net (see the module's docstring): frames N x 3 x H x W in [0, 1]
    (H and W multiples of 8) to density maps N x 1 x H/8 x W/8, like the teacher's."""

    def __init__(self, widths: Sequence[int] = STUDENT_WIDTHS) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) != 6 or min(widths) < 1:
            raise ValueError(f"widths: expected 6 positive channel counts, got {widths}")
        layers: list[nn.Module] = []
        channels = 3
        for index, width in enumerate(widths):
            if index < 3:
                layers.append(nn.Conv2d(channels, width, 3, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(channels, width, 3, padding=2, dilation=2))
            layers.append(nn.ReLU())
            channels = width
        layers.append(nn.Conv2d(channels, 1, 1))
        super().__init__(*layers)
        self.widths = widths


def teacher_maps(teacher: nn.Module, frames: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The teacher's density maps of ``frames`` (N x 3 x H x W in [0, 1]; the teacher takes them
    as they are, so pass a :class:`codl.apps.crowd.teacher.Normalized`), without gradients."""
    teacher.eval()
    with torch.no_grad():
        return torch.cat(
            [teacher(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
        )


@dataclass
class Distillation:
    """What :func:`distill_student` did: per epoch the mean loss and the seconds since start,
    for the float phase and then the ternary (quantization-aware) phase."""

    float_loss: list[float] = field(default_factory=list)
    ternary_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def _fit(
    student: nn.Module,
    frames: torch.Tensor,
    maps: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    count_weight: float,
    seed: int,
    progress: bool,
) -> list[float]:
    # The teacher's maps come precomputed with every batch, so the Distiller never runs a
    # teacher: an Identity stands in for it.
    distiller = Distiller(
        nn.Identity(),
        student,
        losses=[DensityKDLoss(count_weight=count_weight)],
        optimizer=lambda parameters: torch.optim.Adam(parameters, lr=lr),
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(distiller.optimizer, max(epochs, 1))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(frames), generator=generator)
        # (frames, no labels, the teacher's maps): the Distiller's precomputed-teacher form.
        batches: list[Any] = [
            (frames[order[i : i + batch_size]], None, maps[order[i : i + batch_size]])
            for i in range(0, len(frames), batch_size)
        ]
        history = distiller.fit(batches, epochs=distiller.epochs_done + 1, progress=progress)
        losses.append(float(history[-1]["loss"]))
        scheduler.step()
    return losses


def distill_student(
    frames: torch.Tensor,
    maps: torch.Tensor,
    *,
    student: nn.Module | None = None,
    epochs: int = 30,
    ternary_epochs: int = 10,
    batch_size: int = 8,
    lr: float = 3e-3,
    count_weight: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, Distillation]:
    """Distill a student from the teacher's ``maps`` of unlabeled ``frames`` (no ground truth is
    read): ``epochs`` of float training (Adam, cosine schedule from ``lr``), then
    :func:`codl.quantize_` to ternary weights and ``ternary_epochs`` of quantization-aware
    training at a tenth of ``lr``. ``student`` defaults to a new :class:`CrowdStudent`; pass a
    trained one (float or ternary) to re-distill it for a new scene. A float ``student`` is
    trained in place and stays float (the ternary student is a copy); a ternary one is
    fine-tuned in place. Returns the ternary student
    (in training form: :func:`save_student` writes it) and the :class:`Distillation`."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames: expected N x 3 x H x W, got {tuple(frames.shape)}")
    if maps.shape[0] != frames.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps for {frames.shape[0]} frames")
    torch.manual_seed(seed)
    model = CrowdStudent() if student is None else student
    record = Distillation()
    start = time.perf_counter()
    fit = partial(_fit, batch_size=batch_size, count_weight=count_weight, progress=progress)
    if not _is_ternary(model):
        record.float_loss = fit(model, frames, maps, epochs=epochs, lr=lr, seed=seed)
        record.seconds.append(time.perf_counter() - start)
        model = codl.quantize_(copy.deepcopy(model), codl.TernaryConfig(skip_first_and_last=False))
    record.ternary_loss = fit(model, frames, maps, epochs=ternary_epochs, lr=lr / 10, seed=seed + 1)
    record.seconds.append(time.perf_counter() - start)
    return model.eval(), record


def _is_ternary(model: nn.Module) -> bool:
    return any(isinstance(m, codl.nn.TernaryConv2d) for m in model.modules())


def save_student(
    student: nn.Module, path: str | os.PathLike[str], calibration: torch.Tensor
) -> Path:
    """Write the ternary ``student`` (from :func:`distill_student`) as a ``.codl`` file: 2-bit
    weights with a float32 scale per output channel, float32 biases, and in the metadata its
    widths and the activation ranges measured on ``calibration`` frames (so
    :func:`load_student` needs no images). Returns the path."""
    if not isinstance(student, CrowdStudent) or not _is_ternary(student):
        raise TypeError("student: expected the ternary CrowdStudent that distill_student returns")
    ranges = freeze(student, calibration=calibration).calibrated_ranges
    metadata = {
        "format": _FORMAT_KEY,
        "widths": json.dumps(list(student.widths)),
        "ranges": json.dumps(ranges),
    }
    target = Path(path)
    save(student, target, TERNARY_PLAN, metadata=metadata)
    return target


def load_student(path: str | os.PathLike[str]) -> nn.Module:
    """The student of a ``.codl`` file written by :func:`save_student`, frozen for codl's
    inference path (int8 activations at the stored static scales, 2-bit weights), in eval mode:
    frames N x 3 x H x W in [0, 1] to density maps. Raises :class:`codl.formats.FormatError`
    for a corrupt file or one that holds no student."""
    _, metadata = read_header(path)
    if metadata.get("format") != _FORMAT_KEY:
        raise FormatError(f"{path}: not a crowd-counting student (no {_FORMAT_KEY} metadata)")
    try:
        widths = json.loads(metadata["widths"])
        ranges = {name: tuple(pair) for name, pair in json.loads(metadata["ranges"]).items()}
        student = CrowdStudent(widths)
    except (KeyError, TypeError, ValueError) as why:
        raise FormatError(f"{path}: the student's metadata is malformed ({why})") from None
    ternary = codl.quantize_(student, codl.TernaryConfig(skip_first_and_last=False))
    load_into(ternary, path)
    return freeze(ternary, ranges=ranges)
