"""The data a config describes: its train / validation / test pairs.

One job: turn a :class:`perturbsets.config.DataConfig` into :class:`DataSplits` of pair
data (:class:`~perturbsets.data.PairedData` or :class:`~perturbsets.versions.VersionedData`).

* ``digits`` (embedded), ``folder`` and ``npz`` hold one pool of images, split by
  ``split`` into train / val / test from the seed.
* ``mnist5k`` (5,000 real MNIST digits embedded in a registry package, see
  :mod:`perturbsets.embedded`) has a fixed stratified 4,000 / 500 / 500 split; ``split``
  takes a balanced prefix of each part (fractions are of all 5,000 digits; an unset
  test size is the whole test part).
* ``mnist``, ``cifar10`` and ``cifar10c`` read the public datasets from ``path`` (see
  :mod:`perturbsets.datasets`); ``split`` divides their training files into train and
  val (the paper: 59,000 / 1,000 for MNIST, 49,000 / 1,000 for CIFAR-10), and the test
  part is the official test split.
* ``multi_illumination`` reads scene folders or numpy batches from ``path`` (see
  :mod:`perturbsets.multi_illumination`) with the paper's fixed scene split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from perturbsets._util.checks import check_value_range
from perturbsets._util.registry import unknown_name_message
from perturbsets.datasets.digits import load_digits
from perturbsets.datasets.folder import load_pair_folder
from perturbsets.pairs.augment import JointCropFlip
from perturbsets.pairs.batch import DataSplits
from perturbsets.pairs.paired import PairedData
from perturbsets.perturbations import build_perturbation

OFFICIAL_TEST = ("mnist", "cifar10", "cifar10c", "multi_illumination")


def _perturbation(config: Any):
    spec = dict(config.perturbation or {})
    if not spec:
        raise ValueError(f"data.source {config.source!r} holds clean images only: set data.perturbation, e.g. {{name: rts}}")
    return build_perturbation(spec.pop("name", ""), **spec)


def _clean_pairs(images: torch.Tensor, labels: torch.Tensor, config: Any, seed: int, value_range) -> PairedData:
    """Pairs made by perturbing clean images: fresh every batch, or k fixed per image (RTS-k)."""
    perturbation = _perturbation(config)
    if config.fixed_perturbations:
        return PairedData.with_fixed_perturbations(
            images, perturbation, config.fixed_perturbations, seed, labels, value_range=value_range
        )
    return PairedData.on_the_fly(images, perturbation, labels, value_range=value_range)


def _load_npz(path: Path, value_range: tuple[float, float]) -> PairedData:
    if not path.is_file():
        raise FileNotFoundError(f"data.path {path} does not exist; give a .npz file with arrays x and x_tilde")
    # allow_pickle=False: an .npz may embed pickled object arrays, which could run code.
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("x", "x_tilde") if k not in npz.files]
        if missing:
            raise ValueError(f"{path} lacks the array(s) {missing}; it holds {sorted(npz.files)} (expected x, x_tilde, optional y)")
        labels = npz["y"] if "y" in npz.files else None
        return PairedData.from_tensors(npz["x"], npz["x_tilde"], labels, value_range=value_range)


def _pad_to_canvas(images: np.ndarray, canvas: int) -> torch.Tensor:
    """(N, C, 28, 28) uint8 digits zero-padded to the (canvas × canvas) RTS canvas."""
    pad = (canvas - images.shape[-1]) // 2
    if canvas < images.shape[-1] or (canvas - images.shape[-1]) % 2:
        raise ValueError(f"data.canvas must be >= {images.shape[-1]} with an even difference, got {canvas}")
    return torch.nn.functional.pad(torch.from_numpy(np.ascontiguousarray(images)), (pad, pad, pad, pad))


def _augment(config: Any) -> JointCropFlip | None:
    return JointCropFlip(**config.augment) if config.augment else None


def _official(config: Any, split: str, seed: int, value_range) -> Any:
    """One split ("train" or "test") of a public dataset as pair data."""
    import perturbsets.datasets as datasets

    root = Path(config.path).expanduser()
    if config.source == "mnist":
        images, labels = datasets.load_mnist(root, split, check_size=config.check_size)
        return _clean_pairs(_pad_to_canvas(images, config.canvas), torch.from_numpy(labels), config, seed, value_range)
    if config.source == "cifar10":
        images, labels = datasets.load_cifar10(root, split, check_size=config.check_size)
        data = _clean_pairs(torch.from_numpy(images), torch.from_numpy(labels), config, seed, value_range)
        augment = _augment(config)
        return data.with_augment(augment) if augment is not None and split == "train" else data
    corruptions = config.corruptions or list(datasets.TRAIN_CORRUPTIONS)
    return datasets.load_cifar10c_versioned(
        root,
        root,
        corruptions,
        config.severities,
        split,
        pairing=config.pairing,
        augment=_augment(config) if split == "train" else None,
        check_size=config.check_size,
    )


def _multi_illumination(config: Any, split: str) -> Any:
    """One split of Multi-Illumination; training pairs get the joint crop/flip of their material maps."""
    from perturbsets.datasets.multi_illumination.loader import load_multi_illumination

    return load_multi_illumination(
        Path(config.path).expanduser(),
        split,
        config.mip,
        layout=config.layout,
        material_mip=config.material_mip,
        pairing=config.pairing,
        reference_version=config.lighting,
        augment=_augment(config) if split == "train" else None,
        check_size=config.check_size,
    )


def _mnist5k(config: Any, seed: int, value_range) -> DataSplits:
    """The embedded MNIST digits: balanced prefixes of the fixed train / val / test parts."""
    from perturbsets.datasets.embedded import MNIST5K_PARTS, load_mnist5k

    total = sum(MNIST5K_PARTS.values())
    parts = []
    for i, (name, available) in enumerate(MNIST5K_PARTS.items()):
        # Like MNIST's official test split, an unset test size means the whole test part.
        size = config.split.get(name, available if name == "test" else 0)
        count = int(round(size * total)) if isinstance(size, float) else int(size)
        if not 1 <= count <= available:
            raise ValueError(
                f"data.split.{name} = {size} asks for {count} digits, but the embedded MNIST (source mnist5k) has a "
                f"fixed {name} part of {available}; give 1 to {available} (fixed parts: {MNIST5K_PARTS})"
            )
        images, labels = load_mnist5k(name)
        # Each part draws its fixed perturbations (RTS-k) from its own stream.
        part_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        images = _pad_to_canvas(images[:count], config.canvas)
        parts.append(_clean_pairs(images, torch.from_numpy(labels[:count]), config, part_seed, value_range))
    return DataSplits(*parts)


def load_pairs(config: Any, seed: int) -> PairedData:
    """The single pool of pairs of a ``digits``, ``folder`` or ``npz`` source."""
    value_range = check_value_range(tuple(config.value_range), "data.value_range")
    if config.source == "digits":
        images, labels = load_digits(config.canvas)
        return _clean_pairs(images, labels, config, seed, value_range)
    if config.source not in ("folder", "npz"):
        raise ValueError(unknown_name_message("pooled data.source", config.source, ("digits", "folder", "npz")))
    if config.path is None:
        raise ValueError(f"data.source {config.source!r} needs data.path")
    if config.perturbation or config.fixed_perturbations:
        raise ValueError(
            f"data.source {config.source!r} already holds pairs; set data.perturbation and data.fixed_perturbations to null"
        )
    path = Path(config.path).expanduser()
    if config.source == "folder":
        return load_pair_folder(path, value_range=value_range)
    return _load_npz(path, value_range)


def load_test(config: Any, seed: int) -> Any:
    """Only the test pairs of a data config (for public datasets, without reading the training files)."""
    if config.source not in OFFICIAL_TEST:
        return load_splits(config, seed).test
    if config.path is None:
        raise ValueError(f"data.source {config.source!r} needs data.path, the folder holding the dataset")
    if config.source == "multi_illumination":
        return _multi_illumination(config, "test")
    return _official(config, "test", seed, check_value_range(tuple(config.value_range), "data.value_range"))


def load_splits(config: Any, seed: int, data: Any = None) -> DataSplits:
    """Train / validation / test pairs of a :class:`perturbsets.config.DataConfig`.

    ``data`` (pairs already in memory) replaces the configured source; it is split by
    ``config.split`` deterministically from ``seed``.
    """
    if config.source == "mnist5k" and data is None:
        return _mnist5k(config, seed, check_value_range(tuple(config.value_range), "data.value_range"))
    if data is not None or config.source not in OFFICIAL_TEST:
        data = load_pairs(config, seed) if data is None else data
        return data.split(config.split, seed=seed)
    if config.source == "multi_illumination":
        if config.path is None:
            raise ValueError("data.source 'multi_illumination' needs data.path, the folder holding the dataset")
        return DataSplits(*(_multi_illumination(config, split) for split in ("train", "val", "test")))
    sizes = dict(config.split)
    if sizes.pop("test", 0):
        raise ValueError(
            f"data.source {config.source!r} has an official test split; give data.split only train and val sizes"
        )
    if config.path is None:
        raise ValueError(f"data.source {config.source!r} needs data.path, the folder holding the dataset")
    value_range = check_value_range(tuple(config.value_range), "data.value_range")
    parts = _official(config, "train", seed, value_range).split({**sizes, "test": 0}, seed=seed)
    return DataSplits(parts.train, parts.val, _official(config, "test", seed, value_range))

