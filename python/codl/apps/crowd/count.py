"""Counting the people of every frame of a video or an image folder with a counting net: what
``codl count`` runs.

A counting net maps a batch of frames (N x 3 x H x W) to density maps (N x 1 x h x w) whose sums
are the counts. :func:`count_frames` streams the frames of a source (:func:`read_frames`) through
the net in batches, writes one CSV row per frame as soon as its batch is done (a long video's
counts survive an interruption), then a figure of the busiest frame beside its density map, and
reports the throughput with and without decoding (the net's share of the time shows whether a
smaller student would help). :func:`load_counter` turns a model's name into such a net, taking
frames in [0, 1] whatever normalization the net was trained with.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from codl.apps.crowd.student import load_student
from codl.apps.crowd.teacher import Normalized, load_teacher
from codl.apps.crowd.video import Frame, frame_count, frames_to_read, read_frames

#: The models :func:`load_counter` knows by name.
COUNTERS = ("teacher",)

CSV_NAME = "counts.csv"
FIGURE_NAME = "frame.png"

Counter = Callable[[torch.Tensor], torch.Tensor]


def load_counter(spec: str) -> nn.Module:
    """The counting net ``spec`` names, in evaluation mode, taking frames in [0, 1]:
    ``"teacher"`` is the pretrained CSRNet (:func:`load_teacher`) behind ImageNet normalization
    (:class:`Normalized`); a path ending in ``.codl`` is a student written by
    :func:`codl.apps.crowd.student.save_student`, on codl's inference path.

    Raises ``ValueError`` saying what is supported for any other ``spec``, and
    :class:`TeacherNotInstalledError` (saying how to install it) when the teacher's weights are
    missing."""
    if spec == "teacher":
        return Normalized(load_teacher()).eval()
    if spec.endswith(".codl"):
        if not Path(spec).is_file():
            raise ValueError(f"{spec}: no such student file")
        return load_student(spec)
    raise ValueError(
        f"unknown model {spec!r}: supported are {', '.join(map(repr, COUNTERS))} (the "
        "pretrained CSRNet of the csrnet package) or a student's .codl file"
    )


@dataclass(frozen=True)
class FrameCount:
    """One frame's count: the frame's ``index`` in its source, ``name``, ``timestamp`` (seconds,
    None for images) and ``count`` (the sum of its density map)."""

    index: int
    name: str
    timestamp: float | None
    count: float


@dataclass(frozen=True)
class CountResult:
    """What :func:`count_frames` did: the count of every frame read, the time the model took and
    the time of the whole run (decoding, conversion, model and CSV, not the figure), and the
    files written."""

    frames: list[FrameCount]
    model_seconds: float
    seconds: float
    csv_path: Path
    figure_path: Path

    @property
    def counts(self) -> list[float]:
        """The counts, frame by frame."""
        return [frame.count for frame in self.frames]

    @property
    def mean_count(self) -> float:
        return sum(self.counts) / len(self.frames)

    @property
    def model_fps(self) -> float:
        """Frames per second of the model alone."""
        return len(self.frames) / max(self.model_seconds, 1e-9)

    @property
    def fps(self) -> float:
        """Frames per second end to end: decoding and conversion included."""
        return len(self.frames) / max(self.seconds, 1e-9)

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.csv_path, self.figure_path


def _check_size(resize: tuple[int, int] | None) -> None:
    if resize is not None and (
        len(resize) != 2 or not all(isinstance(n, int) and n >= 1 for n in resize)
    ):
        raise ValueError(f"resize must be None or (height, width) >= 1, got {resize!r}")


def _batches(frames: Iterator[Frame], batch_size: int) -> Iterator[list[Frame]]:
    """Runs of up to ``batch_size`` consecutive frames of one size (a folder's images may
    differ: a new size starts a new batch)."""
    batch: list[Frame] = []
    for frame in frames:
        if batch and (len(batch) == batch_size or frame.image.shape != batch[0].image.shape):
            yield batch
            batch = []
        batch.append(frame)
    if batch:
        yield batch


def _density(model: Counter, images: torch.Tensor) -> torch.Tensor:
    density = model(images)
    if (
        not isinstance(density, torch.Tensor)
        or density.dim() != 4
        or (density.shape[:2] != (images.shape[0], 1))
    ):
        shape = tuple(density.shape) if isinstance(density, torch.Tensor) else type(density)
        raise ValueError(
            f"the model must map N x 3 x H x W frames to N x 1 x h x w density maps: "
            f"{tuple(images.shape)} gave {shape}"
        )
    return density


def count_frames(
    model: Counter,
    source: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    every: int = 1,
    max_frames: int | None = None,
    progress: bool = True,
    resize: tuple[int, int] | None = None,
    show: Literal["peak", "last"] = "peak",
) -> CountResult:
    """Counts the people of every frame of ``source`` (a video, an image folder or an image:
    :func:`read_frames`, with ``every`` and ``max_frames``) with ``model`` and writes, under
    ``out_dir`` (created if needed):

    - ``counts.csv``: one row per frame, columns ``frame`` (its index in the source), ``name``,
      ``timestamp`` (seconds, empty for images) and ``count``;
    - ``frame.png``: the frame with the highest count (``show="peak"``, the first of equals) or
      the last one (``show="last"``) beside its density map, upsampled to the frame's size and
      scaled to keep its sum, the count in the title.

    ``model``: any callable (an ``nn.Module``, put in evaluation mode here) from N x 3 x H x W
    frames in [0, 1] to N x 1 x h x w density maps, run under ``torch.no_grad``, on batches of
    up to ``batch_size`` consecutive frames of one size; ``resize``: (height, width) each frame
    is resized to (bilinear, antialiased) before the model. A progress bar (tqdm) shows unless
    ``progress`` is False.

    Raises :class:`VideoError` for a source that cannot be read and ``ValueError`` for bad
    arguments or a model whose output is not a batch of density maps."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if show not in ("peak", "last"):
        raise ValueError(f"show must be 'peak' or 'last', got {show!r}")
    _check_size(resize)
    start = time.perf_counter()
    frames = read_frames(source, every=every, max_frames=max_frames)
    total = frames_to_read(frame_count(source), every=every, max_frames=max_frames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, figure_path = out / CSV_NAME, out / FIGURE_NAME
    if isinstance(model, nn.Module):
        model.eval()
    counted: list[FrameCount] = []
    shown: tuple[Frame, torch.Tensor, float] | None = None
    model_seconds = 0.0
    with (
        csv_path.open("w", newline="") as file,
        tqdm(total=total, unit="frame", desc="counting", disable=not progress) as bar,
        torch.no_grad(),
    ):
        writer = csv.writer(file)
        writer.writerow(["frame", "name", "timestamp", "count"])
        for batch in _batches(frames, batch_size):
            images = torch.stack([frame.image for frame in batch])
            tick = time.perf_counter()
            if resize is not None:
                images = F.interpolate(
                    images, size=resize, mode="bilinear", align_corners=False, antialias=True
                )
            density = _density(model, images)
            model_seconds += time.perf_counter() - tick
            sums = density.detach().double().flatten(1).sum(1).tolist()
            for i, (frame, count) in enumerate(zip(batch, sums, strict=True)):
                counted.append(FrameCount(frame.index, frame.name, frame.timestamp, count))
                stamp = "" if frame.timestamp is None else f"{frame.timestamp:.6f}"
                writer.writerow([frame.index, frame.name, stamp, f"{count:.4f}"])
                if shown is None or show == "last" or count > shown[2]:
                    shown = (frame, density[i, 0].detach().float().clone(), count)
            file.flush()
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    if shown is None:  # read_frames raises before this: a source always has a frame
        raise ValueError(f"{source}: no frames were read")
    _save_figure(figure_path, *shown)
    return CountResult(counted, model_seconds, seconds, csv_path, figure_path)


def _save_figure(path: Path, frame: Frame, density: torch.Tensor, count: float) -> None:
    """The frame beside its density map, upsampled to the frame's size with its sum kept."""
    # matplotlib's object API, not pyplot: no global figure or backend is touched (PNGs are
    # drawn by Agg), so this is safe under any backend a caller set and from any thread.
    from matplotlib.figure import Figure

    height, width = frame.image.shape[1:]
    h, w = density.shape
    upsampled = F.interpolate(
        density[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0] * (h * w / (height * width))
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    left.imshow(frame.image.permute(1, 2, 0).clamp(0, 1).numpy())
    when = "" if frame.timestamp is None else f", {frame.timestamp:.2f} s"
    left.set_title(f"{frame.name}{when}")
    picture = right.imshow(upsampled.numpy(), cmap="jet")
    right.set_title(f"density map ({w} x {h}, upsampled)")
    figure.colorbar(picture, ax=right, label="people per pixel", shrink=0.85)
    for axes in (left, right):
        axes.set_axis_off()
    figure.suptitle(f"{count:.1f} people")
    figure.savefig(path, dpi=100)
