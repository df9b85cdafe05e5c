"""``codl bench scale``: projected time per step and weak-scaling efficiency of data-parallel SGD,
distributed K-FAC and K-FAC with compressed gradients from 2 to 100,000 nodes, the bytes of
distributed K-FAC against KAISA's, and (``--validate``) the projection against 2 and 4
rate-limited processes.

What the projection adds to :mod:`codl.comm.linkmodel`'s data-parallel step (measured forward and
backward, the gradient allreduce or codec): K-FAC's work as three
:class:`~codl.comm.linkmodel.Phase` objects built from the
:class:`~codl.optim.distributed.TrafficPlan` the real engine follows (the same assignment and
packing code) and K-FAC's local work measured on this machine
(:func:`codl.optim.profile.profile_work`):

- factors, every ``factor_update_steps``: each rank's statistics, then the two-phase average
  (an all-to-all and an all-gather of one chunk per rank);
- inverses, every ``inv_update_steps``: the slowest rank's decompositions, then each column's
  broadcasts of the parts to its gradient workers (columns in parallel);
- every step: the slowest column's preconditioning and the rest of K-FAC's step, then the
  broadcasts of the preconditioned gradients along each row (``grad_worker_fraction < 1``).

Efficiency is weak scaling against one node running the same configuration (SGD: forward and
backward; K-FAC: also every factor, decomposition and preconditioning on that node): with a
grad-worker fraction below 1 the preconditioning is shared out, so K-FAC's efficiency can exceed
1 where the link is fast. ``vs SGD`` is the configuration's step over SGD's at the same nodes.

KAISA's bytes (``--kaisa``) follow kfac-pytorch (github.com/gpauloski/kfac-pytorch, commit
869cf11) for the same model, fraction and update periods, at its defaults:
``kfac/preconditioner.py`` ``KFACPreconditioner.__init__`` (``symmetry_aware=False``,
``compute_eigenvalue_outer_product=True``, factors and inverses in float32);
``kfac/base_preconditioner.py`` ``BaseKFACPreconditioner.step`` (``reduce_a_factor`` /
``reduce_g_factor`` over ``factor_group``, which ``kfac/assignment.py``
``KAISAAssignment.factor_group`` makes the whole world; ``broadcast_a_inv`` / ``broadcast_g_inv``
in ``grad_worker_group`` when ``broadcast_inverses()``, i.e. grad_workers > 1;
``broadcast_grad`` in ``grad_receiver_group`` when ``broadcast_gradients()``, i.e.
grad_workers < world size); ``kfac/distributed.py`` ``TorchDistributedCommunicator.allreduce``
/ ``broadcast`` (the upper triangle only with ``symmetry_aware``); what is broadcast in
``kfac/layers/inverse.py`` (A⁻¹, G⁻¹ whole) and ``kfac/layers/eigen.py``
``KFACEigenLayer.broadcast_a_inv`` / ``broadcast_g_inv`` (Q_A; Q_G and the outer product of
the eigenvalues, g x a). Bytes on the wire, all ranks together: a ring allreduce of S bytes over
P ranks puts 2 (P - 1) S on the wire, a broadcast to g ranks (g - 1) S, for both.

    codl bench scale                          # table, JSON and PNG (FashionCNN, batch 64)
    codl bench scale --validate               # and 2, 4 rate-limited processes (minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from codl import _ops
from codl._launch import launch
from codl.bench import default_results_dir
from codl.bench.timing import load_average
from codl.comm import BF16, FP16, Int8, ddp_hook
from codl.comm.codecs import Codec
from codl.comm.linkmodel import (
    PRESETS,
    CodecThroughput,
    Collective,
    EmulatedLink,
    LinkPreset,
    Phase,
    Projection,
    StepProfile,
    measure_throughput,
    profile_step,
    project,
    with_measured_overhead,
)
from codl.models import FashionCNN
from codl.optim import KFAC, KFACPreconditioner
from codl.optim.distributed import TrafficPlan, grad_workers_of, plan_traffic
from codl.optim.layers import KroneckerBlock, LayerBlock
from codl.optim.profile import KFACWork, profile_work, rank_work

#: Nodes of the projection table.
NODES = (2, 4, 16, 64, 256, 1024, 4096, 16384, 100_000)
#: The issue's reporting point.
REPORT_NODES = 1024
#: Gradient codecs for "K-FAC with compressed gradients" (dense, no error feedback).
GRAD_CODECS: dict[str, Callable[[], Codec]] = {"int8": Int8, "fp16": FP16, "bf16": BF16}


@dataclass(frozen=True)
class Config:
    """One configuration: SGD or K-FAC, its grad-worker fraction (``"1"``, ``"1/P"`` or
    ``"1/k"``, the last clamped to 1/P below k nodes) and its gradient codec (None: float32)."""

    name: str
    kfac: bool
    fraction: str = "1"
    codec: str | None = None


CONFIGS = {
    c.name: c
    for c in (
        Config("sgd", False),
        Config("kfac", True, "1"),
        Config("kfac f=1/4", True, "1/4"),
        Config("kfac f=1/P", True, "1/P"),
        Config("kfac+int8", True, "1", "int8"),
    )
}


def fraction_of(spec: str, nodes: int) -> float:
    """The grad-worker fraction of ``spec`` at ``nodes``: ``"1"``, ``"1/P"``, or ``"1/k"``
    clamped to [1/P, 1]."""
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes: expected an integer >= 1, received {nodes!r}")
    if spec == "1":
        return 1.0
    if spec == "1/P":
        return 1.0 / nodes
    if spec.startswith("1/") and spec[2:].isdigit() and int(spec[2:]) >= 1:
        return max(1.0 / int(spec[2:]), 1.0 / nodes)
    raise ValueError(f"fraction: expected '1', '1/P' or '1/k' with k >= 1, received {spec!r}")


# --------------------------------------------------------------------------------------------
# models and measurements
# --------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


#: name -> (constructor, per-node batch).
MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "cnn": (FashionCNN, 64),
    "mlp": (_mlp, 32),
}


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]()


def make_batch(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = MODELS[name][1]
    return (
        torch.randn(size, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (size,), generator=generator),
    )


def kfac_blocks(model: nn.Module) -> dict[str, LayerBlock]:
    """The blocks a preconditioner registers on ``model`` (its hooks removed again)."""
    precond = KFACPreconditioner(model)
    precond.remove()
    return dict(precond.blocks)


@dataclass(frozen=True)
class Measured:
    """Everything the projection takes from this machine."""

    model: str
    profile: StepProfile
    work: KFACWork
    blocks: Mapping[str, LayerBlock]
    throughput: Mapping[str, CodecThroughput]
    load_average: float


def measure(model_name: str, *, repeat: int = 5, codecs: Sequence[str] = ("int8",)) -> Measured:
    """Forward and backward, K-FAC's local work and the gradient codecs' throughput, measured
    in this process with its current threads."""
    model = make_model(model_name)
    batch = make_batch(model_name, 0)
    profile = profile_step(model, batch, F.cross_entropy, repeat=repeat)
    work = profile_work(model, batch, F.cross_entropy, repeat=repeat)
    speeds = {
        name: measure_throughput(GRAD_CODECS[name](), profile.gradient_numel, repeat=repeat)
        for name in codecs
    }
    return Measured(model_name, profile, work, kfac_blocks(model), speeds, round(load_average(), 2))


# --------------------------------------------------------------------------------------------
# the projection
# --------------------------------------------------------------------------------------------


def kfac_phases(
    plan: TrafficPlan, work: KFACWork, factor_update_steps: int, inv_update_steps: int
) -> tuple[Phase, ...]:
    """K-FAC's three phases on ``plan``'s world (module docstring)."""
    p = plan.world_size
    inversion_s, precondition_s = rank_work(plan, work)
    width = plan.factor_chunk_width
    factor_lanes = (
        ((Collective("all_to_all", p, width), Collective("all_gather", p, width)),) if p > 1 else ()
    )
    columns: dict[int, list[Collective]] = {}
    for column, _src, nbytes in plan.state_broadcasts:
        columns.setdefault(column, []).append(Collective("broadcast", plan.grad_workers, nbytes))
    gradients = tuple(
        Collective("broadcast", plan.columns, nbytes) for _, nbytes in plan.gradient_broadcasts
    )
    return (
        Phase("factors", factor_update_steps, work.factor_s, factor_lanes),
        Phase("inverses", inv_update_steps, inversion_s, tuple(map(tuple, columns.values()))),
        Phase("precondition", 1, precondition_s + work.local_s, (gradients,) if gradients else ()),
    )


class Projector:
    """Projections of the configurations from one :class:`Measured`, plans cached by
    (fraction, nodes)."""

    def __init__(
        self,
        measured: Measured,
        *,
        factor_update_steps: int = 10,
        inv_update_steps: int = 100,
        overlap: bool = True,
        method: str = "inverse",
    ) -> None:
        for name, value in (
            ("factor_update_steps", factor_update_steps),
            ("inv_update_steps", inv_update_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        self.measured = measured
        self.factor_update_steps = factor_update_steps
        self.inv_update_steps = inv_update_steps
        self.overlap = overlap
        self.method = method
        self._plans: dict[tuple[float, int], TrafficPlan] = {}

    def plan(self, fraction: float, nodes: int) -> TrafficPlan:
        key = (fraction, nodes)
        if key not in self._plans:
            self._plans[key] = plan_traffic(
                self.measured.blocks, self.method, nodes, grad_worker_fraction=fraction
            )
        return self._plans[key]

    def phases(self, config: Config, nodes: int) -> tuple[Phase, ...]:
        if not config.kfac:
            return ()
        plan = self.plan(fraction_of(config.fraction, nodes), nodes)
        return kfac_phases(
            plan, self.measured.work, self.factor_update_steps, self.inv_update_steps
        )

    def project(self, config: Config, nodes: int, bandwidth: float, latency: float) -> Projection:
        """``config``'s projected step on ``nodes`` over a link of ``bandwidth`` B/s and
        ``latency`` s/message; efficiency against one node running ``config``."""
        codec = GRAD_CODECS[config.codec]() if config.codec else None
        speed = self.measured.throughput.get(config.codec) if config.codec else None
        if codec is not None and speed is None:
            raise ValueError(f"config {config.name!r}: codec {config.codec!r} was not measured")
        profile = self.measured.profile
        reference = None
        if config.kfac:
            single = project(
                profile, None, 1, bandwidth, latency, overlap=self.overlap,
                phases=self.phases(config, 1),
            )  # fmt: skip
            reference = single.step_s
        return project(
            profile,
            codec,
            nodes,
            bandwidth,
            latency,
            overlap=self.overlap,
            throughput=speed,
            phases=self.phases(config, nodes),
            reference_s=reference,
        )


def projection_rows(
    projector: Projector,
    configs: Sequence[Config],
    links: Sequence[LinkPreset],
    nodes: Sequence[int],
) -> list[dict[str, Any]]:
    """One row per (link, nodes, config): step ms, its parts, efficiency and the ratio to
    SGD's step at the same nodes."""
    rows = []
    sgd = CONFIGS["sgd"]
    for link in links:
        for count in nodes:
            base = projector.project(sgd, count, link.bandwidth, link.latency).step_s
            for config in configs:
                result = projector.project(config, count, link.bandwidth, link.latency)
                rows.append(
                    {
                        "link": link.name,
                        "nodes": count,
                        "config": config.name,
                        "step_ms": round(1e3 * result.step_s, 4),
                        "compute_ms": round(1e3 * result.compute_s, 4),
                        "gradient_comm_ms": round(1e3 * result.comm_s, 4),
                        "codec_ms": round(1e3 * result.codec_s, 4),
                        "kfac_ms": round(1e3 * result.phases_s, 4),
                        "efficiency": round(result.efficiency, 4),
                        "vs_sgd": round(result.step_s / base, 3),
                    }
                )
    return rows


