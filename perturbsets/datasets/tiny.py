"""Small copies of the public datasets, written in their exact on-disk formats.

They let every experiment's smoke variant (and the tests) run end to end without the real
datasets: MNIST IDX files (gzipped, torchvision's ``MNIST/raw`` layout), CIFAR-10 python
batches (Python-2 style pickles of ``{b"data", b"labels"}``), CIFAR-10-C in the
per-severity layout ``cifar-10-c-{train,test}/<corruption>_<severity>.npy`` with
``labels.npy``, and Multi-Illumination scene folders (``multi-illumination/<scene>/``). Images are random; the corrupted versions are cheap deterministic
stand-ins (not the real corruptions), since only the formats matter here.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from perturbsets._util.io import atomic_path
from perturbsets.datasets.cifar10c.registry import CORRUPTIONS


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_path(path) as tmp, gzip.open(tmp, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_tiny_mnist(root: Path, n_train: int, n_test: int, rng: np.random.Generator) -> None:
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))


def write_tiny_cifar10(root: Path, n_per_batch: int, n_test: int, rng: np.random.Generator) -> dict[str, tuple]:
    """Returns the (images (N, 32, 32, 3), labels) of each split, for the CIFAR-10-C writer."""
    folder = root / "cifar-10-batches-py"
    splits: dict[str, list] = {"train": [], "test": []}
    batches = [(f"data_batch_{i}", "train", n_per_batch) for i in range(1, 6)] + [("test_batch", "test", n_test)]
    for name, split, n in batches:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": []}, f, protocol=2)
        splits[split].append((data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels)))
    return {s: (np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts])) for s, parts in splits.items()}


def write_tiny_cifar10c(root: Path, splits: dict[str, tuple], severities=(5,)) -> None:
    for split, (images, labels) in splits.items():
        folder = root / f"cifar-10-c-{split}"
        for k, name in enumerate(CORRUPTIONS):
            for s in severities:
                shifted = (images.astype(np.int16) + 7 * (k + 1) + s) % 256
                with atomic_path(folder / f"{name}_{s}.npy") as tmp, open(tmp, "wb") as f:
                    np.save(f, shifted.astype(np.uint8))
        with atomic_path(folder / "labels.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, labels.astype(np.uint8))


def write_tiny_datasets(root: str | Path, seed: int = 0, *, n_train: int = 80, n_test: int = 12) -> Path:
    """Write tiny MNIST, CIFAR-10, CIFAR-10-C and Multi-Illumination copies under ``root`` (the ``--data`` folder)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    write_tiny_mnist(root, n_train, n_test, rng)
    splits = write_tiny_cifar10(root, max(1, n_train // 5), n_test, rng)
    write_tiny_cifar10c(root, splits)
    for mip in (7, 6, 5):  # the MI smoke runs learn at MIP7 and fine-tune at MIP6 and MIP5
        write_tiny_multi_illumination(root / "multi-illumination", rng, mip=mip)
    return root


def write_tiny_multi_illumination(
    root: Path, rng: np.random.Generator, mip: int = 7, scenes: dict[str, int] | None = None, material_mip: int | None = None
) -> Path:
    """Multi-Illumination scene folders (``<scene>/dir_<k>_mip<m>.jpg``, ``materials_mip<m>.png``).

    Scene names follow the dataset's split rules (test ``everett*``, val ``main_drylab*``);
    each scene's 25 lightings are one random image under 25 brightness gains, and the
    material maps are indexed PNGs over the dataset's 41 palette entries.
    """
    from PIL import Image

    from perturbsets.datasets.multi_illumination.arrays import LIGHTINGS, mip_shape
    from perturbsets.datasets.multi_illumination.materials import PALETTE

    counts = scenes or {"train": 6, "val": 2, "test": 2}
    prefixes = {"train": "main_experiment", "val": "main_drylab", "test": "everett_kitchen"}
    h, w = mip_shape(mip)
    mh, mw = mip_shape(mip if material_mip is None else material_mip)
    for split, n in counts.items():
        for i in range(n):
            folder = root / f"{prefixes[split]}{i + 1}"
            base = rng.integers(20, 236, (h, w, 3)).astype(np.float32)
            for k in range(LIGHTINGS):
                gain = 0.4 + 1.2 * k / (LIGHTINGS - 1)
                image = Image.fromarray(np.clip(base * gain, 0, 255).astype(np.uint8))
                with atomic_path(folder / f"dir_{k}_mip{mip}.jpg") as tmp:
                    image.save(tmp, format="JPEG", quality=95)
            blocks = rng.integers(0, len(PALETTE), (max(1, mh // 8) + 1, max(1, mw // 8) + 1))
            indices = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:mh, :mw].astype(np.uint8)
            material = Image.fromarray(indices, mode="P")
            material.putpalette(rng.integers(0, 256, 3 * 256).astype(np.uint8).tolist())
            with atomic_path(folder / f"materials_mip{mip if material_mip is None else material_mip}.png") as tmp:
                material.save(tmp, format="PNG")
    return root
