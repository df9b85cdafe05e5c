"""Fashion-MNIST loader (Zalando Research, MIT licence).

Search order for the IDX files of a split:

1. the ``root`` argument, if given -- and then *only* there;
2. else ``$CODL_DATA``, if set and non-empty -- and then *only* there;
3. else Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``);
4. else the small real subset shipped inside this package (first 3000 train / 1000 test
   examples, see ``fashion_mnist_subset/README.md``).

Each location may hold each file gzipped (``train-images-idx3-ubyte.gz``) or raw
(``train-images-idx3-ubyte``); the raw file is preferred when both exist. Nothing is
downloaded and nothing is cached on disk. The source used is logged on the
``codl.data`` logger at INFO level and returned by :func:`load_fashion_mnist` /
:func:`fashion_mnist_source`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import torch

from codl.data.idx import DataFormatError, StrPath, read_idx

__all__ = [
    "DEBIAN_DIR",
    "ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "SUBSET_DIR",
    "DataChoice",
    "DatasetSource",
    "FashionMNIST",
    "SourceKind",
    "Split",
    "fashion_mnist",
    "fashion_mnist_source",
    "load_fashion_mnist",
    "load_split",
    "normalize_images",
]

logger = logging.getLogger("codl.data")

#: The 10 class names, indexed by label.
FASHION_MNIST_CLASSES: Final[tuple[str, ...]] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Environment variable naming a directory that holds the Fashion-MNIST files.
ENV_VAR: Final = "CODL_DATA"
#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_DIR: Path = Path("/usr/share/datasets/fashion-mnist")
#: The subset shipped with the package (used when nothing else is found).
SUBSET_DIR: Final[Path] = Path(__file__).resolve().parent / "fashion_mnist_subset"

Split = Literal["train", "test"]
SourceKind = Literal["root", "env", "debian", "subset"]

_FILE_STEMS: Final[dict[str, tuple[str, str]]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_SIZE: Final = (28, 28)
_NUM_CLASSES: Final = len(FASHION_MNIST_CLASSES)


@dataclass(frozen=True)
class DatasetSource:
    """Where a Fashion-MNIST split was (or would be) loaded from.

    Attributes:
        kind: how the location was chosen: ``"root"`` (the ``root`` argument),
            ``"env"`` (``$CODL_DATA``), ``"debian"`` (the Debian package directory) or
            ``"subset"`` (the subset shipped with the package).
        path: the directory holding the files.
        split: ``"train"`` or ``"test"``.
        images_file: the images file used (``.gz`` or raw).
        labels_file: the labels file used (``.gz`` or raw).
        num_examples: the number of examples in the split.
    """

    kind: SourceKind
    path: Path
    split: Split
    images_file: Path
    labels_file: Path
    num_examples: int


@dataclass(frozen=True)
class FashionMNIST:
    """A loaded split: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,), and its source."""

    images: torch.Tensor
    labels: torch.Tensor
    source: DatasetSource


def _check_split(split: str) -> Split:
    if split == "train":
        return "train"
    if split == "test":
        return "test"
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _find_file(directory: Path, stem: str) -> Path | None:
    """Return ``directory/stem`` if it is a file, else ``directory/stem.gz``, else None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(directory: Path, split: Split) -> tuple[Path, Path] | None:
    stems = _FILE_STEMS[split]
    images, labels = _find_file(directory, stems[0]), _find_file(directory, stems[1])
    if images is None or labels is None:
        return None
    return images, labels


def _missing_error(directory: Path, split: Split, how: str) -> FileNotFoundError:
    stems = _FILE_STEMS[split]
    expected = ", ".join(f"{s}[.gz]" for s in stems)
    return FileNotFoundError(
        f"Fashion-MNIST {split} split not found in {directory} ({how}): expected files {expected}"
    )


def _resolve(split: Split, root: StrPath | None) -> tuple[SourceKind, Path, Path, Path]:
    """Pick the location for ``split``; return (kind, directory, images file, labels file)."""
    if root is not None:
        directory = Path(root).expanduser()
        found = _locate(directory, split)
        if found is None:
            raise _missing_error(directory, split, "given as root")
        return "root", directory, *found
    env = os.environ.get(ENV_VAR)
    if env:
        directory = Path(env).expanduser()
        found = _locate(directory, split)
        if found is None:
            raise _missing_error(directory, split, f"from ${ENV_VAR}")
        return "env", directory, *found
    found = _locate(DEBIAN_DIR, split)
    if found is not None:
        return "debian", DEBIAN_DIR, *found
    found = _locate(SUBSET_DIR, split)
    if found is None:  # pragma: no cover - only if the package is broken
        raise _missing_error(SUBSET_DIR, split, "the subset shipped with codl")
    return "subset", SUBSET_DIR, *found