# --------------------------------------------------------------------------------------------
# bytes against KAISA
# --------------------------------------------------------------------------------------------


def kaisa_wire_bytes(
    blocks: Mapping[str, LayerBlock],
    method: str,
    world_size: int,
    grad_worker_fraction: float,
    *,
    itemsize: int = 4,
    outer_product: bool = True,
) -> dict[str, int]:
    """Bytes on the wire (all ranks) of KAISA for the Kronecker layers of ``blocks``, per
    occurrence of each exchange (module docstring for the source): factors allreduced whole,
    inverses (A⁻¹ and G⁻¹ whole) or eigendecompositions (Q_A, Q_G and, with ``outer_product``,
    the g x a outer product of the eigenvalues, else both eigenvalue vectors) broadcast within
    the grad-worker groups, preconditioned gradients (weight and bias) within the receiver
    groups. Unit-wise (normalisation) blocks are not KAISA's and are left out."""
    if method not in ("inverse", "eigen"):
        raise ValueError(f"method: expected 'inverse' or 'eigen', received {method!r}")
    grad_workers = grad_workers_of(grad_worker_fraction, world_size)
    columns = world_size // grad_workers
    factors = states = gradients = 0
    for block in blocks.values():
        if not isinstance(block, KroneckerBlock):
            continue
        if block.diagonal_a:
            raise ValueError(f"block {block.name!r}: KAISA has no diagonal (embedding) factors")
        a, g = block.a_size, block.out_features
        factors += 2 * (world_size - 1) * itemsize * (a * a + g * g)
        if method == "inverse":
            state = a * a + g * g
        else:
            state = a * a + g * g + (g * a if outer_product else a + g)
        if grad_workers > 1:
            states += (grad_workers - 1) * itemsize * state
        if columns > 1:
            numel = sum(p.numel() for p in block.params())
            gradients += grad_workers * (columns - 1) * itemsize * numel
    return {"factors": factors, "states": states, "gradients": gradients}


