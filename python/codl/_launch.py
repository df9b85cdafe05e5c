"""Runs a function on N local processes joined in one ``torch.distributed`` group: the launcher
of the distributed tests and benchmarks.

The ranks meet through a :class:`torch.distributed.FileStore` in a fresh temporary directory
(``init_method="file://..."``), so there is no port to pick and no race for one; the store's
file goes with the directory. Every wait has a timeout, so a fault never hangs the caller: the
group's own timeout bounds a collective whose peer died, and the launcher's bounds the whole
run, after which stragglers are killed. A rank that raises, or exits without answering, is
reported by its rank number.
"""

from __future__ import annotations

import datetime
import io
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: How often the parent looks for ranks that died without answering.
_POLL_S = 0.5


class LaunchError(RuntimeError):
    """One or more ranks failed (``failed_ranks``), or the run timed out."""

    def __init__(self, message: str, failed_ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.failed_ranks = list(failed_ranks)


def _child(
    rank: int,
    world_size: int,
    init_method: str,
    backend: str,
    worker: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
    group_timeout_s: float,
    threads: int | None,
) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=group_timeout_s),
        )
        try:
            # Bytes, not tensors: torch's queue shares tensor storage through a socket that
            # disappears when the child exits.
            buffer = io.BytesIO()
            torch.save(worker(rank, world_size, *args), buffer)
            results.put((rank, "ok", buffer.getvalue()))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def launch(
    worker: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout_s: float = 60.0,
    group_timeout_s: float | None = None,
    answering: Sequence[int] | None = None,
    backend: str = "gloo",
    threads: int | None = 1,
) -> list[Any]:
    """Runs ``worker(rank, world_size, *args)`` on ``world_size`` spawned processes joined in a
    ``backend`` group, and returns what the ``answering`` ranks (all by default) returned, in
    rank order.

    ``worker`` and ``args`` must pickle (a module-level function). ``group_timeout_s`` (default
    ``timeout_s / 2``) bounds each collective, ``timeout_s`` the whole run. ``threads`` sets
    each process's torch and OpenMP threads before the group forms (None: leave them).

    Raises :class:`LaunchError` naming every answering rank that raised (with its traceback)
    or exited without answering, or when the run outlives ``timeout_s``; the processes are
    gone when it returns or raises.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    waiting = set(range(world_size) if answering is None else answering)
    if not waiting <= set(range(world_size)):
        raise ValueError(f"answering ranks {sorted(waiting)} outside 0..{world_size - 1}")
    order = sorted(waiting)
    group_timeout = timeout_s / 2 if group_timeout_s is None else group_timeout_s
    context = mp.get_context("spawn")
    results = context.Queue()
    collected: dict[int, Any] = {}
    errors: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="codl-launch-") as directory:
        init_method = (Path(directory) / "store").as_uri()
        processes = [
            context.Process(
                target=_child,
                args=(
                    rank,
                    world_size,
                    init_method,
                    backend,
                    worker,
                    args,
                    results,
                    group_timeout,
                    threads,
                ),
            )
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        try:
            while waiting:
                try:
                    rank, status, value = results.get(timeout=_POLL_S)
                except queue.Empty:
                    for rank in sorted(waiting):
                        code = processes[rank].exitcode
                        # A rank that exited may still have its answer in the queue's pipe.
                        if code is not None and results.empty():
                            errors[rank] = f"exited with code {code} without answering"
                            waiting.discard(rank)
                    if waiting and time.monotonic() > deadline:
                        for rank in sorted(waiting):
                            errors[rank] = f"no answer within {timeout_s} s"
                        waiting.clear()
                    continue
                if rank not in waiting:  # a rank outside ``answering`` may answer first
                    continue
                waiting.discard(rank)
                if status == "ok":
                    # The bytes come from this launcher's own child processes, through a
                    # multiprocessing queue that pickles anyway; a result may hold any object.
                    collected[rank] = torch.load(io.BytesIO(value), weights_only=False)
                else:
                    errors[rank] = value
        finally:
            for process in processes:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
    if errors:
        report = "\n".join(f"rank {rank}: {errors[rank]}" for rank in sorted(errors))
        raise LaunchError(
            f"distributed worker failed on rank(s) {sorted(errors)}:\n{report}", sorted(errors)
        )
    return [collected[rank] for rank in order]
