"""Convergence of every lossy codec under DDP with momentum SGD at a constant rate (issue 14,
item 1): 2 gloo ranks, codl.models.SmallCNN on the shipped Fashion-MNIST subset,
``torch.optim.SGD(lr=0.05, momentum=0.9)``, ``ddp_hook(codec, warmup_steps=20, momentum=0.9)``.
The sign codec with error feedback diverged in this configuration when the hook compressed
the gradient (training loss 1.1 at the end of warm-up, then 2-3); the hook now compresses the
momentum. TernGrad rose too until it clipped its input as Wen et al. do. Every codec must end
within a margin of the uncompressed run's loss and keep falling.
One spawn trains every configuration (seconds each)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from dist_helpers import run_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codl import comm

STEPS = 160
WARMUP = 20
BATCH = 64  # global
WINDOW = 20  # steps averaged per loss figure
CODECS = {
    "float32": lambda: None,
    "sign_ef": lambda: comm.SignEF(),
    "int8": lambda: comm.Int8(),
    "int8_ef": lambda: comm.Int8(error_feedback=True),
    "topk": lambda: comm.TopK(0.01),
    "qsgd": lambda: comm.QSGD(),
    "terngrad": lambda: comm.TernGrad(),
    "terngrad_unclipped": lambda: comm.TernGrad(clip=None),
    "powersgd": lambda: comm.PowerSGD(2),
    "fp16": lambda: comm.FP16(),
}


def _train(rank: int, world_size: int, name: str) -> list[float]:
    from codl.data import load_split
    from codl.models import SmallCNN

    images, labels, _ = load_split("train", "subset")
    torch.manual_seed(0)
    model = DistributedDataParallel(SmallCNN())
    codec = CODECS[name]()
    if codec is not None:
        state, hook = comm.ddp_hook(codec, warmup_steps=WARMUP, small_tensor_numel=0, momentum=0.9)
        model.register_comm_hook(state, hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    per_rank = BATCH // world_size
    order = torch.cat([torch.randperm(len(images), generator=generator) for _ in range(4)])
    losses = []
    for step in range(STEPS):
        batch = order[step * BATCH : (step + 1) * BATCH]
        mine = batch[rank * per_rank : (rank + 1) * per_rank]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images[mine]), labels[mine])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    # The batches differ per rank: average the loss over the ranks.
    total = torch.tensor(losses)
    torch.distributed.all_reduce(total)
    return (total / world_size).tolist()


def _battery(rank: int, world_size: int) -> dict[str, list[float] | str]:
    torch.set_num_threads(1)
    out: dict[str, list[float] | str] = {}
    for name in CODECS:
        try:
            out[name] = _train(rank, world_size, name)
        except comm.NonFiniteGradientError as error:  # raised on every rank alike
            out[name] = f"NonFiniteGradientError: {error}"
    return out


@pytest.fixture(scope="module")
def curves() -> dict[str, list[float] | str]:
    result: dict[str, list[float] | str] = run_distributed(_battery, 2, timeout_s=600)[0]
    return result


def _window(losses: list[float], end: int) -> float:
    return sum(losses[end - WINDOW : end]) / WINDOW


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [n for n in CODECS if n not in ("float32", "terngrad_unclipped")],
)
def test_lossy_codec_converges_with_momentum(curves: dict[str, Any], name: str) -> None:
    reference = curves["float32"]
    losses = curves[name]
    assert isinstance(losses, list), losses
    assert all(torch.isfinite(torch.tensor(losses)))
    # Warm-up is uncompressed: the same as float32 up to the first compressed step.
    assert losses[:WARMUP] == pytest.approx(reference[:WARMUP], rel=1e-4)
    end, after_warmup = _window(losses, STEPS), _window(losses, WARMUP + 2 * WINDOW)
    # Falling after warm-up (the diverging sign codec rose from 1.1 to 2-3) ...
    assert end < after_warmup - 0.1, (name, after_warmup, end)
    # ... and within a margin of the uncompressed run.
    assert end < _window(reference, STEPS) + 0.15, (name, end, _window(reference, STEPS))


@pytest.mark.slow
def test_terngrad_needs_its_clipping_at_momentum(curves: dict[str, Any]) -> None:
    # Without Wen et al.'s clipping one large value sets a block's scale: the variance kept the
    # loss above the warm-up's (TernGrad was this test's expected failure before clipping).
    unclipped, clipped = curves["terngrad_unclipped"], curves["terngrad"]
    assert _window(unclipped, STEPS) > _window(clipped, STEPS) + 0.3


@pytest.mark.slow
def test_uncompressed_reference_learns(curves: dict[str, Any]) -> None:
    reference = curves["float32"]
    assert _window(reference, STEPS) < 0.8 < _window(reference, WINDOW)