def bytes_rows(
    blocks: Mapping[str, LayerBlock],
    nodes: Sequence[int],
    fractions: Sequence[str],
    factor_update_steps: int,
    inv_update_steps: int,
) -> list[dict[str, Any]]:
    """codl's bytes on the wire per step (:meth:`TrafficPlan.wire_bytes_per_step`) against
    KAISA's at the same fraction and update periods, for both methods."""
    rows = []
    for count in nodes:
        for spec in fractions:
            fraction = fraction_of(spec, count)
            for method in ("inverse", "eigen"):
                plan = plan_traffic(blocks, method, count, grad_worker_fraction=fraction)
                ours = plan.wire_bytes()
                theirs = kaisa_wire_bytes(blocks, method, count, fraction)
                per_step = plan.wire_bytes_per_step(factor_update_steps, inv_update_steps)
                kaisa = (
                    theirs["factors"] / factor_update_steps
                    + theirs["states"] / inv_update_steps
                    + theirs["gradients"]
                )
                rows.append(
                    {
                        "nodes": count,
                        "fraction": spec,
                        "method": method,
                        "codl_MB_per_step": round(per_step / 1e6, 4),
                        "kaisa_MB_per_step": round(kaisa / 1e6, 4),
                        "ratio": round(per_step / kaisa, 4) if kaisa else math.nan,
                        "codl_factors_MB": round(ours["factors"] / 1e6, 4),
                        "kaisa_factors_MB": round(theirs["factors"] / 1e6, 4),
                        "codl_states_MB": round(ours["states"] / 1e6, 4),
                        "kaisa_states_MB": round(theirs["states"] / 1e6, 4),
                        "codl_gradients_MB": round(ours["gradients"] / 1e6, 4),
                        "kaisa_gradients_MB": round(theirs["gradients"] / 1e6, 4),
                    }
                )
    return rows


