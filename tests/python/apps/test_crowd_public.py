"""The public crowd-counting data sets' loaders, on tiny copies of their releases' layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from codl.apps.crowd.public import UCFQNRF, CrowdDataError, ShanghaiTech
from codl.apps.crowd.scenes import density_map


def _shanghaitech_mat(path: Path, xy: np.ndarray) -> None:
    """``xy`` saved as MATLAB saves ShanghaiTech's ground truth: ``image_info``, a 1 x 1 cell
    holding a 1 x 1 struct with fields ``location`` (N x 2 x, y) and ``number``."""
    record = np.empty((1, 1), dtype=[("location", object), ("number", object)])
    record[0, 0]["location"] = np.asarray(xy)
    record[0, 0]["number"] = np.array([[float(len(xy))]])
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = record
    scipy.io.savemat(path, {"image_info": cell})


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _part(root: Path, part: str, split: str, images: dict[str, tuple[np.ndarray, list]]) -> Path:
    data = root / f"part_{part}_final" / f"{split}_data"
    (data / "images").mkdir(parents=True)
    (data / "ground-truth").mkdir()
    for name, (pixels, xy) in images.items():
        Image.fromarray(pixels).save(data / "images" / f"{name}.png")
        _shanghaitech_mat(data / "ground-truth" / f"GT_{name}.mat", np.array(xy).reshape(-1, 2))
    return data


def test_shanghaitech_items_are_the_pixels_cropped_and_the_heads_inside(tmp_path: Path) -> None:
    # 37 x 45 pixels crop to 32 x 40 at downsample 8.
    xy = [
        [3.0, 4.0],  # (x, y): row 4, column 3
        [39.5, 31.5],  # the last pixel kept
        [44.0, 10.0],  # in the cropped-off columns: dropped
        [10.0, 33.0],  # in the cropped-off rows: dropped
        [45.6, 2.0],  # past the edge by < 1 pixel: clamped in, then cropped off
        [-0.5, 20.0],  # before the edge by < 1 pixel: clamped to column 0, kept
        [120.0, 5.0],  # far outside: dropped
    ]
    images = {
        "IMG_10": (_pixels(37, 45, 0), xy),
        "IMG_2": (_pixels(40, 48, 1), [[47.9, 39.9], [48.5, 0.0]]),  # 48.5: clamped, kept
        "IMG_1": (_pixels(16, 8, 2), []),
    }
    data_folder = _part(tmp_path, "A", "train", images)
    truth = scipy.io.loadmat(data_folder / "ground-truth" / "GT_IMG_10.mat")
    assert np.array_equal(truth["image_info"][0, 0][0, 0]["location"], np.array(xy))
    assert np.array_equal(truth["image_info"][0, 0][0, 0][0], np.array(xy))

    data = ShanghaiTech(tmp_path, "A", "train")
    assert [path.name for path in data.paths] == ["IMG_1.png", "IMG_2.png", "IMG_10.png"]
    assert len(data) == 3 and data.annotation_paths[2].name == "GT_IMG_10.mat"

    image, density = data[2]
    expected = torch.from_numpy(images["IMG_10"][0][:32, :40].copy()).permute(2, 0, 1) / 255.0
    assert image.dtype == torch.float32 and image.shape == (3, 32, 40)
    assert torch.equal(image, expected)
    heads = data.heads(2)
    assert torch.equal(heads, torch.tensor([[4.0, 3.0], [31.5, 39.5], [20.0, 0.0]]))
    assert density.shape == (4, 5) and density.dtype == torch.float32
    assert abs(float(density.sum()) - 3) < 1e-4 and data.count_of(-1) == 3
    assert torch.allclose(density, density_map(heads, 32, 40, downsample=8))

    image, density = data[1]
    assert image.shape == (3, 40, 48) and data.count_of(1) == 2
    assert float(data.heads(1)[1, 1]) == pytest.approx(48.0) and data.heads(1)[1, 1] < 48
    assert abs(float(density.sum()) - 2) < 1e-4

    image, density = data[0]
    assert image.shape == (3, 16, 8) and density.shape == (2, 1)
    assert data.heads(0).shape == (0, 2) and float(density.sum()) == 0.0
    with pytest.raises(IndexError):
        data[3]


def test_shanghaitech_root_is_the_parts_folder_or_a_part(tmp_path: Path) -> None:
    one = {"IMG_1": (_pixels(16, 16, 3), [[1.0, 2.0]])}
    _part(tmp_path, "A", "train", one)
    _part(tmp_path, "A", "test", {"IMG_7": (_pixels(16, 16, 4), [[1.0, 2.0], [3.0, 4.0]])})
    _part(tmp_path, "B", "train", {"IMG_9": (_pixels(16, 24, 5), [])})
    above, inside = ShanghaiTech(tmp_path), ShanghaiTech(tmp_path / "part_A_final")
    assert above.paths == inside.paths and above.root == inside.root
    assert [p.name for p in ShanghaiTech(tmp_path, split="test").paths] == ["IMG_7.png"]
    assert ShanghaiTech(tmp_path, "A", "test").count_of(0) == 2
    part_b = ShanghaiTech(tmp_path / "part_B_final", "B")
    assert part_b.paths[0].name == "IMG_9.png" and part_b[0][1].shape == (2, 3)
    with pytest.raises(CrowdDataError, match="is part A, not part B"):
        ShanghaiTech(tmp_path / "part_A_final", "B")
    with pytest.raises(ValueError, match="part must be"):
        ShanghaiTech(tmp_path, "C")
    with pytest.raises(ValueError, match="split must be"):
        ShanghaiTech(tmp_path, split="val")


def _qnrf(root: Path, split: str, name: str, image: Image.Image, xy: list) -> None:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f"{name}.jpg", quality=95)
    points = np.array(xy, dtype=np.float64)
    scipy.io.savemat(folder / f"{name}_ann.mat", {"annPoints": points})


def test_ucf_qnrf_reads_jpeg_grayscale_and_shrinks_to_max_side(tmp_path: Path) -> None:
    root = tmp_path / "UCF-QNRF_ECCV18"
    # 100 x 60 (width x height) shrinks to 50 x 30 at max_side 50, then crops to 48 x 24.
    colour = Image.new("RGB", (100, 60), (200, 40, 90))
    xy = [[10.0, 20.0], [99.0, 59.0], [96.5, 10.0], [30.0, 47.0], [2.0, 58.0], [20.0, 50.0]]
    xy.append([150.0, 1.0])
    _qnrf(root, "Train", "img_0002", colour, xy)
    gray = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)), mode="L")
    _qnrf(root, "Train", "img_0001", gray, [[5.0, 5.0]])
    _qnrf(root, "Test", "img_0001", colour, [[1.0, 1.0]])

    whole = UCFQNRF(tmp_path)  # the folder holding UCF-QNRF_ECCV18
    assert whole.root == root and [p.name for p in whole.paths] == ["img_0001.jpg", "img_0002.jpg"]
    assert whole.annotation_paths[1].name == "img_0002_ann.mat"
    image, density = whole[1]
    assert image.shape == (3, 56, 96) and density.shape == (7, 12)
    assert torch.allclose(image.mean((1, 2)), torch.tensor([200, 40, 90]) / 255.0, atol=3 / 255)
    # Kept: (10, 20), (30, 47) and (20, 50); three cropped off; (150, 1) is outside.
    assert whole.count_of(1) == 3 and abs(float(density.sum()) - 3) < 1e-4

    small = UCFQNRF(root, "train", max_side=50)
    # Halved: (20, 50) falls in the cropped-off rows.
    assert torch.equal(small.heads(1), torch.tensor([[10.0, 5.0], [23.5, 15.0]]))
    image, density = small[1]
    assert image.shape == (3, 24, 48) and density.shape == (3, 6)
    assert torch.allclose(image.mean((1, 2)), torch.tensor([200, 40, 90]) / 255.0, atol=3 / 255)
    assert abs(float(density.sum()) - 2) < 1e-4

    image, _ = whole[0]  # grayscale: three equal channels of the gray levels
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    gray_levels = torch.arange(0, 256, 8, dtype=torch.float32) / 255.0
    assert torch.allclose(image[0].mean(0), gray_levels, atol=4 / 255)
    assert UCFQNRF(root, "test", downsample=4).count_of(0) == 1


def _break(path: Path, what: str) -> Path:
    """A one-image ShanghaiTech part at ``path`` with ``what`` wrong; the path an error names."""
    images = path / "part_A_final" / "train_data" / "images"
    data = _part(path, "A", "train", {"IMG_1": (_pixels(16, 16, 6), [[1.0, 2.0]])})
    image, truth = images / "IMG_1.png", data / "ground-truth" / "GT_IMG_1.mat"
    if what == "root":
        return path / "nowhere"
    if what == "no images":
        image.unlink()
        return images
    if what == "no annotation":
        truth.unlink()
        return truth
    if what == "corrupt image":
        image.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return image
    if what == "corrupt mat":
        truth.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
        return truth
    if what == "no key":
        scipy.io.savemat(truth, {"points": np.ones((1, 2))})
    elif what == "not N x 2":
        _shanghaitech_mat(truth, np.ones((3, 3)))
    elif what == "not finite":
        _shanghaitech_mat(truth, np.array([[1.0, np.nan]]))
    elif what == "not numeric":
        _shanghaitech_mat(truth, np.array([["a", "b"]]))
    elif what == "no location":
        scipy.io.savemat(truth, {"image_info": np.ones((1, 2))})
    return truth


@pytest.mark.parametrize(
    "what",
    [
        "root",
        "no images",
        "no annotation",
        "corrupt image",
        "corrupt mat",
        "no key",
        "no location",
        "not N x 2",
        "not finite",
        "not numeric",
    ],
)
def test_every_fault_names_its_file(tmp_path: Path, what: str) -> None:
    at_fault = _break(tmp_path, what)
    pattern = re.escape(str(at_fault))
    with pytest.raises(CrowdDataError, match=pattern) as raised:
        ShanghaiTech(tmp_path / "nowhere" if what == "root" else tmp_path)[0]
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
    if what not in ("root", "no images", "no annotation", "corrupt image"):
        with pytest.raises(CrowdDataError, match=pattern):  # read, not decoded, by heads
            ShanghaiTech(tmp_path).heads(0)


def test_ucf_qnrf_faults_and_bad_settings(tmp_path: Path) -> None:
    (tmp_path / "Train").mkdir()
    empty = re.escape(f"no images (.jpg/.jpeg/.png) in {tmp_path / 'Train'}")
    with pytest.raises(CrowdDataError, match=empty):
        UCFQNRF(tmp_path)
    _qnrf(tmp_path, "Train", "img_0001", Image.new("RGB", (12, 20)), [[1.0, 1.0, 1.0]])
    with pytest.raises(CrowdDataError, match=r"'annPoints' in .*img_0001_ann.mat must be N x 2"):
        UCFQNRF(tmp_path)[0]
    _qnrf(tmp_path, "Train", "img_0001", Image.new("RGB", (12, 20)), [[1.0, 1.0]])
    assert UCFQNRF(tmp_path, downsample=4)[0][1].shape == (5, 3)
    with pytest.raises(CrowdDataError, match=r"img_0001.jpg \(12 x 20 pixels\) is smaller than"):
        UCFQNRF(tmp_path, downsample=16)[0]
    with pytest.raises(ValueError, match="max_side must be"):
        UCFQNRF(tmp_path / "nowhere", max_side=4)  # settings first
    with pytest.raises(ValueError, match="downsample must be"):
        UCFQNRF(tmp_path, downsample=0)
