"""Synthetic crowd scenes with exactly known heads, and the density maps counting nets learn.

No crowd-counting data set can be installed here, so scenes are drawn: a camera looks down on a
ground plane, so a person's height in pixels grows linearly with the image row of their feet
(zero at the horizon); people are uniform on the ground, so the far rows hold more of them;
each is a body (an ellipse) and a head (a disc) in random colours, drawn far to near so that
nearer people occlude farther ones. The background is a smooth random field over a sky-to-ground
gradient, then the scene's lighting and sensor noise. Everything comes from one seed.

:func:`density_map` is the geometry-adaptive ground truth of MCNN (Zhang et al., CVPR 2016) and
CSRNet: one Gaussian per head whose sigma is ``beta`` times the mean distance to its ``k``
nearest heads, each normalized over the frame so the map sums to the head count exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Camera:
    """Where a scene is seen from: the frame, the perspective and the look of the place.

    ``horizon``: the horizon's row as a fraction of the frame's height (negative: above the
    frame); ``person_height``: a standing person's height at the bottom row, as a fraction of the
    frame's height. ``background_seed``, ``lighting`` (a gain on every pixel) and ``noise`` (the
    standard deviation of Gaussian sensor noise, pixels in [0, 1]) make one camera's scenes look
    alike and different cameras' scenes differ, as a scene change does."""

    height: int = 240
    width: int = 320
    horizon: float = -0.4
    person_height: float = 0.3
    background_seed: int = 0
    lighting: float = 1.0
    noise: float = 0.02

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(
                f"a frame needs at least 8 x 8 pixels, got {self.height} x {self.width}"
            )
        if not self.horizon < 1.0:
            raise ValueError(f"horizon must lie above the bottom row (< 1.0), got {self.horizon}")
        if not 0.0 < self.person_height <= 1.0:
            raise ValueError(f"person_height must be in (0, 1], got {self.person_height}")
        if not (self.lighting > 0.0 and self.noise >= 0.0):
            raise ValueError(
                f"lighting must be > 0 and noise >= 0, got {self.lighting}, {self.noise}"
            )

    def person_height_at(self, rows: torch.Tensor) -> torch.Tensor:
        """A person's height in pixels when their feet are at image row ``rows``."""
        horizon_row = self.horizon * self.height
        slope = self.person_height * self.height / (self.height - horizon_row)
        return (slope * (rows - horizon_row)).clamp_min(0.0)


@dataclass(frozen=True)
class Scene:
    """One frame: ``image`` (3 x H x W, float32 in [0, 1]) and ``heads`` (N x 2, the row and
    column of every head's centre, occluded ones included: they are in the crowd)."""

    image: torch.Tensor
    heads: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.heads.shape[0])


