"""A DistributedDataParallel communication hook around codl's compressed collectives.

    state, hook = codl.comm.ddp_hook(codl.comm.FP16(), warmup_steps=10)
    model.register_comm_hook(state, hook)

DDP hands the hook one flat float32 bucket of gradients at a time (``dist.GradBucket``) and
expects a Future of the averaged bucket (torch's ``ddp_comm_hooks`` API). A bucket goes
uncompressed, as a plain float32 allreduce, when

- the step is a warm-up step (``step < warmup_steps``; PowerSGD's ``start_powerSGD_iter``,
  Vogels et al. 2019, section 4: lossy compression from the first step slows convergence), or
- it holds fewer than ``small_tensor_numel`` values (biases: the latency dominates and the
  metadata outweighs the saving), or
- the codec would send more than ``min_compression`` times the float32 ring allreduce's bytes
  (a sparse codec at large world sizes, whose all-gather grows with P).

Every decision depends only on the step, the bucket size and the world size, so all ranks agree.

``overlap=False`` (the default) runs the collectives inline and returns a completed Future.
With ``overlap=True`` they run on one background thread, in the order DDP hands over the
buckets, while backward carries on: the hook returns a Future the thread completes. Every
collective of the hook runs on that thread, so all ranks issue them in the same order; but DDP
must then issue none of its own during backward: not with ``find_unused_parameters=True``
(DDP allreduces its unused-parameter map on the autograd thread, and the two threads' orders
could differ between ranks, a hang until the process group's timeout).

The state reports, per step and in total: bytes sent per rank (payload, metadata, padding), the
float32 ring allreduce's bytes for the same buckets, their ratio, and the time spent encoding,
decoding and communicating. ``state.state_dict()`` holds the error-feedback buffers and the
step, to be saved with the model checkpoint (each rank saves its own: the residuals differ).

Bucket layouts. The error-feedback buffers (and PowerSGD's Q) of a bucket belong to its
parameters, not to its index: DDP starts with one layout (one bucket for everything, or buckets
in reverse registration order with ``find_unused_parameters=True``), rebuilds its buckets in
gradient-ready order after the first step, and a fresh DDP restored from a checkpoint starts
over. The state names each parameter by the order in which it first saw it (DDP's initial
layout, the same in every fresh DDP of the same model and bucket sizes: register the hook before
the first backward), records which parameters each bucket's buffers cover, and when a bucket
covers others re-maps every buffer to the new layout, element for element: each rank keeps its
phase-1 residuals, and the phase-2 residuals (each rank holds those of the chunk of the reduced
bucket it re-encoded) go to the chunk's new owner through one ``all_gather`` of the bucket. No
residual is dropped or applied to another parameter, so error feedback's invariant holds across
the change. A restored run's first step buckets differently from the run it continues, so it
continues bit for bit only with codecs that work value by value (FP16 or BF16, with or without
error feedback; PowerSGD, whose products run on their own allocations) and float32 sums whose
order the layout does not change (gloo's ring allreduce of uncompressed buckets and of
PowerSGD's P and Q does not at 2 ranks); block codecs (Int8, SignEF, top-k) continue from the
same residuals but round the restored step's blocks differently. Parameters whose bucket goes
uncompressed after a change keep their residuals in ``pending`` until a compressed bucket takes
them.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import GradBucket

from codl._finite import all_finite
from codl.comm.accounting import StepRecord, compressed_bytes, ring_allreduce_bytes
from codl.comm.codecs import Codec
from codl.comm.collectives import (
    Channel,
    CollectiveState,
    Link,
    NonFiniteGradientError,
    OnNonfinite,
    allreduce,
    dense_allreduce,
)
from codl.comm.powersgd import PowerSGD

Hook = Callable[["HookState", GradBucket], "torch.futures.Future[torch.Tensor]"]


def _optimizer_momentum(optimizer: torch.optim.Optimizer) -> float:
    """The one momentum of a ``torch.optim.SGD`` whose momentum buffer the hook can stand in
    for (heavy ball: nesterov off, dampening 0, the same momentum in every group)."""
    if type(optimizer) is not torch.optim.SGD:
        raise ValueError(
            f"momentum: expected a float or a torch.optim.SGD, received a "
            f"{type(optimizer).__name__} (give its momentum as a float if it applies the "
            "averaged gradient as SGD with momentum does)"
        )
    values = {float(group["momentum"]) for group in optimizer.param_groups}
    if len(values) != 1:
        raise ValueError(
            f"momentum: the optimizer's groups have different momenta {sorted(values)}; the "
            "hook compresses one momentum per model"
        )
    beta = values.pop()
    if beta and any(g["nesterov"] or g["dampening"] for g in optimizer.param_groups):
        raise ValueError(
            "momentum: the hook stands in for heavy-ball momentum (nesterov=False, "
            "dampening=0); the optimizer uses nesterov or dampening"
        )
    return beta


def _hook_momentum(
    momentum: float | torch.optim.Optimizer | None, codec: Codec | PowerSGD | None
) -> float:
    if momentum is None:
        if isinstance(codec, Codec) and codec.error_feedback:
            # The hook cannot see the optimizer: say so rather than let SGD's momentum
            # amplify the residual unnoticed (issue 14: SignEF at momentum 0.9 ended at 28%).
            warnings.warn(
                f"ddp_hook: {codec!r} has error feedback, which diverges under SGD with "
                "momentum unless the hook compresses the momentum: pass momentum=<the "
                "optimizer's momentum> (or the torch.optim.SGD itself), or momentum=0.0 for "
                "plain SGD",
                UserWarning,
                stacklevel=4,
            )
        return 0.0
    if isinstance(momentum, torch.optim.Optimizer):
        return _optimizer_momentum(momentum)
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0.0 <= momentum < 1.0
    ):
        raise ValueError(
            f"momentum: expected the optimizer's momentum, a float in [0, 1), or the "
            f"torch.optim.SGD, received {momentum!r}"
        )
    return float(momentum)


class HookState:
    """What the hook keeps between calls: the codec, its error-feedback buffers, the step and
    the byte and time accounting (``last_step``, ``history``, ``total``)."""

    def __init__(
        self,
        codec: Codec | PowerSGD | None,
        *,
        process_group: dist.ProcessGroup | None = None,
        warmup_steps: int = 0,
        min_compression: float = 0.9,
        small_tensor_numel: int = 1024,
        on_nonfinite: OnNonfinite = "raise",
        overlap: bool = False,
        link: Link | None = None,
        momentum: float | torch.optim.Optimizer | None = None,
    ) -> None:
        if codec is not None and not isinstance(codec, (Codec, PowerSGD)):
            raise TypeError(
                f"codec: expected a codl.comm.Codec, a PowerSGD or None, received "
                f"{type(codec).__name__}"
            )
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an integer >= 0, received {warmup_steps!r}")
        if not min_compression > 0:
            raise ValueError(f"min_compression: expected a ratio > 0, received {min_compression!r}")
        if not isinstance(small_tensor_numel, int) or small_tensor_numel < 0:
            raise ValueError(
                f"small_tensor_numel: expected an integer >= 0, received {small_tensor_numel!r}"
            )
        if on_nonfinite not in ("raise", "zero"):
            raise ValueError(f"on_nonfinite: expected 'raise' or 'zero', received {on_nonfinite!r}")
        self.codec = codec
        self.momentum = _hook_momentum(momentum, codec)
        # The averaged momentum of each parameter (by id), identical on every rank: what
        # torch.optim.SGD's momentum buffer holds when its momentum equals self.momentum.
        self.momenta: dict[int, torch.Tensor] = {}
        self.process_group = process_group
        self.warmup_steps = warmup_steps
        self.min_compression = float(min_compression)
        self.small_tensor_numel = small_tensor_numel
        self.on_nonfinite: OnNonfinite = on_nonfinite
        self.overlap = bool(overlap)
        self.link = link
        self.collective = CollectiveState()
        self.step = 0
        # Bucket layouts (see the module docstring): parameter ids are positions in param_shapes.
        self.param_shapes: list[tuple[int, ...]] = []
        self.layout: dict[int, tuple[int, ...]] = {}
        self.pending: dict[int, dict[str, torch.Tensor]] = {}
        self.relayouts = 0
        self._param_ids: dict[int, int] = {}
        self.current = StepRecord()
        self.last_step: StepRecord | None = None
        self.history: list[StepRecord] = []
        self.total = StepRecord()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Errors of the collective thread, raised by the hook's call for the last bucket.
        self._errors: list[Exception] = []

    def __repr__(self) -> str:
        return (
            f"HookState(codec={self.codec!r}, step={self.step}, warmup_steps={self.warmup_steps}, "
            f"min_compression={self.min_compression}, small_tensor_numel={self.small_tensor_numel})"
        )

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.process_group)

    def compresses(self, numel: int, step: int) -> bool:
        """Whether a bucket of ``numel`` values goes through the codec at ``step``."""
        if self.codec is None or step < self.warmup_steps or numel < self.small_tensor_numel:
            return False
        if isinstance(self.codec, PowerSGD):
            return True
        ring = ring_allreduce_bytes(numel, self.world_size)
        return bool(ring) and compressed_bytes(self.codec, numel, self.world_size) <= (
            self.min_compression * ring
        )

    def compresses_momentum(self) -> bool:
        """Whether the codec reduces the momentum rather than the gradient: with a ``momentum``
        and a codec with error feedback (its residual is what momentum SGD amplifies). An
        unbiased codec without error feedback (QSGD, TernGrad) keeps compressing the gradient,
        whose rounding noise the optimizer's momentum averages out (in the momentum it would
        not be: TernGrad diverged so); PowerSGD compresses the gradient too (it converges)."""
        return bool(self.momentum) and isinstance(self.codec, Codec) and self.codec.error_feedback

    def _finish(self, record: StepRecord, is_last: bool) -> None:
        with self._lock:
            self.current.add(record)
            if is_last:
                self.last_step = self.current
                self.history.append(self.current)
                self.total.add(self.current)
                self.current = StepRecord()

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="codl-comm"
            )
        return self._executor

    def close(self) -> None:
        """Stops the background thread (the state can still be used: it restarts on demand)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def state_dict(self) -> dict[str, Any]:
        codec_state = self.codec.state_dict() if isinstance(self.codec, PowerSGD) else None
        return {
            "step": self.step,
            "collective": self.collective.state_dict(),
            "powersgd": codec_state,
            "total": self.total.as_dict(),
            "param_shapes": [list(shape) for shape in self.param_shapes],
            "momentum": self.momentum,
            "momenta": {pid: t.clone() for pid, t in self.momenta.items()},
            "layout": {key: list(ids) for key, ids in self.layout.items()},
            "pending": {
                pid: {name: t.clone() for name, t in pieces.items()}
                for pid, pieces in self.pending.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (of the same rank). Call it before the restored model's
        first backward; its buffers move to the new DDP's bucket layout as that DDP uses them."""
        if "layout" not in state:
            raise ValueError(
                "state: a hook state_dict without bucket layouts (saved by an older codl); its "
                "buffers cannot be matched to parameters"
            )
        self.step = int(state["step"])
        self.param_shapes = [tuple(int(n) for n in shape) for shape in state["param_shapes"]]
        self.layout = {int(key): tuple(int(i) for i in ids) for key, ids in state["layout"].items()}
        self.pending = {
            int(pid): {name: t.clone() for name, t in pieces.items()}
            for pid, pieces in state["pending"].items()
        }
        self.momenta = {int(pid): t.clone() for pid, t in state.get("momenta", {}).items()}
        self.collective.load_state_dict(state["collective"])
        if isinstance(self.codec, PowerSGD) and state["powersgd"] is not None:
            self.codec.load_state_dict(state["powersgd"])
        total = dict(state["total"])
        total.pop("ratio", None)
        self.total = StepRecord(**total)

    # Bucket layouts ------------------------------------------------------------------------

    def parameter_ids(self, parameters: Sequence[torch.Tensor]) -> tuple[int, ...]:
        """The ids of a bucket's parameters: the order in which this state first saw each (a
        restored state checks the shapes against its checkpoint's)."""
        ids = []
        for parameter in parameters:
            pid = self._param_ids.get(id(parameter))
            if pid is None:
                pid = len(self._param_ids)
                shape = tuple(parameter.shape)
                if pid < len(self.param_shapes) and self.param_shapes[pid] != shape:
                    raise ValueError(
                        f"parameter {pid} (in order of first use) has shape {shape}, the hook "
                        f"state was saved for {self.param_shapes[pid]}: another model, or the "
                        "hook was registered after DDP's first backward"
                    )
                if pid >= len(self.param_shapes):
                    self.param_shapes.append(shape)
                self._param_ids[id(parameter)] = pid
            ids.append(pid)
        return tuple(ids)

    def keeps_buffers(self) -> bool:
        """Whether the codec keeps per-bucket state between steps (error feedback, Q)."""
        if isinstance(self.codec, PowerSGD):
            return self.codec.error_feedback or self.codec.warm_start
        return self.codec is not None and self.codec.error_feedback

    def _numels(self, ids: Sequence[int]) -> list[int]:
        return [math.prod(self.param_shapes[pid]) for pid in ids]

    def _q_numels(self, ids: Sequence[int]) -> list[int]:
        assert isinstance(self.codec, PowerSGD)
        sizes = []
        for pid in ids:
            shape = self.param_shapes[pid]
            m = math.prod(shape[1:])
            sizes.append(m * min(shape[0], m, self.codec.rank))
        return sizes

    def _powersgd_ids(self, ids: Sequence[int]) -> list[int]:
        assert isinstance(self.codec, PowerSGD)
        return [pid for pid in ids if self.codec.compresses(self.param_shapes[pid])]

    def _dissolve(self, rank: int, world_size: int) -> None:
        """Moves every bucket's buffers into per-parameter pieces (``pending``)."""
        codec = self.codec
        for key, ids in self.layout.items():
            if isinstance(codec, PowerSGD):
                matrices = self._powersgd_ids(ids)
                for name, store, numels in (
                    ("error", codec.errors, self._numels(matrices)),
                    ("q", codec.qs, self._q_numels(matrices)),
                ):
                    flat = store.pop(key, None)
                    if flat is not None:
                        for pid, piece in zip(matrices, torch.split(flat, numels)):
                            self.pending.setdefault(pid, {})[name] = piece.clone()
                continue
            numels = self._numels(ids)
            numel = sum(numels)
            error1 = self.collective.buffers.pop((key, 1), None)
            error2 = self.collective.buffers.pop((key, 2), None)
            if error1 is not None:
                for pid, piece in zip(ids, torch.split(error1[:numel], numels)):
                    self.pending.setdefault(pid, {})["e1"] = piece.clone()
            if error2 is not None:
                # This rank's phase-2 residuals, in place in the bucket (zeros elsewhere).
                chunk = -(-numel // world_size)
                begin, end = rank * chunk, min((rank + 1) * chunk, numel)
                full = torch.zeros(numel, dtype=error2.dtype)
                if end > begin:
                    full[begin:end] = error2[: end - begin]
                for pid, piece in zip(ids, torch.split(full, numels)):
                    self.pending.setdefault(pid, {})["e2"] = piece.clone()
        self.layout.clear()
        self.collective.workspaces.clear()
        self.relayouts += 1

    def _assemble(
        self, index: int, ids: tuple[int, ...], device: torch.device, record: StepRecord
    ) -> None:
        """Builds bucket ``index``'s buffers from the pending pieces of its parameters."""
        codec = self.codec
        pieces = [self.pending.get(pid, {}) for pid in ids]
        if isinstance(codec, PowerSGD):
            matrices = self._powersgd_ids(ids)
            found = [self.pending.get(pid, {}) for pid in matrices]
            numels, q_numels = self._numels(matrices), self._q_numels(matrices)
            if codec.error_feedback and any("error" in p for p in found):
                codec.errors[index] = torch.cat(
                    [
                        p["error"].to(device) if "error" in p else torch.zeros(n, device=device)
                        for p, n in zip(found, numels)
                    ]
                )
            if codec.warm_start and any("q" in p for p in found):
                shapes = [self.param_shapes[pid] for pid in matrices]
                sizes = []
                for shape in shapes:
                    m = math.prod(shape[1:])
                    sizes.append((m, min(shape[0], m, codec.rank)))
                q = codec.initial_q(index, sizes, device)
                for p, part in zip(found, torch.split(q, q_numels)):
                    if "q" in p:
                        part.copy_(p["q"])
                codec.qs[index] = q
        elif codec is not None:
            numels = self._numels(ids)
            numel = sum(numels)
            world_size = dist.get_world_size(self.process_group)
            chunk = -(-numel // world_size)
            two_phase = codec.scheme == "two_phase"
            if any("e1" in p for p in pieces):
                error1 = torch.zeros(world_size * chunk if two_phase else numel)
                error1[:numel] = torch.cat(
                    [p["e1"] if "e1" in p else torch.zeros(n) for p, n in zip(pieces, numels)]
                )
                self.collective.buffers[(index, 1)] = error1
            if two_phase and any("e2" in p for p in pieces):
                # Every rank holds its old chunks' residuals, zeros elsewhere: one all_gather,
                # then each value from the rank that held it (a bitwise OR keeps -0.0 and NaN).
                local = torch.cat(
                    [p["e2"] if "e2" in p else torch.zeros(n) for p, n in zip(pieces, numels)]
                )
                gathered = torch.empty(world_size, numel, dtype=torch.float32)
                start = time.perf_counter()
                Channel.for_data(self.process_group, "cpu").all_gather(gathered.view(-1), local)
                record.comm_s += time.perf_counter() - start
                record.bytes_sent += (world_size - 1) * 4 * numel
                bits = gathered.view(torch.int32)
                merged = bits[0].clone()
                for row in bits[1:]:
                    merged.bitwise_or_(row)
                rank = dist.get_rank(self.process_group)
                begin, end = rank * chunk, min((rank + 1) * chunk, numel)
                error2 = torch.zeros(chunk)
                if end > begin:
                    error2[: end - begin] = merged.view(torch.float32)[begin:end]
                self.collective.buffers[(index, 2)] = error2
        for pid in ids:
            self.pending.pop(pid, None)
        self.layout[index] = ids

    def place(
        self, index: int, ids: tuple[int, ...], device: torch.device, record: StepRecord
    ) -> None:
        """Makes bucket ``index``'s buffers those of parameters ``ids`` (re-mapping every bucket
        when DDP changed its layout). Every rank calls it at the same point: it may all_gather."""
        if self.layout.get(index) == ids:
            return
        owners = {pid: key for key, held in self.layout.items() for pid in held}
        if index in self.layout or any(pid in owners for pid in ids):
            self._dissolve(dist.get_rank(self.process_group), self.world_size)
        self._assemble(index, ids, device, record)

    def residuals(self) -> dict[int, torch.Tensor]:
        """What this rank holds back of each parameter's gradient (error feedback), by parameter
        id, in the scale of the mean: summed over the ranks and added to every result the hook
        returned, it gives the sum of the true mean gradients (EF-SGD's invariant, Karimireddy
        et al. 2019, eq. 5). Parameters holding nothing are left out."""
        out: dict[int, torch.Tensor] = {}

        def add(pid: int, values: torch.Tensor) -> None:
            values = values.detach().to("cpu", torch.float32).reshape(-1)
            out[pid] = out[pid] + values if pid in out else values.clone()

        codec = self.codec
        world_size = self.world_size
        for key, ids in self.layout.items():
            if isinstance(codec, PowerSGD):
                matrices = self._powersgd_ids(ids)
                error = codec.errors.get(key)
                if error is not None:
                    for pid, piece in zip(matrices, torch.split(error, self._numels(matrices))):
                        add(pid, piece / world_size)
                continue
            numels = self._numels(ids)
            numel = sum(numels)
            error1 = self.collective.buffers.get((key, 1))
            if error1 is not None:
                for pid, piece in zip(ids, torch.split(error1[:numel], numels)):
                    add(pid, piece)
            error2 = self.collective.buffers.get((key, 2))
            if error2 is not None:
                chunk = -(-numel // world_size)
                rank = dist.get_rank(self.process_group)
                begin, end = rank * chunk, min((rank + 1) * chunk, numel)
                full = torch.zeros(numel)
                if end > begin:
                    full[begin:end] = error2[: end - begin]
                for pid, piece in zip(ids, torch.split(full, numels)):
                    add(pid, piece)
        for pid, pieces in self.pending.items():
            for name, values in pieces.items():
                if name == "error":
                    add(pid, values / world_size)
                elif name in ("e1", "e2"):
                    add(pid, values)
        return out


def _reduce_bucket(
    state: HookState,
    buffer: torch.Tensor,
    shapes: list[torch.Size],
    index: int,
    step: int,
    compress: bool,
) -> StepRecord:
    group = state.process_group
    if not compress or state.codec is None:
        record = StepRecord()
        dense_allreduce(buffer, group, op="mean", link=state.link, record=record)
        if not all_finite(buffer):  # the same sum on every rank
            record.nonfinite = True
            if state.on_nonfinite == "raise":
                raise NonFiniteGradientError(
                    f"non-finite values (NaN or Inf) in gradient bucket {index} at step {step}"
                )
            buffer.zero_()
        return record
    if isinstance(state.codec, PowerSGD):
        views, offset = [], 0
        for shape in shapes:
            numel = shape.numel()
            views.append(buffer[offset : offset + numel].view(shape))
            offset += numel
        try:  # PowerSGD raises on a non-finite P, Q or sum, on every rank alike
            return state.codec.allreduce_(views, key=index, group=group, link=state.link)
        except NonFiniteGradientError as error:
            if state.on_nonfinite == "raise":
                raise
            warnings.warn(
                f"{error} (gradient bucket {index}, step {step}); this step's result is zeroed",
                RuntimeWarning,
                stacklevel=2,
            )
            buffer.zero_()
            state.collective.nonfinite_skips += 1
            return StepRecord(nonfinite=True)
    allreduce(
        buffer,
        state.codec,
        group,
        state=state.collective,
        key=index,
        step=step,
        op="mean",
        on_nonfinite=state.on_nonfinite,
        link=state.link,
        check_sizes=False,  # DDP verified every rank's parameter shapes when it was built
    )
    assert state.collective.last is not None
    return state.collective.last


def _reduce_momentum(
    state: HookState,
    buffer: torch.Tensor,
    shapes: list[torch.Size],
    ids: tuple[int, ...],
    index: int,
    step: int,
    compress: bool,
) -> StepRecord:
    """Compresses the momentum instead of the gradient (``momentum`` > 0; 1-bit Adam, Tang et
    al. 2021, section 3: error-compensated compression of the momentum).

    With M the averaged momentum of the previous step (identical on every rank) and g this
    rank's gradient, the codec reduces ``m = beta M + g``, giving the new averaged momentum M',
    and the bucket returns ``M' - beta M``: torch.optim.SGD(momentum=beta) then holds exactly
    M' in its buffer. Compressing the gradient instead, every value that error feedback holds
    back (the residual e) would enter the momentum buffer late and move the parameters by
    lr / (1 - beta) |e| rather than lr |e|; with a sign codec, whose residual grows to several
    times the gradient, SGD at momentum 0.9 diverged (issue 14). Error feedback's invariant
    holds unchanged: the results sum to the true means minus the residuals."""
    beta = state.momentum
    numels = [shape.numel() for shape in shapes]
    previous = torch.cat(
        [
            state.momenta[pid] if pid in state.momenta else torch.zeros(n, device=buffer.device)
            for pid, n in zip(ids, numels)
        ]
    )
    if compress:
        buffer.add_(previous, alpha=beta)
        record = _reduce_bucket(state, buffer, shapes, index, step, compress)
        if record.nonfinite:  # zeroed (on_nonfinite="zero"): SGD's buffer becomes beta M
            current = previous * beta
        else:
            current = buffer.clone()
            buffer.sub_(previous, alpha=beta)
    else:  # lossless: the gradient goes as it is, the momentum is tracked alongside
        record = _reduce_bucket(state, buffer, shapes, index, step, compress)
        current = previous.mul_(beta).add_(buffer)
    for pid, piece in zip(ids, torch.split(current, numels)):
        state.momenta[pid] = piece.clone()
    return record


def _hook(state: HookState, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    step, index, is_last = state.step, bucket.index(), bucket.is_last()
    if is_last:
        state.step += 1
    compress = state.compresses(buffer.numel(), step)
    parameters = bucket.parameters()
    ids = state.parameter_ids(parameters)
    shapes = [p.shape for p in parameters]
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def work() -> None:
        start = time.perf_counter()
        try:
            placed = StepRecord()
            if compress and state.keeps_buffers():
                # On the collective thread, in bucket order: the re-mapping may all_gather.
                state.place(index, ids, buffer.device, placed)
            if state.compresses_momentum():
                record = _reduce_momentum(state, buffer, shapes, ids, index, step, compress)
            else:
                record = _reduce_bucket(state, buffer, shapes, index, step, compress)
        except Exception as error:
            # Not future.set_exception: DDP's reducer reads a Python future's value in C++ and
            # fails to cast the stored exception to a Tensor ("RuntimeError: Unable to cast
            # ... to Tensor"), so the user would never see the error itself. The bucket is
            # zeroed, the future completes, and the hook raises the error from its call for the
            # last bucket: an exception raised by the hook itself reaches backward()'s caller
            # with its type (NonFiniteGradientError).
            buffer.zero_()
            with state._lock:
                state._errors.append(error)
            future.set_result(buffer)
            return
        record.bytes_sent += placed.bytes_sent
        record.comm_s += placed.comm_s
        record.notes["wall_s"] = time.perf_counter() - start
        state._finish(record, is_last)
        future.set_result(buffer)

    if state.overlap:
        done = state.executor().submit(work)
        if is_last:
            done.result()  # one thread, in order: every bucket of this step is reduced
    else:
        work()
    if state._errors and (is_last or not state.overlap):
        with state._lock:
            error, state._errors = state._errors[0], []
        raise error
    return future


# DDP's register_comm_hook compares the annotations themselves, not their strings.
_hook.__annotations__ = {
    "state": HookState,
    "bucket": GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def ddp_hook(
    codec: Codec | PowerSGD | None,
    *,
    process_group: dist.ProcessGroup | None = None,
    warmup_steps: int = 0,
    min_compression: float = 0.9,
    small_tensor_numel: int = 1024,
    on_nonfinite: OnNonfinite = "raise",
    overlap: bool = False,
    link: Link | None = None,
    momentum: float | torch.optim.Optimizer | None = None,
) -> tuple[HookState, Hook]:
    """``(state, hook)`` for ``DistributedDataParallel.register_comm_hook(state, hook)``.

    ``codec``: a :class:`codl.comm.Codec` (its ``scheme`` picks the collective), a
    :class:`codl.comm.PowerSGD`, or None for plain float32 (accounting only).
    ``warmup_steps``: first steps sent uncompressed. ``min_compression``: the largest byte ratio
    to the float32 ring allreduce worth compressing for. ``small_tensor_numel``: buckets with
    fewer values go uncompressed. ``on_nonfinite``: ``"raise"`` (NonFiniteGradientError on
    every rank) or ``"zero"`` (the bucket averages to zeros and the step is counted).
    ``overlap``: run the collectives on a background thread while backward continues.
    ``link``: emulate a slow link (:class:`codl.comm.linkmodel.EmulatedLink`).
    ``momentum``: the momentum of the ``torch.optim.SGD`` that applies the gradients (nesterov
    off, dampening 0), or that optimizer itself. Set it whenever that SGD has momentum: a codec
    with error feedback then compresses the averaged momentum, not the gradient (1-bit Adam's
    remedy), and the returned gradients make SGD's momentum buffer that compressed momentum
    (:meth:`HookState.compresses_momentum`; other codecs are unaffected). At 0 the gradient
    is compressed: with error feedback and momentum 0.9 a sign codec diverges (issue 14: 28%
    test accuracy on Fashion-MNIST against 85%). Left out (None), it is 0 and a codec with
    error feedback warns, since the hook cannot see the optimizer.
    """
    state = HookState(
        codec,
        process_group=process_group,
        warmup_steps=warmup_steps,
        min_compression=min_compression,
        small_tensor_numel=small_tensor_numel,
        on_nonfinite=on_nonfinite,
        overlap=overlap,
        link=link,
        momentum=momentum,
    )
    return state, _hook
