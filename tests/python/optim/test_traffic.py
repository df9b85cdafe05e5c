"""K-FAC's traffic plan (codl.optim.distributed.plan_traffic) and local work profile
(codl.optim.profile) against hand-computed bytes and against what a real 2-rank run hands to
torch.distributed."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

# Linear(6, 12), LayerNorm(12), Linear(12, 10), Linear(10, 3): module names 0, 1, 3, 5.
from test_distributed import make_model
from torch import nn

from codl._launch import launch
from codl.optim import KFAC, KFACPreconditioner
from codl.optim.distributed import plan_traffic
from codl.optim.profile import KFACWork, profile_work, rank_work

STEPS = 4  # factors every step, inverses every 2: two inverse updates


def blocks() -> dict[str, Any]:
    precond = KFACPreconditioner(make_model())
    precond.remove()
    return dict(precond.blocks)


def test_factor_bytes_by_hand() -> None:
    # Upper triangles: A of 7, 13, 11 (bias rows), G of 12, 10, 3, plus LayerNorm's 12 blocks
    # of 2 x 2 sent whole: 28 + 91 + 66 + 78 + 55 + 6 + 48 = 372 values.
    for world, chunk in ((1, 0), (2, 186), (4, 93)):
        plan = plan_traffic(blocks(), "inverse", world)
        assert plan.factor_numel == 372
        assert plan.factor_chunk_nbytes == 4 * chunk
        assert plan.factor_chunk_width == -(-4 * chunk // 16) * 16  # rows padded to 16 bytes
        assert plan.rank_bytes(0)["factors"] == 2 * (world - 1) * 4 * chunk
    fp16 = plan_traffic(blocks(), "inverse", 4, factor_dtype=torch.float16)
    assert fp16.factor_chunk_nbytes == 2 * 93
    assert fp16.factor_chunk_width == 192
    assert fp16.wire_bytes()["factors"] == 4 * 2 * 3 * 192


def test_state_and_gradient_bytes_by_hand() -> None:
    # Costs n^3: layer 3 (A 2197, G 1000), layer 0 (A 343, G 1728), layer 5 (A 1331, G 27).
    # Greedy, largest layer first, least loaded rank: 3.A -> 0, 3.G -> 1, 0.G -> 1, 0.A -> 0,
    # 5.A -> 0, 5.G -> 1. Inverses as upper triangles plus one flag value each:
    # rank 0: (91 + 1) + (28 + 1) + (66 + 1) = 188 values; rank 1: 56 + 79 + 7 = 142.
    plan = plan_traffic(blocks(), "inverse", 2)
    assert plan.state_broadcasts == ((0, 0, 4 * 188), (0, 1, 4 * 142))
    assert plan.gradient_broadcasts == ()  # fraction 1: every rank preconditions every layer
    assert plan.rank_bytes(0) == {"factors": 2 * 744, "states": 4 * 188, "gradients": 0}
    assert plan.wire_bytes()["states"] == 4 * (188 + 142)
    # Eigen: eigenvalues (n) and eigenvectors (n^2, whole) plus a flag, per factor.
    eigen = plan_traffic(blocks(), "eigen", 2)
    rank0 = (13 + 169 + 1) + (7 + 49 + 1) + (11 + 121 + 1)
    assert eigen.state_broadcasts[0] == (0, 0, 4 * rank0)
    # Fraction 1/2 at 2 ranks: two columns (layer 3 alone, the largest, then layers 0 and 5),
    # no state broadcast, each gradient worker broadcasts its layers' gradients (weight, bias
    # and one flag per layer) to the other rank of its row.
    half = plan_traffic(blocks(), "inverse", 2, grad_worker_fraction=0.5)
    assert half.state_broadcasts == ()
    assert half.gradient_broadcasts == (
        (0, 4 * (120 + 10 + 1)),
        (1, 4 * (72 + 12 + 1 + 30 + 3 + 1)),
    )
    assert half.wire_bytes()["gradients"] == 4 * (131 + 119)
    # Amortized: factors every 10 steps, states every 100, gradients every step.
    wire = half.wire_bytes()
    assert half.wire_bytes_per_step(10, 100) == pytest.approx(
        wire["factors"] / 10 + wire["gradients"]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"world_size": 4, "grad_worker_fraction": 0.3}, "grad_worker_fraction: expected"),
        ({"world_size": 4, "grad_worker_fraction": 1.5}, "grad_worker_fraction: expected"),
        ({"world_size": 4, "grad_worker_fraction": 0.125}, r"\[1/4, 1\]"),
        ({"world_size": 0}, "world_size: expected an integer >= 1"),
        ({"world_size": 2, "factor_dtype": torch.float64}, "factor_dtype: expected"),
    ],
)
def test_plan_refuses_bad_input(kwargs: dict[str, Any], match: str) -> None:
    world = kwargs.pop("world_size")
    with pytest.raises(ValueError, match=match):
        plan_traffic(blocks(), "inverse", world, **kwargs)


def test_amortization_refuses_bad_periods() -> None:
    with pytest.raises(ValueError, match="factor_update_steps: expected an integer >= 1"):
        plan_traffic(blocks(), "inverse", 2).wire_bytes_per_step(0, 100)


def test_rank_work_is_the_slowest_rank_and_column() -> None:
    inversion = {
        ("3", "A"): 5.0,
        ("3", "G"): 3.0,
        ("0", "A"): 1.0,
        ("0", "G"): 4.0,
        ("5", "A"): 2.0,
        ("5", "G"): 0.5,
    }
    work = KFACWork(1.0, inversion, {"0": 0.1, "3": 0.2, "5": 0.4}, 0.05)
    # Owners as in test_state_and_gradient_bytes_by_hand: rank 0 has 3.A, 0.A, 5.A (8.0),
    # rank 1 has 3.G, 0.G, 5.G (7.5); one column preconditions all three layers (0.7).
    assert rank_work(plan_traffic(blocks(), "inverse", 2), work) == (8.0, pytest.approx(0.7))
    # Two columns: layer 3 (0.2) and layers 0 and 5 (0.5).
    half = plan_traffic(blocks(), "inverse", 2, grad_worker_fraction=0.5)
    assert rank_work(half, work)[1] == pytest.approx(0.5)
    assert work.single_node(10, 100) == pytest.approx(1.0 / 10 + 15.5 / 100 + 0.7 + 0.05)


def test_profile_work_measures_every_factor_and_layer() -> None:
    model = make_model()
    batch = (torch.randn(16, 6), torch.randint(0, 3, (16,)))
    work = profile_work(model, batch, F.cross_entropy, repeat=1)
    assert set(work.inversion_s) == {(n, f) for n in ("0", "3", "5") for f in ("A", "G")}
    assert set(work.precondition_s) == {"0", "3", "5"}
    assert work.factor_s > 0 and work.local_s >= 0
    assert all(t > 0 for t in work.inversion_s.values())
    assert not model._forward_hooks and all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# the plan against a real 2-rank run
# --------------------------------------------------------------------------------------------

#: name -> KFAC options of each mode of the real run.
MODES: dict[str, dict[str, Any]] = {
    "inverses": {"grad_worker_fraction": 1.0},
    "gradients-eigen-fp16": {
        "grad_worker_fraction": 0.5,
        "method": "eigen",
        "factor_dtype": torch.float16,
    },
}


def _counting(counts: dict[str, int], world_size: int) -> dict[str, Any]:
    """Wrappers of the collectives the engine calls that add the bytes this rank puts on the
    wire: an all-to-all sends P - 1 of its P rows, an all-gather its input to P - 1 ranks, a
    broadcast's source its buffer to each other member (an all-reduce is not expected)."""
    originals = {
        name: getattr(dist, name)
        for name in ("all_to_all_single", "all_gather_single", "all_gather_into_tensor")
        if hasattr(dist, name)
    }
    originals["broadcast"] = dist.broadcast

    def all_to_all_single(output: torch.Tensor, input: torch.Tensor, **kw: Any) -> Any:
        counts["factors"] += input.numel() * input.element_size() * (world_size - 1) // world_size
        return originals["all_to_all_single"](output, input, **kw)

    def gather(name: str) -> Any:
        def wrapped(output: torch.Tensor, input: torch.Tensor, **kw: Any) -> Any:
            counts["factors"] += input.numel() * input.element_size() * (world_size - 1)
            return originals[name](output, input, **kw)

        return wrapped

    def broadcast(tensor: torch.Tensor, src: int, group: Any = None, **kw: Any) -> Any:
        if src == dist.get_rank():
            members = dist.get_world_size(group)
            counts["broadcast"] += tensor.numel() * tensor.element_size() * (members - 1)
        return originals["broadcast"](tensor, src, group=group, **kw)

    wrappers: dict[str, Any] = {"all_to_all_single": all_to_all_single, "broadcast": broadcast}
    for name in ("all_gather_single", "all_gather_into_tensor"):
        if name in originals:
            wrappers[name] = gather(name)
    return {"originals": originals, "wrappers": wrappers}


