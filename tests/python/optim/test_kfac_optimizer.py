"""KFAC as an optimizer: state round trip, NaN guards, inverse retries, hyperparameter callables,
KL clipping, adaptive damping, the LR schedule and bad input."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import codl.linalg
from codl.optim import (
    KFAC,
    KFACPreconditioner,
    KFACWarning,
    warmup_polynomial_decay,
    warmup_polynomial_decay_factor,
)


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16),
        nn.LayerNorm(16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


def _batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(12, 1, 8, 8, generator=generator),
            torch.randint(0, 5, (12,), generator=generator),
        )
        for _ in range(count)
    ]


def _train(
    model: nn.Module, optimizer: KFAC, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        out = model(x)
        if optimizer.preconditioner.fisher == "true":
            optimizer.preconditioner.sample_fisher(out)
        F.cross_entropy(out, y).backward()
        optimizer.step()


@pytest.mark.parametrize(
    "options",
    [
        {"method": "inverse"},
        {"method": "eigen", "fisher": "true"},
        {"method": "inverse", "weight_decay": 1e-3, "nesterov": True, "max_factor_rows": 100},
    ],
)
def test_state_dict_round_trip_is_bit_exact(options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = _small_cnn()
    make = lambda m: KFAC(  # noqa: E731
        m, lr=0.05, factor_update_steps=2, inv_update_steps=4, kl_clip=1e-2, **options
    )
    optimizer = make(model)
    batches = _batches(12)
    # 7 steps: factors last updated at step 6, inverses at step 4 (older than the factors).
    _train(model, optimizer, batches[:7])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    _train(model, optimizer, batches[7:])

    torch.manual_seed(123)  # the fresh copy starts elsewhere: everything must come from the file
    resumed = _small_cnn()
    resumed_optimizer = make(resumed)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    _train(resumed, resumed_optimizer, batches[7:])

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for name, block in optimizer.preconditioner.blocks.items():
        other = resumed_optimizer.preconditioner.blocks[name]
        for key, factor in block.factors.items():
            assert torch.equal(factor, other.factors[key]), (name, key)


def test_load_state_dict_rejects_other_models() -> None:
    optimizer = KFAC(_small_cnn())
    other = KFAC(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="layers"):
        other.preconditioner.load_state_dict(optimizer.preconditioner.state_dict())
    with pytest.raises(ValueError, match="kfac"):
        optimizer.load_state_dict(torch.optim.SGD(_small_cnn().parameters()).state_dict())


# --------------------------------------------------------------------------------------------
# NaN / Inf guards and inverse retries
# --------------------------------------------------------------------------------------------


def _two_layers() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def test_nan_gradient_skips_the_layer_and_keeps_its_factors() -> None:
    model = _two_layers()
    precond = KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1)
    x = torch.randn(8, 4)
    model(x).pow(2).mean().backward()
    precond.step()
    factors_before = {k: v.clone() for k, v in precond.blocks["0"].factors.items()}

    model.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    assert model[0].weight.grad is not None
    model[0].weight.grad[1, 2] = float("nan")
    with pytest.warns(KFACWarning, match=r"layer '0': its gradient holds NaN"):
        precond.step()
    assert model[0].weight.grad is None and model[0].bias.grad is None  # update skipped
    for key, factor in precond.blocks["0"].factors.items():
        assert torch.equal(factor, factors_before[key])
    assert model[2].weight.grad is not None and bool(torch.isfinite(model[2].weight.grad).all())


def test_overflowing_statistics_skip_the_layer_before_the_ema() -> None:
    model = _two_layers()
    precond = KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    precond.step()
    factors_before = {k: v.clone() for k, v in precond.blocks["0"].factors.items()}
    model.zero_grad()
    x = torch.randn(8, 4)
    x[3, 1] = 1e20  # x² overflows float32 in A; the gradient gᵀx stays finite (tanh saturates)
    model(x).pow(2).mean().backward()
    assert bool(torch.isfinite(model[0].weight.grad).all())  # type: ignore[arg-type]
    with pytest.warns(KFACWarning, match=r"layer '0': its new factor statistics"):
        precond.step()
    for key, factor in precond.blocks["0"].factors.items():
        assert torch.equal(factor, factors_before[key])


def test_failed_inversion_is_retried_with_larger_damping(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(4, 3))  # A is 5x5, G 3x3
    precond = KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1, damping=1e-2)
    model(torch.randn(5, 4, generator=torch.Generator().manual_seed(2))).sum().backward()
    original = codl.linalg.damped_inverse
    calls: list[list[float]] = []

    def flaky(mats: list[torch.Tensor], damping: list[float]) -> list[torch.Tensor]:
        calls.append(list(damping))
        # The G factor (3x3) "fails" until its damping is at least 100x the first one.
        failures = {
            i: "not positive definite after damping (pivot 0)"
            for i, (m, d) in enumerate(zip(mats, damping))
            if m.shape[0] == 3 and d < 50 * calls[0][1]
        }
        results = original(mats, damping)
        if failures:
            raise codl.linalg.LinAlgError(
                failures, [None if i in failures else r for i, r in enumerate(results)]
            )
        return results

    monkeypatch.setattr(codl.linalg, "damped_inverse", flaky)
    a = precond.blocks["0"]
    with pytest.warns(KFACWarning, match=r"layer '0': factor G .*retrying with damping"):
        precond.step()
    first_g_damping = calls[0][1]
    assert [len(c) for c in calls] == [2, 1, 1]  # both, then only G twice
    assert calls[1][0] == pytest.approx(10 * first_g_damping)
    assert calls[2][0] == pytest.approx(100 * first_g_damping)
    g = a.factors["G"].double()
    expected = torch.linalg.inv(g + 100 * first_g_damping * torch.eye(3, dtype=torch.float64))
    assert torch.allclose(a.inverses["G_inv"].double(), expected, rtol=1e-4, atol=1e-6)


def _with_prelu() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(4, 6), nn.PReLU(), nn.Linear(6, 3))


def _prelu_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    return torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def _inf_loss(model: nn.Module) -> torch.Tensor:
    x, y = _prelu_batch()
    return F.cross_entropy(model(x), y) * torch.tensor(float("inf"))


def _kfac_step_with(model: nn.Module, optimizer: KFAC, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def test_inf_loss_reaches_no_parameter_with_or_without_a_block() -> None:
    model = _with_prelu()
    optimizer = KFAC(model, lr=0.1, factor_update_steps=1, inv_update_steps=1)
    x, y = _prelu_batch()
    _kfac_step_with(model, optimizer, F.cross_entropy(model(x), y))  # a finite first step
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers = {p: optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    factors = {k: v.clone() for k, v in optimizer.preconditioner.blocks["0"].factors.items()}
    with pytest.warns(KFACWarning, match=r"NaN or Inf in the gradient of .*1\.weight.*skipped"):
        _kfac_step_with(model, optimizer, _inf_loss(model))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name  # the PReLU weight included
        assert torch.equal(optimizer.state[p]["momentum_buffer"], buffers[p]), name
    for key, factor in optimizer.preconditioner.blocks["0"].factors.items():
        assert torch.equal(factor, factors[key])
    assert optimizer.nonfinite_steps == 1


def test_nan_in_an_unregistered_parameter_skips_only_it() -> None:
    model = _with_prelu()
    optimizer = KFAC(model, lr=0.1, momentum=0.0, factor_update_steps=1, inv_update_steps=1)
    x, y = _prelu_batch()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    prelu = model[1].weight
    assert prelu.grad is not None
    prelu.grad[0] = float("nan")
    prelu_before = prelu.detach().clone()
    first_before = model[0].weight.detach().clone()
    with pytest.warns(KFACWarning, match=r"NaN or Inf in the gradient of 1\.weight;"):
        optimizer.step()
    assert torch.equal(prelu.detach(), prelu_before)
    assert not torch.equal(model[0].weight.detach(), first_before)  # the others still step
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_on_nonfinite_zero_lets_momentum_carry_on() -> None:
    model = _with_prelu()
    optimizer = KFAC(
        model, lr=0.1, momentum=0.9, factor_update_steps=1, inv_update_steps=1, on_nonfinite="zero"
    )
    x, y = _prelu_batch()
    _kfac_step_with(model, optimizer, F.cross_entropy(model(x), y))
    before = {p: p.detach().clone() for p in model.parameters()}
    buffers = {p: optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    with pytest.warns(KFACWarning, match=r"made with a zero gradient"):
        _kfac_step_with(model, optimizer, _inf_loss(model))
    for p in model.parameters():
        # b <- 0.9 b + 0, θ <- θ - lr b: exactly momentum SGD with a zero gradient.
        expected_buffer = buffers[p] * 0.9
        assert torch.allclose(optimizer.state[p]["momentum_buffer"], expected_buffer)
        assert torch.allclose(p.detach(), before[p] - 0.1 * expected_buffer)


def test_adaptive_damping_closure_returning_inf_changes_nothing() -> None:
    model = _with_prelu()
    optimizer = KFAC(
        model,
        lr=0.1,
        factor_update_steps=1,
        inv_update_steps=1,
        damping=1e-2,
        adaptive_damping=True,
        damping_adaptation_interval=1,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _inf_loss(model)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with pytest.warns(KFACWarning, match=r"the loss is inf .*damping not adapted"):
        optimizer.step(closure)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    assert optimizer.damping == 1e-2 and optimizer.last_rho is None


def test_on_nonfinite_is_checked() -> None:
    with pytest.raises(ValueError, match=r"on_nonfinite: expected one of skip, zero"):
        KFAC(_with_prelu(), on_nonfinite="raise")


# --------------------------------------------------------------------------------------------
# hyperparameters
# --------------------------------------------------------------------------------------------


def test_hyperparameter_callables_are_read_each_step() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    seen: list[int] = []

    def damping(step: int) -> float:
        seen.append(step)
        return 1e-1 if step < 2 else 1e-3

    precond = KFACPreconditioner(
        model,
        damping=damping,
        factor_update_steps=lambda step: 1 if step < 2 else 3,
        inv_update_steps=1,
        kl_clip=None,
    )
    a_history = []
    for step in range(7):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        model.zero_grad()
        model(x).sum().backward()
        precond.step()
        a_history.append(precond.blocks["0"].factors["A"].clone())
    updated = [s for s in range(1, 7) if not torch.equal(a_history[s], a_history[s - 1])]
    assert updated == [1, 3, 6]  # every step before 2, then every 3rd step
    assert sorted(set(seen)) == list(range(7))
    # The last inverse update (step 6) used damping(6) = 1e-3, π-split.
    block = precond.blocks["0"]
    a, g = block.factors["A"].double(), block.factors["G"].double()
    pi = math.sqrt(float(a.diagonal().mean()) / float(g.diagonal().mean()))
    expected = torch.linalg.inv(g + math.sqrt(1e-3) / pi * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(block.inverses["G_inv"].double(), expected, rtol=1e-4)


def test_kl_clip_scales_by_nu() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(6, 4)
    clipped = KFACPreconditioner(model, factor_update_steps=1, kl_clip=1e-6, lr=0.5)
    free = KFACPreconditioner(
        model, factor_update_steps=1, kl_clip=None, skip_modules=["*"]
    )  # only to compare: skip_modules="*" registers nothing
    assert not free.blocks
    model(x).pow(2).mean().backward()
    raw = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    unclipped_model = nn.Sequential(nn.Linear(4, 3))
    unclipped_model.load_state_dict(model.state_dict())
    unclipped = KFACPreconditioner(unclipped_model, factor_update_steps=1, kl_clip=None)
    unclipped_model(x).pow(2).mean().backward()
    clipped.step()
    unclipped.step()
    preconditioned = [p.grad for p in unclipped_model.parameters()]
    vg = sum(float((v * g).sum()) for v, g in zip(preconditioned, raw)) * 0.5**2  # type: ignore[operator]
    nu = min(1.0, math.sqrt(1e-6 / abs(vg)))
    assert nu < 1
    for p, v in zip(model.parameters(), preconditioned):
        assert torch.allclose(p.grad, v * nu, rtol=1e-6, atol=0)  # type: ignore[arg-type, operator]


def _one_kfac_step(lr: float, **options: Any) -> tuple[nn.Sequential, nn.Sequential, KFAC]:
    """A Linear(4, 3) before (with this step's gradient) and after one KFAC step at ``lr``
    (momentum 0, so Δθ = -lr·d)."""
    torch.manual_seed(7)
    before = nn.Sequential(nn.Linear(4, 3)).double()  # float64: Δθ is exact enough to compare
    model = nn.Sequential(nn.Linear(4, 3)).double()
    model.load_state_dict(before.state_dict())
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=generator)
    optimizer = KFAC(model, lr=lr, momentum=0.0, factor_update_steps=1, **options)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    before.zero_grad()
    F.cross_entropy(before(x), y).backward()
    return before, model, optimizer


def _dense_kfac_direction(before: nn.Sequential, optimizer: KFAC) -> torch.Tensor:
    """vec(v) = ((A + gamma_A I) ⊗ (G + gamma_G I))⁻¹ vec([∇W ∇b]) with the π-split damping, solved
    densely in float64 from the block's factors (column-major vec)."""
    block = optimizer.preconditioner.blocks["0"]
    a, g = block.factors["A"].double(), block.factors["G"].double()
    damping = optimizer.damping
    pi = math.sqrt((a.trace() / a.shape[0]) / (g.trace() / g.shape[0]))
    a_damped = a + pi * math.sqrt(damping) * torch.eye(a.shape[0], dtype=torch.float64)
    g_damped = g + math.sqrt(damping) / pi * torch.eye(g.shape[0], dtype=torch.float64)
    layer = before[0]
    grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).double()  # type: ignore[index]
    vec = torch.linalg.solve(torch.kron(a_damped, g_damped), grad.T.reshape(-1))
    return vec.reshape(a.shape[0], g.shape[0]).T  # (out, in + 1)


