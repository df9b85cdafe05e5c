"""K-FAC's step overhead over SGD on the Fashion-MNIST CNN, amortized over a window of steps.

The K-FAC issue's measure: :class:`codl.models.FashionCNN`, batch 128, factors every 10 steps
and inverses every 100 (and every 10), against torch's SGD with momentum on the same model and
batches. Each timed call runs a whole window of steps, so the factor and inverse updates it
contains are counted at their real frequency. The table's columns are ``K-FAC ms`` and ``SGD ms``
per window; ``ratio`` is SGD time / K-FAC time (< 1: K-FAC costs more per step);
``overhead_x`` in the notes is its inverse, the figure the issue bounds.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from codl.bench import Case, Result, run_cases
from codl.models import FashionCNN

BATCH = 128
WINDOW = 100


class _Trainer:
    """Runs ``steps`` training steps per call on fixed random batches (data loading excluded)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = model
        self.optimizer = optimizer
        self.steps = steps
        self.images = torch.randn(4, BATCH, 1, 28, 28, generator=generator)
        self.labels = torch.randint(0, 10, (4, BATCH), generator=generator)

    def __call__(self) -> float:
        loss = torch.zeros(())
        for step in range(self.steps):
            images, labels = self.images[step % 4], self.labels[step % 4]
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
        return float(loss.detach())


def _both_finite(ours: Any, theirs: Any) -> bool:
    # The two optimizers train differently; both must at least still be training.
    return bool(torch.isfinite(torch.tensor([ours, theirs])).all())


def cases(window: int) -> list[Case]:
    from codl.optim import KFAC

    torch.manual_seed(0)
    base = FashionCNN()
    result = []
    for inverse_every in (100, 10):
        kfac_model, sgd_model = copy.deepcopy(base), copy.deepcopy(base)
        kfac = KFAC(
            kfac_model,
            lr=0.01,
            momentum=0.9,
            factor_update_steps=10,
            inv_update_steps=inverse_every,
        )
        sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.01, momentum=0.9)
        result.append(
            Case(
                f"{window} steps, inverses/{inverse_every}",
                window,
                _Trainer(kfac_model, kfac, window),
                _Trainer(sgd_model, sgd, window),
                _both_finite,
            )
        )
    return result


def run(*, size: int | None, repeat: int, threads: int, progress: bool) -> list[Result]:
    """``size``: steps per timed window (default 100, one inverse update at 1/100)."""
    window = size or WINDOW
    results = run_cases("kfac", cases(window), repeat, threads, progress)
    return [
        replace(
            r,
            codl_label="K-FAC",
            baseline_label="SGD",
            notes={
                "overhead_x": round(r.codl_ms / r.baseline_ms, 3),
                "kfac_ms_per_step": round(r.codl_ms / window, 2),
                "sgd_ms_per_step": round(r.baseline_ms / window, 2),
            },
        )
        for r in results
    ]