def _read_split(
    images_file: Path, labels_file: Path
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Read and validate an images/labels pair; return uint8 (N,28,28) and uint8 (N,)."""
    # expected_dtype_code=0x08 guarantees uint8, so asarray only narrows the static type
    images = np.asarray(
        read_idx(images_file, expected_ndim=3, expected_dtype_code=0x08), dtype=np.uint8
    )
    if images.shape[1:] != _IMAGE_SIZE:
        raise DataFormatError(
            f"{images_file}: wrong image size: expected {_IMAGE_SIZE[0]}x{_IMAGE_SIZE[1]}, "
            f"found {images.shape[1]}x{images.shape[2]}"
        )
    labels = np.asarray(
        read_idx(labels_file, expected_ndim=1, expected_dtype_code=0x08), dtype=np.uint8
    )
    if labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"count mismatch: {labels_file} has {labels.shape[0]} labels but "
            f"{images_file} has {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        bad = int(np.argmax(labels >= _NUM_CLASSES))
        raise DataFormatError(
            f"{labels_file}: label out of range at index {bad}: expected 0..{_NUM_CLASSES - 1}, "
            f"found {int(labels[bad])}"
        )
    return images, labels


def load_fashion_mnist(split: str = "train", root: StrPath | None = None) -> FashionMNIST:
    """Load a Fashion-MNIST split together with the source it came from.

    Args:
        split: ``"train"`` (60000 examples) or ``"test"`` (10000 examples); the shipped
            subset has 3000 / 1000.
        root: a directory holding the IDX files (gzipped or raw). If given, only this
            directory is searched; otherwise ``$CODL_DATA``, then the Debian directory,
            then the shipped subset (see the module docstring).

    Returns:
        A :class:`FashionMNIST` with ``images`` (``torch.uint8``, shape (N, 28, 28)),
        ``labels`` (``torch.int64``, shape (N,)) and ``source``.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        FileNotFoundError: ``root`` or ``$CODL_DATA`` is set but lacks the files.
        DataFormatError: a file is corrupt, truncated or inconsistent.
    """
    s = _check_split(split)
    kind, directory, images_file, labels_file = _resolve(s, root)
    images, labels = _read_split(images_file, labels_file)
    source = DatasetSource(
        kind=kind,
        path=directory,
        split=s,
        images_file=images_file,
        labels_file=labels_file,
        num_examples=int(images.shape[0]),
    )
    logger.info(
        "Fashion-MNIST %s split: %d examples from %s (source: %s)",
        s,
        source.num_examples,
        directory,
        kind,
    )
    return FashionMNIST(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        source=source,
    )


# Mean and standard deviation of the training pixels (scaled to [0, 1]).
_PIXEL_MEAN = 0.2860
_PIXEL_STD = 0.3530


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``(N, 28, 28)`` as a model reads them: float32 ``(N, 1, 28, 28)``,
    ``(pixel / 255 - 0.2860) / 0.3530`` (the training pixels' mean and standard deviation)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = str(images.dtype) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images: expected a torch.uint8 tensor of pixels, received {got}")
    if images.dim() != 3:
        raise ValueError(f"images: expected shape (N, H, W), received {tuple(images.shape)}")
    normalized = images.to(torch.float32).div_(255.0).sub_(_PIXEL_MEAN).div_(_PIXEL_STD)
    return normalized.unsqueeze(1)


def fashion_mnist(
    split: str = "train", root: StrPath | None = None, *, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split as ``(images, labels)``.

    With ``normalize=True``, ``images`` is what a model reads: ``torch.float32`` of shape
    (N, 1, 28, 28), ``(pixel / 255 - mean) / std`` with the training pixels' mean and standard
    deviation (:func:`normalize_images`; the units of :func:`codl.robust.pixel_eps`). Otherwise
    (the default) ``images`` is a ``torch.uint8`` tensor of shape (N, 28, 28) and ``labels`` a
    ``torch.int64`` tensor of shape (N,) with values in 0..9 (see
    :data:`FASHION_MNIST_CLASSES`). The source used is logged on the ``codl.data``
    logger at INFO level; use :func:`load_fashion_mnist` or :func:`fashion_mnist_source`
    to get it programmatically. Arguments, search order and errors are as for
    :func:`load_fashion_mnist`.
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected True or False, received {type(normalize).__name__}")
    data = load_fashion_mnist(split, root)
    return (normalize_images(data.images) if normalize else data.images), data.labels


def fashion_mnist_source(split: str = "train", root: StrPath | None = None) -> DatasetSource:
    """Say where :func:`fashion_mnist` would load ``split`` from, without keeping the data.

    The files are read and fully validated, so ``num_examples`` is trustworthy. Arguments
    and errors are as for :func:`load_fashion_mnist`.
    """
    return load_fashion_mnist(split, root).source


DataChoice = Literal["full", "subset"]


def load_split(split: str, data: DataChoice) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images as normalised float32 (N, 1, 28, 28), labels int64 (N,), and the source kind.

    ``data="full"`` takes codl's usual search (``$CODL_DATA``, then Debian's
    ``dataset-fashion-mnist``) and raises ``FileNotFoundError`` if only the shipped subset is
    found, rather than reporting subset figures as full ones; ``"subset"`` reads the subset.
    """
    if data not in ("full", "subset"):
        raise ValueError(f"data must be 'full' or 'subset', got {data!r}")
    loaded = load_fashion_mnist(split, root=SUBSET_DIR if data == "subset" else None)
    if data == "full" and loaded.source.kind == "subset":
        raise FileNotFoundError(
            "data='full' needs the full Fashion-MNIST files ($CODL_DATA or "
            "/usr/share/datasets/fashion-mnist), found only the shipped subset"
        )
    # Reading the subset through root= reports kind "root"; name it for what it is.
    kind = "subset" if data == "subset" else loaded.source.kind
    return normalize_images(loaded.images), loaded.labels, kind
