"""Datasets for codl: Fashion-MNIST from local IDX files, with a small subset shipped inside.

>>> images, labels = codl.data.fashion_mnist("test")  # doctest: +SKIP
>>> codl.data.fashion_mnist_source("test").kind  # doctest: +SKIP
'debian'

Note: ``codl.data.fashion_mnist`` is the loader *function*; the module that defines it
is ``sys.modules["codl.data.fashion_mnist"]`` (e.g. via :func:`importlib.import_module`).
"""

from __future__ import annotations

from codl.data.checks import check_classifier_inputs
from codl.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    DataChoice,
    DatasetSource,
    FashionMNIST,
    fashion_mnist,
    fashion_mnist_source,
    load_fashion_mnist,
    load_split,
    normalize_images,
)
from codl.data.idx import DataFormatError, read_idx, write_idx

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DataChoice",
    "DataFormatError",
    "DatasetSource",
    "FashionMNIST",
    "check_classifier_inputs",
    "fashion_mnist",
    "fashion_mnist_source",
    "load_fashion_mnist",
    "load_split",
    "normalize_images",
    "read_idx",
    "write_idx",
]
