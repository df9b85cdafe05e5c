"""alpha-beta (latency-bandwidth) projection of a data-parallel step's time on P nodes, and a link
emulator to validate it.

A message of S bytes costs alpha + S / B (Hockney 1994). Per gradient bucket, one rank spends

- float32 ring allreduce (Thakur et al. 2005, section 4; Patarasuk and Yuan 2009):
  2 (P - 1) alpha + 2 (P - 1) / P · 4 n / B;
- two-phase compressed allreduce (Tang et al. 2021): an all-to-all then a ring all-gather,
  each (P - 1) alpha + (P - 1) / P · S_c / B with S_c = P · encoded(ceil(n / P)) (plus the 1-byte
  flags of :mod:`codl.comm.accounting`): 2 (P - 1) alpha + two_phase_bytes / B;
- sparse all-gather: a gather of 8-byte lengths then of the payloads padded to the longest,
  2 (P - 1) alpha + (P - 1) (8 + S_c) / B; S_c is the codec's bound ``encoded_nbytes(n)``;

plus the codec's own time from its measured throughput (bytes of float32 input per second):
two-phase encodes (P + 1) c values and decodes 2 P c; all-gather encodes n and decodes P
payloads of n. The step time is

- serial: forward + backward + comm + codec + overhead;
- overlapped: forward + max(backward, comm) + codec + overhead. The assumption: every bucket's
  exchange can hide behind the backward pass (DDP launches a bucket as soon as its gradients
  are ready), except the codec's CPU work, which competes with backward for the same cores and
  is added.

``overhead`` is a measured fixed cost per step that no alpha or beta term describes: DDP's
bucket copies, the hook's Python, the software of each collective on the real link. It is 0
unless measured (:func:`with_measured_overhead`: the step measured on the unthrottled link,
less what the model charges there); on a large step it is noise, on a step whose transfer
takes milliseconds it is not.

Scaling efficiency (weak scaling: the per-node batch stays fixed) = (forward + backward) / step.
The alpha terms grow linearly with P: a flat ring at 100,000 nodes is latency-bound, which is why
large machines reduce hierarchically; the projection shows where that happens.

Work beyond the data-parallel step (a second-order method's factor exchange, its inversions, the
broadcast of its results) enters as :class:`Phase` objects: every ``every`` steps a rank spends
``compute_s`` and then runs collectives one after another, in parallel *lanes* (disjoint groups
of ranks, such as the columns of KAISA's grid); a phase costs ``compute_s`` plus its slowest
lane, and adds that divided by ``every`` to the step (amortized). A collective costs
(:func:`collective_terms`, Thakur et al. 2005, section 4):

- ``allreduce`` of S bytes over g ranks (ring): 2 (g - 1) alpha + 2 (g - 1) / g · S / B;
- ``all_to_all`` of chunks of S bytes (one to each peer): (g - 1) alpha + (g - 1) S / B;
- ``all_gather`` of S bytes from each rank (ring): (g - 1) alpha + (g - 1) S / B;
- ``broadcast`` of S bytes to g ranks: the cheaper of a binomial tree,
  ceil(log2 g) (alpha + S / B), and van de Geijn's scatter then ring all-gather,
  (ceil(log2 g) + g - 1) alpha + 2 (g - 1) / g · S / B (MPICH switches between them by size).

With phases, the efficiency is ``reference_s / step`` when the single-node step
``reference_s`` is given (weak scaling against one node doing all of the method's work), else
(forward + backward) / step as above.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from codl.comm.accounting import (
    chunk_numel,
    compressed_bytes,
    ring_allreduce_bytes,
)
from codl.comm.codecs import Codec
from codl.comm.powersgd import PowerSGD, orthogonalize_


@dataclass(frozen=True)
class LinkPreset:
    """A link: ``bandwidth`` in bytes/s per rank, ``latency`` alpha in seconds per message."""

    name: str
    bandwidth: float
    latency: float
    source: str


#: 10 Gb/s Ethernet: 1.25e9 B/s line rate (IEEE 802.3ae). alpha = 25 µs: the middle of the 10-50 µs
#: that MPI/TCP small-message latencies over 10GbE kernel stacks measure (e.g. the OSU
#: micro-benchmarks' TCP figures); an assumption, not a measurement of ours.
ETHERNET_10G = LinkPreset(
    "10GbE", 1.25e9, 25e-6, "IEEE 802.3ae line rate; alpha 25 us assumed (TCP stacks: 10-50 us)"
)
#: 100 Gb/s InfiniBand EDR: 12.5e9 B/s signalling rate; Mellanox quotes about 0.6 µs port-to-port
#: for ConnectX-4 EDR, MPI ping-pong measures 1-2 µs: alpha = 2 µs assumed.
INFINIBAND_100G = LinkPreset(
    "100Gb/s IB", 12.5e9, 2e-6, "InfiniBand EDR 100 Gb/s; ConnectX-4 0.6 us, MPI 1-2 us: 2 us"
)
#: Fugaku's Tofu Interconnect D (Ajima et al., "The Tofu Interconnect D", IEEE Cluster 2018;
#: RIKEN/Fujitsu Fugaku specifications): 6.8 GB/s per link (28 Gb/s x 2 lanes), 10 links and 6
#: network interfaces per node (40.8 GB/s injection), one-way put latency 0.49-0.54 µs.
#: Assumed: a ring drives one link per rank (its successor), so B = 6.8 GB/s, and alpha = 1 µs for
#: the MPI/uTofu software above the hardware's 0.5 µs.
TOFU_D = LinkPreset(
    "Tofu-D",
    6.8e9,
    1e-6,
    "Ajima et al. 2018 (IEEE Cluster): 6.8 GB/s per link, 0.49-0.54 us put latency; "
    "one link per rank and alpha 1 us assumed",
)
PRESETS = {preset.name: preset for preset in (ETHERNET_10G, INFINIBAND_100G, TOFU_D)}


@dataclass(frozen=True)
class StepProfile:
    """Measured compute of one training step on one node and its gradient bucket layout."""

    forward_s: float
    backward_s: float
    bucket_numels: tuple[int, ...]
    #: Shapes of the parameters (PowerSGD's bytes depend on them, not only on sizes).
    parameter_shapes: tuple[tuple[int, ...], ...] = ()
    #: Measured fixed seconds per step outside the alpha-beta terms (module docstring).
    overhead_s: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s

    @property
    def gradient_numel(self) -> int:
        return sum(self.bucket_numels)


@dataclass(frozen=True)
class CodecThroughput:
    """Encode and decode speed, in bytes of float32 input per second."""

    encode: float
    decode: float


@dataclass(frozen=True)
class Projection:
    nodes: int
    compute_s: float
    comm_s: float
    codec_s: float
    step_s: float
    efficiency: float
    bytes_sent: float
    ring_bytes: float
    #: Amortized seconds per step of the phases (0 without them).
    phases_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.bytes_sent / self.ring_bytes if self.ring_bytes else 0.0


def bucket_layout(model: nn.Module, bucket_cap_mb: float = 25.0) -> tuple[int, ...]:
    """Bucket sizes (values) as DDP's rebuilt buckets group them: parameters in reverse order
    (the order their gradients become ready) filled up to ``bucket_cap_mb`` MiB."""
    cap = bucket_cap_mb * 1024 * 1024 / 4
    buckets: list[int] = []
    current = 0
    for parameter in reversed([p for p in model.parameters() if p.requires_grad]):
        if current and current + parameter.numel() > cap:
            buckets.append(current)
            current = 0
        current += parameter.numel()
    if current:
        buckets.append(current)
    return tuple(buckets)


def profile_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    repeat: int = 5,
    bucket_cap_mb: float = 25.0,
) -> StepProfile:
    """Median forward and backward times of ``loss_fn(model(inputs), targets)`` over ``repeat``
    runs (after one warm-up), and the bucket layout of ``model``."""
    if repeat < 1:
        raise ValueError(f"repeat: expected an integer >= 1, received {repeat!r}")
    inputs, targets = batch
    forwards, backwards = [], []
    for index in range(repeat + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = loss_fn(model(inputs), targets)
        middle = time.perf_counter()
        loss.backward()  # type: ignore[no-untyped-call]
        end = time.perf_counter()
        if index:
            forwards.append(middle - start)
            backwards.append(end - middle)
    model.zero_grad(set_to_none=True)
    return StepProfile(
        statistics.median(forwards),
        statistics.median(backwards),
        bucket_layout(model, bucket_cap_mb),
        tuple(tuple(p.shape) for p in model.parameters() if p.requires_grad),
    )


def measure_throughput(codec: Codec, numel: int = 1 << 20, *, repeat: int = 5) -> CodecThroughput:
    """Median encode and decode speed of ``codec`` on ``numel`` Gaussian values (with an error
    buffer when the codec uses error feedback). Decoding accumulates into a float32 output, as
    the collectives do: a sparse payload then costs its k values, not n."""
    values = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    error = torch.zeros(numel) if codec.error_feedback else None
    out = torch.zeros(numel)
    payload = codec.encode(values, error=error)  # warm-up: lazy allocations, thread pool
    codec.decode(payload, numel, out=out, accumulate=True)
    encodes, decodes = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        payload = codec.encode(values, error=error)
        middle = time.perf_counter()
        codec.decode(payload, numel, out=out, accumulate=True)
        end = time.perf_counter()
        encodes.append(middle - start)
        decodes.append(end - middle)
    return CodecThroughput(
        4 * numel / statistics.median(encodes), 4 * numel / statistics.median(decodes)
    )


def measure_powersgd_throughput(
    codec: PowerSGD, shapes: Sequence[Sequence[int]], *, repeat: int = 5
) -> CodecThroughput:
    """Median speed of PowerSGD's local work on gradients of ``shapes`` (Vogels et al. 2019,
    algorithm 1 without its two allreduces: M = grad + error, P = M Q, Gram-Schmidt, Q = M^T P,
    approx = P Q^T, error = M - approx), in bytes of compressed float32 gradient per second, as
    ``encode`` (``decode`` is part of it and set to infinity)."""
    generator = torch.Generator().manual_seed(0)
    matrices = []
    for shape in shapes:
        if codec.compresses(shape):
            n = int(shape[0])
            m = math.prod(int(size) for size in shape) // n
            r = min(n, m, codec.rank)
            grad = torch.randn(n, m, generator=generator)
            matrices.append((grad, torch.zeros(n, m), torch.randn(m, r, generator=generator)))
    numel = sum(grad.numel() for grad, _, _ in matrices)
    if not numel:
        return CodecThroughput(math.inf, math.inf)
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        for grad, error, q in matrices:
            corrected = grad + error
            p = orthogonalize_(corrected @ q, codec.epsilon)
            q_new = corrected.t() @ p
            torch.sub(corrected, p @ q_new.t(), out=error)
        times.append(time.perf_counter() - start)
    return CodecThroughput(4 * numel / statistics.median(times[1:]), math.inf)


def _check_link(nodes: int, bandwidth: float, latency: float) -> None:
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes: expected an integer >= 1, received {nodes!r}")
    if not (isinstance(bandwidth, (int, float)) and bandwidth > 0 and math.isfinite(bandwidth)):
        raise ValueError(
            f"bandwidth: expected a finite number > 0 (bytes/s), received {bandwidth!r}"
        )
    if not (isinstance(latency, (int, float)) and latency >= 0 and math.isfinite(latency)):
        raise ValueError(f"latency: expected a finite number >= 0 (seconds), received {latency!r}")


#: The collectives :func:`collective_terms` prices.
COLLECTIVES = ("allreduce", "all_to_all", "all_gather", "broadcast")


@dataclass(frozen=True)
class Collective:
    """One collective over ``group_size`` ranks: ``op`` (one of :data:`COLLECTIVES`) of
    ``nbytes`` (the whole buffer for ``allreduce`` and ``broadcast``, one rank's chunk for
    ``all_to_all`` and ``all_gather``)."""

    op: str
    group_size: int
    nbytes: float

    def __post_init__(self) -> None:
        if self.op not in COLLECTIVES:
            raise ValueError(f"op: expected one of {COLLECTIVES}, received {self.op!r}")
        if (
            isinstance(self.group_size, bool)
            or not isinstance(self.group_size, int)
            or self.group_size < 1
        ):
            raise ValueError(f"group_size: expected an integer >= 1, received {self.group_size!r}")
        if not (
            isinstance(self.nbytes, (int, float))
            and self.nbytes >= 0
            and math.isfinite(self.nbytes)
        ):
            raise ValueError(f"nbytes: expected a finite number >= 0, received {self.nbytes!r}")


def collective_terms(collective: Collective, bandwidth: float, latency: float) -> tuple[int, float]:
    """(messages, bytes) on one rank's critical path of ``collective`` (module docstring): its
    time is ``messages · latency + bytes / bandwidth``. A broadcast takes the cheaper of the
    binomial tree and the scatter + all-gather on this link."""
    _check_link(1, bandwidth, latency)
    g, size = collective.group_size, float(collective.nbytes)
    if g == 1:
        return 0, 0.0
    if collective.op == "allreduce":
        return 2 * (g - 1), 2 * (g - 1) / g * size
    if collective.op in ("all_to_all", "all_gather"):
        return g - 1, (g - 1) * size
    depth = math.ceil(math.log2(g))
    tree = (depth, depth * size)
    scatter_gather = (depth + g - 1, 2 * (g - 1) / g * size)
    return min(tree, scatter_gather, key=lambda t: t[0] * latency + t[1] / bandwidth)


def collective_time(collective: Collective, bandwidth: float, latency: float) -> float:
    """Seconds of ``collective`` on a link of ``bandwidth`` bytes/s and ``latency`` s/message."""
    messages, nbytes = collective_terms(collective, bandwidth, latency)
    return messages * latency + nbytes / bandwidth


@dataclass(frozen=True)
class Phase:
    """Work one rank does every ``every`` steps beyond the data-parallel step: ``compute_s``
    seconds on its critical path, then the collectives of each lane one after another; lanes
    (disjoint groups of ranks) run at the same time, so the slowest one counts."""

    name: str
    every: int
    compute_s: float = 0.0
    lanes: tuple[tuple[Collective, ...], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every: expected an integer >= 1 (steps), received {self.every!r}")
        if not (
            isinstance(self.compute_s, (int, float))
            and self.compute_s >= 0
            and math.isfinite(self.compute_s)
        ):
            raise ValueError(
                f"compute_s: expected a finite number >= 0 (seconds), received {self.compute_s!r}"
            )

    def time(self, bandwidth: float, latency: float) -> float:
        """Seconds of one occurrence: ``compute_s`` plus the slowest lane."""
        lanes = [sum(collective_time(c, bandwidth, latency) for c in lane) for lane in self.lanes]
        return self.compute_s + max(lanes, default=0.0)


def comm_time(
    codec: Codec | None, numel: int, nodes: int, bandwidth: float, latency: float
) -> float:
    """Seconds one rank spends exchanging one bucket of ``numel`` values (module docstring)."""
    _check_link(nodes, bandwidth, latency)
    if nodes == 1 or numel == 0:
        return 0.0
    messages = 2 * (nodes - 1)
    if codec is None:
        return messages * latency + ring_allreduce_bytes(numel, nodes) / bandwidth
    return messages * latency + compressed_bytes(codec, numel, nodes) / bandwidth


def codec_time(codec: Codec | None, numel: int, nodes: int, throughput: CodecThroughput) -> float:
    """Seconds of encoding and decoding one bucket on one rank (module docstring)."""
    if codec is None or nodes == 1 or numel == 0:
        return 0.0
    if codec.scheme == "two_phase":
        chunk = chunk_numel(numel, nodes)
        encoded, decoded = (nodes + 1) * chunk, 2 * nodes * chunk
    else:
        encoded, decoded = numel, nodes * numel
    return 4 * encoded / throughput.encode + 4 * decoded / throughput.decode


def _exchange(
    step_profile: StepProfile, codec: Codec | PowerSGD | None, nodes: int, latency: float
) -> tuple[float, float]:
    """(alpha terms in seconds, bytes) one rank spends per step: comm = alpha + bytes / B."""
    buckets = step_profile.bucket_numels
    if nodes == 1:
        return 0.0, 0.0
    per_collective = 2 * (nodes - 1) * latency
    if isinstance(codec, PowerSGD):
        if not step_profile.parameter_shapes:
            raise ValueError(
                "step_profile: PowerSGD needs parameter_shapes (use profile_step to fill them)"
            )
        # Three float32 allreduces per bucket: uncompressed values, all P, all Q.
        alpha = 3 * per_collective * sum(1 for n in buckets if n)
        return alpha, codec.bytes_sent(step_profile.parameter_shapes, nodes)
    alpha = per_collective * sum(1 for n in buckets if n)
    if codec is None:
        return alpha, sum(ring_allreduce_bytes(n, nodes) for n in buckets)
    return alpha, float(sum(compressed_bytes(codec, n, nodes) for n in buckets))


def project(
    step_profile: StepProfile,
    codec: Codec | PowerSGD | None,
    nodes: int,
    bandwidth: float,
    latency: float,
    *,
    overlap: bool = True,
    throughput: CodecThroughput | None = None,
    phases: Sequence[Phase] = (),
    reference_s: float | None = None,
) -> Projection:
    """Projected step time and weak-scaling efficiency on ``nodes`` ranks (module docstring).
    ``codec=None`` is the float32 ring allreduce; a codec needs its measured ``throughput``
    (:func:`measure_throughput`, or :func:`measure_powersgd_throughput` for PowerSGD, whose
    exchange is three float32 ring allreduces per bucket). ``phases``: work beyond the
    data-parallel step, amortized over their periods; ``reference_s``: the single-node step the
    efficiency is measured against (default: forward + backward)."""
    _check_link(nodes, bandwidth, latency)
    for phase in phases:
        if not isinstance(phase, Phase):
            raise TypeError(f"phases: expected Phase objects, received {type(phase).__name__}")
    if reference_s is not None and not (
        isinstance(reference_s, (int, float)) and reference_s > 0 and math.isfinite(reference_s)
    ):
        raise ValueError(
            f"reference_s: expected a finite number > 0 (seconds), received {reference_s!r}"
        )
    if codec is not None and not isinstance(codec, (Codec, PowerSGD)):
        raise TypeError(
            f"codec: expected a codl.comm.Codec, a PowerSGD or None, received "
            f"{type(codec).__name__}"
        )
    if codec is not None and throughput is None:
        raise ValueError(
            "throughput: a codec needs its measured CodecThroughput (measure_throughput)"
        )
    speed = throughput or CodecThroughput(math.inf, math.inf)
    alpha, sent = _exchange(step_profile, codec, nodes, latency)
    comm = alpha + sent / bandwidth
    if isinstance(codec, PowerSGD):
        compressed = sum(
            math.prod(shape) for shape in step_profile.parameter_shapes if codec.compresses(shape)
        )
        codec_s = 4 * compressed / speed.encode if nodes > 1 else 0.0
    else:
        codec_s = sum(codec_time(codec, n, nodes, speed) for n in step_profile.bucket_numels)
    if overlap:
        step = step_profile.forward_s + max(step_profile.backward_s, comm) + codec_s
    else:
        step = step_profile.compute_s + comm + codec_s
    step += step_profile.overhead_s
    phases_s = sum(phase.time(bandwidth, latency) / phase.every for phase in phases)
    step += phases_s
    ring = sum(ring_allreduce_bytes(n, nodes) for n in step_profile.bucket_numels)
    reference = step_profile.compute_s if reference_s is None else float(reference_s)
    return Projection(
        nodes=nodes,
        compute_s=step_profile.compute_s,
        comm_s=comm,
        codec_s=codec_s,
        step_s=step,
        efficiency=reference / step if step > 0 else 1.0,
        bytes_sent=sent,
        ring_bytes=ring,
        phases_s=phases_s,
    )


def with_measured_overhead(
    step_profile: StepProfile,
    measured_step_s: float,
    codec: Codec | PowerSGD | None,
    nodes: int,
    *,
    overlap: bool = True,
    throughput: CodecThroughput | None = None,
    phases: Sequence[Phase] = (),
) -> StepProfile:
    """``step_profile`` with ``overhead_s`` set from a step measured with ``codec`` on ``nodes``
    ranks over the real link without throttling: what that step took beyond the compute, the
    codec's time and the phases' compute (its exchanges are charged to the overhead too, so the
    projection then adds only the alpha-beta cost of the link being modelled). Never
    negative."""
    if not (isinstance(measured_step_s, (int, float)) and math.isfinite(measured_step_s)):
        raise ValueError(
            f"measured_step_s: expected a finite number of seconds, received {measured_step_s!r}"
        )
    bare = replace(step_profile, overhead_s=0.0)
    # An instantaneous link: comm is 0 (bytes / 1e300 s), so this is compute plus codec.
    modelled = project(
        bare, codec, nodes, 1e300, 0.0, overlap=overlap, throughput=throughput, phases=phases
    )
    return replace(bare, overhead_s=max(0.0, float(measured_step_s) - modelled.step_s))


def break_even_bandwidth(
    step_profile: StepProfile,
    codec: Codec | PowerSGD,
    nodes: int,
    latency: float,
    throughput: CodecThroughput,
) -> float:
    """Bandwidth (bytes/s) below which ``codec`` shortens the serial step: where the codec's time
    equals the communication time it saves. Solving A_d + S_d / B = A_c + S_c / B + T_codec
    (per step; A the alpha terms, S the bytes) gives B* = (S_d - S_c) / (A_c - A_d + T_codec).
    For the codecs A_c = A_d (2 (P - 1) messages per bucket either way); PowerSGD's three
    allreduces add latency. Returns 0.0 when the codec never pays (it sends no fewer bytes)
    and ``math.inf`` when it pays at every bandwidth."""
    alpha_dense, sent_dense = _exchange(step_profile, None, nodes, latency)
    alpha_codec, sent_codec = _exchange(step_profile, codec, nodes, latency)
    codec_s = project(
        step_profile, codec, nodes, 1.0, latency, overlap=False, throughput=throughput
    ).codec_s
    saved_bytes = sent_dense - sent_codec
    if saved_bytes <= 0:
        return 0.0
    cost = alpha_codec - alpha_dense + codec_s
    return math.inf if cost <= 0 else saved_bytes / cost


class EmulatedLink:
    """A slow link for validation: after each collective, sleeps ``messages`` · alpha + bytes / B
    (what the alpha-beta model charges), so measured step times on loopback can be compared with
    :func:`project`. ``slept_s`` sums the sleeps."""

    def __init__(self, bandwidth: float, latency: float = 0.0) -> None:
        _check_link(1, bandwidth, latency)
        self.bandwidth = float(bandwidth)
        self.latency = float(latency)
        self.slept_s = 0.0

    def wait(self, messages: int, nbytes: float) -> None:
        delay = messages * self.latency + nbytes / self.bandwidth
        self.slept_s += delay
        time.sleep(delay)

    def wait_collective(self, op: str, group_size: int, nbytes: float) -> None:
        """Sleeps what :func:`collective_terms` charges for ``op`` over ``group_size`` ranks
        (the signature of distributed K-FAC's ``observer``)."""
        self.wait(
            *collective_terms(Collective(op, group_size, nbytes), self.bandwidth, self.latency)
        )

    def __repr__(self) -> str:
        return f"EmulatedLink(bandwidth={self.bandwidth:g}, latency={self.latency:g})"


def projection_table(
    step_profile: StepProfile,
    codecs: Sequence[tuple[str, Codec | PowerSGD | None, CodecThroughput | None]],
    links: Sequence[LinkPreset],
    nodes: Sequence[int],
    *,
    overlap: bool = True,
) -> list[dict[str, float | str | int]]:
    """Rows of (codec, link, nodes, ratio, step ms, efficiency, break-even GB/s)."""
    rows: list[dict[str, float | str | int]] = []
    for link in links:
        for count in nodes:
            for name, codec, speed in codecs:
                result = project(
                    step_profile,
                    codec,
                    count,
                    link.bandwidth,
                    link.latency,
                    overlap=overlap,
                    throughput=speed,
                )
                break_even = (
                    break_even_bandwidth(step_profile, codec, count, link.latency, speed)
                    if codec is not None and speed is not None and count > 1
                    else math.nan
                )
                rows.append(
                    {
                        "codec": name,
                        "link": link.name,
                        "nodes": count,
                        "ratio": result.ratio,
                        "step_ms": 1e3 * result.step_s,
                        "comm_ms": 1e3 * result.comm_s,
                        "codec_ms": 1e3 * result.codec_s,
                        "efficiency": result.efficiency,
                        "break_even_GBps": break_even / 1e9,
                    }
                )
    return rows
