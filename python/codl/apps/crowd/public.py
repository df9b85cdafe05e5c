"""The public crowd-counting data sets, read from where their releases unpack, as the same items
as :class:`~codl.apps.crowd.data.SyntheticCrowds`: so a model trained or adapted on synthetic
frames is trained or measured on real ones by the same code, and its figures compare with the
papers'.

- :class:`ShanghaiTech`: Part A (482 dense images from the web) and Part B (716 street images
  of Shanghai) of Zhang et al., "Single-Image Crowd Counting via Multi-Column Convolutional
  Neural Network", CVPR 2016. ``part_A_final/train_data/images/IMG_1.jpg`` is annotated by
  ``part_A_final/train_data/ground-truth/GT_IMG_1.mat``, whose ``image_info`` (a 1 x 1 cell of
  a struct) has the N x 2 (x, y) head positions in its field ``location``.
- :class:`UCFQNRF`: the 1,535 high-resolution images (up to about 9,000 pixels a side, 49 to
  12,865 people) of Idrees et al., "Composition Loss for Counting, Density Map Estimation and
  Localization in Dense Crowds", ECCV 2018. ``Train/img_0001.jpg`` is annotated by
  ``Train/img_0001_ann.mat``, whose ``annPoints`` are the N x 2 (x, y) head positions.

The data sets cannot be shipped (their licences are the authors'), so the user points at the
folder holding them. An image is cropped at the bottom and right (not resized) to multiples of
``downsample``, the counting net's output stride; ``max_side`` first shrinks the largest images,
which a CPU cannot take whole. The density map is :func:`~codl.apps.crowd.scenes.density_map`'s
geometry-adaptive one, summing to the number of heads in the frame the net sees. Pixels are
read as stored, without EXIF rotation, as MATLAB's ``imread`` showed them to the annotators.

Every file is checked as it is read: a missing or corrupt one raises a :class:`CrowdDataError`
naming it. Annotations are read with :func:`scipy.io.loadmat`, which never unpickles, and must
be finite numeric N x 2 arrays.
"""

from __future__ import annotations

import abc
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io  # type: ignore[import-untyped]
import torch
from PIL import Image
from torch.utils.data import Dataset

from codl.apps.crowd.scenes import density_map

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")


class CrowdDataError(ValueError):
    """A crowd-counting data set on disk is missing, incomplete or corrupt; the message names
    the folder or file at fault."""


