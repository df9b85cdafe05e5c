"""Small reference models shared by codl's demos, benchmarks and tests."""

from __future__ import annotations

from torch import nn


class FashionCNN(nn.Sequential):
    """The Fashion-MNIST CNN of codl's K-FAC benchmarks (and of the anchors' measurements).

    conv 1→32 5x5 pad 2, ReLU, max-pool 2; conv 32→64 5x5 pad 2, ReLU, max-pool 2;
    fc 3136→256, ReLU; fc 256→10. No BatchNorm, so the comparison is about the optimizer.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )
