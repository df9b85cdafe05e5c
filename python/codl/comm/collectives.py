"""Compressed allreduce on torch.distributed collectives, bitwise identical on every rank.

Two schemes, chosen by the codec (:attr:`codl.comm.codecs.Codec.scheme`):

``two_phase`` (dense codecs; DeepSpeed 1-bit Adam's compressed allreduce, Tang et al. 2021,
"1-bit Adam", section 3.3 and figure 2):
  1. the flat gradient (divided by P first for ``op="mean"``, as torch's ``fp16_compress_hook``
     does, so a 16-bit payload does not overflow on the sum) is zero-padded to P chunks of
     c = ceil(n / P) values; each chunk is encoded with the rank's phase-1 error buffer;
  2. ``all_to_all_single`` sends chunk j to rank j, with a one-byte non-finite flag;
  3. rank j decodes its P chunks and sums them in float32 in rank order (a fixed order, so the
     sum does not depend on arrival), re-encodes the sum with its phase-2 error buffer;
  4. ``all_gather`` of the re-encoded chunks; every rank decodes all P of them. The result is a
     pure function of the gathered bytes, so every rank holds the same bits.

``allgather`` (sparse codecs, e.g. top-k): every rank encodes its whole gradient; the payload
lengths are gathered first (int64, negative = non-finite input), then the payloads padded to the
longest; every rank decodes and sums all P in rank order.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019) lives in :class:`CollectiveState`,
one buffer per tensor key and phase; the codec fuses the update into ``encode``.

Non-finite gradients are detected before encoding and every rank learns of every rank's flag
from the first exchange, so all ranks act alike: raise :class:`NonFiniteGradientError` (the
default) or return zeros and count the skipped step (``on_nonfinite="zero"``). A non-finite
result (an FP16 overflow of the reduced sum, or a payload from the network whose scales or
values are NaN or Inf) is found on the decoded output, which is identical on every rank, and
handled the same way; in the two-phase scheme the owner of a chunk whose phase-1 sum is not
finite sends :meth:`~codl.comm.codecs.Codec.nonfinite_payload` instead of re-encoding it, so
every rank finds it. A discarded step gives back to the error buffers what it took.

Only torch.distributed collectives are used (gloo on CPU supports ``all_to_all_single``; see
``docs/comm.md``).

Devices: the codecs run on the CPU. A CUDA tensor is copied to the host, encoded, and its result
copied back; the payloads go to the collective as they are when the process group's backend
takes CPU tensors (gloo), and through the device the backend needs otherwise (NCCL: the current
CUDA device), see :func:`communication_device`. A CPU tensor on gloo is never copied for staging
(``state.last.notes["staged_bytes"]`` counts the bytes that were).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Hashable
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist

from codl._finite import all_finite
from codl.comm.accounting import (
    FLAG_NBYTES,
    LENGTH_NBYTES,
    SIZE_NBYTES,
    StepRecord,
    chunk_numel,
    ring_allreduce_bytes,
)
from codl.comm.codecs import Codec

Op = Literal["mean", "sum"]
OnNonfinite = Literal["raise", "zero"]


class NonFiniteGradientError(FloatingPointError):
    """A rank's gradient (or the reduced result) held NaN or Inf; raised on every rank."""


class Link(Protocol):
    """Something that emulates a slow link after each collective (see
    :class:`codl.comm.linkmodel.EmulatedLink`)."""

    def wait(self, messages: int, nbytes: float) -> None: ...


class CollectiveState:
    """Error-feedback buffers (one per tensor key and phase), the world size they were made
    for, and the record of the last collective. Save it with the model checkpoint through
    :meth:`state_dict` / :meth:`load_state_dict`."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[Hashable, int], torch.Tensor] = {}
        self.workspaces: dict[tuple[Hashable, str], torch.Tensor] = {}
        self.world_size: int | None = None
        self.nonfinite_skips = 0
        self.last: StepRecord | None = None

    def check_world_size(self, world_size: int) -> None:
        if self.world_size is None:
            self.world_size = world_size
        elif self.world_size != world_size:
            raise ValueError(
                f"state: error-feedback buffers were made for world size {self.world_size}, "
                f"the process group has {world_size}"
            )

    def error_buffer(self, key: Hashable, phase: int, numel: int) -> torch.Tensor:
        """The zero-initialised error buffer of ``key`` and ``phase``; a size change is an error
        (the tensor behind a key must keep its shape)."""
        existing = self.buffers.get((key, phase))
        if existing is None:
            existing = torch.zeros(numel, dtype=torch.float32)
            self.buffers[(key, phase)] = existing
        elif existing.numel() != numel:
            raise ValueError(
                f"key {key!r}: the error-feedback buffer of phase {phase} holds {existing.numel()} "
                f"values but this tensor needs {numel}; the tensor behind a key changed shape "
                "(call state.reset(key) if that was intended)"
            )
        return existing

    def reset(self, key: Hashable | None = None) -> None:
        """Drops the buffers of ``key`` (all of them when None)."""
        if key is None:
            self.buffers.clear()
        else:
            for phase in (1, 2):
                self.buffers.pop((key, phase), None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffers": [(key, phase, t.clone()) for (key, phase), t in self.buffers.items()],
            "world_size": self.world_size,
            "nonfinite_skips": self.nonfinite_skips,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffers = {(key, phase): t.clone() for key, phase, t in state["buffers"]}
        self.world_size = state["world_size"]
        self.nonfinite_skips = int(state["nonfinite_skips"])


def _subkey(key: int, phase: int, rank: int, chunk: int) -> int:
    """Generator key of one encode: distinct per (tensor key, phase, rank, chunk), so ranks draw
    independent stochastic roundings (< 2**62 for keys < 2**20 and P < 2**18)."""
    return ((key & 0xFFFFF) << 40) | (phase << 38) | ((rank & 0x3FFFF) << 20) | (chunk & 0xFFFFF)


#: The device types each torch.distributed backend takes tensors of, as codl uses them (gloo's
#: CUDA support does not cover every collective, ``all_to_all_single`` included: codl stages).
BACKEND_DEVICE_TYPES: dict[str, tuple[str, ...]] = {
    "gloo": ("cpu",),
    "mpi": ("cpu",),
    "nccl": ("cuda",),
    "ucc": ("cpu", "cuda"),
    "xccl": ("xpu",),
}


def backend_device_types(group: dist.ProcessGroup | None = None) -> tuple[str, ...]:
    """Device types the backend of ``group`` takes, in order of preference: ``("cpu",)`` for
    gloo, ``("cuda",)`` for NCCL, both for a ``"cpu:gloo,cuda:nccl"`` group. An unknown backend
    is assumed to take CPU tensors."""
    types: list[str] = []
    for part in str(dist.get_backend(group)).lower().split(","):
        device, _, name = part.strip().rpartition(":")
        types.extend([device] if device else BACKEND_DEVICE_TYPES.get(name, ("cpu",)))
    return tuple(dict.fromkeys(types))


def communication_device(
    group: dist.ProcessGroup | None = None, data: torch.device | str = "cpu"
) -> torch.device:
    """The device a collective of ``group`` runs on for data on ``data``: ``data`` itself when
    the backend takes its type (CPU on gloo, CUDA on NCCL), else the backend's first device type
    (CUDA: the current device, as NCCL requires)."""
    data = torch.device(data)
    types = backend_device_types(group)
    if data.type in types:
        return data
    if types[0] == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(types[0])


class Channel:
    """The collectives of one call on ``group``, run on ``device`` (see
    :func:`communication_device`). Tensors already there go to the backend as they are (gloo
    and CPU: no copy); others are copied there and the results copied back, counted in
    ``staged_bytes``."""

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        self.group = group
        self.device = device
        self.staged_bytes = 0

    @classmethod
    def for_data(cls, group: dist.ProcessGroup | None, data: torch.device | str) -> Channel:
        return cls(group, communication_device(group, data))

    def _there(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        self.staged_bytes += tensor.numel() * tensor.element_size()
        return tensor.to(self.device)

    def _empty_there(self, tensor: torch.Tensor) -> torch.Tensor:
        return (
            tensor if tensor.device == self.device else torch.empty_like(tensor, device=self.device)
        )

    def _back(self, result: torch.Tensor, output: torch.Tensor) -> None:
        if result is not output:
            self.staged_bytes += result.numel() * result.element_size()
            output.copy_(result)

    def all_gather(self, output: torch.Tensor, local: torch.Tensor) -> None:
        """Concatenates every rank's ``local`` into ``output`` (``all_gather_single`` where torch
        has it, else its older name ``all_gather_into_tensor``)."""
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        result = self._empty_there(output)
        gather(result, self._there(local), group=self.group)
        self._back(result, output)

    def all_to_all(self, output: torch.Tensor, send: torch.Tensor) -> None:
        """``all_to_all_single``: equal slices of ``send`` to each rank, in rank order."""
        result = self._empty_there(output)
        dist.all_to_all_single(result, self._there(send), group=self.group)
        self._back(result, output)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sums ``tensor`` over the ranks, in place."""
        there = self._there(tensor)
        dist.all_reduce(there, group=self.group)
        self._back(there, tensor)


