"""CIFAR-10-C from files (paper Appendix E): Hendrycks' release or the authors' per-severity copy.

:func:`load_cifar10c` memory-maps the corrupted images (uint8, nothing decoded to float)
and :func:`load_cifar10c_versioned` stacks them behind the clean CIFAR-10 image as a
:class:`~perturbsets.pairs.versioned.VersionedData`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturbsets.datasets.cifar10 import CIFAR10_SIZES, load_cifar10
from perturbsets.datasets.cifar10c.registry import SEVERITIES, TRAIN_CORRUPTIONS
from perturbsets.datasets.files import DatasetFormatError, check_labels, check_split, open_npy
from perturbsets.pairs.augment import JointAugmentation
from perturbsets.pairs.lazy import LazyStack
from perturbsets.pairs.versioned import VersionedData

__all__ = ["load_cifar10c", "load_cifar10c_versioned", "cifar10c_version_names"]


def _check_corrupted(arr: np.ndarray, path: Path, rows: int | None = None) -> None:
    if arr.dtype != np.uint8:
        raise DatasetFormatError(f"{path}: dtype {arr.dtype}, expected uint8 (CIFAR-10-C stores 0..255 pixel values)")
    if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
        raise DatasetFormatError(f"{path}: shape {arr.shape}, expected (N, 32, 32, 3) (HWC RGB images)")
    if rows is not None and arr.shape[0] != rows:
        raise DatasetFormatError(f"{path}: {arr.shape[0]} images, but labels.npy (and the other files) have {rows}")


def _check_names(corruptions: Any, severities: Any) -> tuple[list[str], list[int]]:
    if isinstance(corruptions, str):
        corruptions = [corruptions]
    corruptions = list(corruptions)
    if not corruptions:
        raise ValueError(f"corruptions is empty; e.g. use TRAIN_CORRUPTIONS {TRAIN_CORRUPTIONS}")
    for c in corruptions:
        if not isinstance(c, str) or not c or "/" in c or "\\" in c or c.startswith("."):
            raise ValueError(f"corruption names must be plain file stems such as 'fog', got {c!r}")
    if len(set(corruptions)) != len(corruptions):
        raise ValueError(f"corruptions lists a name twice: {corruptions}")
    if isinstance(severities, (int, np.integer)):
        severities = [severities]
    severities = list(severities)
    if not severities or any(isinstance(s, bool) or s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be a non-empty list of ints in 1..5, got {severities!r}")
    if len(set(severities)) != len(severities):
        raise ValueError(f"severities lists a value twice: {severities}")
    return corruptions, [int(s) for s in severities]


def cifar10c_version_names(corruptions: Sequence[str], severities: Sequence[int] = (5,)) -> list[str]:
    """``"<corruption>_<severity>"`` of each of the K stacked versions, in stacking order."""
    corruptions, severities = _check_names(corruptions, severities)
    return [f"{c}_{s}" for c in corruptions for s in severities]


def _per_severity_dir(root: Path, split: str) -> Path | None:
    name = f"cifar-10-c-{split}"
    if root.name == name and root.is_dir():
        return root
    return root / name if (root / name).is_dir() else None


def _hendrycks_dir(root: Path, first: str) -> Path | None:
    for folder in (root, root / "CIFAR-10-C"):
        if (folder / f"{first}.npy").is_file() or (folder / "labels.npy").is_file():
            return folder
    return None


def load_cifar10c(
    root: str | Path,
    corruptions: Sequence[str] = TRAIN_CORRUPTIONS,
    severities: Sequence[int] = (5,),
    split: str = "train",
    layout: str = "auto",
    *,
    check_size: bool = True,
) -> tuple[LazyStack, np.ndarray]:
    """CIFAR-10-C corrupted images, memory-mapped, stacked as versions of each image.

    Two layouts:

    * ``"hendrycks"`` (the Zenodo release, test split only): ``root/<corruption>.npy``
      (or ``root/CIFAR-10-C/...``), uint8 (5·N, 32, 32, 3), rows ``[(s−1)·N, s·N)`` =
      severity s, plus ``labels.npy`` (5·N,) (the N labels repeated 5 times).
    * ``"per_severity"`` (the authors' copy, train and test):
      ``root/cifar-10-c-{split}/<corruption>_<severity>.npy``, uint8 (N, 32, 32, 3), plus
      ``labels.npy`` (N,).

    ``"auto"`` uses the per-severity folder if it exists, else Hendrycks' files. The
    paper trains on :data:`TRAIN_CORRUPTIONS` (12) and tests out of distribution on
    :data:`OOD_CORRUPTIONS` (3), all at severity 5.

    Files are opened with ``np.load(mmap_mode="r", allow_pickle=False)``: nothing is read
    until indexed and nothing is converted to float (the authors' loader held the 50,000 ×
    12 training images as float32, ≈7.4 GB, defect 46).

    Args:
        root: the directory.
        corruptions: file stems, e.g. ``TRAIN_CORRUPTIONS``.
        severities: severities in 1..5.
        split: ``"train"`` or ``"test"``.
        layout: ``"auto"``, ``"hendrycks"`` or ``"per_severity"``.
        check_size: require N = 50,000 (train) or 10,000 (test).

    Returns:
        versions: :class:`~perturbsets.pairs.lazy.LazyStack` of shape (N, K, 32, 32, 3)
            uint8, K = len(corruptions)·len(severities), corruption-major: version
            ``k = i·len(severities) + j`` is corruption i at severity j (see
            :func:`cifar10c_version_names`); each part is a memory map.
        labels: (N,) int64.

    Raises:
        FileNotFoundError: a corruption file or ``labels.npy`` is missing (named).
        DatasetFormatError: a truncated or unreadable .npy, wrong dtype or shape, images
            and labels of different lengths, inconsistent labels, wrong N.
        ValueError: bad arguments, or Hendrycks' (test-only) files for ``split="train"``.
    """
    split = check_split(split)
    corruptions, severities = _check_names(corruptions, severities)
    if layout not in ("auto", "hendrycks", "per_severity"):
        raise ValueError(f"layout must be 'auto', 'hendrycks' or 'per_severity', got {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10-C directory {str(root)!r} does not exist")
    folder = _per_severity_dir(root, split) if layout != "hendrycks" else None
    if folder is None and layout == "per_severity":
        raise FileNotFoundError(
            f"{str(root / f'cifar-10-c-{split}')!r} does not exist; the per-severity layout is "
            f"<root>/cifar-10-c-{split}/<corruption>_<severity>.npy"
        )
    if folder is not None:
        labels_path = folder / "labels.npy"
        labels = check_labels(np.asarray(open_npy(labels_path, "CIFAR-10-C labels file")), labels_path)
        parts = []
        for c in corruptions:
            for s in severities:
                path = folder / f"{c}_{s}.npy"
                arr = open_npy(path, f"CIFAR-10-C file for corruption {c!r} severity {s}")
                _check_corrupted(arr, path, labels.shape[0])
                parts.append(arr)
    else:
        folder = _hendrycks_dir(root, corruptions[0]) if layout == "auto" else root
        if folder is None:
            raise FileNotFoundError(
                f"no CIFAR-10-C files under {str(root)!r}: expected either {root / f'cifar-10-c-{split}'}/"
                f"<corruption>_<severity>.npy (per-severity layout) or {root}/<corruption>.npy + labels.npy "
                "(Hendrycks' release)"
            )
        if split == "train":
            raise ValueError(
                f"{folder} holds Hendrycks' CIFAR-10-C release, which covers the CIFAR-10 test split only; for "
                "split='train' use the per-severity layout <root>/cifar-10-c-train/<corruption>_<severity>.npy"
            )
        labels_path = folder / "labels.npy"
        all_labels = np.asarray(open_npy(labels_path, "CIFAR-10-C labels file"))
        if all_labels.ndim != 1 or all_labels.shape[0] % len(SEVERITIES):
            raise DatasetFormatError(
                f"{labels_path}: shape {all_labels.shape}, expected (5·N,): the N test labels once per severity"
            )
        n = all_labels.shape[0] // len(SEVERITIES)
        blocks = all_labels.reshape(len(SEVERITIES), n)
        for s in severities[1:]:
            if not np.array_equal(blocks[s - 1], blocks[severities[0] - 1]):
                raise DatasetFormatError(f"{labels_path}: the labels of severity {s} differ from severity {severities[0]}")
        labels = check_labels(blocks[severities[0] - 1], labels_path)
        parts = []
        for c in corruptions:
            path = folder / f"{c}.npy"
            arr = open_npy(path, f"CIFAR-10-C file for corruption {c!r}")
            _check_corrupted(arr, path, 5 * n)
            # Slicing a memory map is a view: still nothing read.
            parts.extend(arr[(s - 1) * n : s * n] for s in severities)
    if check_size and labels.shape[0] != CIFAR10_SIZES[split]:
        raise DatasetFormatError(
            f"{labels_path}: CIFAR-10-C {split} has {CIFAR10_SIZES[split]} images per corruption, these files "
            f"{labels.shape[0]} (pass check_size=False for a subset)"
        )
    return LazyStack(parts), labels


def load_cifar10c_versioned(
    cifar10_root: str | Path,
    cifar10c_root: str | Path,
    corruptions: Sequence[str] = TRAIN_CORRUPTIONS,
    severities: Sequence[int] = (5,),
    split: str = "train",
    *,
    pairing: str = "centered",
    augment: JointAugmentation | None = None,
    layout: str = "auto",
    check_size: bool = True,
) -> VersionedData:
    """CIFAR-10 images with their CIFAR-10-C corruptions as a :class:`VersionedData`.

    Version 0 is the clean CIFAR-10 image (in memory, uint8, 150 MB for train) and versions
    1..K the corruptions in :func:`load_cifar10c` order (memory-mapped). With the default
    ``pairing="centered"`` the pairs are (clean, corruption): 12 per image, 600,000 for the
    training set, as in paper Appendix E. The paper trains with
    ``augment=JointCropFlip(pad=4, crop=(32, 32))``.

    Raises:
        DatasetFormatError: the two datasets have different lengths, or different labels
            (the CIFAR-10-C files are then not in CIFAR-10's image order).
    """
    images, labels = load_cifar10(cifar10_root, split, check_size=check_size)
    stack, c_labels = load_cifar10c(cifar10c_root, corruptions, severities, split, layout, check_size=check_size)
    if c_labels.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"CIFAR-10 {split} has {labels.shape[0]} images but the CIFAR-10-C files hold {c_labels.shape[0]}"
        )
    differ = int(np.count_nonzero(c_labels != labels))
    if differ:
        raise DatasetFormatError(
            f"CIFAR-10-C labels.npy disagrees with the CIFAR-10 {split} labels at {differ} of {labels.shape[0]} "
            "positions: the corrupted images are not in CIFAR-10's order (or belong to the other split)"
        )
    versions = LazyStack([images.transpose(0, 2, 3, 1), *stack.parts])  # all (N, 32, 32, 3)
    return VersionedData(versions, labels, pairing=pairing, channels_last=True, augment=augment)
