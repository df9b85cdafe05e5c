"""codl.prune magnitude pruning: exact sparsity, global vs per-layer ranks, masks kept through
fine-tuning, Zhu & Gupta's AGP schedule against its formula, and bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from codl.prune import AGPSchedule, Pruner, magnitude_, magnitude_mask
from codl.training import fine_tune


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(7,), (33, 17), (8, 3, 5, 5)])
def test_mask_has_exact_sparsity_and_drops_the_smallest(
    sparsity: float, shape: tuple[int, ...]
) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(weight, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    n = weight.numel()
    assert int((~mask).sum()) == round(sparsity * n)
    # Independent reference: with distinct magnitudes the pruned set is the k smallest |w|.
    k = round(sparsity * n)
    if 0 < k < n:
        kth = torch.kthvalue(weight.abs().reshape(-1).double(), k).values
        assert torch.equal(mask, weight.abs().double() > kth)


def test_mask_with_ties_is_still_exact() -> None:
    weight = torch.zeros(10, 10)
    weight[:, :3] = 1.0
    mask = magnitude_mask(weight, 0.5)
    assert int((~mask).sum()) == 50
    assert bool(mask[:, :3].all())  # the 30 ones outrank the zeros


def test_global_scope_ranks_across_layers() -> None:
    model = _mlp()
    with torch.no_grad():
        model[4].weight.mul_(100.0)  # the last layer's weights all outrank the others
    pruner = magnitude_(model, 0.6, scope="global")
    weights = [model[i].weight for i in (0, 2, 4)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.6 * total)
    assert int((model[4].weight == 0).sum()) == 0
    assert math.isclose(pruner.sparsity(), zeros / total)
    # One global threshold: every pruned weight was no larger than every kept one.
    original = _mlp()
    with torch.no_grad():
        original[4].weight.mul_(100.0)
    magnitudes = torch.cat([original[i].weight.detach().abs().reshape(-1) for i in (0, 2, 4)])
    pruned = torch.cat([(model[i].weight == 0).reshape(-1) for i in (0, 2, 4)])
    assert float(magnitudes[pruned].max()) <= float(magnitudes[~pruned].min())


def test_layer_scope_prunes_each_layer_exactly() -> None:
    model = _mlp()
    magnitude_(model, 0.75, scope="layer")
    for index in (0, 2, 4):
        weight = model[index].weight
        assert int((weight == 0).sum()) == round(0.75 * weight.numel())
        assert bool((model[index].bias != 0).all())  # biases are not pruned


def test_fine_tuning_keeps_pruned_weights_at_zero() -> None:
    model = _mlp()
    pruner = magnitude_(model, 0.8)
    zero_positions = {name: (w == 0).clone() for name, w in pruner.weights.items()}
    before = {name: w.detach().clone() for name, w in pruner.weights.items()}
    images = torch.randn(256, 20, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 4, (256,), generator=torch.Generator().manual_seed(3))
    losses = fine_tune(model, images, labels, epochs=2, batch_size=32, lr=1e-2, callbacks=[pruner])
    assert len(losses) == 16
    for name, weight in pruner.weights.items():
        assert torch.equal(weight == 0, zero_positions[name])
        assert not torch.equal(weight, before[name])  # the kept weights did train


def test_gradient_hook_masks_gradients() -> None:
    model = _mlp()
    pruner = magnitude_(model, 0.5)
    loss = model(torch.randn(8, 20)).square().sum()
    loss.backward()
    for name, weight in pruner.weights.items():
        assert weight.grad is not None
        assert bool((weight.grad[~pruner.masks[name]] == 0).all())


def _agp_reference(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    if t < t0:
        return s_i
    t_last = min(t0 + (t - t0) // dt * dt, t0 + n * dt)
    return s_f + (s_i - s_f) * (1 - (t_last - t0) / (n * dt)) ** 3


def test_agp_schedule_follows_zhu_gupta() -> None:
    schedule = AGPSchedule(end_step=110, begin_step=10, frequency=20, initial_sparsity=0.1)
    assert schedule.pruning_steps == 5
    for step in range(0, 150):
        expected = _agp_reference(step, 0.1, 0.9, 10, 5, 20)
        assert math.isclose(schedule(step, 0.9), expected, abs_tol=1e-12), step
    assert schedule(10, 0.9) == pytest.approx(0.1)
    assert schedule(110, 0.9) == pytest.approx(0.9)
    assert schedule(29, 0.9) == schedule(10, 0.9)  # held between pruning steps


def test_pruner_with_schedule_prunes_gradually_and_only_grows_the_pruned_set() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = magnitude_(model, 0.9, schedule=AGPSchedule(end_step=40, frequency=10))
    pruner.attach(optimizer)
    assert pruner.sparsity() == 0.0
    previous = {name: (w == 0).clone() for name, w in pruner.weights.items()}
    history = []
    for _ in range(50):
        loss = model(torch.randn(16, 20)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(pruner.sparsity())
        for name, weight in pruner.weights.items():
            now = weight == 0
            assert bool(now[previous[name]].all())  # pruned stays pruned
            previous[name] = now.clone()
    assert pruner.step_count == 50
    assert history == sorted(history)
    total = sum(w.numel() for w in pruner.weights.values())
    assert history[-1] == pytest.approx(round(0.9 * total) / total)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity_value(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(torch.randn(4, 4), sparsity)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_(_mlp(), sparsity)


@pytest.mark.parametrize("sparsity", ["0.5", None, True])
def test_bad_sparsity_type(sparsity: object) -> None:
    with pytest.raises(TypeError, match="sparsity"):
        magnitude_mask(torch.randn(4, 4), sparsity)  # type: ignore[arg-type]


def test_bad_weight_and_options() -> None:
    with pytest.raises(TypeError, match="weight"):
        magnitude_mask(torch.ones(4, dtype=torch.int32), 0.5)
    with pytest.raises(TypeError, match="weight"):
        magnitude_mask([1.0, 2.0], 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        magnitude_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="weight"):
        magnitude_mask(torch.empty(0), 0.5)
    with pytest.raises(ValueError, match="scope"):
        magnitude_(_mlp(), 0.5, scope="model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule"):
        magnitude_(_mlp(), 0.5, schedule=lambda step: 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none"):
        magnitude_(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="end_step"):
        AGPSchedule(end_step=5, begin_step=5)
    with pytest.raises(ValueError, match="frequency"):
        AGPSchedule(end_step=5, frequency=0)
    with pytest.raises(ValueError, match="initial_sparsity"):
        AGPSchedule(end_step=5, initial_sparsity=1.0)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 20, generator=generator), torch.randint(0, 4, (16,), generator=generator)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x, y = _batch(step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()  # the attached pruner steps inside


def _gradual_run(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Pruner]:
    model = _mlp(seed)
    pruner = magnitude_(
        model,
        0.8,
        "layer",
        AGPSchedule(end_step=9, begin_step=1, frequency=2, initial_sparsity=0.1),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner.attach(optimizer)
    return model, optimizer, pruner


def test_a_gradual_pruning_run_resumes_bit_for_bit_from_saved_state() -> None:
    total, cut = 14, 5
    model, optimizer, pruner = _gradual_run(seed=0)
    _train(model, optimizer, range(total))
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, pruner = _gradual_run(seed=0)
    _train(model, optimizer, range(cut))
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "pruner": pruner.state_dict(),
        },
        buffer,
    )
    # Fresh objects, from another initialisation: everything must come from the checkpoint.
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, optimizer, pruner = _gradual_run(seed=7)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    pruner.load_state_dict(saved["pruner"])
    assert pruner.step_count == cut
    _train(model, optimizer, range(cut, total))
    resumed = model.state_dict()
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
        # Bit for bit, signed zeros included.
        assert torch.equal(resumed[key].view(torch.int32), value.view(torch.int32)), key
    assert pruner.step_count == total
    assert pruner.sparsity() == pytest.approx(0.8, abs=0.01)

    # The pruner's state matters: model and optimizer alone restart the schedule at step 0
    # (sparsity 0.1 again, then the ramp from there), and the run ends elsewhere.
    model, optimizer, pruner = _gradual_run(seed=7)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    _train(model, optimizer, range(cut, total))
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in uninterrupted.items())


def test_pruner_load_state_dict_rejects_a_state_of_other_settings_or_weights() -> None:
    model = _mlp()
    pruner = magnitude_(model, 0.5, "layer", AGPSchedule(end_step=4))
    state = pruner.state_dict()
    with pytest.raises(ValueError, match=r"state_dict\['final_sparsity'\]: expected 0\.3"):
        magnitude_(_mlp(), 0.3, "layer", AGPSchedule(end_step=4)).load_state_dict(state)
    with pytest.raises(ValueError, match=r"state_dict\['schedule'\]: expected None"):
        magnitude_(_mlp(), 0.5, "layer").load_state_dict(state)
    other = nn.Sequential(
        nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    with pytest.raises(
        ValueError, match=r"state_dict\['masks'\]\['0.weight'\]: expected torch.bool"
    ):
        magnitude_(other, 0.5, "layer", AGPSchedule(end_step=4)).load_state_dict(state)
    with pytest.raises(ValueError, match="expected the keys"):
        pruner.load_state_dict({"masks": state["masks"]})
    with pytest.raises(TypeError, match="expected a mapping"):
        pruner.load_state_dict([])  # type: ignore[arg-type]