# --------------------------------------------------------------------------------------------
# validation on rate-limited processes
# --------------------------------------------------------------------------------------------

#: The validation's links (bytes/s) and latency (s per message): slow enough that the sleeps
#: are most of a step on a shared 2-core machine, fast enough that compute still counts.
VALIDATION_BANDWIDTHS = (10e6, 50e6)
VALIDATION_LATENCY = 500e-6
#: Update periods of the validation (short, so a few cycles fit in seconds).
VALIDATION_FACTOR_STEPS = 2
VALIDATION_INV_STEPS = 4


def _make_optimizer(
    config: Config, model: DistributedDataParallel, world_size: int, periods: tuple[int, int]
) -> torch.optim.Optimizer:
    if not config.kfac:
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return KFAC(
        model,
        lr=0.01,
        momentum=0.9,
        factor_update_steps=periods[0],
        inv_update_steps=periods[1],
        grad_worker_fraction=fraction_of(config.fraction, world_size),
    )


def _run_config(
    config: Config,
    model_name: str,
    batch: tuple[torch.Tensor, torch.Tensor],
    link: EmulatedLink | None,
    periods: tuple[int, int],
    cycles: int,
) -> tuple[float, dict[str, int] | None]:
    """Mean seconds per step (forward, backward with the gradient exchange, optimizer step)
    over ``cycles`` whole inverse-update cycles after one untimed cycle, and the bytes the
    K-FAC engine sent in them (None for SGD)."""
    world_size = dist.get_world_size()
    model = DistributedDataParallel(make_model(model_name))
    codec = GRAD_CODECS[config.codec]() if config.codec else None
    state, hook = ddp_hook(codec, small_tensor_numel=0, link=link, momentum=0.9)
    model.register_comm_hook(state, hook)
    optimizer = _make_optimizer(config, model, world_size, periods)
    engine = optimizer.preconditioner.distributed if isinstance(optimizer, KFAC) else None
    if engine is not None and link is not None:
        engine.observer = link.wait_collective
    inputs, targets = batch
    cycle = periods[1]
    times = []
    before: dict[str, int] = {}
    for step in range((cycles + 1) * cycle):
        if step == cycle and engine is not None:
            before = dict(engine.total_bytes)
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step >= cycle:
            times.append(time.perf_counter() - start)
    state.close()
    sent = None
    if engine is not None:
        sent = {k: v - before.get(k, 0) for k, v in engine.total_bytes.items()}
    return statistics.fmean(times), sent