def _workspace(
    state: CollectiveState | None, key: Hashable, name: str, numel: int, dtype: torch.dtype
) -> torch.Tensor:
    """A scratch buffer, kept in ``state`` between calls (fresh large allocations cost page
    faults on every step); contents are undefined."""
    if state is None:
        return torch.empty(numel, dtype=dtype)
    buffer = state.workspaces.get((key, name))
    if buffer is None or buffer.numel() != numel or buffer.dtype != dtype:
        buffer = torch.empty(numel, dtype=dtype)
        state.workspaces[(key, name)] = buffer
    return buffer


def _aligned_row(buffer: torch.Tensor, row: int, width: int, nbytes: int) -> torch.Tensor:
    """``buffer[row, :nbytes]`` as a 1-D payload whose start suits any dtype view (a codec may
    view it as float16 or int32); copied when the row starts off a 16-byte boundary."""
    payload = buffer[row, :nbytes]
    return payload if (row * width) % 16 == 0 else payload.clone()


def _check_inputs(tensor: object, codec: object, op: object, on_nonfinite: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, received {type(tensor).__name__}")
    if tensor.dtype != torch.float32:
        raise TypeError(f"tensor: expected dtype torch.float32, received {tensor.dtype}")
    if not tensor.is_contiguous():
        raise ValueError(
            f"tensor: expected a contiguous tensor, received device {tensor.device}, "
            f"contiguous={tensor.is_contiguous()}"
        )
    if not isinstance(codec, Codec):
        raise TypeError(f"codec: expected a codl.comm.Codec, received {type(codec).__name__}")
    if codec.scheme not in ("two_phase", "allgather"):
        raise ValueError(f"codec: unknown scheme {codec.scheme!r} of {codec!r}")
    if op not in ("mean", "sum"):
        raise ValueError(f"op: expected 'mean' or 'sum', received {op!r}")
    if on_nonfinite not in ("raise", "zero"):
        raise ValueError(f"on_nonfinite: expected 'raise' or 'zero', received {on_nonfinite!r}")
    return tensor.view(-1)


def _nonfinite(
    flat: torch.Tensor, flagged_ranks: list[int], stage: str, on_nonfinite: OnNonfinite
) -> None:
    message = (
        f"non-finite values (NaN or Inf) {stage} on rank(s) {flagged_ranks}"
        if flagged_ranks
        else f"non-finite values (NaN or Inf) {stage}"
    )
    if on_nonfinite == "raise":
        raise NonFiniteGradientError(message)
    warnings.warn(f"{message}; this step's result is zeroed", RuntimeWarning, stacklevel=3)
    flat.zero_()


def _check_same_size(
    numel: int,
    channel: Channel,
    world_size: int,
    link: Link | None,
    record: StepRecord,
) -> None:
    start = time.perf_counter()
    sizes = torch.empty(world_size, dtype=torch.int64)
    channel.all_gather(sizes, torch.tensor([numel], dtype=torch.int64))
    if link is not None:
        link.wait(world_size - 1, (world_size - 1) * SIZE_NBYTES)
    record.comm_s += time.perf_counter() - start
    record.bytes_sent += (world_size - 1) * SIZE_NBYTES
    if bool((sizes != numel).any()):  # every rank sees the same sizes, so all raise
        raise ValueError(
            f"tensor: every rank must pass the same number of values, ranks hold {sizes.tolist()}"
        )


def dense_allreduce(
    tensor: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    op: Op = "mean",
    link: Link | None = None,
    record: StepRecord | None = None,
) -> torch.Tensor:
    """Plain float32 ``all_reduce`` (in place), accounted as a ring allreduce; ``link`` sleeps as
    a slow link would: 2 (P - 1) messages and 2 (P - 1) / P · 4 n bytes. The tensor goes to the
    backend where it lies when the backend takes that device (CUDA on NCCL, CPU on gloo), else
    through a staged copy."""
    world_size = dist.get_world_size(group)
    start = time.perf_counter()
    if world_size > 1 and tensor.numel():
        channel = Channel.for_data(group, tensor.device)
        channel.all_reduce(tensor)
        if channel.staged_bytes and record is not None:
            record.notes["staged_bytes"] = record.notes.get("staged_bytes", 0) + float(
                channel.staged_bytes
            )
        if link is not None:
            link.wait(2 * (world_size - 1), ring_allreduce_bytes(tensor.numel(), world_size))
    if op == "mean" and world_size > 1:
        tensor.div_(world_size)
    if record is not None:
        ring = ring_allreduce_bytes(tensor.numel(), world_size)
        record.bytes_sent += ring
        record.ring_bytes += ring
        record.comm_s += time.perf_counter() - start
        record.uncompressed_tensors += 1
    return tensor


def allreduce(
    tensor: torch.Tensor,
    codec: Codec,
    group: dist.ProcessGroup | None = None,
    *,
    state: CollectiveState | None = None,
    key: int = 0,
    step: int = 0,
    op: Op = "mean",
    on_nonfinite: OnNonfinite = "raise",
    link: Link | None = None,
    check_sizes: bool = True,
) -> torch.Tensor:
    """Allreduces ``tensor`` (float32, contiguous, any shape) in place through ``codec`` and
    returns it; the result is bitwise identical on every rank.

    ``state`` holds the error-feedback buffers (required when ``codec.error_feedback``), under
    ``key``; ``step`` and ``key`` also seed stochastic codecs. ``op="mean"`` divides by the world
    size (what DDP expects). ``link`` emulates a slow link (sleeps after each collective). The
    bytes and times of the call are in ``state.last`` when a state is given.

    ``check_sizes`` first all-gathers every rank's element count (8 bytes per rank, counted),
    so ranks holding different sizes all raise ValueError instead of hanging in a collective
    whose buffers disagree (gloo then waits past its timeout). The DDP hook turns it off: DDP
    checks the parameter shapes of every rank when it is built, so buckets always agree.
    """
    flat = _check_inputs(tensor, codec, op, on_nonfinite)
    if codec.error_feedback and state is None:
        raise ValueError(
            f"state: {codec!r} uses error feedback, pass state=CollectiveState() to keep its "
            "buffers between calls"
        )
    world_size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if state is not None:
        state.check_world_size(world_size)
    record = StepRecord(ring_bytes=ring_allreduce_bytes(flat.numel(), world_size))
    # The codecs run on the CPU: a device tensor is staged through the host (one copy each way).
    host = flat if flat.device.type == "cpu" else flat.to("cpu")
    channel = Channel.for_data(group, host.device)
    if check_sizes and world_size > 1:
        _check_same_size(host.numel(), channel, world_size, link, record)
    if world_size == 1 or host.numel() == 0:
        # Nothing to exchange; the value is already the mean (and the sum) of one rank.
        if not all_finite(flat):
            _nonfinite(flat, [rank], "in the gradient", on_nonfinite)
        if state is not None:
            state.last = record
        return tensor
    record.compressed_tensors = 1
    reduce = _two_phase if codec.scheme == "two_phase" else _allgather
    reduce(host, codec, channel, world_size, rank, state, key, step, op, on_nonfinite, link, record)
    staged = channel.staged_bytes
    if host is not flat:
        flat.copy_(host)
        staged += 2 * 4 * host.numel()
    record.notes["staged_bytes"] = float(staged)
    if state is not None:
        state.last = record
        if record.nonfinite:
            state.nonfinite_skips += 1
    return tensor


def _restore_error(
    codec: Codec, error: torch.Tensor, payload: torch.Tensor, sent: torch.Tensor
) -> None:
    """Undoes an encode's error update on a skipped step: error_before = error_after + decoded
    - sent (up to float32 rounding), so the discarded payload's content is not lost. A payload
    that does not decode to finite values (a faulty rank's own) leaves ``error`` as the encode
    left it, finite."""
    restored = error + codec.decode(payload, sent.numel()) - sent
    if all_finite(restored):
        error.copy_(restored)


def _two_phase(
    flat: torch.Tensor,
    codec: Codec,
    channel: Channel,
    world_size: int,
    rank: int,
    state: CollectiveState | None,
    key: int,
    step: int,
    op: Op,
    on_nonfinite: OnNonfinite,
    link: Link | None,
    record: StepRecord,
) -> None:
    numel = flat.numel()
    chunk = chunk_numel(numel, world_size)
    encoded = codec.encoded_nbytes(chunk)
    width = encoded + FLAG_NBYTES
    use_error = codec.error_feedback and state is not None

    start = time.perf_counter()
    local_finite = all_finite(flat)
    padded = _workspace(state, key, "padded", world_size * chunk, torch.float32)
    padded[numel:].zero_()
    if not local_finite:
        padded.zero_()
    elif op == "mean":
        torch.div(flat, world_size, out=padded[:numel])
    else:
        padded[:numel].copy_(flat)
    error1 = state.error_buffer(key, 1, world_size * chunk) if use_error and state else None
    send = _workspace(state, key, "send", world_size * width, torch.uint8).view(world_size, width)
    try:
        for j in range(world_size):
            part = padded[j * chunk : (j + 1) * chunk]
            err = (
                error1[j * chunk : (j + 1) * chunk] if error1 is not None and local_finite else None
            )
            payload = codec.encode(part, error=err, key=_subkey(key, 1, rank, j), step=step)
            send[j, :encoded] = payload
    except ValueError:
        # A codec that refuses finite input (e.g. a block whose magnitudes overflow float32 when
        # summed) must not leave the other ranks waiting in all_to_all: flag it like a NaN. Its
        # error buffer may be half-updated, so it starts again from zero.
        if error1 is not None:
            error1.zero_()
            error1 = None
        local_finite = False
        padded.zero_()
        for j in range(world_size):
            part = padded[j * chunk : (j + 1) * chunk]
            send[j, :encoded] = codec.encode(part, key=_subkey(key, 1, rank, j), step=step)
    send[:, encoded] = 0 if local_finite else 1
    record.encode_s += time.perf_counter() - start

    start = time.perf_counter()
    received = _workspace(state, key, "received", world_size * width, torch.uint8)
    received = received.view(world_size, width)
    channel.all_to_all(received.view(-1), send.view(-1))
    if link is not None:
        link.wait(world_size - 1, (world_size - 1) * width)
    record.comm_s += time.perf_counter() - start
    record.bytes_sent += (world_size - 1) * width

    flagged = [i for i in range(world_size) if int(received[i, encoded]) != 0]
    if flagged:
        record.nonfinite = True
        if error1 is not None and local_finite:
            for j in range(world_size):
                part = padded[j * chunk : (j + 1) * chunk]
                own = _aligned_row(send, j, width, encoded)
                _restore_error(codec, error1[j * chunk : (j + 1) * chunk], own, part)
        _nonfinite(flat, flagged, "in the gradient (or values the codec refused)", on_nonfinite)
        return

    start = time.perf_counter()
    reduced = _workspace(state, key, "reduced", chunk, torch.float32).zero_()
    for i in range(world_size):  # rank order: the float32 sum is the same wherever it runs
        codec.decode(_aligned_row(received, i, width, encoded), chunk, out=reduced, accumulate=True)
    record.decode_s += time.perf_counter() - start

    start = time.perf_counter()
    error2 = state.error_buffer(key, 2, chunk) if use_error and state else None
    # A payload received from a peer may carry NaN or Inf (a scale corrupted on the way, a
    # faulty peer): the sum is then not finite. Only this rank sees it, so it must not re-encode
    # it (a codec may refuse it and leave the other ranks waiting; the error buffer would hold
    # NaN for good): it sends a payload that decodes to NaN, which every rank then finds in the
    # identical result below and handles by the on_nonfinite policy.
    reduced_finite = all_finite(reduced)
    mine: torch.Tensor | None = None
    if reduced_finite:
        try:
            mine = codec.encode(reduced, error=error2, key=_subkey(key, 2, rank, 0), step=step)
        except ValueError:  # refused (see phase 1); its error buffer may be half-updated
            if error2 is not None:
                error2.zero_()
            reduced_finite = False
    if mine is None:
        mine = codec.nonfinite_payload(chunk)
    record.encode_s += time.perf_counter() - start

    start = time.perf_counter()
    gathered = _workspace(state, key, "gathered", world_size * encoded, torch.uint8)
    gathered = gathered.view(world_size, encoded)
    channel.all_gather(gathered.view(-1), mine)
    if link is not None:
        link.wait(world_size - 1, (world_size - 1) * encoded)
    record.comm_s += time.perf_counter() - start
    record.bytes_sent += (world_size - 1) * encoded

    start = time.perf_counter()
    for i in range(world_size):
        payload = _aligned_row(gathered, i, encoded, encoded)
        begin, end = i * chunk, min((i + 1) * chunk, numel)
        if end - begin == chunk:  # whole chunks decode straight into the caller's tensor
            codec.decode(payload, chunk, out=flat[begin:end])
        elif end > begin:  # the padded last chunk goes through a scratch buffer
            tail = _workspace(state, key, "tail", chunk, torch.float32)
            flat[begin:end].copy_(codec.decode(payload, chunk, out=tail)[: end - begin])
    record.decode_s += time.perf_counter() - start
    if not all_finite(flat):  # identical bits everywhere: all ranks agree
        record.nonfinite = True
        # The step is discarded: give back to the error buffers what this step took from them.
        if error1 is not None and local_finite:
            for j in range(world_size):
                part = padded[j * chunk : (j + 1) * chunk]
                own = _aligned_row(send, j, width, encoded)
                _restore_error(codec, error1[j * chunk : (j + 1) * chunk], own, part)
        if error2 is not None and reduced_finite:
            _restore_error(codec, error2, mine, reduced)
        _nonfinite(
            flat,
            [],
            "in the reduced result (a peer's payload or an overflow of the codec's range)",
            on_nonfinite,
        )


def _allgather(
    flat: torch.Tensor,
    codec: Codec,
    channel: Channel,
    world_size: int,
    rank: int,
    state: CollectiveState | None,
    key: int,
    step: int,
    op: Op,
    on_nonfinite: OnNonfinite,
    link: Link | None,
    record: StepRecord,
) -> None:
    numel = flat.numel()
    use_error = codec.error_feedback and state is not None

    start = time.perf_counter()
    local_finite = all_finite(flat)
    error = state.error_buffer(key, 1, numel) if use_error and state else None
    if local_finite:
        scaled = flat / world_size if op == "mean" else flat.clone()
        payload = codec.encode(scaled, error=error, key=_subkey(key, 1, rank, 0), step=step)
    else:
        scaled = torch.zeros(numel, dtype=torch.float32)
        payload = codec.encode(scaled, key=_subkey(key, 1, rank, 0), step=step)
    record.encode_s += time.perf_counter() - start

    start = time.perf_counter()
    length = torch.tensor([payload.numel() if local_finite else -1], dtype=torch.int64)
    lengths = torch.empty(world_size, dtype=torch.int64)
    channel.all_gather(lengths, length)
    if link is not None:
        link.wait(world_size - 1, (world_size - 1) * LENGTH_NBYTES)
    flagged = [i for i in range(world_size) if int(lengths[i]) < 0]
    if flagged:
        record.comm_s += time.perf_counter() - start
        record.bytes_sent += (world_size - 1) * LENGTH_NBYTES
        record.nonfinite = True
        if error is not None and local_finite:
            _restore_error(codec, error, payload, scaled)
        _nonfinite(flat, flagged, "in the gradient", on_nonfinite)
        return
    longest = int(lengths.max())
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: payload.numel()] = payload
    gathered = torch.empty(world_size, longest, dtype=torch.uint8)
    channel.all_gather(gathered.view(-1), padded)
    if link is not None:
        link.wait(world_size - 1, (world_size - 1) * longest)
    record.comm_s += time.perf_counter() - start
    record.bytes_sent += (world_size - 1) * (LENGTH_NBYTES + longest)

    start = time.perf_counter()
    result = torch.zeros(numel, dtype=torch.float32)
    for i in range(world_size):  # rank order: identical float32 sums everywhere
        row = gathered[i, : int(lengths[i])]
        row = row if (i * longest) % 16 == 0 else row.clone()
        codec.decode(row, numel, out=result, accumulate=True)
    flat.copy_(result)
    record.decode_s += time.perf_counter() - start
    if not all_finite(flat):  # e.g. a peer's payload carried NaN or Inf values
        record.nonfinite = True
        if error is not None:
            _restore_error(codec, error, payload, scaled)
        _nonfinite(flat, [], "in the reduced result (a peer's payload?)", on_nonfinite)
