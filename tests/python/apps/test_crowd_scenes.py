"""Synthetic crowd scenes and their density maps, against what they must be by construction."""

from __future__ import annotations

import math

import pytest
import torch

from codl.apps.crowd.scenes import Camera, density_map, render_scene


def test_a_scene_is_its_seed_and_holds_every_head_in_the_frame() -> None:
    camera = Camera(height=96, width=128)
    first, again = render_scene(300, camera, seed=4), render_scene(300, camera, seed=4)
    assert torch.equal(first.image, again.image) and torch.equal(first.heads, again.heads)
    assert not torch.equal(first.image, render_scene(300, camera, seed=5).image)
    assert first.image.shape == (3, 96, 128) and first.image.dtype == torch.float32
    assert float(first.image.min()) >= 0.0 and float(first.image.max()) <= 1.0
    assert first.count == 300 and first.heads.shape == (300, 2)
    rows, columns = first.heads[:, 0], first.heads[:, 1]
    assert bool(((rows >= 0) & (rows < 96) & (columns >= 0) & (columns < 128)).all())
    # Small frames too, where a head at the top row is a pixel from the edge.
    for seed in range(20):
        heads = render_scene(60, Camera(height=32, width=48), seed=seed).heads
        assert bool(((heads[:, 0] >= 0) & (heads[:, 0] < 32)).all()), seed


def test_perspective_puts_more_and_smaller_people_far_away() -> None:
    camera = Camera(height=120, width=160, horizon=-0.2, person_height=0.4)
    rows = torch.tensor([10.0, 60.0, 119.0])
    sizes = camera.person_height_at(rows)
    horizon_row = -0.2 * 120
    # Linear in the row, zero at the horizon, person_height of the frame at the bottom.
    assert torch.allclose(sizes / (rows - horizon_row), sizes[:1] / (rows[:1] - horizon_row))
    assert math.isclose(
        float(camera.person_height_at(torch.tensor([120.0]))), 0.4 * 120, rel_tol=1e-6
    )
    heads = render_scene(2000, camera, seed=1).heads
    upper = int((heads[:, 0] < 60).sum())
    assert upper > 2000 - upper  # uniform on the ground: denser in the image far away


def test_people_change_the_pixels_where_they_stand() -> None:
    camera = Camera(height=64, width=96, noise=0.0)
    empty = render_scene(0, camera, seed=3)
    crowd = render_scene(40, camera, seed=3)
    assert empty.count == 0 and empty.heads.shape == (0, 2)
    changed = (crowd.image - empty.image).abs().sum(0) > 1e-6
    # Heads in the lower half are at least 12 pixels tall people: their disc covers the pixel.
    near = [(r, c) for r, c in crowd.heads.round().long().tolist() if r >= 32]
    assert near and all(bool(changed[r, c]) for r, c in near)


def test_a_new_camera_looks_different() -> None:
    a = render_scene(0, Camera(height=48, width=64, noise=0.0), seed=0).image
    b = render_scene(0, Camera(height=48, width=64, noise=0.0, background_seed=9), seed=0).image
    dim = render_scene(0, Camera(height=48, width=64, noise=0.0, lighting=0.5), seed=0).image
    assert float((a - b).abs().mean()) > 0.05
    assert torch.allclose(dim, (a * 0.5).clamp(0, 1), atol=1e-6)


def test_density_map_sums_to_the_count_and_adapts_to_the_crowding() -> None:
    loose = torch.tensor([[10.0, 10.0], [10.0, 30.0], [30.0, 10.0], [30.0, 30.0]])
    tight = torch.tensor([[100.0, 100.0], [100.0, 104.0], [104.0, 100.0], [104.0, 104.0]])
    density = density_map(torch.cat([loose, tight]), 128, 128)
    assert density.shape == (128, 128) and float(density.min()) >= 0.0
    assert math.isclose(float(density.sum()), 8.0, rel_tol=1e-5)
    # sigma = 0.3 x the mean distance to the 3 nearest heads: 6.8 pixels for the loose group
    # (its kernels end within 21 pixels), 1.4 for the tight one, whose peak is far higher.
    assert math.isclose(float(density[:64, :64].sum()), 4.0, rel_tol=1e-5)
    assert math.isclose(float(density[90:115, 90:115].sum()), 4.0, rel_tol=1e-5)
    assert float(density[90:115, 90:115].max()) > 10 * float(density[:64, :64].max())
    row, column = divmod(int(density[:64, :64].argmax()), 64)
    assert (
        min(abs(row - r) + abs(column - c) for r, c in ((10, 10), (10, 30), (30, 10), (30, 30)))
        <= 2
    )
    # Sum-pooled to a network's output grid, the count is kept.
    pooled = density_map(torch.cat([loose, tight]), 128, 128, downsample=8)
    assert pooled.shape == (16, 16)
    assert torch.allclose(pooled, density.reshape(16, 8, 16, 8).sum((1, 3)), atol=1e-6)


def test_density_map_near_the_border_is_normalized_inside_the_frame() -> None:
    density = density_map(torch.tensor([[0.2, 0.3]]), 32, 32, sigma_alone=6.0)
    assert math.isclose(float(density.sum()), 1.0, rel_tol=1e-5)
    assert float(density_map(torch.zeros(0, 2), 16, 16).sum()) == 0.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: density_map(torch.zeros(3), 8, 8), "N x 2"),
        (lambda: density_map(torch.tensor([[8.0, 1.0]]), 8, 8), "inside the frame"),
        (lambda: density_map(torch.zeros(1, 2), 8, 8, downsample=3), "must divide"),
        (lambda: render_scene(-1), "non-negative int"),
        (lambda: Camera(height=4), "at least 8 x 8"),
        (lambda: Camera(horizon=1.5), "above the bottom row"),
        (lambda: Camera(person_height=0.0), "person_height"),
        (lambda: Camera(noise=-0.1), "noise"),
    ],
)
def test_bad_arguments_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
