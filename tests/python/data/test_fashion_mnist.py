"""Tests for codl.data: the IDX reader and the Fashion-MNIST loader.

References are computed independently of the code under test: the real files are read
here with gzip + numpy, and IDX files are built here with struct.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import codl.data
from codl.data import (
    FASHION_MNIST_CLASSES,
    DataFormatError,
    DatasetSource,
    fashion_mnist,
    fashion_mnist_source,
    load_fashion_mnist,
    read_idx,
    write_idx,
)

fm_module: ModuleType = importlib.import_module("codl.data.fashion_mnist")

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
SUBSET = Path(codl.data.__file__).parent / "fashion_mnist_subset"
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
needs_debian = pytest.mark.skipif(
    not all((DEBIAN / f"{s}.gz").exists() for pair in STEMS.values() for s in pair),
    reason="Debian dataset-fashion-mnist files not installed",
)


# --------------------------------------------------------------------------- helpers


def ref_read(path: Path, header: int) -> npt.NDArray[np.uint8]:
    """Independent reference reader: gunzip and skip a fixed-size header."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header).copy()


def ref_split(
    split: str, n: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    img_stem, lbl_stem = STEMS[split]
    images = ref_read(DEBIAN / f"{img_stem}.gz", 16).reshape(-1, 28, 28)
    labels = ref_read(DEBIAN / f"{lbl_stem}.gz", 8)
    return (images, labels) if n is None else (images[:n], labels[:n])


def idx_bytes(array: npt.NDArray[np.uint8], code: int = 0x08) -> bytes:
    """Build an IDX file by hand (independent of codl.data.idx.write_idx)."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def put(path: Path, payload: bytes, *, gz: bool) -> Path:
    """Write ``payload`` to ``path`` (+ ``.gz`` and gzip-compressed when ``gz``)."""
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def make_split(
    directory: Path,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
    split: str = "test",
    *,
    gz: bool = False,
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    img_stem, lbl_stem = STEMS[split]
    return (
        put(directory / img_stem, idx_bytes(images), gz=gz),
        put(directory / lbl_stem, idx_bytes(labels), gz=gz),
    )


def random_split(n: int, seed: int = 0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n, dtype=np.uint8),
    )


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests must not depend on a $CODL_DATA set in the caller's environment."""
    monkeypatch.delenv("CODL_DATA", raising=False)
    yield


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Pretend the Debian package is not installed."""
    monkeypatch.setattr(fm_module, "DEBIAN_DIR", tmp_path / "no-such-debian-dir")


# --------------------------------------------------------------------------- API basics


def test_classes() -> None:
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert len(set(FASHION_MNIST_CLASSES)) == 10


def test_data_format_error_is_value_error() -> None:
    assert issubclass(DataFormatError, ValueError)


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="split"):
        fashion_mnist("validation")


# --------------------------------------------------------------------------- shipped subset


@pytest.mark.parametrize(("split", "n"), [("train", 3000), ("test", 1000)])
def test_subset_shape_dtype(split: str, n: int) -> None:
    images, labels = fashion_mnist(split, root=SUBSET)
    assert images.shape == (n, 28, 28)
    assert images.dtype == torch.uint8
    assert labels.shape == (n,)
    assert labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) <= 9
    # every class occurs in a prefix this long
    assert torch.bincount(labels, minlength=10).min() > 0


@needs_debian
@pytest.mark.parametrize(("split", "n"), [("train", 3000), ("test", 1000)])
def test_subset_equals_real_prefix(split: str, n: int) -> None:
    ref_images, ref_labels = ref_split(split, n)
    images, labels = fashion_mnist(split, root=SUBSET)
    assert np.array_equal(images.numpy(), ref_images)
    assert np.array_equal(labels.numpy(), ref_labels.astype(np.int64))


def test_subset_files_small() -> None:
    total = sum(p.stat().st_size for p in SUBSET.iterdir() if p.is_file())
    assert total < 2.5e6
    assert (SUBSET / "LICENSE").read_text().count("Zalando SE") >= 1


def test_subset_is_the_fallback(no_debian: None) -> None:
    data = load_fashion_mnist("test")
    assert data.source.kind == "subset"
    assert data.source.path == SUBSET.resolve()
    assert data.source.num_examples == 1000
    assert data.images.shape == (1000, 28, 28)
    ref_images, ref_labels = fashion_mnist("test", root=SUBSET)
    assert torch.equal(data.images, ref_images) and torch.equal(data.labels, ref_labels)


# --------------------------------------------------------------------------- real data


@needs_debian
@pytest.mark.parametrize(
    ("split", "n", "per_class"), [("train", 60000, 6000), ("test", 10000, 1000)]
)
def test_real_files(split: str, n: int, per_class: int) -> None:
    images, labels = fashion_mnist(split, root=DEBIAN)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    ref_images, ref_labels = ref_split(split)
    assert np.array_equal(images.numpy(), ref_images)
    assert np.array_equal(labels.numpy(), ref_labels)


@needs_debian
def test_raw_files_work_identically(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for stem in STEMS[split]:
            with gzip.open(DEBIAN / f"{stem}.gz", "rb") as src, open(tmp_path / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    for split in ("train", "test"):
        raw = load_fashion_mnist(split, root=tmp_path)
        gz = load_fashion_mnist(split, root=DEBIAN)
        assert raw.source.images_file.suffix != ".gz"
        assert gz.source.images_file.suffix == ".gz"
        assert torch.equal(raw.images, gz.images)
        assert torch.equal(raw.labels, gz.labels)


@pytest.mark.parametrize("gz", [False, True])
def test_raw_and_gz_small(tmp_path: Path, gz: bool) -> None:
    images, labels = random_split(37, seed=1)
    make_split(tmp_path, images, labels, gz=gz)
    got_images, got_labels = fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images.numpy(), images)
    assert np.array_equal(got_labels.numpy(), labels.astype(np.int64))


def test_mixed_gz_and_raw(tmp_path: Path) -> None:
    images, labels = random_split(5, seed=2)
    put(tmp_path / STEMS["test"][0], idx_bytes(images), gz=True)
    put(tmp_path / STEMS["test"][1], idx_bytes(labels), gz=False)
    got_images, got_labels = fashion_mnist("test", root=tmp_path)
    assert np.array_equal(got_images.numpy(), images)
    assert np.array_equal(got_labels.numpy(), labels)


# --------------------------------------------------------------------------- search order / source


def test_env_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = random_split(11, seed=3)
    make_split(tmp_path, images, labels)
    monkeypatch.setenv("CODL_DATA", str(tmp_path))
    got_images, got_labels = fashion_mnist("test")
    assert np.array_equal(got_images.numpy(), images)
    assert np.array_equal(got_labels.numpy(), labels)
    source = fashion_mnist_source("test")
    assert source == DatasetSource(
        kind="env",
        path=tmp_path,
        split="test",
        images_file=tmp_path / STEMS["test"][0],
        labels_file=tmp_path / STEMS["test"][1],
        num_examples=11,
    )


def test_root_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, root_dir = tmp_path / "env", tmp_path / "root"
    make_split(env_dir, *random_split(4, seed=4))
    images, labels = random_split(6, seed=5)
    make_split(root_dir, images, labels)
    monkeypatch.setenv("CODL_DATA", str(env_dir))
    data = load_fashion_mnist("test", root=root_dir)
    assert data.source.kind == "root" and data.source.path == root_dir
    assert data.source.num_examples == 6
    assert np.array_equal(data.images.numpy(), images)


def test_env_without_files_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODL_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        fashion_mnist("test")


def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist("train", root=missing)
    msg = str(info.value)
    assert str(missing) in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg


def test_root_with_only_one_file(tmp_path: Path) -> None:
    images, _ = random_split(3)
    put(tmp_path / STEMS["test"][0], idx_bytes(images), gz=False)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        fashion_mnist("test", root=tmp_path)


def test_root_lacking_files_does_not_fall_back(tmp_path: Path) -> None:
    # root has the test split but not train: train must fail, not use Debian or the subset
    make_split(tmp_path, *random_split(2))
    with pytest.raises(FileNotFoundError):
        fashion_mnist("train", root=tmp_path)


@needs_debian
def test_source_debian() -> None:
    source = fashion_mnist_source("test")
    assert source.kind == "debian"
    assert source.path == DEBIAN
    assert source.num_examples == 10000


def test_source_root_and_subset(no_debian: None) -> None:
    assert fashion_mnist_source("train", root=SUBSET).kind == "root"
    source = fashion_mnist_source("train")
    assert source.kind == "subset" and source.num_examples == 3000
    assert source.images_file.name == "train-images-idx3-ubyte.gz"


def test_source_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_split(tmp_path, *random_split(3))
    with caplog.at_level(logging.INFO, logger="codl.data"):
        fashion_mnist("test", root=tmp_path)
    records = [r for r in caplog.records if r.name == "codl.data" and r.levelno == logging.INFO]
    assert len(records) == 1
    assert str(tmp_path) in records[0].getMessage()
    assert "root" in records[0].getMessage()


# --------------------------------------------------------------------------- corrupt files

GOOD_IMAGES, GOOD_LABELS = random_split(4, seed=6)
IMG_HEADER = struct.pack(">BBBBIII", 0, 0, 8, 3, 4, 28, 28)
LBL_HEADER = struct.pack(">BBBBI", 0, 0, 8, 1, 4)

# (case id, which file is corrupted, its payload, substring expected in the message)
CORRUPT_CASES: list[tuple[str, str, bytes, str]] = [
    ("empty", "images", b"", "truncated header"),
    ("short-magic", "images", b"\x00\x00\x08", "truncated header"),
    ("bad-magic", "images", b"\x12\x34" + idx_bytes(GOOD_IMAGES)[2:], "bad magic"),
    ("unknown-dtype", "images", idx_bytes(GOOD_IMAGES, code=0x07), "unknown IDX dtype code"),
    (
        "wrong-dtype-float",
        "images",
        IMG_HEADER[:2] + b"\x0d" + IMG_HEADER[3:] + bytes(4 * 784 * 4),
        "0x0D",
    ),
    (
        "wrong-dtype-labels",
        "labels",
        LBL_HEADER[:2] + b"\x09" + LBL_HEADER[3:] + bytes(4),
        "expected 0x08",
    ),
    ("images-1d", "images", idx_bytes(GOOD_LABELS), "expected 3, found 1"),
    ("labels-3d", "labels", idx_bytes(GOOD_IMAGES), "expected 1, found 3"),
    ("zero-dims", "labels", b"\x00\x00\x08\x00", "found 0"),
    ("truncated-dims", "images", IMG_HEADER[:10], "truncated header"),
    ("truncated-data", "images", idx_bytes(GOOD_IMAGES)[:-1], "truncated data"),
    ("truncated-labels", "labels", idx_bytes(GOOD_LABELS)[:-2], "truncated data"),
    ("trailing-bytes", "images", idx_bytes(GOOD_IMAGES) + b"\x00", "1 trailing bytes"),
    ("trailing-labels", "labels", idx_bytes(GOOD_LABELS) + b"xyz", "3 trailing bytes"),
    (
        "wrong-image-size",
        "images",
        idx_bytes(np.zeros((4, 27, 28), np.uint8)),
        "expected 28x28, found 27x28",
    ),
    ("count-mismatch", "labels", idx_bytes(GOOD_LABELS[:3]), "count mismatch"),
    ("label-10", "labels", idx_bytes(np.array([0, 1, 10, 2], np.uint8)), "found 10"),
    ("label-255", "labels", idx_bytes(np.array([0, 255, 1, 2], np.uint8)), "index 1"),
]


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    ("which", "payload", "needle"),
    [c[1:] for c in CORRUPT_CASES],
    ids=[c[0] for c in CORRUPT_CASES],
)
def test_corrupt_file(tmp_path: Path, which: str, payload: bytes, needle: str, gz: bool) -> None:
    good = {"images": idx_bytes(GOOD_IMAGES), "labels": idx_bytes(GOOD_LABELS)}
    good[which] = payload
    bad_path = put(tmp_path / STEMS["test"][which == "labels"], good[which], gz=gz)
    other = "images" if which == "labels" else "labels"
    put(tmp_path / STEMS["test"][other == "labels"], good[other], gz=gz)
    with pytest.raises(DataFormatError) as info:
        fashion_mnist("test", root=tmp_path)
    msg = str(info.value)
    assert str(bad_path) in msg
    assert needle in msg


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "not a gzip stream"),
        (b"\x00\x00\x08\x03" + bytes(100), "not a gzip stream"),  # raw data named .gz
        (gzip.compress(idx_bytes(GOOD_IMAGES), mtime=0)[:-12], "gzip"),  # truncated stream
        (
            gzip.compress(idx_bytes(GOOD_IMAGES), mtime=0)[:-4] + b"\xff\xff\xff\xff",
            "gzip",
        ),  # bad size
        (gzip.compress(idx_bytes(GOOD_IMAGES), mtime=0)[:-8] + b"\x00" * 8, "gzip"),  # bad CRC
        (
            gzip.compress(idx_bytes(GOOD_IMAGES), mtime=0)[:10] + b"\xff" * 40,
            "gzip",
        ),  # garbage deflate
    ],
    ids=["empty", "not-gzip", "truncated", "bad-isize", "bad-crc", "garbage"],
)
def test_corrupt_gzip(tmp_path: Path, payload: bytes, needle: str) -> None:
    bad_path = tmp_path / f"{STEMS['test'][0]}.gz"
    bad_path.write_bytes(payload)
    put(tmp_path / STEMS["test"][1], idx_bytes(GOOD_LABELS), gz=True)
    with pytest.raises(DataFormatError) as info:
        fashion_mnist("test", root=tmp_path)
    assert str(bad_path) in str(info.value)
    assert needle in str(info.value)


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    img_path, lbl_path = make_split(tmp_path, GOOD_IMAGES, GOOD_LABELS[:2])
    with pytest.raises(DataFormatError) as info:
        fashion_mnist("test", root=tmp_path)
    msg = str(info.value)
    assert str(img_path) in msg and str(lbl_path) in msg
    assert "2 labels" in msg and "4 images" in msg


def test_read_idx_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "weird-name.idx"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(
        DataFormatError, match=re.escape("weird-name.idx") + ".*needs 5 bytes.*found 3"
    ):
        read_idx(path)


def test_read_idx_never_unpickles(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "pickled"
    path.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(DataFormatError, match="pickled"):
        read_idx(path)


# --------------------------------------------------------------------------- property tests


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=12),
    rows=st.integers(min_value=1, max_value=9),
    cols=st.integers(min_value=1, max_value=9),
    gz=st.booleans(),
    data=st.data(),
)
def test_idx_roundtrip_property(
    n: int, rows: int, cols: int, gz: bool, data: st.DataObject
) -> None:
    image_bytes = data.draw(st.binary(min_size=n * rows * cols, max_size=n * rows * cols))
    labels = np.array(
        data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.uint8
    )
    images = np.frombuffer(image_bytes, dtype=np.uint8).reshape(n, rows, cols)
    with tempfile.TemporaryDirectory() as d:
        img_path = put(Path(d) / "images", idx_bytes(images), gz=gz)
        lbl_path = put(Path(d) / "labels", idx_bytes(labels), gz=gz)
        got_images = read_idx(img_path, expected_ndim=3, expected_dtype_code=0x08)
        got_labels = read_idx(lbl_path, expected_ndim=1, expected_dtype_code=0x08)
    assert got_images.dtype == np.uint8 and got_images.shape == (n, rows, cols)
    assert got_images.tobytes() == image_bytes
    assert got_labels.dtype == np.uint8 and np.array_equal(got_labels, labels)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=8),
    gz=st.booleans(),
    data=st.data(),
)
def test_fashion_mnist_roundtrip_property(n: int, gz: bool, data: st.DataObject) -> None:
    image_bytes = data.draw(st.binary(min_size=n * 784, max_size=n * 784))
    labels = np.array(
        data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), dtype=np.uint8
    )
    images = np.frombuffer(image_bytes, dtype=np.uint8).reshape(n, 28, 28)
    with tempfile.TemporaryDirectory() as d:
        make_split(Path(d), images, labels, split="train", gz=gz)
        got_images, got_labels = fashion_mnist("train", root=d)
    assert got_images.dtype == torch.uint8 and got_images.shape == (n, 28, 28)
    assert got_images.numpy().tobytes() == image_bytes
    assert got_labels.dtype == torch.int64 and got_labels.tolist() == labels.tolist()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=4),
    dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
    gz=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_write_idx_roundtrip_property(shape: list[int], dtype: type, gz: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    array: npt.NDArray[np.generic]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("a.idx.gz" if gz else "a.idx")
        write_idx(path, array)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
        got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == tuple(shape)
    assert np.array_equal(got, array)


def test_write_idx_matches_hand_built(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", GOOD_IMAGES)
    assert (tmp_path / "x").read_bytes() == idx_bytes(GOOD_IMAGES)
    write_idx(tmp_path / "x.gz", GOOD_IMAGES)
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == idx_bytes(GOOD_IMAGES)