def _background(camera: Camera, generator: torch.Generator) -> torch.Tensor:
    h, w = camera.height, camera.width
    place = torch.Generator().manual_seed(camera.background_seed)
    sky, ground = (
        torch.rand(3, generator=place) * 0.5 + 0.4,
        torch.rand(3, generator=place) * 0.5 + 0.1,
    )
    rows = torch.linspace(0.0, 1.0, h)[:, None]
    gradient = sky[:, None, None] * (1 - rows) + ground[:, None, None] * rows
    coarse = torch.rand(1, 3, 6, 8, generator=place) - 0.5
    texture = torch.nn.functional.interpolate(
        coarse, size=(h, w), mode="bicubic", align_corners=False
    )[0]
    speckle = (torch.rand(1, 1, h // 4 + 1, w // 4 + 1, generator=generator) - 0.5) * 0.1
    fine = torch.nn.functional.interpolate(
        speckle, size=(h, w), mode="bilinear", align_corners=False
    )[0]
    return gradient.expand(3, h, w) + 0.3 * texture + fine


def render_scene(count: int, camera: Camera | None = None, *, seed: int = 0) -> Scene:
    """A frame of ``count`` people seen by ``camera`` (default :class:`Camera`), from ``seed``.

    Feet are uniform on the visible ground, so in the image their density falls as the square of
    the person's size; every head lies inside the frame."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    camera = camera or Camera()
    generator = torch.Generator().manual_seed(seed)
    h, w = camera.height, camera.width
    image = _background(camera, generator)
    # Foot rows where the whole head fits in the frame, weighted 1 / size^2 (uniform ground).
    rows = torch.arange(h, dtype=torch.float32) + 0.5
    sizes = camera.person_height_at(rows)
    fits = (rows - 0.9 * sizes - 0.08 * sizes >= 0) & (sizes >= 2.0)
    if count and not bool(fits.any()):
        raise ValueError("no row of this camera shows a whole person of 2 pixels or more")
    weights = torch.where(fits, 1.0 / sizes.clamp_min(1e-6) ** 2, torch.zeros(()))
    feet = (
        rows[torch.multinomial(weights, count, replacement=True, generator=generator)]
        if count
        else rows[:0]
    )
    feet = feet + torch.rand(count, generator=generator) - 0.5
    columns = torch.rand(count, generator=generator) * w
    heights = camera.person_height_at(feet)
    # The half-row jitter can lift a head at the top row just out of the frame: it stays in.
    heads = torch.stack([(feet - 0.9 * heights).clamp(0.0, h - 1e-3), columns], dim=1)
    colours = torch.rand(count, 2, 3, generator=generator)
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    for i in torch.argsort(feet).tolist():  # far to near: the near occlude the far
        size, foot, column = float(heights[i]), float(feet[i]), float(columns[i])
        body_h, body_w, radius = 0.4 * size, 0.16 * size, 0.09 * size
        top, bottom = max(int(foot - size), 0), min(int(foot) + 1, h)
        left, right = max(int(column - body_w) - 1, 0), min(int(column + body_w) + 2, w)
        if top >= bottom or left >= right:
            continue
        y, x = ys[top:bottom], xs[:, left:right]
        body = ((y - (foot - body_h)) / body_h) ** 2 + ((x - column) / body_w) ** 2 <= 1.0
        head = (y - float(heads[i, 0])) ** 2 + (x - column) ** 2 <= radius**2
        patch = image[:, top:bottom, left:right]
        patch[:, body] = colours[i, 0][:, None]
        patch[:, head] = colours[i, 1][:, None] * 0.6 + 0.2
    image = image * camera.lighting + torch.randn(image.shape, generator=generator) * camera.noise
    return Scene(image.clamp(0.0, 1.0), heads)


def density_map(
    heads: torch.Tensor,
    height: int,
    width: int,
    *,
    k: int = 3,
    beta: float = 0.3,
    sigma_alone: float = 4.0,
    downsample: int = 1,
) -> torch.Tensor:
    """The geometry-adaptive density map (height x width, float32) of ``heads`` (N x 2 row,
    column): a Gaussian per head, sigma ``beta`` times the mean distance to its ``k`` nearest
    heads (``sigma_alone`` when it has fewer than ``k`` others), truncated at 3 sigma and
    normalized over the frame, so the map sums to N. ``downsample`` sums blocks of that many
    pixels a side (a counting net's output grid; the sum is kept); height and width must divide.
    """
    if heads.dim() != 2 or heads.shape[1] != 2:
        raise ValueError(f"heads must be N x 2 (row, column), got shape {tuple(heads.shape)}")
    if downsample < 1 or height % downsample or width % downsample:
        raise ValueError(f"downsample must divide {height} x {width}, got {downsample}")
    heads = heads.to(torch.float32)
    inside = (
        (heads[:, 0] >= 0) & (heads[:, 0] < height) & (heads[:, 1] >= 0) & (heads[:, 1] < width)
    )
    if not bool(inside.all()):
        raise ValueError("every head must lie inside the frame")
    density = torch.zeros(height, width)
    count = heads.shape[0]
    if count:
        distances = torch.cdist(heads, heads)
        neighbours = min(k, count - 1)
        if neighbours >= 1:
            nearest = distances.topk(neighbours + 1, largest=False).values[:, 1:]
            sigmas = beta * nearest.mean(dim=1)
            if neighbours < k:
                sigmas = torch.full((count,), sigma_alone)
        else:
            sigmas = torch.full((count,), sigma_alone)
        sigmas = sigmas.clamp_min(0.5)
        for (row, column), sigma in zip(heads.tolist(), sigmas.tolist(), strict=True):
            reach = math.ceil(3 * sigma)
            top, bottom = max(int(row) - reach, 0), min(int(row) + reach + 1, height)
            left, right = max(int(column) - reach, 0), min(int(column) + reach + 1, width)
            y = torch.arange(top, bottom, dtype=torch.float32)[:, None] + 0.5 - row
            x = torch.arange(left, right, dtype=torch.float32)[None, :] + 0.5 - column
            kernel = torch.exp(-(y**2 + x**2) / (2 * sigma**2))
            density[top:bottom, left:right] += kernel / kernel.sum()
    if downsample > 1:
        density = density.reshape(
            height // downsample, downsample, width // downsample, downsample
        ).sum((1, 3))
    return density
