"""PowerSGD: Gram-Schmidt, the compression rule and byte formula by hand, the error-feedback
identity, exactness on a shared rank-1 gradient, and training through DDP next to torch's
``powerSGD_hook`` at the same rank (comparable loss, the same compressed sizes, our bytes
exact)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import ddp_results
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as torch_powersgd
from torch.nn.parallel import DistributedDataParallel as DDP

from codl.comm import PowerSGD, ddp_hook
from codl.comm.powersgd import orthogonalize_

STEPS = 30
WARMUP = 2
RANK = 2


def test_orthogonalize_matches_qr_span() -> None:
    matrix = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = orthogonalize_(matrix.clone(), epsilon=0.0)
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64))
    reference = torch.linalg.qr(matrix).Q
    # Same column space, column by column up to sign (Gram-Schmidt is QR's Q).
    torch.testing.assert_close((q * reference).sum(0).abs(), torch.ones(3, dtype=torch.float64))
    assert orthogonalize_(torch.zeros(4, 2)).abs().sum() == 0  # epsilon: no division by zero


def test_compression_rule_and_bytes_by_hand() -> None:
    codec = PowerSGD(rank=2)
    assert not codec.compresses((64,))  # 1-D: uncompressed
    assert codec.compresses((64, 20))  # 1280 >= 2 * 2 * 84
    assert not codec.compresses((4, 4))  # 16 < 2 * 2 * 8
    assert codec.compresses((32, 1, 5, 5))  # 32 x 25 matrix: 800 >= 2 * 2 * 57
    # The test MLP on 2 ranks: ring bytes 2 (P - 1) / P * 4 = 4 per value, of 74 uncompressed,
    # P = 64 * 2 + 10 * 2 and Q = 20 * 2 + 64 * 2 values.
    shapes = [(64, 20), (64,), (10, 64), (10,)]
    assert codec.bytes_sent(shapes, 2) == 4 * (74 + 148 + 168)
    with pytest.raises(ValueError, match="rank"):
        PowerSGD(rank=0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * step + rank)
    images = torch.randn(32, 20, generator=generator)
    return images, (images[:, :10].argmax(1) + step % 2) % 10


def _train(rank: int, which: str) -> dict[str, Any]:
    model = DDP(_model())
    if which == "codl":
        state, hook = ddp_hook(PowerSGD(rank=RANK), warmup_steps=WARMUP, small_tensor_numel=0)
    else:
        state = torch_powersgd.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=RANK,
            start_powerSGD_iter=WARMUP,
            min_compression_rate=2,
            use_error_feedback=True,
            warm_start=True,
        )
        hook = torch_powersgd.powerSGD_hook
    model.register_comm_hook(state, hook)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    numel_after: list[int] = []
    for step in range(STEPS):
        images, labels = _batch(rank, step)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        before = getattr(state, "total_numel_after_compression", 0)
        loss.backward()  # type: ignore[no-untyped-call]
        numel_after.append(getattr(state, "total_numel_after_compression", 0) - before)
        optimizer.step()
        losses.append(float(loss.detach()))
    out: dict[str, Any] = {
        "losses": losses,
        "params": [p.detach().clone() for p in model.module.parameters()],
        "numel_after": numel_after,
    }
    if which == "codl":
        out["history"] = [r.as_dict() for r in state.history]
    return out


def _battery(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {"codl": _train(rank, "codl"), "torch": _train(rank, "torch")}
    # Error feedback: approx + new error = gradient + old error, on each rank.
    codec = PowerSGD(rank=1)
    generator = torch.Generator().manual_seed(rank)
    first = torch.randn(30, 8, generator=generator)
    codec.allreduce_([first.clone()], key=5)
    old_error = codec.errors[5].clone()
    gradient = torch.randn(30, 8, generator=generator)
    approx = gradient.clone()
    codec.allreduce_([approx], key=5)
    out["ef-gap"] = float(
        (approx.reshape(-1) + codec.errors[5] - gradient.reshape(-1) - old_error).abs().max()
    )
    # A rank-1 gradient shared by all ranks comes back exactly (one power-iteration step).
    u = torch.linspace(-1, 1, 40)
    v = torch.linspace(0.5, 2, 12)
    shared = torch.outer(u, v)
    result = shared.clone()
    PowerSGD(rank=1, error_feedback=False).allreduce_([result], key=0)
    out["rank1-gap"] = float((result - shared).abs().max())
    return out


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return [ranks["powersgd"] for ranks in ddp_results(2)]


def test_identical_parameters_across_ranks(results: list[dict[str, Any]]) -> None:
    for a, b in zip(results[0]["codl"]["params"], results[1]["codl"]["params"]):
        assert torch.equal(a, b)


def test_loss_comparable_to_torch_powersgd(results: list[dict[str, Any]]) -> None:
    ours, theirs = results[0]["codl"]["losses"], results[0]["torch"]["losses"]
    ours_end, theirs_end = sum(ours[-5:]) / 5, sum(theirs[-5:]) / 5
    assert ours_end < 0.8 * ours[0] and theirs_end < 0.8 * theirs[0]
    assert abs(ours_end - theirs_end) < 0.15 * theirs_end


def test_bytes_exact_and_same_sizes_as_torch(results: list[dict[str, Any]]) -> None:
    history = results[0]["codl"]["history"]
    torch_numel = results[0]["torch"]["numel_after"]
    for step, record in enumerate(history):
        if step < WARMUP:
            assert record["bytes_sent"] == 4 * 1994  # float32 ring on 2 ranks: 4 bytes a value
        else:
            assert record["bytes_sent"] == 4 * (74 + 148 + 168)
            # torch's hook counts the same values after compression.
            assert torch_numel[step] == 74 + 148 + 168
        assert record["ring_bytes"] == 4 * 1994


def test_error_feedback_identity_and_rank1_exactness(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert result["ef-gap"] < 1e-5
        assert result["rank1-gap"] < 1e-5
