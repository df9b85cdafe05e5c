"""Regenerate the Fashion-MNIST subset shipped in ``codl/data/fashion_mnist_subset/``.

Takes the first 3000 training and the first 1000 test examples of the real dataset, in
the original order, and writes them as gzip-compressed IDX files (same format as the
originals) with a deterministic gzip header (no file name, ``mtime=0``, level 9).

Usage (from the repository root)::

    PYTHONPATH=python python -m codl.data.make_subset [--source DIR] [--out DIR]

``--source`` defaults to Debian's ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``codl`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from codl.data.fashion_mnist import (
    _FILE_STEMS,
    DEBIAN_DIR,
    SUBSET_DIR,
    Split,
    _locate,
    _read_split,
)
from codl.data.idx import read_idx, write_idx

#: Number of examples kept per split.
SUBSET_SIZES: dict[Split, int] = {"train": 3000, "test": 1000}


def make_subset(source: Path = DEBIAN_DIR, out: Path = SUBSET_DIR) -> list[Path]:
    """Write the subset files from the full dataset in ``source`` into ``out``.

    Returns the paths written. Each file is read back and compared after writing.
    """
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, count in SUBSET_SIZES.items():
        found = _locate(source, split)
        if found is None:
            raise FileNotFoundError(f"Fashion-MNIST {split} files not found in {source}")
        images, labels = _read_split(*found)
        if images.shape[0] < count:
            raise ValueError(f"{found[0]} has only {images.shape[0]} examples, need {count}")
        for stem, array in zip(_FILE_STEMS[split], (images[:count], labels[:count]), strict=True):
            path = out / f"{stem}.gz"
            write_idx(path, array, compress=True)
            if not (read_idx(path) == array).all():
                raise RuntimeError(f"{path}: read-back mismatch")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints size and SHA-256 of each file written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR, help="full dataset directory")
    parser.add_argument("--out", type=Path, default=SUBSET_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in make_subset(args.source, args.out):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{digest}  {path.name}  ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