def _expected_bytes(
    plan: TrafficPlan, rank: int, periods: tuple[int, int], cycles: int
) -> dict[str, int]:
    """What the engine should count on ``rank`` over ``cycles`` inverse-update cycles."""
    one = plan.rank_bytes(rank)
    steps = cycles * periods[1]
    return {
        "factors": one["factors"] * steps // periods[0],
        "states": one["states"] * cycles,
        "gradients": one["gradients"] * steps,
    }


def _validation_worker(
    rank: int,
    world_size: int,
    model_name: str,
    config_names: Sequence[str],
    cycles: int,
    overhead_cycles: int,
) -> list[dict[str, Any]]:
    batch = make_batch(model_name, rank)
    measured = measure(model_name, repeat=5)
    periods = (VALIDATION_FACTOR_STEPS, VALIDATION_INV_STEPS)
    rows: list[dict[str, Any]] = []
    for name in config_names:
        config = CONFIGS[name]
        projector = Projector(
            measured,
            factor_update_steps=periods[0],
            inv_update_steps=periods[1],
            overlap=False,
        )
        phases = projector.phases(config, world_size)
        codec = GRAD_CODECS[config.codec]() if config.codec else None
        speed = measured.throughput.get(config.codec) if config.codec else None
        unthrottled, _ = _run_config(config, model_name, batch, None, periods, 2 * cycles)
        calibrated = with_measured_overhead(
            measured.profile,
            unthrottled,
            codec,
            world_size,
            overlap=False,
            throughput=speed,
            phases=phases,
        )
        for bandwidth in VALIDATION_BANDWIDTHS:
            link = EmulatedLink(bandwidth, VALIDATION_LATENCY)
            step_s, sent = _run_config(config, model_name, batch, link, periods, cycles)
            kwargs: dict[str, Any] = {"overlap": False, "throughput": speed, "phases": phases}
            projected = project(
                calibrated, codec, world_size, bandwidth, VALIDATION_LATENCY, **kwargs
            )
            bare = project(
                measured.profile, codec, world_size, bandwidth, VALIDATION_LATENCY, **kwargs
            )
            expected = None
            if config.kfac:
                plan = projector.plan(fraction_of(config.fraction, world_size), world_size)
                expected = _expected_bytes(plan, rank, periods, cycles)
            rows.append(
                {
                    "processes": world_size,
                    "rank": rank,
                    "config": name,
                    "bandwidth_MBps": bandwidth / 1e6,
                    "measured_ms": 1e3 * step_s,
                    "unthrottled_ms": 1e3 * unthrottled,
                    "overhead_ms": 1e3 * calibrated.overhead_s,
                    "projected_ms": 1e3 * projected.step_s,
                    "projected_without_overhead_ms": 1e3 * bare.step_s,
                    "projected_kfac_ms": 1e3 * projected.phases_s,
                    "slept_ms_per_step": 1e3 * link.slept_s / ((cycles + 1) * periods[1]),
                    "bytes_sent": sent,
                    "bytes_planned": expected,
                }
            )
    # Per-step time against SGD at the defaults (factors every 10, inverses every 100),
    # unthrottled: the amortized overhead.
    default_periods = (10, 100)
    for name in config_names:
        step_s, _ = _run_config(
            CONFIGS[name], model_name, batch, None, default_periods, overhead_cycles
        )
        rows.append(
            {
                "processes": world_size,
                "rank": rank,
                "config": name,
                "overhead_run": True,
                "mean_step_ms": 1e3 * step_s,
            }
        )
    return rows


