"""codl.comm.ddp_hook across DDP's bucket rebuild and a checkpoint restore, on 2 gloo ranks.

DDP with its defaults (``find_unused_parameters=False``, ``static_graph=False``) reduces the
first step in one bucket holding every parameter in registration order, then rebuilds its
buckets in gradient-ready order; a fresh DDP restored from a checkpoint starts over. The model
below registers its layers in another order than backward produces their gradients, and the
bucket cap is small, so the layout really changes (asserted from what the hook was handed).

Checked against references computed here from every rank's local gradients: the error-feedback
invariant per parameter (results returned so far + residuals held on all ranks = sum of the true
mean gradients) at every step, across the rebuild and across the restore, so no residual is
dropped or applied to another parameter; bitwise agreement of the ranks; the restored residuals
equal the saved ones; a restore continues bit for bit as an uninterrupted run for the codecs
that work value by value (FP16 with error feedback, PowerSGD at 2 ranks); for the others (whose
blocks, scales or top-k selection depend on the bucket layout, which differs on the restored
DDP's first step) two restores from the same checkpoint agree bit for bit. With every collective
staged through a stand-in device (the path NCCL takes), training and residuals are unchanged.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dist_helpers import ScaledSignCodec, TopKCodec, run_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import codl.comm.collectives as collectives
from codl.comm import FP16, PowerSGD
from codl.comm.collectives import communication_device
from codl.comm.hook import HookState, ddp_hook

WORLD = 2
STEPS = 6
SAVE_AT = 3
BUCKET_CAP_MB = 0.004  # 4194 bytes: the rebuilt layout has 3 buckets
# Registration order, and the order backward produces the gradients (forward runs stem first).
REGISTERED = ["head", "mid", "mid2", "stem"]
READY = ["head", "mid2", "mid", "stem"]
# "/overlap": the hook's collectives (and the re-mapping) on its background thread;
# "/stranded": the rebuilt 672-value bucket goes uncompressed (fewer than 700 values), so its
# parameters' residuals from the first step wait in the state's pending pieces.
CODECS = ["sign-ef", "topk-ef", "fp16-ef", "powersgd", "sign-ef/overlap", "fp16-ef/overlap"]
CODECS += ["sign-ef/stranded"]
STAGED = ["fp16-ef", "sign-ef/stranded", "powersgd"]
VALUE_BY_VALUE = {"fp16-ef", "powersgd", "fp16-ef/overlap"}


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(32, 10)
        self.mid = nn.Linear(32, 32)
        self.mid2 = nn.Linear(32, 32)
        self.stem = nn.Linear(20, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.mid(F.relu(self.stem(x))))
        return self.head(F.relu(self.mid2(x)))


def _codec(name: str) -> Any:
    return {
        "sign-ef": lambda: ScaledSignCodec(error_feedback=True),
        "topk-ef": lambda: TopKCodec(0.1, error_feedback=True),
        "fp16-ef": lambda: FP16(error_feedback=True),
        "powersgd": lambda: PowerSGD(rank=1),
    }[name]()


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    images = torch.randn(16, 20, generator=generator)
    return images, torch.randint(0, 10, (16,), generator=generator)


class Run:
    """One DDP model with the codl hook, recording what each bucket held before and after the
    hook, and the residuals after each step, per parameter name."""

    def __init__(self, codec: str, seed: int = 0) -> None:
        self.model = DDP(Net(seed), bucket_cap_mb=BUCKET_CAP_MB)
        name, *options = codec.split("/")
        self.state, hook = ddp_hook(
            _codec(name),
            small_tensor_numel=700 if "stranded" in options else 0,
            overlap="overlap" in options,
        )
        self.names = {id(p): name for name, p in self.model.module.named_parameters()}
        self.buckets: list[dict[str, Any]] = []

        def recording(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads annotations
            names = [self.names[id(p)] for p in bucket.parameters()]
            local = bucket.buffer().clone()
            self.buckets.append(
                {"step": state.step, "index": bucket.index(), "names": names, "local": local}
            )
            return hook(state, bucket)

        self.model.register_comm_hook(self.state, recording)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def train(self, rank: int, steps: range) -> list[dict[str, Any]]:
        out = []
        for step in steps:
            images, labels = _batch(rank, step)
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            # What the hook returned: DDP copies it into the gradients, unscaled.
            grads = {n: p.grad.clone() for n, p in self.model.module.named_parameters()}
            self.optimizer.step()
            out.append({"params": self.params(), "residuals": self.residuals(), "grads": grads})
        return out

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.module.named_parameters()}

    def residuals(self) -> dict[str, torch.Tensor]:
        held = self.state.residuals()
        out = {}
        for name, p in self.model.module.named_parameters():
            pid = self.state.parameter_ids([p])[0]
            out[name] = held.get(pid, torch.zeros(p.numel()))
        return out

    def checkpoint(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "model": self.model.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "hook": self.state.state_dict(),
            },
            buffer,
        )
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        saved = torch.load(io.BytesIO(data), weights_only=False)
        self.model.module.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state.load_state_dict(saved["hook"])


def _scenario(rank: int, codec: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    whole = Run(codec)
    out["whole"] = whole.train(rank, range(STEPS))
    out["whole/buckets"] = whole.buckets
    out["whole/relayouts"] = whole.state.relayouts
    out["whole/pending"] = sorted(
        name
        for name, p in whole.model.module.named_parameters()
        if whole.state.parameter_ids([p])[0] in whole.state.pending
    )
    first = Run(codec)
    out["first"] = first.train(rank, range(SAVE_AT))
    out["first/buckets"] = first.buckets
    data = first.checkpoint()
    out["saved"] = first.residuals()
    for name in ("restored", "again"):
        run = Run(codec, seed=7)  # another initialisation: the checkpoint must overwrite it
        run.restore(data)
        out[f"{name}/loaded"] = run.residuals()
        out[name] = run.train(rank, range(SAVE_AT, STEPS))
        out[f"{name}/buckets"] = run.buckets
        out[f"{name}/relayouts"] = run.state.relayouts
    return out


def _stand_in_device(group: Any = None, data: Any = "cpu") -> torch.device:
    # "cpu:0" stands in for a GPU (see test_collectives.py): every collective of the hook, the
    # re-mapping's all_gather included, goes through the staging copies NCCL would get.
    return torch.device("cpu", 0)


def _battery(rank: int, world_size: int) -> dict[str, Any]:
    out = {codec: _scenario(rank, codec) for codec in CODECS}
    collectives.communication_device = _stand_in_device
    there = collectives.Channel._there
    copies: list[int] = []

    def counting(channel: collectives.Channel, tensor: torch.Tensor) -> torch.Tensor:
        moved = there(channel, tensor)
        if moved is not tensor:
            copies.append(tensor.numel())
        return moved

    collectives.Channel._there = counting  # type: ignore[method-assign]
    try:
        out["staged"] = {codec: _scenario(rank, codec) for codec in STAGED}
    finally:
        collectives.communication_device = communication_device
        collectives.Channel._there = there  # type: ignore[method-assign]
    out["staged/copies"] = len(copies)
    # A restored state on another model is refused, not misapplied.
    run = Run("sign-ef")
    run.train(rank, range(2))
    state = HookState(ScaledSignCodec(error_feedback=True))
    state.load_state_dict(run.state.state_dict())
    try:
        state.parameter_ids([torch.zeros(3, 3)])
        out["foreign"] = "no error"
    except ValueError as error:
        out["foreign"] = str(error)
    return out


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return run_distributed(_battery, WORLD, timeout_s=240)


def _layout(buckets: list[dict[str, Any]], step: int) -> list[tuple[int, int, list[str]]]:
    return [(b["index"], b["local"].numel(), b["names"]) for b in buckets if b["step"] == step]


def _layers(names: list[str]) -> list[str]:
    return list(dict.fromkeys(name.split(".")[0] for name in names))


def test_the_layout_really_changes(results: list[dict[str, Any]]) -> None:
    for codec in CODECS:
        buckets = results[0][codec]["whole/buckets"]
        first = _layout(buckets, 0)
        assert len(first) == 1 and first[0][0] == 0 and first[0][1] == 3114
        assert _layers(first[0][2]) == REGISTERED
        for step in range(1, STEPS):
            layout = _layout(buckets, step)
            assert [(index, numel) for index, numel, _ in layout] == [
                (0, 1386),
                (1, 1056),
                (2, 672),
            ]
            assert [_layers(names) for _, _, names in layout] == [
                ["head", "mid2"],
                ["mid"],
                ["stem"],
            ]
        assert _layers([n for _, _, names in _layout(buckets, 1) for n in names]) == READY
        # A restored DDP starts over: one bucket, then the rebuilt layout again.
        restored = results[0][codec]["restored/buckets"]
        assert _layout(restored, SAVE_AT) == first
        assert _layout(restored, SAVE_AT + 1) == _layout(buckets, SAVE_AT + 1)
        assert results[0][codec]["whole/relayouts"] == 1  # the rebuild after step 0
        assert results[0][codec]["restored/relayouts"] == 2  # the restore, then the rebuild


def _per_param(bucket: dict[str, Any], key: str, shapes: dict[str, int]) -> dict[str, Any]:
    out, offset = {}, 0
    for name in bucket["names"]:
        out[name] = bucket[key][offset : offset + shapes[name]].double()
        offset += shapes[name]
    assert offset == bucket[key].numel()
    return out


def _check_invariant(
    results: list[dict[str, Any]], codec: str, parts: list[tuple[str, range]]
) -> tuple[list[float], float]:
    """Per step and parameter: sum of results + residuals of all ranks - sum of true means;
    returns the largest gap relative to the summed gradients' size, per step, and the largest
    residual on the same scale."""
    shapes = {n: p.numel() for n, p in results[0][codec]["whole"][0]["params"].items()}
    sent = {n: torch.zeros(k, dtype=torch.float64) for n, k in shapes.items()}
    true = {n: torch.zeros(k, dtype=torch.float64) for n, k in shapes.items()}
    gaps, largest = [], 0.0
    for part, steps in parts:
        for i, step in enumerate(steps):
            buckets = [
                [b for b in result[codec][f"{part}/buckets"] if b["step"] == step]
                for result in results
            ]
            assert sum(len(b["names"]) for b in buckets[0]) == len(shapes)
            for per_rank in zip(*buckets):
                for bucket in per_rank:
                    for name, values in _per_param(bucket, "local", shapes).items():
                        true[name] += values / WORLD
            for name, values in results[0][codec][part][i]["grads"].items():
                sent[name] += values.reshape(-1).double()
            worst = 0.0
            for name in shapes:
                held = sum(r[codec][part][i]["residuals"][name].double() for r in results)
                scale = true[name].abs().max().clamp_min(1e-3)
                gap = (sent[name] + held - true[name]).abs().max()
                worst = max(worst, float(gap / scale))
                largest = max(largest, float(held.abs().max() / scale))
            gaps.append(worst)
    return gaps, largest


@pytest.mark.parametrize("codec", CODECS)
def test_error_feedback_invariant_across_rebuild_and_restore(
    results: list[dict[str, Any]], codec: str
) -> None:
    whole, held = _check_invariant(results, codec, [("whole", range(STEPS))])
    resumed, _ = _check_invariant(
        results, codec, [("first", range(SAVE_AT)), ("restored", range(SAVE_AT, STEPS))]
    )
    assert max(whole + resumed) < 1e-6, (whole, resumed)
    # The residuals are far above that, so a dropped or misplaced one would show.
    assert held > 1e-4, held


@pytest.mark.parametrize("codec", CODECS)
def test_ranks_bitwise_identical(results: list[dict[str, Any]], codec: str) -> None:
    for part in ("whole", "restored"):
        for ours, theirs in zip(results[0][codec][part], results[1][codec][part]):
            for name, values in ours["params"].items():
                assert torch.equal(
                    values.view(torch.int32), theirs["params"][name].view(torch.int32)
                )


@pytest.mark.parametrize("codec", CODECS)
def test_restored_residuals_equal_the_saved(results: list[dict[str, Any]], codec: str) -> None:
    for result in results:
        saved, loaded = result[codec]["saved"], result[codec]["restored/loaded"]
        assert saved.keys() == loaded.keys()
        for name in saved:
            assert torch.equal(saved[name], loaded[name]), name
        assert any(float(v.abs().max()) > 0 for v in saved.values())


@pytest.mark.parametrize("codec", CODECS)
def test_restore_continues_deterministically(results: list[dict[str, Any]], codec: str) -> None:
    for result in results:
        for ours, again in zip(result[codec]["restored"], result[codec]["again"]):
            for name, values in ours["params"].items():
                assert torch.equal(
                    values.view(torch.int32), again["params"][name].view(torch.int32)
                )


@pytest.mark.parametrize("codec", sorted(VALUE_BY_VALUE))
def test_restore_equals_an_uninterrupted_run(results: list[dict[str, Any]], codec: str) -> None:
    for result in results:
        whole = result[codec]["whole"]
        for step, (first, uninterrupted) in enumerate(zip(result[codec]["first"], whole)):
            for name, values in first["params"].items():
                assert torch.equal(values, uninterrupted["params"][name]), (step, name)
        for step, resumed in zip(range(SAVE_AT, STEPS), result[codec]["restored"]):
            for name, values in resumed["params"].items():
                expected = whole[step]["params"][name]
                assert torch.equal(values.view(torch.int32), expected.view(torch.int32)), (
                    step,
                    name,
                )


def test_layout_dependent_codecs_stay_close_to_an_uninterrupted_run(
    results: list[dict[str, Any]],
) -> None:
    # Not bitwise (the restored DDP's first step buckets differently), but the same training.
    for codec in sorted(set(CODECS) - VALUE_BY_VALUE):
        resumed, whole = results[0][codec]["restored"][-1], results[0][codec]["whole"][-1]
        for name, values in resumed["params"].items():
            torch.testing.assert_close(values, whole["params"][name], rtol=0, atol=0.05)


def test_residuals_of_an_uncompressed_bucket_wait_for_a_compressed_one(
    results: list[dict[str, Any]],
) -> None:
    for codec in CODECS:
        pending = results[0][codec]["whole/pending"]
        assert pending == (["stem.bias", "stem.weight"] if codec.endswith("stranded") else [])
    # They are kept, not dropped: counted in the invariant above, and non-zero.
    held = results[0]["sign-ef/stranded"]["whole"][-1]["residuals"]
    assert float(held["stem.weight"].abs().max()) > 0


@pytest.mark.parametrize("codec", STAGED)
def test_staged_collectives_give_the_same_training(
    results: list[dict[str, Any]], codec: str
) -> None:
    for result in results:
        assert result["staged/copies"] > 0
        staged, direct = result["staged"][codec], result[codec]
        for part in ("whole", "restored"):
            for ours, theirs in zip(staged[part], direct[part]):
                for name, values in ours["params"].items():
                    assert torch.equal(values, theirs["params"][name]), (part, name)
                    assert torch.equal(ours["residuals"][name], theirs["residuals"][name])


def test_a_checkpoint_of_another_model_is_refused(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert "hook state was saved for" in result["foreign"], result["foreign"]
