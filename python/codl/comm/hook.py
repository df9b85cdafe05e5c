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
step, to be saved with the model checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import GradBucket

from codl.comm.accounting import StepRecord, compressed_bytes, ring_allreduce_bytes
from codl.comm.codecs import Codec
from codl.comm.collectives import (
    CollectiveState,
    Link,
    NonFiniteGradientError,
    OnNonfinite,
    allreduce,
    dense_allreduce,
)
from codl.comm.powersgd import PowerSGD

Hook = Callable[["HookState", GradBucket], "torch.futures.Future[torch.Tensor]"]


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
        self.process_group = process_group
        self.warmup_steps = warmup_steps
        self.min_compression = float(min_compression)
        self.small_tensor_numel = small_tensor_numel
        self.on_nonfinite: OnNonfinite = on_nonfinite
        self.overlap = bool(overlap)
        self.link = link
        self.collective = CollectiveState()
        self.step = 0
        self.bucket_numel: dict[int, int] = {}
        self.current = StepRecord()
        self.last_step: StepRecord | None = None
        self.history: list[StepRecord] = []
        self.total = StepRecord()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.collective.load_state_dict(state["collective"])
        if isinstance(self.codec, PowerSGD) and state["powersgd"] is not None:
            self.codec.load_state_dict(state["powersgd"])
        total = dict(state["total"])
        total.pop("ratio", None)
        self.total = StepRecord(**total)


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
        if not bool(torch.isfinite(buffer).all()):  # the same sum on every rank
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
        return state.codec.allreduce_(views, key=index, group=group, link=state.link)
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


def _hook(state: HookState, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    buffer = bucket.buffer()
    step, index, is_last = state.step, bucket.index(), bucket.is_last()
    if is_last:
        state.step += 1
    compress = state.compresses(buffer.numel(), step)
    if step <= 1 and state.bucket_numel.get(index, buffer.numel()) != buffer.numel():
        # DDP rebuilds its buckets after the first step, so an index may then cover other
        # parameters: buffers made before the rebuild are dropped, not misapplied. Later, a
        # size change is an error (raised by the collective).
        state.collective.reset(index)
        if isinstance(state.codec, PowerSGD):
            state.codec.errors.pop(index, None)
            state.codec.qs.pop(index, None)
    state.bucket_numel[index] = buffer.numel()
    shapes = [p.shape for p in bucket.parameters()]
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def work() -> None:
        start = time.perf_counter()
        try:
            record = _reduce_bucket(state, buffer, shapes, index, step, compress)
        except Exception as error:
            future.set_exception(error)  # type: ignore[arg-type]  # torch's stub is too narrow
            return
        record.notes["wall_s"] = time.perf_counter() - start
        state._finish(record, is_last)
        future.set_result(buffer)

    if state.overlap:
        state.executor().submit(work)
    else:
        work()
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
    )
    return state, _hook
