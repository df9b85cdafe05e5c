"""Distributed K-FAC on torch.distributed: factors averaged, inversions shared out, results sent.

:class:`~codl.optim.KFACPreconditioner` (and :class:`~codl.optim.KFAC`) build a
:class:`DistributedKFAC` when given a ``DistributedDataParallel`` model or a ``process_group``
of more than one rank. The data-parallel gradients are DDP's (every rank holds the same
averaged ``.grad``); this module adds what K-FAC needs on top, after the design of Osawa et al.
2019 and of KAISA (Pauloski et al. 2021, kfac-pytorch's ``assignment.py``/``distributed.py``):

1. **Factors** are averaged across ranks at factor-update steps only (each rank's EMA update
   from its own batch, then the mean), upper triangles only (a factor is symmetric), as one
   flat buffer per step. The mean is a reduce-scatter and all-gather written with
   ``all_to_all_single`` and ``all_gather_into_tensor`` (the two-phase scheme of
   :mod:`codl.comm.collectives`, written again here: ``codl.optim`` and ``codl.comm`` are
   sibling layers): the owner of each chunk sums the P contributions in rank order, so every
   rank holds the same bits whatever the backend's reduction order. The payload is the factor
   dtype, or ``factor_dtype=torch.float16``/``torch.bfloat16`` (sums in float32), or any dense
   codec object with ``encoded_nbytes``/``encode``/``decode`` (a ``codl.comm`` codec such as
   ``Int8()`` fits, without error feedback).
2. **Inversions** (or eigendecompositions) are assigned by :func:`assign_work`: the ranks form
   KAISA's grid of ``grad_workers = grad_worker_fraction·P`` rows and ``P / grad_workers``
   columns; a column is a layer's *gradient-worker group*, a row a *receiver group*. Layers go,
   largest first, to the column with the least summed cost (n³ for an n x n factor, n for a
   diagonal one), and each factor to the least loaded rank of that column (``colocate_factors``
   keeps a layer's A and G on one rank).
3. **Results** go out in one packed broadcast per owner: the state parts (inverses as upper
   triangles, or eigenpairs) to the other gradient workers of the column, every one of which
   then preconditions the layer's gradient; with ``grad_workers < P`` each gradient worker
   broadcasts the preconditioned gradients of its column's layers along its row.
   ``grad_worker_fraction=1`` (KAISA's COMM-OPT) keeps every inverse on every rank and sends no
   gradient; ``1/P`` (MEM-OPT) keeps each inverse on one rank and broadcasts every
   preconditioned gradient; values in between trade one for the other.

Every rank ends each step with bitwise-identical preconditioned gradients: each is computed by
one rank from state that every rank using it received as the same bytes (the owner unpacks its
own broadcast too), and the KL clip sums the same values in the same order everywhere.

Traffic. :func:`plan_traffic` computes the :class:`TrafficPlan` of an engine (every collective
and its bytes) from the same assignment and packing code without running it; the engine's
``observer`` hears every collective it makes (``codl bench scale`` projects and validates with
both).

Faults. Each collective is bounded by the process group's timeout
(``init_process_group(timeout=...)``); a collective that fails (a peer died or timed out) raises
:class:`KFACDistributedError` naming the ranks that did not answer a roll-call on the group's
store within ``failure_probe_s`` seconds. :func:`save_checkpoint` writes to a temporary file
and renames it, so a checkpoint is never half-written.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from codl.optim.layers import KroneckerBlock, LayerBlock, NormBlock
from codl.optim.methods import ComputeMethod, KFACWarning, SecondOrderMethod

__all__ = [
    "Assignment",
    "DistributedKFAC",
    "FactorCodec",
    "KFACDistributedError",
    "TrafficPlan",
    "assign_work",
    "plan_traffic",
    "save_checkpoint",
]

#: Row width alignment of the packed payloads, so any dtype view of a row is aligned.
_ALIGN = 16


class KFACDistributedError(RuntimeError):
    """A K-FAC collective failed: ``ranks`` are the ranks that did not answer (dead or stuck)."""

    def __init__(self, message: str, ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.ranks = list(ranks)


class FactorCodec(Protocol):
    """What the factor average needs of a codec (``codl.comm``'s dense codecs have it)."""

    def encoded_nbytes(self, numel: int) -> int: ...

    def encode(self, x: torch.Tensor, *, key: int = 0, step: int = 0) -> torch.Tensor: ...

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor: ...


class _Cast:
    """A payload of ``dtype`` bytes, decoded to ``compute`` (the factors' dtype, or float32)."""

    def __init__(self, dtype: torch.dtype, compute: torch.dtype) -> None:
        self.dtype, self.compute = dtype, compute
        self.itemsize = torch.empty((), dtype=dtype).element_size()

    def encoded_nbytes(self, numel: int) -> int:
        return numel * self.itemsize

    def encode(self, x: torch.Tensor, *, key: int = 0, step: int = 0) -> torch.Tensor:
        return x.to(self.dtype).view(torch.uint8)

    def decode(
        self,
        payload: torch.Tensor,
        numel: int,
        *,
        out: torch.Tensor | None = None,
        accumulate: bool = False,
    ) -> torch.Tensor:
        values = payload.view(self.dtype)[:numel].to(self.compute)
        if out is None:
            return values
        return out.add_(values) if accumulate else out.copy_(values)


# --------------------------------------------------------------------------------------------
# work assignment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Who inverts each factor and who preconditions each layer (ranks of the process group).

    The ranks form a grid of ``grad_workers`` rows by ``columns = P / grad_workers`` columns,
    rank ``r`` at row ``r // columns``, column ``r % columns`` (KAISA's layout). ``owner`` maps
    (layer, factor) to the rank that decomposes it; ``column`` maps a layer to the column whose
    ranks hold its state and precondition its gradient; ``loads`` is each rank's summed cost.
    """

    world_size: int
    grad_workers: int
    owner: Mapping[tuple[str, str], int]
    column: Mapping[str, int]
    loads: Sequence[float]

    @property
    def columns(self) -> int:
        return self.world_size // self.grad_workers

    def column_ranks(self, column: int) -> list[int]:
        """The gradient workers of a column (one per row)."""
        return list(range(column, self.world_size, self.columns))

    def row_ranks(self, rank: int) -> list[int]:
        """The receiver group of ``rank``: its row (one rank per column)."""
        start = rank - rank % self.columns
        return list(range(start, start + self.columns))

    def is_grad_worker(self, layer: str, rank: int) -> bool:
        return rank % self.columns == self.column[layer]

    def grad_source(self, layer: str, rank: int) -> int:
        """The rank that sends ``layer``'s preconditioned gradient to ``rank`` (itself if it is
        a gradient worker of the layer)."""
        return rank - rank % self.columns + self.column[layer]


def assign_work(
    costs: Mapping[str, Mapping[str, float]],
    world_size: int,
    grad_workers: int,
    *,
    colocate_factors: bool = False,
) -> Assignment:
    """Greedy least-load assignment of every factor's decomposition (KAISA's scheme).

    Layers in decreasing total cost (ties by name) go to the column with the least summed load;
    within it, factors in decreasing cost go to its least loaded rank (ties: lowest rank), or
    the whole layer to one rank with ``colocate_factors``. A pure function of its arguments:
    every rank computes the same assignment.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, received {world_size!r}")
    if not isinstance(grad_workers, int) or not 1 <= grad_workers <= world_size:
        raise ValueError(
            f"grad_workers: expected an int in [1, {world_size}], received {grad_workers!r}"
        )
    if world_size % grad_workers:
        raise ValueError(
            f"grad_workers: expected a divisor of the world size {world_size}, "
            f"received {grad_workers}"
        )
    columns = world_size // grad_workers
    loads = [0.0] * world_size
    owner: dict[tuple[str, str], int] = {}
    column_of: dict[str, int] = {}
    order = sorted(costs, key=lambda layer: (-sum(costs[layer].values()), layer))
    for layer in order:
        column_loads = [
            sum(loads[r] for r in range(c, world_size, columns)) for c in range(columns)
        ]
        column = column_loads.index(min(column_loads))
        column_of[layer] = column
        members = list(range(column, world_size, columns))
        factors = sorted(costs[layer].items(), key=lambda item: (-item[1], item[0]))
        if colocate_factors:
            rank = min(members, key=lambda r: (loads[r], r))
            loads[rank] += sum(cost for _, cost in factors)
            for factor, _ in factors:
                owner[(layer, factor)] = rank
            continue
        for factor, cost in factors:
            rank = min(members, key=lambda r: (loads[r], r))
            loads[rank] += cost
            owner[(layer, factor)] = rank
    return Assignment(world_size, grad_workers, owner, column_of, loads)


