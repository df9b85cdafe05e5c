"""Device check of codl.comm on CUDA tensors: ``allreduce``, ``ddp_hook`` and PowerSGD, against
the same calls on CPU tensors over gloo in the same processes.

    python benchmarks/comm_gpu_check.py --backend nccl --world 2     # one GPU per process
    python benchmarks/comm_gpu_check.py --backend gloo --world 2     # CUDA tensors over gloo
    python benchmarks/comm_gpu_check.py --device cpu --world 2       # the script's logic, no GPU

Each process drives ``cuda:(rank % device_count)``; NCCL refuses two ranks on one GPU, so with
one GPU use ``--world 1`` for NCCL (the collectives of PowerSGD and plain allreduce still run;
the compressed allreduce of one rank exchanges nothing) or ``--backend gloo``. Checks:

- ``allreduce``: the codecs run on the CPU, so a CUDA tensor's result must equal, bit for bit,
  the CPU tensor's over gloo (FP16/BF16/Int8/TopK/SignEF, error feedback over 3 steps);
- ``dense``: the float32 path hands CUDA tensors to NCCL without staging (``staged_bytes`` 0);
- ``powersgd``: the arithmetic runs on the GPU, close to the CPU's (BLAS rounding differs);
- ``ddp``: DDP on the GPU with the hook through its bucket rebuild: ranks agree bit for bit,
  training stays close to plain DDP, and the hook's state round-trips through a checkpoint.

Writes one JSON (``--out``) and prints a line per check; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from codl._launch import LaunchError, launch

NUMEL = 100_003
STEPS = 3


def _gradient(rank: int, step: int, numel: int = NUMEL) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(numel, generator=generator)


def _codecs() -> dict[str, Any]:
    from codl.comm import BF16, FP16, Int8, SignEF, TopK

    return {
        "fp16": lambda: FP16(),
        "fp16-ef": lambda: FP16(error_feedback=True),
        "bf16": lambda: BF16(),
        "int8": lambda: Int8(),
        "topk-ef": lambda: TopK(0.01, error_feedback=True),
        "signef": lambda: SignEF(),
    }


def _check_allreduce(rank: int, device: torch.device, cpu_group: Any) -> dict[str, Any]:
    from codl.comm import CollectiveState, allreduce

    out: dict[str, Any] = {}
    for name, make in _codecs().items():
        codec_dev, codec_cpu = make(), make()
        state_dev, state_cpu = CollectiveState(), CollectiveState()
        same, staged, seconds = True, 0.0, 0.0
        for step in range(STEPS):
            x = _gradient(rank, step)
            on_device = x.to(device)
            start = time.perf_counter()
            allreduce(on_device, codec_dev, state=state_dev, step=step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            allreduce(x, codec_cpu, cpu_group, state=state_cpu, step=step)
            same &= torch.equal(on_device.cpu().view(torch.int32), x.view(torch.int32))
            assert state_dev.last is not None
            staged = state_dev.last.notes.get("staged_bytes", 0.0)
        out[name] = {"bitwise_equal_to_cpu": bool(same), "staged_bytes": staged, "s": seconds}
    return out


def _check_dense(rank: int, device: torch.device, cpu_group: Any) -> dict[str, Any]:
    from codl.comm.accounting import StepRecord
    from codl.comm.collectives import dense_allreduce

    x = _gradient(rank, 7)
    on_device = x.to(device)
    record = StepRecord()
    dense_allreduce(on_device, record=record)
    dense_allreduce(x, cpu_group)
    gap = float((on_device.cpu() - x).abs().max())
    return {"max_abs_gap": gap, "staged_bytes": record.notes.get("staged_bytes", 0.0)}


def _check_powersgd(rank: int, device: torch.device, cpu_group: Any) -> dict[str, Any]:
    from codl.comm import PowerSGD

    codec_dev, codec_cpu = PowerSGD(rank=2), PowerSGD(rank=2)
    worst = 0.0
    for step in range(STEPS):
        cpu = [_gradient(rank, step, 64 * 48).reshape(64, 48), _gradient(rank, step + 50, 64)]
        dev = [t.to(device) for t in cpu]
        record = codec_dev.allreduce_(dev, key=0)
        codec_cpu.allreduce_(cpu, key=0, group=cpu_group)
        for a, b in zip(dev, cpu):
            worst = max(worst, float((a.cpu() - b).abs().max() / b.abs().max()))
    return {
        "max_rel_gap": worst,
        "staged_bytes": record.notes.get("staged_bytes", 0.0),
        "error_device": str(next(iter(codec_dev.errors.values())).device),
    }


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(256, 10)
        self.mid = nn.Linear(256, 256)
        self.stem = nn.Linear(64, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(F.relu(self.mid(F.relu(self.stem(x)))))
        return logits


def _train(
    rank: int, device: torch.device, codec: Any, steps: int, checkpoint: bytes | None = None
) -> tuple[list[torch.Tensor], bytes]:
    from codl.comm import ddp_hook

    model = DDP(_Net().to(device), bucket_cap_mb=0.1)
    state = None
    if codec is not None:
        state, hook = ddp_hook(codec, small_tensor_numel=0)
        model.register_comm_hook(state, hook)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = 0
    if checkpoint is not None:
        saved = torch.load(io.BytesIO(checkpoint), weights_only=False, map_location=device)
        model.module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if state is not None:
            state.load_state_dict(saved["hook"])
        first = saved["step"]
    for step in range(first, steps):
        generator = torch.Generator().manual_seed(100 * step + rank)
        images = torch.randn(32, 64, generator=generator).to(device)
        labels = torch.randint(0, 10, (32,), generator=generator).to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "hook": state.state_dict() if state is not None else None,
            "step": steps,
        },
        buffer,
    )
    return [p.detach().cpu().clone() for p in model.module.parameters()], buffer.getvalue()


def _same_on_all_ranks(params: list[torch.Tensor], device: torch.device) -> bool:
    flat = torch.cat([p.reshape(-1) for p in params]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g.view(torch.int32), flat.view(torch.int32)) for g in gathered)


def _check_ddp(rank: int, device: torch.device) -> dict[str, Any]:
    from codl.comm import FP16, PowerSGD

    plain, _ = _train(rank, device, None, 6)
    out: dict[str, Any] = {}
    for name, make in (("fp16-ef", lambda: FP16(error_feedback=True)), ("powersgd", PowerSGD)):
        whole, _ = _train(rank, device, make(), 6)
        _, saved = _train(rank, device, make(), 3)
        resumed, _ = _train(rank, device, make(), 6, checkpoint=saved)
        out[name] = {
            "ranks_bitwise_identical": _same_on_all_ranks(whole, device),
            "max_abs_gap_to_plain_ddp": max(
                float((a - b).abs().max()) for a, b in zip(whole, plain)
            ),
            "restored_bitwise_equal_to_uninterrupted": all(
                torch.equal(a, b) for a, b in zip(whole, resumed)
            ),
            "restored_max_abs_gap": max(float((a - b).abs().max()) for a, b in zip(whole, resumed)),
        }
    return out


def _worker(rank: int, world_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every check on this rank; a check that raises is reported in its entry."""
    try:
        if args.device == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        from codl.comm.collectives import communication_device

        cpu_group = dist.new_group(backend="gloo")
        out: dict[str, Any] = {
            "backend": str(dist.get_backend()),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "payload_device": str(communication_device(None, "cpu")),
            "data_device": str(communication_device(None, device)),
        }
        checks: tuple[tuple[str, Callable[[], dict[str, Any]]], ...] = (
            ("allreduce", lambda: _check_allreduce(rank, device, cpu_group)),
            ("dense", lambda: _check_dense(rank, device, cpu_group)),
            ("powersgd", lambda: _check_powersgd(rank, device, cpu_group)),
            ("ddp", lambda: _check_ddp(rank, device)),
        )
        for name, check in checks:
            try:
                out[name] = check()
            except Exception:
                out[name] = {"error": traceback.format_exc()}
        return out
    except Exception:
        return {"error": traceback.format_exc()}


