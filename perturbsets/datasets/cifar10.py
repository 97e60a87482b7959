"""CIFAR-10 from its python batches (paper Appendix E): :func:`load_cifar10`.

The batches of ``cifar-10-python.tar.gz`` are pickles. They are read by a restricted
unpickler that admits only numpy array reconstruction, so a tampered file cannot run code:
any other global raises :class:`ForbiddenGlobalError` before anything in the file is called.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from perturbsets.datasets.files import DatasetFormatError, check_labels, check_split, missing_file_error

__all__ = ["CIFAR10_SIZES", "ForbiddenGlobalError", "load_cifar10"]

CIFAR10_SIZES = {"train": 50000, "test": 10000}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_BATCH_ROWS = 10000


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list; nothing from it was run."""


def _numpy_internal(*dotted: str) -> Any:
    """A numpy internal by its path under numpy 2 (``_core``) or numpy 1 (``core``)."""
    for path in dotted:
        obj: Any = np
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise pickle.UnpicklingError(f"this numpy has none of {dotted}")


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    # Only that use is admitted; other codecs (and their imports) are refused.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "iso-8859-1") or errors != "strict":
        raise ForbiddenGlobalError(f"_codecs.encode is only admitted as encode(str, 'latin1'), got encoding {encoding!r}")
    return codecs.encode(obj, "latin1")


# Everything a CIFAR-10 python batch (or a re-save of it with any pickle protocol)
# references: numpy array and dtype reconstruction. Values are thunks so numpy internals
# are only looked up when a file asks for them.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_internal("_core.multiarray._reconstruct", "core.multiarray._reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_internal("_core.multiarray._reconstruct", "core.multiarray._reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_internal("_core.numeric._frombuffer", "core.numeric._frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_internal("_core.numeric._frombuffer", "core.numeric._frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_ALLOWED_GLOBALS`.

    A pickle runs code only through the globals it names (functions called by REDUCE /
    NEWOBJ / BUILD); refusing every other name makes loading safe. Containers, numbers and
    strings need no globals.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise ForbiddenGlobalError(
                f"forbidden global {module}.{name}: a CIFAR-10 batch only contains numpy arrays, lists and strings, "
                "so this file was not made by the CIFAR-10 tools and is refused unrun"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError(f"forbidden persistent id {pid!r} in a CIFAR-10 batch")


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise missing_file_error(path, "CIFAR-10 batch")
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the files were written by Python 2, whose str keys and
            # array buffers must come back as bytes (keys b"data", b"labels").
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobalError as e:
        raise ForbiddenGlobalError(f"{path}: {e}") from None
    except Exception as e:  # any parser failure of a damaged file: report the file
        raise DatasetFormatError(
            f"{path} could not be read as a CIFAR-10 python batch ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt, extract cifar-10-python.tar.gz again"
        ) from None


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetFormatError(f"{path}: no {key!r} entry; a CIFAR-10 batch is a dict with b'data' and b'labels', found keys {sorted(map(repr, d))}")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: expected a dict with b'data' and b'labels', got {type(obj).__name__}")
    data, labels = _get(obj, "data", path), _get(obj, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 array of shape (n, 3072) (3×32×32 per row), got a {desc}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or any(isinstance(v, (bytes, str, float)) for v in labels[:1]):
        raise DatasetFormatError(f"{path}: b'labels' must be a list of integer class indices, got {type(labels).__name__}")
    try:
        labels_np = np.asarray(labels)
    except (ValueError, TypeError):
        raise DatasetFormatError(f"{path}: b'labels' must be a list of integer class indices") from None
    if labels_np.shape != (data.shape[0],):
        raise DatasetFormatError(
            f"{path}: {data.shape[0]} images in b'data' but {labels_np.size} labels in b'labels'; the file is damaged"
        )
    return data, check_labels(labels_np, path)


def _cifar10_dir(root: Path, first: str) -> Path:
    candidates = (root / "cifar-10-batches-py", root)
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    for folder in candidates:
        if folder.is_dir() and any((folder / n).is_file() for names in _CIFAR_FILES.values() for n in names):
            return folder
    raise FileNotFoundError(
        f"no CIFAR-10 python batches under {str(root)!r}: expected {root / 'cifar-10-batches-py' / first} "
        "(the layout of cifar-10-python.tar.gz) or the batch files directly in that directory"
    )


def load_cifar10(root: str | Path, split: str = "train", *, check_size: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images and labels from the python batches.

    Reads ``data_batch_1`` … ``data_batch_5`` (train) or ``test_batch`` (test) from
    ``root/cifar-10-batches-py/`` or ``root``. Each is a pickled dict with ``b"data"``, a
    uint8 (10000, 3072) array whose rows are the R, G and B 32×32 planes, and
    ``b"labels"``, a list of 10000 ints. Loading uses a restricted unpickler: any global
    other than numpy's array reconstruction raises :class:`ForbiddenGlobalError` (a
    :class:`pickle.UnpicklingError`) before anything in the file is called.

    Args:
        root: the directory.
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        check_size: require 10,000 rows per batch file.

    Returns:
        images (N, 3, 32, 32) uint8 (CHW, in the order of the files, which is
        torchvision's order), labels (N,) int64 in 0..9.

    Raises:
        FileNotFoundError: a batch file is missing (named).
        ForbiddenGlobalError: the pickle references a forbidden global.
        DatasetFormatError: truncated/corrupt pickle, wrong keys, dtype or shapes.
    """
    split = check_split(split)
    root = Path(root)
    names = _CIFAR_FILES[split]
    folder = _cifar10_dir(root, names[0])
    images, labels = [], []
    for name in names:
        path = folder / name
        data, y = _read_cifar_batch(path)
        if check_size and data.shape[0] != _CIFAR_BATCH_ROWS:
            raise DatasetFormatError(
                f"{path}: a CIFAR-10 batch holds {_CIFAR_BATCH_ROWS} images, this one {data.shape[0]} "
                "(pass check_size=False for a subset)"
            )
        images.append(data)
        labels.append(y)
    # Row layout R(32×32) G(32×32) B(32×32) is exactly C-order (3, 32, 32).
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels)
