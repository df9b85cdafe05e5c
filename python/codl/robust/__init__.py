"""Robust compression: adversarial attacks and adversarial fine-tuning of compressed models.

* :func:`fgsm` (Goodfellow et al., ICLR 2015) and :func:`pgd` (Madry et al., ICLR 2018), L∞,
  with the inputs kept in their valid range (:func:`fashion_mnist_range`, :func:`pixel_eps`);
  :class:`FGSM` and :class:`PGD` bind their settings.
* :func:`adversarial_finetune`: training on clean and adversarial examples with pruning masks,
  k-means weight sharing or ternary layers kept in the loop.
* :func:`robust_accuracy` and :func:`format_markdown` for reports
  (``benchmarks/robust_compression.py``).
"""

from __future__ import annotations

from codl.robust.attacks import (
    FGSM,
    PGD,
    Attack,
    fashion_mnist_range,
    fgsm,
    pgd,
    pixel_eps,
)
from codl.robust.report import RobustnessRow, format_markdown, robust_accuracy
from codl.robust.training import AdversarialHistory, adversarial_finetune

__all__ = [
    "FGSM",
    "PGD",
    "AdversarialHistory",
    "Attack",
    "RobustnessRow",
    "adversarial_finetune",
    "fashion_mnist_range",
    "fgsm",
    "format_markdown",
    "pgd",
    "pixel_eps",
    "robust_accuracy",
]
