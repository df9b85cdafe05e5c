"""Clean and adversarial accuracy of models, and the markdown table of a robustness report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from codl.data.checks import check_classifier_inputs
from codl.robust.attacks import Attack

__all__ = ["RobustnessRow", "format_markdown", "robust_accuracy"]


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attack: Attack | None,
    *,
    batch_size: int = 500,
    progress: bool = True,
) -> float:
    """Top-1 accuracy in percent on ``attack(model, x, y)`` for every batch (on the clean
    images when ``attack`` is None); eval mode, the model's mode restored."""
    model, images, labels = check_classifier_inputs(model, images, labels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, received {batch_size!r}")
    was_training = model.training
    model.eval()
    correct = 0
    starts = range(0, len(images), batch_size)
    try:
        for start in tqdm(starts, desc="robust accuracy", disable=not progress, leave=False):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                correct += int((model(x).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return 100.0 * correct / max(1, len(images))


@dataclass
class RobustnessRow:
    """One model of a robustness report: accuracies in percent on the test split."""

    model: str
    clean_accuracy: float
    adversarial_accuracy: float
    compression: str = ""
    adversarially_fine_tuned: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_markdown(rows: Sequence[RobustnessRow], attack_name: str = "PGD") -> str:
    """A markdown table of ``rows``: model, compression, clean and adversarial accuracy."""
    lines = [
        f"| model | compression | adversarial fine-tuning | clean % | {attack_name} % |",
        "|---|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.compression or '-'} | "
            f"{'yes' if row.adversarially_fine_tuned else 'no'} | "
            f"{row.clean_accuracy:.2f} | {row.adversarial_accuracy:.2f} |"
        )
    return "\n".join(lines)
