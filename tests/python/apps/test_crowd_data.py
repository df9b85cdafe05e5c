"""Synthetic counting data and count errors."""

from __future__ import annotations

import math

import pytest
import torch

from codl.apps.crowd.data import SyntheticCrowds, count_errors
from codl.apps.crowd.scenes import Camera, density_map, render_scene


def test_a_frame_is_its_seed_and_index_and_its_density_counts_its_people() -> None:
    camera = Camera(height=64, width=96)
    data = SyntheticCrowds(6, camera, min_count=5, max_count=300, downsample=8, seed=2)
    assert len(data) == 6
    image, density = data[3]
    again_image, again_density = SyntheticCrowds(6, camera, min_count=5, max_count=300, seed=2)[3]
    assert torch.equal(image, again_image) and torch.equal(density, again_density)
    assert image.shape == (3, 64, 96) and density.shape == (8, 12)
    count = data.count_of(3)
    assert 5 <= count <= 300 and math.isclose(float(density.sum()), count, rel_tol=1e-4)
    scene = render_scene(count, camera, seed=2 * 1_000_003 + 3)
    assert torch.equal(image, scene.image)
    assert torch.allclose(density, density_map(scene.heads, 64, 96, downsample=8))
    assert torch.equal(data[-1][0], data[5][0])
    with pytest.raises(IndexError):
        data[6]


def test_crowd_sizes_span_the_range_log_uniformly() -> None:
    data = SyntheticCrowds(400, Camera(height=32, width=32), min_count=0, max_count=1000)
    counts = torch.tensor([data.count_of(i) for i in range(400)], dtype=torch.float64)
    assert int(counts.min()) >= 0 and int(counts.max()) <= 1000
    logs = torch.log1p(counts) / math.log1p(1000)  # uniform on [0, 1] if log-uniform
    assert (
        abs(float(logs.mean()) - 0.5) < 0.05
        and abs(float((logs < 0.5).double().mean()) - 0.5) < 0.08
    )


def test_count_errors_are_mae_and_root_mse_of_the_map_sums() -> None:
    target = torch.zeros(3, 1, 4, 4)
    target[:, 0, 0, 0] = torch.tensor([10.0, 20.0, 30.0])
    predicted = target.clone()
    predicted[:, 0, 1, 1] += torch.tensor([1.0, -3.0, 0.0])
    mae, mse = count_errors(predicted, target)
    assert math.isclose(mae, 4.0 / 3.0) and math.isclose(mse, math.sqrt(10.0 / 3.0))
    with pytest.raises(ValueError, match="batches of 3 and 2"):
        count_errors(predicted, target[:2])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_count <= max_count"):
        SyntheticCrowds(1, min_count=5, max_count=2)
    with pytest.raises(ValueError, match="must divide the frame"):
        SyntheticCrowds(1, Camera(height=60, width=64), downsample=8)
