"""Training data for counting nets: synthetic crowd frames with their density maps, and the
count errors counting papers report."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from codl.apps.crowd.scenes import Camera, density_map, render_scene


class SyntheticCrowds(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``size`` frames of one :class:`Camera`: item ``i`` is (image 3 x H x W in [0, 1], density
    H/``downsample`` x W/``downsample``), drawn from ``seed`` and ``i`` alone (any order, any
    worker, the same frames). Crowd sizes are log-uniform between ``min_count`` and
    ``max_count`` (as many sparse as dense frames; 0 stays possible with ``min_count=0``)."""

    def __init__(
        self,
        size: int,
        camera: Camera | None = None,
        *,
        min_count: int = 0,
        max_count: int = 500,
        downsample: int = 8,
        seed: int = 0,
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if not 0 <= min_count <= max_count:
            raise ValueError(f"need 0 <= min_count <= max_count, got {min_count} and {max_count}")
        self.size, self.camera = size, camera or Camera()
        self.min_count, self.max_count = min_count, max_count
        self.downsample, self.seed = downsample, seed
        if self.camera.height % downsample or self.camera.width % downsample:
            raise ValueError(
                f"downsample {downsample} must divide the frame, "
                f"{self.camera.height} x {self.camera.width}"
            )

    def __len__(self) -> int:
        return self.size

    def count_of(self, index: int) -> int:
        """The number of people in frame ``index``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        low, high = math.log1p(self.min_count), math.log1p(self.max_count)
        return round(math.expm1(low + (high - low) * float(torch.rand((), generator=generator))))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.size <= index < self.size:
            raise IndexError(f"frame {index} of {self.size}")
        index %= self.size
        scene = render_scene(self.count_of(index), self.camera, seed=self.seed * 1_000_003 + index)
        camera = self.camera
        density = density_map(scene.heads, camera.height, camera.width, downsample=self.downsample)
        return scene.image, density


def count_errors(predicted: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """MAE and MSE of the counts (each map's sum) of two batches of density maps, as counting
    papers report them (their "MSE" is the root of the mean squared error)."""
    if predicted.shape[0] != target.shape[0]:
        raise ValueError(f"batches of {predicted.shape[0]} and {target.shape[0]} maps")
    difference = predicted.flatten(1).sum(1).double() - target.flatten(1).sum(1).double()
    return float(difference.abs().mean()), float(difference.pow(2).mean().sqrt())
