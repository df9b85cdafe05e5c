"""``codl bench comm``: projected data-parallel step time of the Fashion-MNIST CNN with each
gradient codec (and PowerSGD at rank 2) against a float32 ring allreduce, on three links and 2
to 100,000 nodes.

Everything the projection needs is measured in the same run: the CNN's forward and backward
time at batch 64 on this machine (:func:`codl.comm.linkmodel.profile_step`) and each codec's
encode and decode throughput on a tensor of the gradient's size. The alpha-beta model and its
assumptions are in :mod:`codl.comm.linkmodel`.

Each row: ``projected codec ms`` is the projected step with the codec, ``projected fp32 ms``
with a float32 ring allreduce, ``ratio`` their quotient (> 1: the codec is faster). Both are
projections from one set of measurements, not timings of their own: they carry no spread; the
load average is the one while the projection's inputs were measured, and a ratio is refused when
it exceeds the CPUs (:mod:`codl.bench.timing`, rule 3). The notes give the bytes ratio,
both efficiencies and the break-even bandwidth (serial model: below it the codec pays).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from codl.bench import Result
from codl.bench.timing import load_average, usable_cpus
from codl.comm import codecs as codec_module
from codl.comm.codecs import Codec
from codl.comm.linkmodel import (
    PRESETS,
    CodecThroughput,
    break_even_bandwidth,
    measure_powersgd_throughput,
    measure_throughput,
    profile_step,
    project,
)
from codl.comm.powersgd import PowerSGD
from codl.models import FashionCNN

BATCH = 64
NODES = (2, 64, 4096, 100_000)


def available_codecs() -> list[Codec]:
    """Every codec at the issue's settings (SignEF and TopK 1% with error feedback)."""
    return [
        codec_module.FP16(),
        codec_module.BF16(),
        codec_module.Int8(),
        codec_module.SignEF(error_feedback=True),
        codec_module.TernGrad(),
        codec_module.QSGD(),
        codec_module.TopK(0.01, error_feedback=True),
    ]


def _label(codec: Codec | PowerSGD) -> str:
    return f"powersgd-r{codec.rank}" if isinstance(codec, PowerSGD) else codec.name


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: values of the tensor the codec throughput is measured on (default: the CNN's
    gradient size)."""
    from tqdm.auto import tqdm

    from codl import _ops

    with _ops.using_threads(threads):
        torch.manual_seed(0)
        model = FashionCNN()
        batch = (torch.randn(BATCH, 1, 28, 28), torch.randint(0, 10, (BATCH,)))
        profile = profile_step(model, batch, F.cross_entropy, repeat=max(repeat, 3))
        numel = size or profile.gradient_numel
        measured: list[tuple[Codec | PowerSGD, CodecThroughput]] = [
            (codec, measure_throughput(codec, numel, repeat=max(repeat, 3)))
            for codec in tqdm(available_codecs(), desc="codec throughput", disable=not progress)
        ]
        powersgd = PowerSGD(rank=2)  # the convergence setting
        measured.append(
            (
                powersgd,
                measure_powersgd_throughput(
                    powersgd, profile.parameter_shapes, repeat=max(repeat, 3)
                ),
            )
        )
        dispatch = _ops.get_dispatch_level()
        load = round(load_average(), 2)  # while the projection's inputs were measured
    results = []
    for link in PRESETS.values():
        for nodes in NODES:
            dense = project(profile, None, nodes, link.bandwidth, link.latency)
            for codec, speed in measured:
                ours = project(
                    profile, codec, nodes, link.bandwidth, link.latency, throughput=speed
                )
                break_even = break_even_bandwidth(profile, codec, nodes, link.latency, speed)
                results.append(
                    Result(
                        benchmark="comm",
                        case=f"{_label(codec)} {link.name} P={nodes}",
                        numel=profile.gradient_numel,
                        codl_ms=round(1e3 * ours.step_s, 4),
                        baseline_ms=round(1e3 * dense.step_s, 4),
                        ratio=round(dense.step_s / ours.step_s, 2),
                        dispatch=dispatch,
                        threads=threads,
                        load_average=load,
                        cpus=usable_cpus(),
                        codl_label="projected codec",
                        baseline_label="projected fp32",
                        notes={
                            "bytes_ratio": round(ours.ratio, 4),
                            "efficiency": round(ours.efficiency, 4),
                            "float32_efficiency": round(dense.efficiency, 4),
                            "break_even_GBps": (
                                math.inf if math.isinf(break_even) else round(break_even / 1e9, 3)
                            ),
                            "encode_GBps": round(speed.encode / 1e9, 3),
                            "decode_GBps": round(speed.decode / 1e9, 3),
                        },
                    )
                )
    return results
