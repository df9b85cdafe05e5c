"""LeNet-300-100, the fully connected network of the pruning literature.

Y. LeCun et al. 1998 (Proc. IEEE 86(11)); pruned 12x by Han et al. (NeurIPS 2015) and packed
40x by Deep Compression (Han, Mao and Dally, ICLR 2016, Table 2): 784-300-100-10 with ReLU.
"""

from __future__ import annotations

from torch import nn

__all__ = ["LeNet300100"]


class LeNet300100(nn.Sequential):
    """flatten - linear 784→300 - ReLU - linear 300→100 - ReLU - linear 100→10."""

    def __init__(self, num_classes: int = 10, hidden: tuple[int, int] = (300, 100)) -> None:
        first, second = hidden
        super().__init__(
            nn.Flatten(),
            nn.Linear(28 * 28, first),
            nn.ReLU(),
            nn.Linear(first, second),
            nn.ReLU(),
            nn.Linear(second, num_classes),
        )