def _recorder(log: list[tuple[str, int, int]]) -> Any:
    return lambda op, group, nbytes: log.append((op, group, nbytes))


def _run(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, extra in MODES.items():
        model = nn.parallel.DistributedDataParallel(make_model())
        optimizer = KFAC(
            model,
            lr=0.1,
            damping=1e-2,
            factor_update_steps=1,
            inv_update_steps=2,
            max_factor_rows=None,
            **extra,
        )
        engine = optimizer.preconditioner.distributed
        assert engine is not None
        observed: list[tuple[str, int, int]] = []
        engine.observer = _recorder(observed)
        counts = {"factors": 0, "broadcast": 0}
        patch = _counting(counts, world_size)
        for name, fn in patch["wrappers"].items():
            setattr(dist, name, fn)
        try:
            generator = torch.Generator().manual_seed(rank)
            for _ in range(STEPS):
                optimizer.zero_grad()
                x = torch.randn(4, 6, generator=generator)
                y = torch.randint(0, 3, (4,), generator=generator)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
        finally:
            for name, fn in patch["originals"].items():
                setattr(dist, name, fn)
        out[mode] = {"wire": counts, "engine": dict(engine.total_bytes), "observed": observed}
    return out


@functools.cache
def _results() -> list[dict[str, Any]]:
    return launch(_run, 2, timeout_s=120)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_plan_is_what_a_real_run_sends(mode: str) -> None:
    extra = dict(MODES[mode])
    method = extra.pop("method", "inverse")
    plan = plan_traffic(blocks(), method, 2, **extra)
    wire = plan.wire_bytes()
    inverse_updates = STEPS // 2
    results = _results()
    # Bytes on the wire, both ranks together, counted at the torch.distributed calls.
    assert sum(r[mode]["wire"]["factors"] for r in results) == STEPS * wire["factors"]
    assert sum(r[mode]["wire"]["broadcast"] for r in results) == (
        inverse_updates * wire["states"] + STEPS * wire["gradients"]
    )
    for rank, result in enumerate(results):
        # The engine's own counters, rank by rank.
        one = plan.rank_bytes(rank)
        assert result[mode]["engine"] == {
            "factors": STEPS * one["factors"],
            "states": inverse_updates * one["states"],
            "gradients": STEPS * one["gradients"],
        }
        # What the observer (a link emulator's hook) saw: each step's factor average, then at
        # inverse updates the states, then the gradients.
        factor = [
            ("all_to_all", 2, plan.factor_chunk_width),
            ("all_gather", 2, plan.factor_chunk_width),
        ]
        states = [("broadcast", plan.grad_workers, n) for _, _, n in plan.state_broadcasts]
        grads = [("broadcast", plan.columns, n) for _, n in plan.gradient_broadcasts]
        expected = []
        for step in range(STEPS):
            expected += factor + (states if step % 2 == 0 else []) + grads
        assert result[mode]["observed"] == expected
