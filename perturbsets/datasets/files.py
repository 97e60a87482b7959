"""What every dataset reader shares: the format error, split and label checks, and the .npy opener.

A reader never trusts a file: each check names the file and says what was expected, so a
missing, truncated or foreign file fails with an error the user can act on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["DatasetFormatError", "check_split", "missing_file_error", "check_labels", "open_npy"]


class DatasetFormatError(ValueError):
    """A dataset file exists but does not hold what its format promises."""


def check_split(split: Any) -> str:
    """``split`` if it is ``"train"`` or ``"test"`` (the splits of the public datasets)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def missing_file_error(path: Path, what: str, tried: Sequence[Path] = ()) -> FileNotFoundError:
    """The error for a missing ``path``, listing the other places looked when there were several."""
    where = "; looked for " + ", ".join(str(p) for p in tried) if len(tried) > 1 else ""
    return FileNotFoundError(f"{what} {str(path)!r} does not exist{where}")


def check_labels(labels: np.ndarray, path: Path, classes: int = 10) -> np.ndarray:
    """``labels`` as int64, after checking they are a 1-D integer array of classes 0..classes-1."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetFormatError(
            f"{path}: labels must be a 1-D integer array, got shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in 0..{classes - 1}, found values in [{labels.min()}, {labels.max()}]"
        )
    return np.array(labels, dtype=np.int64)


def open_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a .npy file (never unpickling), with errors that name the file."""
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.npy")) if path.parent.is_dir() else []
        shown = ", ".join(present[:8]) + (f", ... ({len(present)} files)" if len(present) > 8 else "")
        raise FileNotFoundError(
            f"{what} {str(path)!r} does not exist"
            + (f"; {path.parent} holds {shown}" if present else f"; {path.parent} holds no .npy files")
        )
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy reports truncation and bad headers as several types
        raise DatasetFormatError(
            f"{path} is not a readable .npy file ({type(e).__name__}: {e}); it is probably truncated or corrupt, "
            "download or extract it again"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise DatasetFormatError(f"{path} is an .npz archive, expected a single .npy array")
    return arr