def _update(before: nn.Sequential, after: nn.Sequential) -> torch.Tensor:
    w0, w1 = before[0], after[0]
    return (
        torch.cat([(w1.weight - w0.weight), (w1.bias - w0.bias)[:, None]], dim=1).detach().double()
    )


def test_learning_rate_scales_the_update_when_the_norm_clip_binds() -> None:
    updates = {}
    for lr in (0.05, 0.1):
        before, after, optimizer = _one_kfac_step(lr, max_grad_norm=1e-3)
        v = _dense_kfac_direction(before, optimizer)
        assert float(v.norm()) > 1e-3  # the clip binds
        assert optimizer.last_grad_norm == pytest.approx(float(v.norm()), rel=1e-4)
        expected = -lr * 1e-3 * v / v.norm()  # Δθ = -lr · min(1, c/‖v‖) · v
        updates[lr] = _update(before, after)
        assert torch.allclose(updates[lr], expected, rtol=1e-4, atol=1e-9)
        assert float(updates[lr].norm()) == pytest.approx(lr * 1e-3, rel=1e-4)
    assert not torch.equal(updates[0.05], updates[0.1])


def test_default_kfac_responds_to_the_learning_rate() -> None:
    # At the defaults, lr 0.05 and 0.1 must not give the same weights (the old KL clip, on by
    # default, made the update lr·nu·v with nu ∝ 1/lr: bit-identical weights).
    (_, slow, _), (_, fast, _) = _one_kfac_step(0.05), _one_kfac_step(0.1)
    before, _, _ = _one_kfac_step(0.1)
    step_slow, step_fast = _update(before, slow), _update(before, fast)
    assert float(step_fast.norm()) == pytest.approx(2 * float(step_slow.norm()), rel=1e-5)