def summarize_validation(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per configuration: the slowest rank's measured step against the slowest rank's
    projection; per configuration: the slowest rank's mean step at the default periods and its
    ratio to SGD's)."""
    table = []
    timed = [r for r in rows if not r.get("overhead_run")]
    keys = sorted({(r["processes"], r["bandwidth_MBps"], r["config"]) for r in timed})
    for key in keys:
        group = [r for r in timed if (r["processes"], r["bandwidth_MBps"], r["config"]) == key]
        measured = max(r["measured_ms"] for r in group)
        projected = max(r["projected_ms"] for r in group)
        without = max(r["projected_without_overhead_ms"] for r in group)
        planned = [r["bytes_sent"] == r["bytes_planned"] for r in group if r["bytes_planned"]]
        table.append(
            {
                "processes": key[0],
                "bandwidth_MBps": key[1],
                "config": key[2],
                "measured_ms": round(measured, 2),
                "projected_ms": round(projected, 2),
                "relative_error": round((projected - measured) / measured, 4),
                "rank_spread_ms": round(measured - min(r["measured_ms"] for r in group), 2),
                "overhead_ms": round(max(r["overhead_ms"] for r in group), 2),
                "projected_without_overhead_ms": round(without, 2),
                "relative_error_without_overhead": round((without - measured) / measured, 4),
                "slept_ms_per_step": round(max(r["slept_ms_per_step"] for r in group), 2),
                "kfac_bytes_as_planned": all(planned) if planned else None,
            }
        )
    overhead = []
    runs = [r for r in rows if r.get("overhead_run")]
    for world in sorted({r["processes"] for r in runs}):
        mine = [r for r in runs if r["processes"] == world]
        sgd = max((r["mean_step_ms"] for r in mine if r["config"] == "sgd"), default=math.nan)
        for name in sorted({r["config"] for r in mine}, key=list(CONFIGS).index):
            step = max(r["mean_step_ms"] for r in mine if r["config"] == name)
            overhead.append(
                {
                    "processes": world,
                    "config": name,
                    "mean_step_ms": round(step, 2),
                    "vs_sgd": round(step / sgd, 3),
                }
            )
    return table, overhead


def validate(
    processes: Sequence[int],
    model_name: str,
    config_names: Sequence[str],
    cycles: int,
    overhead_cycles: int,
) -> list[dict[str, Any]]:
    """Every rank's rows from :func:`_validation_worker` at each process count (one thread
    each, gloo on 127.0.0.1)."""
    rows: list[dict[str, Any]] = []
    for world_size in processes:
        per_rank = launch(
            _validation_worker,
            world_size,
            model_name,
            list(config_names),
            cycles,
            overhead_cycles,
            timeout_s=1800,
            group_timeout_s=600,
        )
        rows += [row for ranks in per_rank for row in ranks]
    return rows


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Efficiency against nodes (log x), one panel per link, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r["link"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(links), figsize=(5.5 * len(links), 4.2), squeeze=False)
    for axis, link in zip(axes[0], links):
        for config in configs:
            mine = [r for r in rows if r["link"] == link and r["config"] == config]
            axis.plot(
                [r["nodes"] for r in mine],
                [r["efficiency"] for r in mine],
                marker="o",
                label=config,
            )
        axis.set_xscale("log")
        axis.set_xlabel("nodes (log)")
        axis.set_ylabel("scaling efficiency (single node / step)")
        axis.set_title(f"{title}, {link}")
        axis.axvline(REPORT_NODES, color="grey", lw=0.8, ls=":")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_projection(rows: list[dict[str, Any]]) -> str:
    """Per link: one line per node count, step ms (efficiency) per configuration."""
    lines = []
    configs = list(dict.fromkeys(r["config"] for r in rows))
    for link in dict.fromkeys(r["link"] for r in rows):
        lines.append(f"{link}: projected step ms (scaling efficiency) [vs SGD]")
        lines.append(f"{'nodes':>7} " + " ".join(f"{c:>24}" for c in configs))
        for count in dict.fromkeys(r["nodes"] for r in rows):
            cells = []
            for config in configs:
                (r,) = [
                    r
                    for r in rows
                    if r["link"] == link and r["nodes"] == count and r["config"] == config
                ]
                cells.append(f"{r['step_ms']:>9.2f} ({r['efficiency']:.2f}) [{r['vs_sgd']:.2f}x]")
            lines.append(f"{count:>7} " + " ".join(f"{c:>24}" for c in cells))
        lines.append("")
    return "\n".join(lines)


def format_bytes(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'nodes':>7} {'fraction':>8} {'method':>8} {'codl MB/step':>13} {'KAISA MB/step':>14} "
        f"{'ratio':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['nodes']:>7} {r['fraction']:>8} {r['method']:>8} {r['codl_MB_per_step']:>13.4f} "
            f"{r['kaisa_MB_per_step']:>14.4f} {r['ratio']:>7.3f}"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import codl

    return {
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "codl": codl.info(),
        "torch": torch.__version__,
    }


def main(argv: Sequence[str] | None = None, *, results_dir: Path | None = None) -> int:
    out_dir = results_dir or default_results_dir()
    parser = argparse.ArgumentParser(prog="codl bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--links", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODES))
    parser.add_argument("--factor-update-steps", type=int, default=10)
    parser.add_argument("--inv-update-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="threads of the measurements")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kaisa-nodes", type=int, nargs="+", default=[4, REPORT_NODES])
    parser.add_argument("--validate", action="store_true", help="also 2, 4 rate-limited ranks")
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--validation-model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--cycles", type=int, default=3, help="timed inverse cycles")
    parser.add_argument("--overhead-cycles", type=int, default=2, help="at periods 10/100")
    parser.add_argument("--out", type=Path, default=out_dir / "scale.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")
    args = parser.parse_args(argv)
    for count in args.nodes:
        if count < 1:
            raise ValueError(f"--nodes: expected integers >= 1, received {count}")
    configs = [CONFIGS[name] for name in args.configs]
    codecs = sorted({c.codec for c in configs if c.codec})

    with _ops.using_threads(args.threads):
        measured = measure(args.model, repeat=args.repeat, codecs=codecs)
    projector = Projector(
        measured,
        factor_update_steps=args.factor_update_steps,
        inv_update_steps=args.inv_update_steps,
    )
    rows = projection_rows(projector, configs, [PRESETS[n] for n in args.links], args.nodes)
    print(
        f"{args.model}, batch {MODELS[args.model][1]} per node, {args.threads} thread(s): "
        f"forward {1e3 * measured.profile.forward_s:.2f} ms, backward "
        f"{1e3 * measured.profile.backward_s:.2f} ms, K-FAC on one node "
        f"{1e3 * measured.work.single_node(args.factor_update_steps, args.inv_update_steps):.2f}"
        f" ms/step (factors every {args.factor_update_steps}, inverses every "
        f"{args.inv_update_steps}); load average {measured.load_average}"
    )
    print(format_projection(rows))
    fractions = list(dict.fromkeys(c.fraction for c in configs if c.kfac)) or ["1"]
    kaisa = bytes_rows(
        measured.blocks,
        args.kaisa_nodes,
        fractions,
        args.factor_update_steps,
        args.inv_update_steps,
    )
    print("K-FAC bytes on the wire per step (all ranks, amortized) against KAISA's")
    print(format_bytes(kaisa))
    payload: dict[str, Any] = {
        "machine": _machine(),
        "model": args.model,
        "batch_per_node": MODELS[args.model][1],
        "threads": args.threads,
        "factor_update_steps": args.factor_update_steps,
        "inv_update_steps": args.inv_update_steps,
        "measured": {
            "forward_ms": 1e3 * measured.profile.forward_s,
            "backward_ms": 1e3 * measured.profile.backward_s,
            "kfac_factor_ms": 1e3 * measured.work.factor_s,
            "kfac_inversion_ms": {
                f"{k[0]}.{k[1]}": 1e3 * v for k, v in measured.work.inversion_s.items()
            },
            "kfac_precondition_ms": {k: 1e3 * v for k, v in measured.work.precondition_s.items()},
            "kfac_local_ms": 1e3 * measured.work.local_s,
            "load_average": measured.load_average,
        },
        "projection": rows,
        "efficiency_at_1024": [r for r in rows if r["nodes"] == REPORT_NODES],
        "kaisa_bytes": kaisa,
    }
    if args.validate:
        print(f"validation: load average before {os.getloadavg()}")
        raw = validate(
            args.processes,
            args.validation_model,
            args.configs,
            args.cycles,
            args.overhead_cycles,
        )
        table, overhead = summarize_validation(raw)
        print(
            f"{'P':>2} {'MB/s':>5} {'config':<12} {'measured':>9} {'projected':>9} {'error':>7} "
            f"{'no overhead':>11} {'error':>7} {'bytes as planned':>16}"
        )
        for r in table:
            print(
                f"{r['processes']:>2} {r['bandwidth_MBps']:>5g} {r['config']:<12} "
                f"{r['measured_ms']:>9.2f} {r['projected_ms']:>9.2f} "
                f"{100 * r['relative_error']:>6.1f}% {r['projected_without_overhead_ms']:>11.2f} "
                f"{100 * r['relative_error_without_overhead']:>6.1f}% "
                f"{r['kfac_bytes_as_planned']!s:>16}"
            )
        within = sum(abs(r["relative_error"]) <= 0.2 for r in table)
        print(f"within 20% of the measured step: {within}/{len(table)}")
        print("mean step at factors every 10, inverses every 100, unthrottled loopback:")
        for r in overhead:
            print(
                f"  P={r['processes']} {r['config']:<12} {r['mean_step_ms']:8.2f} ms "
                f"({r['vs_sgd']:.2f}x SGD)"
            )
        payload["validation"] = {
            "model": args.validation_model,
            "latency_us": VALIDATION_LATENCY * 1e6,
            "factor_update_steps": VALIDATION_FACTOR_STEPS,
            "inv_update_steps": VALIDATION_INV_STEPS,
            "table": table,
            "within_20_percent": f"{within}/{len(table)}",
            "vs_sgd": overhead,
            "load_average_after": os.getloadavg(),
            "rows": raw,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    png = args.plot or args.out.with_suffix(".png")
    plot(rows, png, f"{args.model}, batch {MODELS[args.model][1]}/node")
    print(f"wrote {png}")
    return 0
