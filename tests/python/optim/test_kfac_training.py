"""A short real training run: K-FAC against SGD with momentum on the shipped Fashion-MNIST
subset, same seed, same batches, a learning rate tuned for each (SGD's best of 0.02/0.05/0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codl.data.fashion_mnist import load_split
from codl.optim import KFAC

STEPS = 30
BATCH = 64


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _train(name: str) -> float:
    images, labels, _ = load_split("train", "subset")
    torch.manual_seed(0)
    model = _model()
    optimizer: torch.optim.Optimizer
    if name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = KFAC(
            model, lr=0.03, momentum=0.9, damping=1e-2, factor_update_steps=5, inv_update_steps=10
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    for step in range(STEPS):
        batch = order[step * BATCH : (step + 1) * BATCH]
        optimizer.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(images[:1000]), labels[:1000]))


def test_kfac_loss_falls_below_sgd_on_fashion_mnist_subset() -> None:
    sgd_loss = _train("sgd")
    kfac_loss = _train("kfac")
    assert kfac_loss < sgd_loss, (kfac_loss, sgd_loss)
    assert kfac_loss < 0.8 * 2.303  # well below chance (ln 10)