def _verdicts(out: dict[str, Any], world: int) -> list[tuple[str, bool, str]]:
    lines = []
    for name, r in out.get("allreduce", {}).items():
        if name == "error":
            lines.append(("allreduce", False, r))
            continue
        lines.append((f"allreduce {name}", r["bitwise_equal_to_cpu"], json.dumps(r)))
    dense = out.get("dense", {})
    ok = "error" not in dense and dense["max_abs_gap"] <= 1e-6
    if ok and out.get("data_device", "").startswith("cuda"):
        ok = dense["staged_bytes"] == 0
    lines.append(("dense float32", ok, json.dumps(dense)))
    power = out.get("powersgd", {})
    ok = "error" not in power and power["max_rel_gap"] < 1e-3
    lines.append(("powersgd", ok, json.dumps(power)))
    for name, r in out.get("ddp", {}).items():
        if name == "error":
            lines.append(("ddp", False, r))
            continue
        ok = r["ranks_bitwise_identical"] and r["max_abs_gap_to_plain_ddp"] < 0.05
        ok = ok and r["restored_max_abs_gap"] < 0.05
        lines.append((f"ddp {name}", ok, json.dumps(r)))
    return lines


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> int:
    """The checks; 0 if all passed, 1 if one failed, 2 without a device. The JSON goes to
    ``--out`` (default ./comm_gpu_check.json, not ``results_dir``: device checks are not
    recorded figures)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--out", default="comm_gpu_check.json")
    args = parser.parse_args(argv)
    if args.device == "cpu" and args.backend == "nccl":
        parser.error("--device cpu needs --backend gloo")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing checked (use --device cpu to check the script itself)")
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        per_rank = launch(
            _worker,
            args.world,
            args,
            timeout_s=300,
            group_timeout_s=120,
            backend=args.backend,
        )
        outs: dict[int, Any] = dict(enumerate(per_rank))
    except LaunchError as error:  # a rank died or hung: the others' checks are lost with it
        outs = {rank: {"error": str(error)} for rank in error.failed_ranks}
    report: dict[str, Any] = {
        "args": vars(args),
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version()))  # type: ignore[no-untyped-call]
        if torch.cuda.is_available()
        else None,
        "ranks": outs,
    }
    failed = False
    for rank in sorted(outs):
        if "error" in outs[rank]:
            print(f"rank {rank}: FAILED to run\n{outs[rank]['error']}")
            failed = True
            continue
        for name, ok, detail in _verdicts(outs[rank], args.world):
            failed |= not ok
            print(f"rank {rank} {'ok  ' if ok else 'FAIL'} {name}: {detail[:300]}")
    report["passed"] = not failed
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1, default=str)
    print(f"{'all checks passed' if not failed else 'some checks FAILED'}; wrote {args.out}")
    return 1 if failed else 0
