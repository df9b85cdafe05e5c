"""codl.optim: K-FAC natural-gradient optimization on CPUs.

- :class:`KFACPreconditioner` replaces a model's ``.grad`` with the K-FAC preconditioned
  gradient, so any torch optimizer can follow (``precond.step(); optimizer.step()``).
- :class:`KFAC` is a ``torch.optim.Optimizer``: preconditioning, KL clipping, weight decay and
  momentum in one step, with optional Levenberg-Marquardt adaptive damping.
- :func:`warmup_polynomial_decay` (a ``LambdaLR``) / :func:`warmup_polynomial_decay_factor`:
  the large-batch learning-rate schedule of Osawa et al. 2019.
- :class:`ComputeMethod`: K-FAC's ``method`` (``"inverse"`` or ``"eigen"``).
- Distributed K-FAC (:mod:`codl.optim.distributed`): give either class a
  ``DistributedDataParallel`` model or a ``process_group``; :func:`save_checkpoint` writes a
  checkpoint atomically, :class:`KFACDistributedError` names the ranks that failed.

How each layer type gets its factors and arranges its gradient is in :mod:`codl.optim.layers`;
what each method makes of the factors (inverses or eigenbases, all through one batched
:mod:`codl.linalg` call per update) and how it preconditions is in :mod:`codl.optim.methods`.
"""

from __future__ import annotations

from codl.optim.distributed import KFACDistributedError, save_checkpoint
from codl.optim.kfac import KFAC
from codl.optim.methods import ComputeMethod, KFACWarning
from codl.optim.preconditioner import KFACPreconditioner
from codl.optim.schedules import warmup_polynomial_decay, warmup_polynomial_decay_factor

__all__ = [
    "KFAC",
    "ComputeMethod",
    "KFACDistributedError",
    "KFACPreconditioner",
    "KFACWarning",
    "save_checkpoint",
    "warmup_polynomial_decay",
    "warmup_polynomial_decay_factor",
]