def test_the_kl_clip_cancels_the_learning_rate_as_documented() -> None:
    # kl_clip (kfac-pytorch's rule) binding: Δθ = -sqrt(κ / vᵀ∇) · v whatever the lr.
    steps = []
    for lr in (0.05, 0.1):
        before, after, optimizer = _one_kfac_step(lr, kl_clip=1e-8, max_grad_norm=None)
        v = _dense_kfac_direction(before, optimizer)
        layer = before[0]
        grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).double()  # type: ignore[index]
        expected = -math.sqrt(1e-8 / float((v * grad).sum())) * v
        steps.append(_update(before, after))
        assert torch.allclose(steps[-1], expected, rtol=1e-4, atol=1e-12)
    assert torch.allclose(steps[0], steps[1], rtol=1e-5, atol=0)


def test_max_grad_norm_is_checked() -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        KFAC(_with_prelu(), max_grad_norm=0.0)
    with pytest.raises(TypeError, match="max_grad_norm"):
        KFAC(_with_prelu(), max_grad_norm="1")  # type: ignore[arg-type]


def _regression(lr: float, steps: int) -> tuple[KFAC, Callable[[], torch.Tensor], list[float]]:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 1))
    x = torch.randn(64, 6) * torch.tensor([3.0, 1, 1, 0.5, 0.2, 2])
    y = x @ torch.randn(6, 1) + 0.1 * torch.randn(64, 1)
    optimizer = KFAC(
        model,
        lr=lr,
        momentum=0.0,
        damping=1e-2,
        factor_update_steps=1,
        inv_update_steps=1,
        kl_clip=None,
        adaptive_damping=True,
        damping_adaptation_interval=1,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    dampings = []
    for _ in range(steps):
        optimizer.step(closure)
        dampings.append(optimizer.damping)
    return optimizer, closure, dampings


def test_adaptive_damping_decreases_when_the_model_is_trusted() -> None:
    optimizer, _, dampings = _regression(lr=0.05, steps=4)
    assert optimizer.last_rho is not None and optimizer.last_rho > 0.75
    assert dampings == sorted(dampings, reverse=True) and dampings[-1] < 1e-2
    assert dampings[0] == pytest.approx(1e-2 * 19 / 20)


def test_adaptive_damping_increases_when_the_step_overshoots() -> None:
    optimizer, _, dampings = _regression(lr=30.0, steps=3)
    assert optimizer.last_rho is not None and optimizer.last_rho < 0.25
    assert dampings == sorted(dampings) and dampings[-1] > 1e-2
    assert dampings[0] == pytest.approx(1e-2 * 20 / 19)


def test_kfac_follows_torch_lr_schedulers() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    optimizer = KFAC(model, lr=0.1, momentum=0.0, kl_clip=None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x = torch.randn(4, 3)
    for expected_lr in (0.1, 0.05):
        before = model[0].weight.detach().clone()
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()  # momentum 0, no KL clip: the change is -lr x the preconditioned .grad
        assert optimizer.param_groups[0]["lr"] == expected_lr
        change = model[0].weight.detach() - before
        assert torch.allclose(change, -expected_lr * model[0].weight.grad, atol=1e-7)  # type: ignore[operator]
        scheduler.step()


# --------------------------------------------------------------------------------------------
# the large-batch schedule
# --------------------------------------------------------------------------------------------


def test_warmup_polynomial_decay_values() -> None:
    f = warmup_polynomial_decay_factor(10, 4, start_factor=0.2, end_factor=0.1, decay_power=2.0)
    assert f(0) == pytest.approx(0.2)
    assert f(2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert f(4) == pytest.approx(1.0)
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.25)
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["sgd", "adam", "kfac"])
def test_warmup_polynomial_decay_drives_any_optimizer(name: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    optimizer: torch.optim.Optimizer
    if name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    elif name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=0.4)
    else:
        optimizer = KFAC(model, lr=0.4)
    scheduler = warmup_polynomial_decay(optimizer, total_steps=6, warmup_steps=2)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    expected = [0.0, 0.2, 0.4, 0.4 * 0.75**2, 0.4 * 0.5**2, 0.4 * 0.25**2, 0.0]
    assert lrs == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": "fast"}, TypeError, "lr"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"damping": 0.0}, ValueError, "damping"),
        ({"damping": float("nan")}, ValueError, "damping"),
        ({"factor_decay": 1.0}, ValueError, "factor_decay"),
        ({"factor_update_steps": 0}, ValueError, "factor_update_steps"),
        ({"inv_update_steps": 2.5}, TypeError, "inv_update_steps"),
        ({"kl_clip": -1.0}, ValueError, "kl_clip"),
        ({"method": "newton"}, ValueError, "method"),
        ({"fisher": "exact"}, ValueError, "fisher"),
        ({"loss_reduction": "max"}, ValueError, "loss_reduction"),
        ({"max_factor_rows": 0}, ValueError, "max_factor_rows"),
        ({"skip_modules": [3]}, TypeError, "skip_modules"),
        ({"pi_damping": 1}, TypeError, "pi_damping"),
        ({"damping_bounds": (1.0, 0.5)}, ValueError, "damping_bounds"),
        ({"adaptive_damping": True, "damping": lambda s: 0.1}, TypeError, "damping"),
    ],
)
def test_bad_hyperparameters_name_the_argument(
    kwargs: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        KFAC(nn.Sequential(nn.Linear(2, 2)), **kwargs)


def test_bad_callable_value_names_the_hyperparameter_and_step() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    optimizer = KFAC(model, damping=lambda step: -1.0)
    model(torch.ones(3, 2)).sum().backward()
    with pytest.raises(ValueError, match=r"damping\(0\)"):
        optimizer.step()


def test_bad_model_and_schedule_arguments() -> None:
    with pytest.raises(TypeError, match="model"):
        KFACPreconditioner("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        KFAC([nn.Parameter(torch.ones(1))])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_polynomial_decay_factor(10, 10)
    with pytest.raises(TypeError, match="total_steps"):
        warmup_polynomial_decay_factor(10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="end_factor"):
        warmup_polynomial_decay_factor(10, end_factor=2.0)
    with pytest.raises(TypeError, match="optimizer"):
        warmup_polynomial_decay("sgd", 10)  # type: ignore[arg-type]
    precond = KFACPreconditioner(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="empirical"):
        precond.sample_fisher(torch.ones(2, requires_grad=True))
