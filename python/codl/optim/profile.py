"""K-FAC's local work on one process, measured part by part, and each rank's share of it under a
:class:`~codl.optim.distributed.TrafficPlan`: the compute terms of the scaling projection
(``codl bench scale``; the communication terms come from the plan and
:mod:`codl.comm.linkmodel`).

One :class:`~codl.optim.KFACPreconditioner` on the model (the Linear layers' factored product
off, as in distributed runs) is stepped once so that factors and states exist; then, after a
forward and backward pass each time, the median over ``repeat`` runs of

- ``factor_s``: every block's factor statistics and EMA (what each rank does at a factor
  update, on its own batch);
- ``inversion_s[(layer, factor)]``: each Kronecker factor's decomposition alone (the work
  :func:`~codl.optim.distributed.assign_work` hands to one rank);
- ``precondition_s[layer]``: each Kronecker layer's preconditioned gradient (done by the
  layer's gradient workers);
- ``local_s``: the rest of a step without updates (unit-wise layers, the KL clip, writing the
  gradients back): a whole such step less the preconditioning above, never negative.

A rank's share (:func:`rank_work`): at an inverse update the slowest rank's summed
decompositions; every step the slowest column's summed preconditioning. Decomposing factors
one at a time loses the batching of :mod:`codl.linalg` (one call for all factors), so the
single-node total is an upper bound of a real single-process inverse update.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from codl.optim.distributed import TrafficPlan
from codl.optim.hyperparams import resolve_float
from codl.optim.layers import KroneckerBlock
from codl.optim.methods import ComputeMethod, method_for
from codl.optim.preconditioner import KFACPreconditioner

__all__ = ["KFACWork", "profile_work", "rank_work"]


@dataclass(frozen=True)
class KFACWork:
    """Seconds of K-FAC's local work on one process (module docstring)."""

    factor_s: float
    inversion_s: Mapping[tuple[str, str], float]
    precondition_s: Mapping[str, float]
    local_s: float

    def single_node(self, factor_update_steps: int, inv_update_steps: int) -> float:
        """Amortized seconds per step of all of it on one rank."""
        return (
            self.factor_s / factor_update_steps
            + sum(self.inversion_s.values()) / inv_update_steps
            + sum(self.precondition_s.values())
            + self.local_s
        )


def _nothing() -> None:
    pass


def _median_s(fn: Callable[[], object], prepare: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        prepare()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile_work(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    method: ComputeMethod | str = "inverse",
    damping: float = 3e-2,
    max_factor_rows: int | None = 4096,
    repeat: int = 5,
) -> KFACWork:
    """Measures K-FAC's local work on ``model`` for one ``batch`` (module docstring). The model
    gets a preconditioner's hooks for the duration and its ``.grad`` is left cleared."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat: expected an integer >= 1, received {repeat!r}")
    inputs, targets = batch
    precond = KFACPreconditioner(
        model,
        method=method,
        damping=damping,
        factor_update_steps=1,
        inv_update_steps=1,
        max_factor_rows=max_factor_rows,
        factored_linear=False,
    )
    strategy = method_for(precond.method)
    rtol = KFACPreconditioner._check_rtol
    blocks = list(precond.blocks.values())
    kronecker = [b for b in blocks if isinstance(b, KroneckerBlock)]

    def backward() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()  # type: ignore[no-untyped-call]

    decay = resolve_float(precond.factor_decay, "factor_decay", 0, high=1.0 - 1e-12)
    try:
        backward()
        precond.step()  # factors and states exist from here on

        def update_factors() -> None:
            for block in blocks:
                if block.has_records(False):
                    block.update_factors(decay, False, precond.loss_reduction, max_factor_rows)
            for block in blocks:
                block.clear_records()

        factor_s = _median_s(update_factors, backward, repeat)

        with torch.no_grad():
            inversion_s: dict[tuple[str, str], float] = {}
            for block in kronecker:
                for factor in ("A", "G"):
                    decompose = functools.partial(
                        strategy.refresh,
                        [block.job()],
                        damping,
                        precond.pi_damping,
                        precond.max_inverse_retries,
                        {(block.name, factor)},
                    )
                    inversion_s[(block.name, factor)] = _median_s(decompose, _nothing, repeat)
        backward()
        for each in blocks:
            each.clear_records()
        with torch.no_grad():
            precondition_s = {
                block.name: _median_s(
                    functools.partial(block.precondition, damping, rtol(block)), _nothing, repeat
                )
                for block in kronecker
            }
        # A step without updates: only the plain steps after the first are timed.
        precond.factor_update_steps = precond.inv_update_steps = 1 << 40
        step_s = _median_s(precond.step, backward, repeat)
    finally:
        precond.remove()
        model.zero_grad(set_to_none=True)
    return KFACWork(
        factor_s=factor_s,
        inversion_s=inversion_s,
        precondition_s=precondition_s,
        local_s=max(0.0, step_s - sum(precondition_s.values())),
    )


def rank_work(plan: TrafficPlan, work: KFACWork) -> tuple[float, float]:
    """(seconds of the slowest rank's decompositions at an inverse update, seconds of the
    slowest column's preconditioning per step) under ``plan``."""
    missing = set(plan.assignment.owner) - set(work.inversion_s)
    if missing:
        raise ValueError(f"work: no inversion time for {sorted(missing)[:4]}")
    per_rank: dict[int, float] = {}
    for key, rank in plan.assignment.owner.items():
        per_rank[rank] = per_rank.get(rank, 0.0) + work.inversion_s[key]
    per_column: dict[int, float] = {}
    for layer, column in plan.assignment.column.items():
        per_column[column] = per_column.get(column, 0.0) + work.precondition_s.get(layer, 0.0)
    return max(per_rank.values(), default=0.0), max(per_column.values(), default=0.0)