# --------------------------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------------------------

_TRIU: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _triu(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices = _TRIU.get(n)
    if indices is None:
        rows, cols = torch.triu_indices(n, n)
        indices = _TRIU[n] = (rows, cols)
    return indices


def _is_square(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.shape[0] == t.shape[1]


def _packed_numel(shape: torch.Size) -> int:
    """Values a tensor takes packed: the upper triangle of a square matrix, else all."""
    if len(shape) == 2 and shape[0] == shape[1]:
        return shape[0] * (shape[0] + 1) // 2
    return math.prod(shape)


def _pack(t: torch.Tensor) -> torch.Tensor:
    if _is_square(t):
        rows, cols = _triu(t.shape[0])
        return t[rows, cols]
    return t.reshape(-1)


def _unpack_into(out: torch.Tensor, values: torch.Tensor) -> None:
    """``out`` (square: symmetric from its upper triangle) from packed ``values``."""
    if _is_square(out):
        rows, cols = _triu(out.shape[0])
        out[rows, cols] = values
        out[cols, rows] = values
    else:
        out.copy_(values.reshape(out.shape))


def _unpacked(shape: torch.Size, values: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=values.dtype)
    _unpack_into(out, values)
    return out


def _part_shapes(
    method: ComputeMethod, factor: str, size: int, diagonal: bool
) -> dict[str, torch.Size]:
    """The state_dict keys and shapes of one factor's part of a Kronecker state."""
    if method is ComputeMethod.INVERSE:
        return {f"{factor}_inv": torch.Size([size] if diagonal else [size, size])}
    shapes = {f"e{factor}": torch.Size([size])}
    if not diagonal:
        # Eigenvectors are not symmetric: sent whole (packed as a non-square would be).
        shapes[f"V{factor}"] = torch.Size([size, size])
    return shapes


def _vector_numel(key: str, shape: torch.Size) -> int:
    return math.prod(shape) if key.startswith("V") else _packed_numel(shape)


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------


def group_ranks(group: dist.ProcessGroup | None) -> list[int]:
    """The global ranks of ``group`` (the default group when None), in group-rank order."""
    if group is None:
        return list(range(dist.get_world_size()))
    return list(dist.get_process_group_ranks(group))


_ENGINES = 0


class DistributedKFAC:
    """The distributed side of one :class:`~codl.optim.KFACPreconditioner` (built by it).

    Args:
        blocks: the preconditioner's blocks by name (the same on every rank).
        method: the K-FAC method (what a factor's part of the state is).
        group: the process group (None: the default group). Every rank of the default group
            must build the engine (subgroups are made with ``dist.new_group``).
        grad_worker_fraction: in [1/P, 1]; ``fraction·P`` must divide P.
        factor_dtype: None (the factors' dtype), ``torch.float16`` or ``torch.bfloat16``.
        factor_codec: a dense codec object instead (float32 factors), or None.
        colocate_factors: a layer's A and G decomposed on one rank.
        failure_probe_s: how long a rank that saw a collective fail waits for the others to
            answer the roll-call before naming those that did not.
    """

    def __init__(
        self,
        blocks: Mapping[str, LayerBlock],
        method: ComputeMethod,
        group: dist.ProcessGroup | None = None,
        *,
        grad_worker_fraction: float = 1.0,
        factor_dtype: torch.dtype | None = None,
        factor_codec: FactorCodec | None = None,
        colocate_factors: bool = False,
        failure_probe_s: float = 2.0,
    ) -> None:
        global _ENGINES
        if not dist.is_initialized():
            raise RuntimeError("distributed K-FAC: torch.distributed is not initialized")
        self.group = group
        self.global_ranks = group_ranks(group)
        self.size = len(self.global_ranks)
        self.rank = dist.get_rank(group)
        self.method = method
        grad_workers = grad_workers_of(grad_worker_fraction, self.size)
        if factor_dtype is not None and factor_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(
                "factor_dtype: expected None, torch.float16 or torch.bfloat16, "
                f"received {factor_dtype!r}"
            )
        if factor_codec is not None:
            if factor_dtype is not None:
                raise ValueError("factor_codec and factor_dtype: give one of them, not both")
            missing = [
                name
                for name in ("encoded_nbytes", "encode", "decode")
                if not callable(getattr(factor_codec, name, None))
            ]
            if missing:
                raise TypeError(
                    "factor_codec: expected a codec with encoded_nbytes, encode and decode, "
                    f"received {type(factor_codec).__name__} lacking {', '.join(missing)}"
                )
            if getattr(factor_codec, "scheme", "two_phase") != "two_phase":
                raise ValueError(
                    "factor_codec: expected a dense (two_phase) codec, received "
                    f"{getattr(factor_codec, 'scheme', None)!r}"
                )
            if getattr(factor_codec, "error_feedback", False):
                raise ValueError(
                    "factor_codec: expected a codec without error feedback (the factors are "
                    "an average, not a stream of increments)"
                )
        if not isinstance(colocate_factors, bool):
            raise TypeError(f"colocate_factors: expected a bool, received {colocate_factors!r}")
        if not isinstance(failure_probe_s, (int, float)) or not failure_probe_s >= 0:
            raise ValueError(f"failure_probe_s: expected seconds >= 0, got {failure_probe_s!r}")
        self.grad_worker_fraction = float(grad_worker_fraction)
        self.factor_dtype = factor_dtype
        self.factor_codec = factor_codec
        self.failure_probe_s = float(failure_probe_s)
        self.uid = _ENGINES  # the same on every rank: engines are built in the same order
        _ENGINES += 1

        self.blocks = dict(blocks)
        self.kronecker = {
            name: b for name, b in self.blocks.items() if isinstance(b, KroneckerBlock)
        }
        self.sizes = {name: _factor_sizes(b) for name, b in self.kronecker.items()}
        self.assignment = assign_work(
            inversion_costs(self.sizes), self.size, grad_workers, colocate_factors=colocate_factors
        )
        #: Layers whose state has been computed at least once (the same on every rank).
        self.refreshed: set[str] = set()
        #: Bytes this rank sent, by kind, at the last step and in total.
        self.last_bytes: dict[str, int] = {}
        self.total_bytes: dict[str, int] = {"factors": 0, "states": 0, "gradients": 0}
        #: Called after every collective of this engine as ``observer(op, group_size, nbytes)``
        #: (op "all_to_all" with one chunk's bytes, "all_gather" with this rank's bytes,
        #: "broadcast" with the buffer's bytes, "allreduce"): what a link emulator
        #: (``codl.comm.linkmodel.EmulatedLink.wait_collective``) or a byte counter needs.
        self.observer: Callable[[str, int, int], None] | None = None

        a = self.assignment
        self._column_group: dist.ProcessGroup | None = None
        self._row_group: dist.ProcessGroup | None = None
        with self._guard("forming the gradient-worker and receiver groups", self.global_ranks):
            if a.grad_workers == self.size:
                self._column_group = group
            elif a.grad_workers > 1:
                for column in range(a.columns):
                    made = dist.new_group([self.global_ranks[r] for r in a.column_ranks(column)])
                    if column == self.rank % a.columns:
                        self._column_group = made
            if a.columns == self.size:
                self._row_group = group
            elif a.columns > 1:
                for row in range(a.grad_workers):
                    made = dist.new_group(
                        [self.global_ranks[r] for r in a.row_ranks(row * a.columns)]
                    )
                    if row == self.rank // a.columns:
                        self._row_group = made

    # ---- faults -------------------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str, participants: Sequence[int]) -> Iterator[None]:
        """Turns a failed collective into :class:`KFACDistributedError` naming the ranks
        (global) that do not answer a roll-call on the default store."""
        try:
            yield
        except KFACDistributedError:
            raise
        except RuntimeError as error:
            me = self.global_ranks[self.rank]
            silent = self._roll_call(me, [r for r in participants if r != me])
            who = (
                f"rank(s) {silent} did not answer (dead or stuck)"
                if silent
                else f"no rank of {list(participants)} is known to be gone"
            )
            raise KFACDistributedError(
                f"distributed K-FAC: {what} failed on rank {me}: {who}; "
                f"{type(error).__name__}: {error}",
                silent,
            ) from error

    def _roll_call(self, me: int, others: Sequence[int]) -> list[int]:
        try:
            store = dist.distributed_c10d._get_default_store()
            prefix = f"codl-kfac/{self.uid}/alive/"
            store.set(f"{prefix}{me}", "1")
            deadline = time.monotonic() + self.failure_probe_s
            waiting = list(others)
            while waiting:
                waiting = [r for r in waiting if not store.check([f"{prefix}{r}"])]
                if not waiting or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            return waiting
        except Exception:  # the store itself may be gone with the rank that hosted it
            return list(others)

    # ---- factors ------------------------------------------------------------------------------
    def reduce_factors(self, blocks: Sequence[LayerBlock], step: int) -> None:
        """Every block's factors ← their mean over the ranks, identical bits on every rank."""
        started = dict.fromkeys(("factors", "states", "gradients"), 0)
        self.last_bytes = started
        tensors = [b.factors[k] for b in blocks for k in sorted(b.factors)]
        if not tensors or self.size == 1:
            return
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise TypeError(f"distributed K-FAC: factors of one dtype expected, found {dtypes}")
        (dtype,) = dtypes
        flat = torch.cat([_pack(t) for t in tensors]).div_(self.size)
        compressed = self.factor_codec is not None or self.factor_dtype is not None
        codec: FactorCodec
        if self.factor_codec is not None:
            if dtype != torch.float32:
                raise TypeError(f"factor_codec: expected float32 factors, found {dtype}")
            codec = self.factor_codec
        elif self.factor_dtype is not None:
            codec = _Cast(self.factor_dtype, torch.float32)
        else:
            codec = _Cast(dtype, dtype)
        reduced = self._two_phase_mean(flat.float() if compressed else flat, codec, step)
        if compressed and not bool(torch.isfinite(reduced).all()):
            # A 16-bit overflow: the result is the same bytes on every rank, so all of them
            # find it and redo the exchange at full precision.
            warnings.warn(
                "distributed K-FAC: the compressed factor average overflowed; this update is "
                "exchanged in the factors' dtype",
                KFACWarning,
                stacklevel=4,
            )
            reduced = self._two_phase_mean(flat, _Cast(dtype, dtype), step)
        offset = 0
        for t in tensors:
            n = _packed_numel(t.shape)
            _unpack_into(t, reduced[offset : offset + n].to(t.dtype))
            offset += n

    def _two_phase_mean(self, flat: torch.Tensor, codec: FactorCodec, step: int) -> torch.Tensor:
        """Sum of every rank's ``flat`` (already divided by P): chunk j reduced on rank j in
        rank order, then gathered; the result is a pure function of the gathered bytes."""
        p, n = self.size, flat.numel()
        c = -(-n // p)
        padded = torch.zeros(p * c, dtype=flat.dtype)
        padded[:n] = flat
        nbytes = codec.encoded_nbytes(c)
        width = -(-nbytes // _ALIGN) * _ALIGN
        send = torch.zeros(p, width, dtype=torch.uint8)
        for j in range(p):
            send[j, :nbytes] = codec.encode(padded[j * c : (j + 1) * c], key=j, step=step)
        recv = torch.empty_like(send)
        with self._guard("the factor average (all_to_all)", self.global_ranks):
            dist.all_to_all_single(recv.view(-1), send.view(-1), group=self.group)
        self._observe("all_to_all", p, width)
        total = torch.zeros(c, dtype=flat.dtype)
        for i in range(p):  # rank order: the sum is the same wherever it runs
            codec.decode(recv[i, :nbytes], c, out=total, accumulate=True)
        mine = torch.zeros(width, dtype=torch.uint8)
        mine[:nbytes] = codec.encode(total, key=p + self.rank, step=step)
        gathered = torch.empty(p, width, dtype=torch.uint8)
        with self._guard("the factor average (all_gather)", self.global_ranks):
            # all_gather_single where torch has it, else its older name.
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            gather(gathered.view(-1), mine, group=self.group)
        self._observe("all_gather", p, width)
        out = torch.empty(p * c, dtype=flat.dtype)
        for i in range(p):
            codec.decode(gathered[i, :nbytes], c, out=out[i * c : (i + 1) * c])
        self._count("factors", 2 * (p - 1) * nbytes)
        return out[:n]

    def _observe(self, op: str, group_size: int, nbytes: int) -> None:
        if self.observer is not None:
            self.observer(op, group_size, nbytes)

    def _count(self, kind: str, nbytes: int) -> None:
        self.last_bytes[kind] = self.last_bytes.get(kind, 0) + nbytes
        self.total_bytes[kind] += nbytes

    # ---- states -------------------------------------------------------------------------------
    def refresh(
        self,
        blocks: Sequence[KroneckerBlock],
        strategy: SecondOrderMethod,
        damping: float,
        pi: bool,
        max_retries: int,
    ) -> None:
        """Decompose this rank's factors of ``blocks``, then share the parts with the other
        gradient workers of each layer (every one of them unpacks the same bytes)."""
        if not blocks:
            return
        mine = {key for key, rank in self.assignment.owner.items() if rank == self.rank}
        states = strategy.refresh([b.job() for b in blocks], damping, pi, max_retries, wanted=mine)
        for block, state in zip(blocks, states):
            block.state = state
        names = [b.name for b in blocks]
        column = self.rank % self.assignment.columns
        self._share(
            [n for n in names if self.assignment.column[n] == column],
            strategy,
            self._column_group,
            self.assignment.column_ranks(column),
        )
        for name in names:
            if not self.assignment.is_grad_worker(name, self.rank):
                self.kronecker[name].state = None  # another column's: never held here
        self.refreshed.update(names)

    def gather_states(self, strategy: SecondOrderMethod) -> None:
        """Every layer's state on every rank (for a world-size independent state_dict)."""
        if self.assignment.grad_workers == self.size:
            return  # every rank holds every state already
        names = [n for n in self.kronecker if n in self.refreshed]
        self._share(names, strategy, self.group, list(range(self.size)))

    def drop_foreign_states(self) -> None:
        """Free the states this rank does not precondition with (other columns' layers)."""
        for name, block in self.kronecker.items():
            if not self.assignment.is_grad_worker(name, self.rank):
                block.state = None

    def _share(
        self,
        names: Sequence[str],
        strategy: SecondOrderMethod,
        group: dist.ProcessGroup | None,
        members: Sequence[int],
    ) -> None:
        """One broadcast per member of the parts it owns among ``names`` (members: group
        ranks, sorted); then every member loads the layers' states from those bytes."""
        parts: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
        for src in members:
            owned = [
                (name, factor)
                for name in names
                for factor in self.sizes[name]
                if self.assignment.owner[(name, factor)] == src
            ]
            if not owned:
                continue
            layout = []
            numel = 0
            dtype = self.kronecker[owned[0][0]].factors["A"].dtype
            for name, factor in owned:
                size, diagonal = self.sizes[name][factor]
                shapes = _part_shapes(self.method, factor, size, diagonal)
                numel += 1 + sum(_vector_numel(k, s) for k, s in shapes.items())
                layout.append((name, factor, shapes))
            buffer = torch.zeros(numel, dtype=dtype)
            if src == self.rank:
                offset = 0
                for name, _factor, shapes in layout:
                    block = self.kronecker[name]
                    held = {} if block.state is None else block.state.tensors()
                    present = all(k in held for k in shapes)
                    buffer[offset] = 1.0 if present else 0.0
                    offset += 1
                    for key, shape in shapes.items():
                        n = _vector_numel(key, shape)
                        if present:
                            value = held[key]
                            buffer[offset : offset + n] = (
                                value.reshape(-1) if key.startswith("V") else _pack(value)
                            )
                        offset += n
            if len(members) > 1:
                with self._guard(
                    "sharing the K-FAC states", [self.global_ranks[m] for m in members]
                ):
                    dist.broadcast(buffer, self.global_ranks[src], group=group)
                self._observe("broadcast", len(members), buffer.numel() * buffer.element_size())
                if src == self.rank:
                    self._count(
                        "states", (len(members) - 1) * buffer.numel() * buffer.element_size()
                    )
            offset = 0
            for name, _factor, shapes in layout:
                present = bool(buffer[offset] != 0)
                offset += 1
                for key, shape in shapes.items():
                    n = _vector_numel(key, shape)
                    if present:
                        values = buffer[offset : offset + n]
                        parts[name][key] = (
                            values.reshape(shape).clone()
                            if key.startswith("V")
                            else _unpacked(shape, values)
                        )
                    offset += n
        for name in names:
            block = self.kronecker[name]
            block.state = strategy.load(parts[name], diagonal_a=block.diagonal_a)

    # ---- gradients ----------------------------------------------------------------------------
    def share_gradients(
        self, results: dict[str, tuple[list[torch.Tensor], bool]], order: Sequence[str]
    ) -> None:
        """Broadcast each Kronecker layer's preconditioned gradient along the rows from its
        gradient worker; ``results`` holds the local ones and receives the others (in place).
        A result's flag says whether it was preconditioned (False: the plain gradient)."""
        a = self.assignment
        if a.columns == 1:
            return
        row = a.row_ranks(self.rank)
        for src in row:
            column = src % a.columns
            names = [n for n in order if n in self.kronecker and a.column[n] == column]
            if not names:
                continue
            shapes = [[p.shape for p in self.kronecker[n].params()] for n in names]
            dtype = self.kronecker[names[0]].params()[0].dtype
            numel = sum(1 + sum(math.prod(s) for s in ss) for ss in shapes)
            buffer = torch.empty(numel, dtype=dtype)
            if src == self.rank:
                offset = 0
                for name in names:
                    grads, flag = results[name]
                    buffer[offset] = 1.0 if flag else 0.0
                    offset += 1
                    for g in grads:
                        buffer[offset : offset + g.numel()] = g.reshape(-1)
                        offset += g.numel()
            with self._guard(
                "sharing the preconditioned gradients", [self.global_ranks[m] for m in row]
            ):
                dist.broadcast(buffer, self.global_ranks[src], group=self._row_group)
            self._observe("broadcast", len(row), buffer.numel() * buffer.element_size())
            if src == self.rank:
                self._count("gradients", (len(row) - 1) * buffer.numel() * buffer.element_size())
                continue
            offset = 0
            for name, ss in zip(names, shapes):
                flag = bool(buffer[offset] != 0)
                offset += 1
                grads = []
                for s in ss:
                    n = math.prod(s)
                    grads.append(buffer[offset : offset + n].reshape(s).clone())
                    offset += n
                results[name] = (grads, flag)

    def any_across(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        with self._guard("agreeing on a flag", self.global_ranks):
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        self._observe("allreduce", self.size, t.numel() * t.element_size())
        return bool(t.item())


def _factor_sizes(block: KroneckerBlock) -> dict[str, tuple[int, bool]]:
    """Each factor's size and whether it is diagonal (known before any factor exists)."""
    return {"A": (block.a_size, block.diagonal_a), "G": (block.out_features, False)}


def grad_workers_of(grad_worker_fraction: float, world_size: int) -> int:
    """The gradient workers per layer, ``grad_worker_fraction · world_size``: a ValueError
    unless the fraction is in [1/P, 1] and its product with P divides P."""
    if isinstance(grad_worker_fraction, bool) or not isinstance(grad_worker_fraction, (int, float)):
        raise TypeError(
            f"grad_worker_fraction: expected a number, received {grad_worker_fraction!r}"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an integer >= 1, received {world_size!r}")
    workers = grad_worker_fraction * world_size
    grad_workers = round(workers) if math.isfinite(workers) else 0
    if (
        not 1.0 / world_size - 1e-9 <= grad_worker_fraction <= 1.0
        or abs(workers - grad_workers) > 1e-6
        or grad_workers < 1
        or world_size % grad_workers
    ):
        raise ValueError(
            f"grad_worker_fraction: expected a value in [1/{world_size}, 1] whose product "
            f"with the world size {world_size} divides it, received {grad_worker_fraction!r}"
        )
    return grad_workers


def inversion_costs(
    sizes: Mapping[str, Mapping[str, tuple[int, bool]]],
) -> dict[str, dict[str, float]]:
    """The cost :func:`assign_work` balances: n³ for an n x n factor, n for a diagonal one."""
    return {
        name: {f: (float(n) ** 3 if not diagonal else float(n)) for f, (n, diagonal) in s.items()}
        for name, s in sizes.items()
    }


# --------------------------------------------------------------------------------------------
# the traffic plan (what the engine sends, computed without running it)
# --------------------------------------------------------------------------------------------


def _factor_shapes(block: LayerBlock) -> list[torch.Size]:
    """The shapes of ``block``'s factors in the order :meth:`DistributedKFAC.reduce_factors`
    packs them (sorted keys), known before any factor exists."""
    if isinstance(block, KroneckerBlock):
        a = [block.a_size] if block.diagonal_a else [block.a_size, block.a_size]
        return [torch.Size(a), torch.Size([block.out_features, block.out_features])]
    if isinstance(block, NormBlock):
        return [torch.Size([block.units, block.k, block.k])]
    raise TypeError(f"block {block.name!r}: no factor shapes for {type(block).__name__}")


@dataclass(frozen=True)
class TrafficPlan:
    """What :class:`DistributedKFAC` sends for one model, world size and configuration: built
    by :func:`plan_traffic` from the engine's own assignment and packing rules.

    ``factor_*``: the factor average, one all-to-all of ``P`` chunks and one all-gather of one
    chunk per rank, each chunk ``factor_chunk_nbytes`` of payload in a row of
    ``factor_chunk_width`` bytes (the payload rounded up to 16: what goes on the wire).
    ``state_broadcasts``: (column, source rank, bytes) of each broadcast of an inverse update,
    to the column's ``grad_workers`` ranks. ``gradient_broadcasts``: (column, bytes) of each
    broadcast of a step's preconditioned gradients, within every row (``columns`` ranks), from
    the row's rank in that column.
    """

    world_size: int
    assignment: Assignment
    itemsize: int
    factor_numel: int
    factor_chunk_nbytes: int
    factor_chunk_width: int
    state_broadcasts: tuple[tuple[int, int, int], ...]
    gradient_broadcasts: tuple[tuple[int, int], ...]

    @property
    def grad_workers(self) -> int:
        return self.assignment.grad_workers

    @property
    def columns(self) -> int:
        return self.assignment.columns

    def rank_bytes(self, rank: int) -> dict[str, int]:
        """Bytes ``rank`` sends at a step with a factor and an inverse update, as the engine
        counts them (``last_bytes``: payload bytes; a broadcast counted at its source as
        (group - 1) x buffer)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < {self.world_size}, received {rank!r}")
        p = self.world_size
        states = sum(
            (self.grad_workers - 1) * nbytes
            for _, src, nbytes in self.state_broadcasts
            if src == rank
        )
        gradients = sum(
            (self.columns - 1) * nbytes
            for column, nbytes in self.gradient_broadcasts
            if column == rank % self.columns
        )
        factors = 2 * (p - 1) * self.factor_chunk_nbytes if p > 1 else 0
        return {"factors": factors, "states": states, "gradients": gradients}

    def wire_bytes(self) -> dict[str, int]:
        """Bytes on the wire, all ranks together, per occurrence of each exchange: the factor
        average (each rank sends P - 1 rows in each phase), an inverse update's broadcasts and
        one step's gradient broadcasts (a broadcast to g ranks puts (g - 1) x its buffer on
        the wire, whatever its algorithm)."""
        p = self.world_size
        return {
            "factors": p * 2 * (p - 1) * self.factor_chunk_width,
            "states": sum((self.grad_workers - 1) * n for _, _, n in self.state_broadcasts),
            "gradients": self.grad_workers
            * sum((self.columns - 1) * n for _, n in self.gradient_broadcasts),
        }

    def wire_bytes_per_step(self, factor_update_steps: int, inv_update_steps: int) -> float:
        """:meth:`wire_bytes` amortized: factors every ``factor_update_steps``, states every
        ``inv_update_steps``, gradients every step."""
        for name, value in (
            ("factor_update_steps", factor_update_steps),
            ("inv_update_steps", inv_update_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, received {value!r}")
        wire = self.wire_bytes()
        return (
            wire["factors"] / factor_update_steps
            + wire["states"] / inv_update_steps
            + wire["gradients"]
        )


def plan_traffic(
    blocks: Mapping[str, LayerBlock],
    method: ComputeMethod | str,
    world_size: int,
    *,
    grad_worker_fraction: float = 1.0,
    factor_dtype: torch.dtype | None = None,
    factor_codec: FactorCodec | None = None,
    colocate_factors: bool = False,
) -> TrafficPlan:
    """The :class:`TrafficPlan` of a :class:`DistributedKFAC` built with these arguments on
    ``world_size`` ranks (``blocks``: a preconditioner's, e.g. ``KFACPreconditioner(model)``
    on one process): the same :func:`assign_work`, the same packing (upper triangles, one flag
    value per packed part) and the same payload rules. Every block is taken to have factors
    and a gradient (the steady state)."""
    method = ComputeMethod.parse(method)
    grad_workers = grad_workers_of(grad_worker_fraction, world_size)
    if factor_dtype is not None and factor_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            "factor_dtype: expected None, torch.float16 or torch.bfloat16, "
            f"received {factor_dtype!r}"
        )
    if factor_codec is not None and factor_dtype is not None:
        raise ValueError("factor_codec and factor_dtype: give one of them, not both")
    kronecker = {n: b for n, b in blocks.items() if isinstance(b, KroneckerBlock)}
    sizes = {name: _factor_sizes(b) for name, b in kronecker.items()}
    assignment = assign_work(
        inversion_costs(sizes), world_size, grad_workers, colocate_factors=colocate_factors
    )
    params = [p for b in blocks.values() for p in b.params()]
    dtype = params[0].dtype if params else torch.float32
    itemsize = torch.empty((), dtype=dtype).element_size()

    n = sum(_packed_numel(shape) for b in blocks.values() for shape in _factor_shapes(b))
    chunk = -(-n // world_size)
    if factor_codec is not None:
        nbytes = int(factor_codec.encoded_nbytes(chunk))
    elif factor_dtype is not None:
        nbytes = chunk * torch.empty((), dtype=factor_dtype).element_size()
    else:
        nbytes = chunk * itemsize
    width = -(-nbytes // _ALIGN) * _ALIGN

    states: list[tuple[int, int, int]] = []
    if grad_workers > 1:
        for column in range(assignment.columns):
            names = [name for name in kronecker if assignment.column[name] == column]
            for src in assignment.column_ranks(column):
                numel = 0
                for name in names:
                    for factor, (size, diagonal) in sizes[name].items():
                        if assignment.owner[(name, factor)] == src:
                            shapes = _part_shapes(method, factor, size, diagonal)
                            numel += 1 + sum(_vector_numel(k, s) for k, s in shapes.items())
                if numel:
                    states.append((column, src, numel * itemsize))
    gradients: list[tuple[int, int]] = []
    if assignment.columns > 1:
        by_column: dict[int, int] = {}
        for name, block in kronecker.items():
            numel = 1 + sum(p.numel() for p in block.params())
            by_column[assignment.column[name]] = by_column.get(assignment.column[name], 0) + numel
        gradients = [(column, by_column[column] * itemsize) for column in sorted(by_column)]
    return TrafficPlan(
        world_size=world_size,
        assignment=assignment,
        itemsize=itemsize,
        factor_numel=n,
        factor_chunk_nbytes=nbytes if world_size > 1 else 0,
        factor_chunk_width=width if world_size > 1 else 0,
        state_broadcasts=tuple(states),
        gradient_broadcasts=tuple(gradients),
    )


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    obj: Any, path: str | os.PathLike[str], *, save: Callable[..., None] | None = None
) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same directory, flushed
    to disk and then renamed over ``path``: a reader sees the old file or the new one, never a
    half-written one (a crash or a failing rank mid-write leaves the old file as it was).
    ``save(obj, file)`` replaces ``torch.save``."""
    target = Path(path)
    writer = torch.save if save is None else save
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