def _natural_key(name: str) -> tuple[tuple[Any, ...], str]:
    # re.split with a group alternates text and digits, so like positions compare like types.
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CrowdDataError(f"no such folder: {folder}")
    images = [
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not images:
        raise CrowdDataError(f"no images (.jpg/.jpeg/.png) in {folder}")
    return sorted(images, key=lambda path: _natural_key(path.name))


def _below(value: int) -> float:
    """The largest float32 below ``value``: a coordinate that lies inside a frame of that size."""
    return float(torch.nextafter(torch.tensor(float(value)), torch.tensor(0.0)))


def _load_mat(path: Path, key: str) -> Any:
    try:
        # variable_names: only the annotation is read, whatever else the file holds.
        contents = scipy.io.loadmat(str(path), variable_names=[key])
    except Exception as error:  # a corrupt file fails anywhere in the parser
        raise CrowdDataError(
            f"cannot read annotation {path}: {type(error).__name__}: {error}"
        ) from error
    if key not in contents:
        raise CrowdDataError(f"no '{key}' (head positions) in {path}")
    return contents[key]


def _unwrap(value: Any) -> Any:
    """The one element of 1 x 1 cells and structs, however deeply MATLAB nested them."""
    while (
        isinstance(value, np.ndarray)
        and value.size == 1
        and (value.dtype == object or value.dtype.names)
    ):
        value = value.reshape(-1)[0]
    return value


def _points(value: Any, path: Path, name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``value`` checked to be a finite numeric N x 2 array (an empty one, MATLAB's ``[]``, is no
    head), as float64."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise CrowdDataError(f"'{name}' in {path} is not a numeric array (it is {kind})")
    if value.size == 0:
        return np.zeros((0, 2))
    if value.ndim != 2 or value.shape[1] != 2:
        raise CrowdDataError(f"'{name}' in {path} must be N x 2 (x, y), got {value.shape}")
    points = value.astype(np.float64)
    if not np.isfinite(points).all():
        raise CrowdDataError(f"'{name}' in {path} has non-finite head positions")
    return points


class _AnnotatedImages(Dataset[tuple[torch.Tensor, torch.Tensor]], abc.ABC):
    """Images and their head annotations: the item logic :class:`ShanghaiTech` and
    :class:`UCFQNRF` share; they say where the files are and how an annotation is read."""

    def __init__(
        self, paths: list[Path], annotations: list[Path], *, downsample: int, max_side: int | None
    ) -> None:
        for image, annotation in zip(paths, annotations, strict=True):
            if not annotation.is_file():
                raise CrowdDataError(f"no annotation {annotation} for image {image}")
        self.paths: tuple[Path, ...] = tuple(paths)
        """The image files, in natural order (``IMG_2`` before ``IMG_10``)."""
        self.annotation_paths: tuple[Path, ...] = tuple(annotations)
        """Each image's annotation file."""
        self.downsample, self.max_side = downsample, max_side

    @abc.abstractmethod
    def _read_points(self, path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The N x 2 (x, y) head positions of the annotation file ``path``."""

    def __len__(self) -> int:
        return len(self.paths)

    def _index(self, index: int) -> int:
        if not -len(self.paths) <= index < len(self.paths):
            raise IndexError(f"image {index} of {len(self.paths)}")
        return index % len(self.paths)

    def _geometry(self, path: Path, width: int, height: int) -> tuple[int, int, int, int]:
        """The resized width and height, then the cropped ones."""
        resized_w, resized_h = width, height
        if self.max_side is not None and max(width, height) > self.max_side:
            scale = self.max_side / max(width, height)
            resized_w = self.max_side if width >= height else max(round(width * scale), 1)
            resized_h = self.max_side if height > width else max(round(height * scale), 1)
        crop_w = resized_w // self.downsample * self.downsample
        crop_h = resized_h // self.downsample * self.downsample
        if not crop_w or not crop_h:
            raise CrowdDataError(
                f"image {path} ({resized_w} x {resized_h} pixels) is smaller than downsample "
                f"{self.downsample}"
            )
        return resized_w, resized_h, crop_w, crop_h

    def _heads(self, index: int, width: int, height: int) -> torch.Tensor:
        points = self._read_points(self.annotation_paths[index])
        heads = torch.from_numpy(points[:, ::-1].copy()).to(torch.float32)  # (row, column)
        # Annotations lie on the image up to a pixel past its edge (MATLAB counts from 1): those
        # are clamped in, farther ones are not in the picture.
        size = torch.tensor([float(height), float(width)])
        near = ((heads > -1.0) & (heads < size + 1.0)).all(dim=1)
        heads = heads[near].clamp(torch.zeros(2), torch.tensor([_below(height), _below(width)]))
        resized_w, resized_h, crop_w, crop_h = self._geometry(self.paths[index], width, height)
        if (resized_w, resized_h) != (width, height):
            heads = heads * torch.tensor([resized_h / height, resized_w / width])
            limit = torch.tensor([_below(resized_h), _below(resized_w)])
            heads = heads.clamp(torch.zeros(2), limit)  # rounding must not push one out
        return heads[(heads[:, 0] < crop_h) & (heads[:, 1] < crop_w)]

    def _image(self, index: int, *, decode: bool) -> Image.Image:
        """Image ``index``, in RGB if ``decode`` (otherwise only its header is read)."""
        path = self.paths[index]
        try:
            with Image.open(path) as opened:
                image: Image.Image = opened.convert("RGB") if decode else opened
        except Exception as error:  # a corrupt file fails anywhere in the decoder
            raise CrowdDataError(
                f"cannot read image {path}: {type(error).__name__}: {error}"
            ) from error
        return image

    def heads(self, index: int) -> torch.Tensor:
        """The heads of image ``index`` that item ``index``'s density map holds, as an N x 2
        float32 tensor of (row, column) pixel positions in the item's (resized, cropped) image,
        like :attr:`~codl.apps.crowd.scenes.Scene.heads`. The image is not decoded."""
        index = self._index(index)
        width, height = self._image(index, decode=False).size
        return self._heads(index, width, height)

    def count_of(self, index: int) -> int:
        """The number of heads in item ``index``'s image (its density map's sum)."""
        return int(self.heads(index).shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._index(index)
        image = self._image(index, decode=True)
        width, height = image.size
        heads = self._heads(index, width, height)
        resized_w, resized_h, crop_w, crop_h = self._geometry(self.paths[index], width, height)
        if (resized_w, resized_h) != (width, height):
            image = image.resize((resized_w, resized_h), Image.Resampling.BILINEAR)
        pixels = np.asarray(image.crop((0, 0, crop_w, crop_h)), dtype=np.uint8)
        frame = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(torch.float32) / 255.0
        density = density_map(heads, crop_h, crop_w, downsample=self.downsample)
        return frame.contiguous(), density

    def __repr__(self) -> str:
        folder = self.paths[0].parent if self.paths else None
        return f"{type(self).__name__}({len(self)} images in {folder})"


def _check_settings(split: str, downsample: int, max_side: int | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an int >= 1, got {downsample!r}")
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < downsample
    ):
        raise ValueError(f"max_side must be None or an int >= downsample, got {max_side!r}")


def _root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise CrowdDataError(f"no such folder: {path}")
    return path


class ShanghaiTech(_AnnotatedImages):
    """ShanghaiTech Part ``part`` ("A" or "B"), its ``split`` ("train" or "test"), as the
    release unpacks: ``root`` holds ``part_A_final`` and ``part_B_final`` (or ``part_A`` and
    ``part_B``), or is the part's folder itself. Item ``i``: (image 3 x H x W in [0, 1], density
    map H/``downsample`` x W/``downsample`` summing to its head count), H and W the image's
    sides, after the resize to ``max_side`` if given, cropped to multiples of ``downsample``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        part: str = "A",
        split: str = "train",
        *,
        downsample: int = 8,
        max_side: int | None = None,
    ) -> None:
        if part not in ("A", "B"):
            raise ValueError(f"part must be 'A' or 'B', got {part!r}")
        _check_settings(split, downsample, max_side)
        top = _root(root)
        names = (f"part_{part}_final", f"part_{part}")
        folder = next((top / name for name in names if (top / name).is_dir()), None)
        if folder is None:
            other = re.fullmatch(r"part_([AB])(_final)?", top.name)
            if other and other.group(1) != part:
                raise CrowdDataError(f"{top} is part {other.group(1)}, not part {part}")
            if not (top / f"{split}_data").is_dir():
                raise CrowdDataError(f"no part_{part}_final or {split}_data folder in {top}")
            folder = top
        data = folder / f"{split}_data"
        paths = _images_in(data / "images")
        truth = data / "ground-truth"
        annotations = [truth / f"GT_{path.stem}.mat" for path in paths]
        super().__init__(paths, annotations, downsample=downsample, max_side=max_side)
        self.root, self.part, self.split = folder, part, split

    def _read_points(self, path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
        info = _unwrap(_load_mat(path, "image_info"))
        names = info.dtype.names if isinstance(info, np.void) else None
        if not names or "location" not in names:
            raise CrowdDataError(f"no 'image_info' struct with a 'location' field in {path}")
        return _points(_unwrap(info["location"]), path, "location")


class UCFQNRF(_AnnotatedImages):
    """UCF-QNRF's ``split`` ("train" or "test"), as the release unpacks: ``root`` is
    ``UCF-QNRF_ECCV18`` (holding ``Train`` and ``Test``) or the folder holding it. Items as
    :class:`ShanghaiTech`'s; its images reach 9,000 pixels a side, so ``max_side`` (1,920, say)
    keeps them within a CPU's memory and time."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        downsample: int = 8,
        max_side: int | None = None,
    ) -> None:
        _check_settings(split, downsample, max_side)
        top = _root(root)
        if not (top / split.title()).is_dir() and (top / "UCF-QNRF_ECCV18").is_dir():
            top = top / "UCF-QNRF_ECCV18"
        paths = _images_in(top / split.title())
        annotations = [path.with_name(f"{path.stem}_ann.mat") for path in paths]
        super().__init__(paths, annotations, downsample=downsample, max_side=max_side)
        self.root, self.split = top, split

    def _read_points(self, path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
        return _points(_unwrap(_load_mat(path, "annPoints")), path, "annPoints")
