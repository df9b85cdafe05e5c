"""codl.optim: K-FAC natural-gradient optimization on CPUs.

- :class:`KFACPreconditioner` replaces a model's ``.grad`` with the K-FAC preconditioned
  gradient, so any torch optimizer can follow (``precond.step(); optimizer.step()``).
- :class:`KFAC` is a ``torch.optim.Optimizer``: preconditioning, KL clipping, weight decay and
  momentum in one step, with optional Levenberg-Marquardt adaptive damping.
- :func:`warmup_polynomial_decay` (a ``LambdaLR``) / :func:`warmup_polynomial_decay_factor`:
  the large-batch learning-rate schedule of Osawa et al. 2019.

The per-layer factor math is in :mod:`codl.optim.layers`; inverses and eigendecompositions of
all factors go through one batched :mod:`codl.linalg` call per inverse update.
"""

from __future__ import annotations

from codl.optim.kfac import KFAC
from codl.optim.preconditioner import KFACPreconditioner, KFACWarning
from codl.optim.schedules import warmup_polynomial_decay, warmup_polynomial_decay_factor

__all__ = [
    "KFAC",
    "KFACPreconditioner",
    "KFACWarning",
    "warmup_polynomial_decay",
    "warmup_polynomial_decay_factor",
]
