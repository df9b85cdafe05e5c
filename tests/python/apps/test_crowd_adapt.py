"""Adapting the pretrained teacher on cached frontend features."""

from __future__ import annotations

import math

import pytest
import torch

from codl.apps.crowd import Camera, SyntheticCrowds, count_errors, load_teacher
from codl.apps.crowd.adapt import adapt_teacher, cache_features, frontend_features
from codl.apps.crowd.teacher import Normalized, normalize_frames

CAMERA = Camera(height=32, width=48)


def _data(size: int, seed: int, downsample: int = 8) -> SyntheticCrowds:
    return SyntheticCrowds(
        size, CAMERA, min_count=5, max_count=80, downsample=downsample, seed=seed
    )


def test_frontend_features_are_the_teachers_frontend_on_every_frame() -> None:
    teacher = load_teacher()
    data = _data(3, seed=1)
    features, densities = frontend_features(teacher, data, batch_size=2)
    assert features.shape == (3, 512, 4, 6) and densities.shape == (3, 1, 4, 6)
    with torch.no_grad():
        frames = torch.stack([data[i][0] for i in range(3)])
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        torch.testing.assert_close(normalize_frames(frames), (frames - mean) / std)
        direct = teacher.frontend((frames - mean) / std)
    torch.testing.assert_close(features, direct)
    assert torch.equal(densities[:, 0], torch.stack([data[i][1] for i in range(3)]))


def test_adam_adaptation_lowers_the_training_loss_and_leaves_the_frontend_alone() -> None:
    teacher = load_teacher()
    frontend = {k: v.clone() for k, v in teacher.frontend.state_dict().items()}
    train, val = _data(4, seed=1), _data(2, seed=2)
    result = adapt_teacher(teacher, train, val, optimizer="adam", epochs=3, batch_size=2)
    assert len(result.train_loss) == len(result.val_mae) == len(result.seconds) == 3
    assert result.train_loss[-1] < result.train_loss[0]
    assert all(b >= a for a, b in zip(result.seconds, result.seconds[1:], strict=False))
    for name, tensor in teacher.frontend.state_dict().items():
        assert torch.equal(tensor, frontend[name]), name
    assert not teacher.training
    # The reported MAE is the adapted teacher's on the held-out frames.
    with torch.no_grad():
        images = torch.stack([val[i][0] for i in range(len(val))])
        maps = torch.stack([val[i][1] for i in range(len(val))]).unsqueeze(1)
        mae, _ = count_errors(Normalized(teacher)(images), maps)
    assert math.isclose(mae, result.val_mae[-1], rel_tol=1e-4)


def test_cached_features_give_the_same_adaptation_as_the_frames() -> None:
    train, val = _data(4, seed=1), _data(2, seed=2)
    teacher = load_teacher()
    cached = cache_features(teacher, train, val)
    from_cache = adapt_teacher(teacher, cached, optimizer="sgd", epochs=2, batch_size=2)
    from_frames = adapt_teacher(load_teacher(), train, val, optimizer="sgd", epochs=2, batch_size=2)
    assert from_cache.val_mae == from_frames.val_mae
    assert from_cache.seconds[0] >= cached.seconds
    # a time budget ends the run after the first epoch past it
    budgeted = adapt_teacher(
        load_teacher(), cached, optimizer="adam", epochs=5, batch_size=2, max_seconds=0.0
    )
    assert len(budgeted.val_mae) == len(budgeted.seconds) == 1


@pytest.mark.slow
def test_kfac_adaptation_runs_on_the_backend() -> None:
    teacher = load_teacher()
    result = adapt_teacher(teacher, _data(4, seed=1), _data(2, seed=2), optimizer="kfac", epochs=1)
    assert result.optimizer == "kfac" and len(result.val_mae) == 1
    assert math.isfinite(result.train_loss[0]) and math.isfinite(result.val_mae[0])
    assert math.isfinite(result.mae_before)


def test_bad_settings_are_refused() -> None:
    teacher = load_teacher()
    with pytest.raises(ValueError, match="one of kfac, sgd, adam"):
        adapt_teacher(teacher, _data(1, 1), _data(1, 2), optimizer="lbfgs")
    with pytest.raises(ValueError, match="epochs"):
        adapt_teacher(teacher, _data(1, 1), _data(1, 2), epochs=-1)
    with pytest.raises(ValueError, match="1/8 of the frames"):
        adapt_teacher(teacher, _data(1, 1, downsample=4), _data(1, 2, downsample=4), epochs=0)
