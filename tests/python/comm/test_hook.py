"""codl.comm.ddp_hook under DistributedDataParallel on 2 gloo ranks: training stays identical
across ranks and close to plain DDP, the per-step bytes equal the formulas for the bucket
layout DDP used, warm-up and small buckets go uncompressed, non-finite gradients raise on every
rank, and the state survives a state_dict round trip."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import CorruptingPeer, ScaledSignCodec, TopKCodec, ddp_results
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codl.comm import FP16, Int8, SignEF, TopK
from codl.comm.accounting import compression_ratio
from codl.comm.hook import HookState, ddp_hook

STEPS = 5
WORLD = 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * step + rank)
    images = torch.randn(16, 20, generator=generator)
    return images, torch.randint(0, 10, (16,), generator=generator)


def _train(
    rank: int, hook_args: dict[str, Any] | None, steps: int = STEPS, bucket_cap_mb: float = 0.004
) -> tuple[list[torch.Tensor], list[float], HookState | None, list[list[tuple[int, int, int]]]]:
    # find_unused_parameters: otherwise DDP starts with one bucket for everything and the
    # small-bucket path would go untested. DDP then allreduces its unused-parameter map on the
    # autograd thread, so the hook must not overlap (its thread could reorder collectives).
    overlap = hook_args is not None and hook_args.get("overlap", False)
    model = DDP(_model(), bucket_cap_mb=bucket_cap_mb, find_unused_parameters=not overlap)
    layout: list[list[tuple[int, int, int]]] = [[] for _ in range(steps)]
    state = None
    if hook_args is not None:
        state, hook = ddp_hook(**hook_args)

        def recording_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads annotations
            layout[state.step].append((bucket.index(), bucket.buffer().numel(), state.step))
            return hook(state, bucket)

        model.register_comm_hook(state, recording_hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        images, labels = _batch(rank, step)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    params = [p.detach().clone() for p in model.module.parameters()]
    if state is not None:
        state.close()
    return params, losses, state, layout


def _battery(rank: int, world_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["plain"] = _train(rank, None)[0]
    params, _, state, layout = _train(
        rank, {"codec": FP16(), "small_tensor_numel": 1000, "overlap": False}
    )
    assert state is not None
    out["fp16"] = params
    out["fp16/history"] = [r.as_dict() for r in state.history]
    out["fp16/total"] = state.total.as_dict()
    out["fp16/layout"] = layout
    saved = copy.deepcopy(state.state_dict())
    restored = HookState(FP16())
    restored.load_state_dict(saved)
    out["fp16/restored-step"] = restored.step
    out["int8"] = _train(rank, {"codec": Int8(), "small_tensor_numel": 1000})[0]
    out["topk_native"] = _train(
        rank, {"codec": TopK(0.1, error_feedback=True), "small_tensor_numel": 1000}
    )[0]
    params, _, state, layout = _train(
        rank, {"codec": FP16(), "warmup_steps": 2, "small_tensor_numel": 1000, "overlap": False}
    )
    assert state is not None
    out["warmup/history"] = [r.as_dict() for r in state.history]
    out["warmup/layout"] = layout
    params, losses, state, _ = _train(
        rank,
        {"codec": ScaledSignCodec(error_feedback=True), "small_tensor_numel": 100, "overlap": True},
        steps=12,
        bucket_cap_mb=25,
    )
    assert state is not None
    out["sign"] = params
    out["sign/losses"] = losses
    restored = HookState(ScaledSignCodec(error_feedback=True))
    restored.load_state_dict(copy.deepcopy(state.state_dict()))
    out["sign/restored"] = {k: v.clone() for k, v in restored.collective.buffers.items()}
    out["sign/buffers"] = {
        (key, phase): t for key, phase, t in state.state_dict()["collective"]["buffers"]
    }
    params, _, state, _ = _train(
        rank, {"codec": TopKCodec(0.6), "min_compression": 0.9, "overlap": True}
    )
    assert state is not None
    out["topk/history"] = [r.as_dict() for r in state.history]
    # A NaN in rank 1's batch: backward raises NonFiniteGradientError itself on both ranks,
    # with the collectives inline and on the background thread.
    for name, overlap in (("nan", True), ("nan-inline", False)):
        model = DDP(_model())
        state, hook = ddp_hook(FP16(), small_tensor_numel=0, overlap=overlap)
        model.register_comm_hook(state, hook)
        images, labels = _batch(rank, 0)
        if rank == 1:
            images[0, 0] = float("nan")
        try:
            F.cross_entropy(model(images), labels).backward()  # type: ignore[no-untyped-call]
            out[name] = "no error"
        except Exception as error:
            out[name] = f"{type(error).__name__}: {error}"
        state.close()
    # Rank 1 sends a NaN scale at step 0 (a payload corrupted on the network): with "zero",
    # every rank's gradients average to zeros, with a warning, and the step is counted.
    model = DDP(_model())
    codec = CorruptingPeer(Int8(block=64, error_feedback=True), rank=1, phase=1, step=0)
    state, hook = ddp_hook(codec, small_tensor_numel=0, on_nonfinite="zero")
    model.register_comm_hook(state, hook)
    images, labels = _batch(rank, 0)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        F.cross_entropy(model(images), labels).backward()  # type: ignore[no-untyped-call]
    out["peer/grads"] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    out["peer/skips"] = state.collective.nonfinite_skips
    return out


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return [ranks["hook"] for ranks in ddp_results(WORLD)]


def _same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x.view(torch.int32), y.view(torch.int32)) for x, y in zip(a, b))


def test_parameters_identical_across_ranks(results: list[dict[str, Any]]) -> None:
    for name in ("fp16", "sign", "int8", "topk_native"):
        assert _same_bits(results[0][name], results[1][name]), name


def test_fp16_training_close_to_plain_ddp(results: list[dict[str, Any]]) -> None:
    for ours, plain in zip(results[0]["fp16"], results[0]["plain"]):
        torch.testing.assert_close(ours, plain, rtol=0, atol=2e-3)
    # FP16 did round the compressed bucket (the 64 x 20 weight) but not the small one.
    assert not torch.equal(results[0]["fp16"][0], results[0]["plain"][0])


def test_int8_training_close_to_plain_ddp(results: list[dict[str, Any]]) -> None:
    for ours, plain in zip(results[0]["int8"], results[0]["plain"]):
        torch.testing.assert_close(ours, plain, rtol=0, atol=1e-2)


def test_sign_with_error_feedback_trains(results: list[dict[str, Any]]) -> None:
    losses = results[0]["sign/losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    buffers = results[0]["sign/buffers"]
    assert buffers, "error-feedback buffers were kept"
    restored = results[0]["sign/restored"]
    assert restored.keys() == buffers.keys()
    assert all(torch.equal(restored[key], buffers[key]) for key in buffers)


def _expected_bytes(buckets: list[tuple[int, int, int]], compressed: set[int]) -> float:
    total = 0.0
    for index, numel, _ in buckets:
        if index in compressed:
            chunk = -(-numel // WORLD)
            total += (WORLD - 1) * (2 * chunk + 1) + (WORLD - 1) * 2 * chunk
        else:
            total += 2 * (WORLD - 1) / WORLD * 4 * numel
    return total


def test_step_bytes_match_the_bucket_layout(results: list[dict[str, Any]]) -> None:
    history, layout = results[0]["fp16/history"], results[0]["fp16/layout"]
    assert len(history) == STEPS
    for step, record in enumerate(history):
        buckets = layout[step]
        compressed = {index for index, numel, _ in buckets if numel >= 1000}
        assert compressed and len(compressed) < len(buckets), "both kinds of bucket exist"
        assert record["bytes_sent"] == _expected_bytes(buckets, compressed)
        ring = sum(2 * (WORLD - 1) / WORLD * 4 * numel for _, numel, _ in buckets)
        assert record["ring_bytes"] == pytest.approx(ring, rel=1e-12)
        assert record["compressed_tensors"] == len(compressed)
        assert record["ratio"] == pytest.approx(record["bytes_sent"] / ring, rel=1e-12)
    total = results[0]["fp16/total"]
    assert total["bytes_sent"] == sum(r["bytes_sent"] for r in history)
    assert results[0]["fp16/restored-step"] == STEPS


def test_warmup_steps_go_uncompressed(results: list[dict[str, Any]]) -> None:
    history, layout = results[0]["warmup/history"], results[0]["warmup/layout"]
    for step in (0, 1):
        assert history[step]["compressed_tensors"] == 0
        assert history[step]["bytes_sent"] == pytest.approx(history[step]["ring_bytes"])
    for step in range(2, STEPS):
        compressed = {index for index, numel, _ in layout[step] if numel >= 1000}
        assert history[step]["compressed_tensors"] == len(compressed) > 0
        assert history[step]["bytes_sent"] == _expected_bytes(layout[step], compressed)


def test_codec_above_min_compression_goes_uncompressed(results: list[dict[str, Any]]) -> None:
    # Top-k at 60% density sends 8 bytes per kept value: a ratio far above 0.9 at P = 2.
    assert compression_ratio(TopKCodec(0.6), 1000, WORLD) > 0.9
    for record in results[0]["topk/history"]:
        assert record["compressed_tensors"] == 0
        assert record["ratio"] == pytest.approx(1.0)


def test_nonfinite_gradient_raises_on_every_rank(results: list[dict[str, Any]]) -> None:
    # The error itself, not "RuntimeError: Unable to cast ... to Tensor" (issue 14, item 4).
    for result in results:
        for name in ("nan", "nan-inline"):
            assert result[name].startswith("NonFiniteGradientError: non-finite"), result[name]
            assert "rank(s) [1]" in result[name], result[name]


def test_corrupted_peer_payload_zeroes_the_step(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert result["peer/skips"] == 1
        assert len(result["peer/grads"]) == 4
        for grad in result["peer/grads"]:
            assert torch.equal(grad, torch.zeros_like(grad))


def test_bad_hook_arguments() -> None:
    with pytest.raises(TypeError, match=r"codec: expected a codl\.comm\.Codec"):
        ddp_hook("fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup_steps"):
        ddp_hook(FP16(), warmup_steps=-1)
    with pytest.raises(ValueError, match="min_compression"):
        ddp_hook(FP16(), min_compression=0)
    with pytest.raises(ValueError, match="on_nonfinite"):
        ddp_hook(FP16(), on_nonfinite="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        ddp_hook(SignEF(), momentum=1.0)
    with pytest.raises(ValueError, match="momentum"):
        ddp_hook(SignEF(), momentum=True)  # type: ignore[arg-type]


def test_an_error_feedback_codec_warns_when_the_momentum_is_left_out() -> None:
    # The hook cannot see the optimizer; SGD's momentum amplifies error feedback's residual
    # (issue 14): say so unless the user states the momentum.
    with pytest.warns(UserWarning, match="momentum=") as record:
        state, _ = ddp_hook(SignEF(), warmup_steps=20)
    assert record[0].filename == __file__  # points at the caller's line
    assert state.momentum == 0.0 and not state.compresses_momentum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for codec in (SignEF(), TopK(0.1, error_feedback=True)):
            for momentum in (0.0, 0.9):
                ddp_hook(codec, momentum=momentum)
        ddp_hook(Int8())  # no error feedback: nothing to amplify
        ddp_hook(None)


def test_the_momentum_is_read_from_the_sgd_itself() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    state, _ = ddp_hook(SignEF(), momentum=torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert state.momentum == 0.9 and state.compresses_momentum()
    state, _ = ddp_hook(SignEF(), momentum=torch.optim.SGD(params, lr=0.1))
    assert state.momentum == 0.0 and not state.compresses_momentum()
    with pytest.raises(ValueError, match="Adam"):
        ddp_hook(SignEF(), momentum=torch.optim.Adam(params))
    with pytest.raises(ValueError, match="nesterov"):
        ddp_hook(SignEF(), momentum=torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True))
    groups = [{"params": params}, {"params": [torch.nn.Parameter(torch.zeros(2))], "momentum": 0.5}]
    with pytest.raises(ValueError, match="different momenta"):
        ddp_hook(SignEF(), momentum=torch.optim.SGD(groups, lr=0.1, momentum=0.9))
