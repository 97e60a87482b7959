"""One split of Multi-Illumination from either on-disk layout, and the conversion between them.

:func:`load_multi_illumination` reads scene folders or the paper's numpy batch files
(:func:`detect_layout` tells which) with the paper's fixed scene split
(:func:`split_scenes`); :func:`write_numpy_batches` converts scene folders to the numpy
batches, so training memory-maps arrays instead of decoding JPEGs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturbsets.datasets.files import DatasetFormatError, open_npy
from perturbsets.datasets.multi_illumination.arrays import (
    LIGHTINGS,
    RowConcat,
    SceneImages,
    SceneMaterials,
    image_path,
    material_path,
    mip_shape,
)
from perturbsets.datasets.multi_illumination.materials import OTHER
from perturbsets.pairs.augment import JointAugmentation
from perturbsets.pairs.versioned import VersionedData

__all__ = [
    "SPLITS",
    "SPLIT_SIZES",
    "split_scenes",
    "detect_layout",
    "load_multi_illumination",
    "write_numpy_batches",
]

SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 960, "val": 25, "test": 30}


def split_scenes(names: Sequence[str]) -> dict[str, list[str]]:
    """The paper's split of scene names: test ``everett*``, val ``*main_drylab*``, train the rest (sorted)."""
    test = sorted(n for n in names if n.startswith("everett"))
    val = sorted(n for n in names if not n.startswith("everett") and "main_drylab" in n)
    train = sorted(n for n in names if not n.startswith("everett") and "main_drylab" not in n)
    return {"train": train, "val": val, "test": test}


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _numpy_files(root: Path, split: str, mip: int, kind: str) -> list[Path]:
    label = f"dataset-{split}-materials" if kind == "materials" else f"dataset-{split}"
    pattern = re.compile(rf"{re.escape(label)}-mip-{mip}-batch-(\d+)\.npy")
    found = sorted((int(m.group(1)), p) for p in root.glob("*.npy") if (m := pattern.fullmatch(p.name)))
    numbers = [j for j, _ in found]
    if numbers != list(range(len(numbers))):
        raise DatasetFormatError(
            f"{root}: the {label}-mip-{mip}-batch-<j>.npy files must be numbered 0, 1, 2, ... without gaps; found {numbers}"
        )
    return [p for _, p in found]


def _scene_names(root: Path, mip: int) -> list[str]:
    """Scene folders with at least one image at this MIP level."""
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and any(d.glob(f"dir_*_mip{mip}.jpg"))
    )


def detect_layout(root: str | Path, mip: int, split: str | None = None) -> str:
    """``numpy`` or ``scenes``: which layout ``root`` holds at MIP level ``mip`` (for ``split``, if given)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"the Multi-Illumination folder {root} does not exist")
    if any(root.glob(f"dataset-{split or '*'}-mip-{mip}-batch-*.npy")):
        return "numpy"
    if _scene_names(root, mip):
        return "scenes"
    other = sorted({m.group(1) for p in root.glob("*/dir_*_mip*.jpg") if (m := re.search(r"_mip(\d+)\.jpg$", p.name))})
    other += sorted({m.group(1) for p in root.glob("dataset-*-mip-*-batch-*.npy") if (m := re.search(r"-mip-(\d+)-", p.name))})
    raise FileNotFoundError(
        f"{root} holds no Multi-Illumination files at MIP level {mip}: neither scene folders with dir_<k>_mip{mip}.jpg "
        f"nor dataset-<split>-mip-{mip}-batch-<j>.npy files"
        + (f"; it has MIP level(s) {', '.join(sorted(set(other)))}" if other else "")
    )


def _load_scenes(root: Path, split: str, mip: int, material_mip: int | None, check_size: bool) -> tuple[SceneImages, SceneMaterials]:
    names = split_scenes(_scene_names(root, mip))[split]
    if check_size and len(names) != SPLIT_SIZES[split]:
        raise DatasetFormatError(
            f"{root}: the {split} split has {len(names)} scenes at MIP{mip}, the dataset has {SPLIT_SIZES[split]}; "
            "download the missing scenes, or pass check_size=False for a partial copy"
        )
    if not names:
        raise DatasetFormatError(f"{root}: no {split} scenes at MIP{mip} (test: everett*, val: *main_drylab*, train: the rest)")
    materials = SceneMaterials(root, names, mip, material_mip)
    for scene in names:
        missing = [k for k in range(LIGHTINGS) if not image_path(root, scene, k, mip).is_file()]
        if missing:
            raise FileNotFoundError(
                f"scene {scene!r} lacks lighting(s) {missing} at MIP{mip} (expected {root / scene}/dir_<k>_mip{mip}.jpg "
                f"for k = 0..{LIGHTINGS - 1})"
            )
        path = material_path(root, scene, materials.material_mip)
        if not path.is_file():
            raise FileNotFoundError(f"scene {scene!r}: the material map {path} does not exist")
    images = SceneImages(root, names, mip)
    # Read one scene fully now, so a wrong size or format fails here, not mid-training.
    images.read(names[0], 0)
    materials.read(names[0])
    return images, materials


def _load_numpy(root: Path, split: str, mip: int, check_size: bool) -> tuple[RowConcat, RowConcat]:
    h, w = mip_shape(mip)
    image_files = _numpy_files(root, split, mip, "images")
    material_files = _numpy_files(root, split, mip, "materials")
    if not image_files:
        raise FileNotFoundError(f"{root}: no dataset-{split}-mip-{mip}-batch-<j>.npy files for the {split} split")
    if len(material_files) != len(image_files):
        raise DatasetFormatError(
            f"{root}: {len(image_files)} image batch file(s) but {len(material_files)} material file(s) for {split} MIP{mip}; "
            "every dataset-{split}-mip-<m>-batch-<j>.npy needs its dataset-{split}-materials-mip-<m>-batch-<j>.npy"
        )
    images, materials = [], []
    for ip, mp in zip(image_files, material_files):
        im, ma = open_npy(ip, "image batch"), open_npy(mp, "material batch")
        if im.dtype != np.uint8 or im.ndim != 5 or im.shape[1:] != (LIGHTINGS, h, w, 3):
            raise DatasetFormatError(
                f"{ip}: shape {im.shape} dtype {im.dtype}, expected uint8 (scenes, {LIGHTINGS}, {h}, {w}, 3) at MIP{mip}"
            )
        if ma.dtype != np.uint8 or ma.shape != (im.shape[0], h, w):
            raise DatasetFormatError(
                f"{mp}: shape {ma.shape} dtype {ma.dtype}, expected uint8 ({im.shape[0]}, {h}, {w}) to match {ip.name}"
            )
        top = max((int(chunk.max()) for chunk in np.array_split(ma, max(1, ma.shape[0] // 64)) if chunk.size), default=0)
        if top > OTHER:
            raise DatasetFormatError(
                f"{mp}: material class {top} found; these files hold the 36 remapped classes 0..{OTHER}"
            )
        images.append(im)
        materials.append(ma)
    stack = RowConcat(images)
    if check_size and len(stack) != SPLIT_SIZES[split]:
        raise DatasetFormatError(
            f"{root}: the {split} files hold {len(stack)} scenes, the paper's split has {SPLIT_SIZES[split]}; "
            "pass check_size=False for a partial copy"
        )
    return stack, RowConcat(materials)


def load_multi_illumination(
    root: str | Path,
    split: str = "train",
    mip: int = 5,
    *,
    layout: str = "auto",
    material_mip: int | None = None,
    pairing: str = "with_original",
    reference_version: int = 0,
    augment: JointAugmentation | None = None,
    check_size: bool = True,
) -> VersionedData:
    """One split of the dataset as a :class:`VersionedData` of 25 lightings per scene.

    Args:
        root: the folder holding scene folders or the numpy batch files.
        split: ``train`` (960 scenes), ``val`` (25 drylab scenes) or ``test`` (30 scenes).
        mip: MIP level (images 4000/2^mip × 6000/2^mip).
        layout: ``scenes``, ``numpy`` or ``auto`` (whichever ``root`` holds).
        material_mip: scene layout only: MIP level of the material PNGs (default ``mip``).
        pairing: ``with_original`` (any ordered pair of distinct lightings: the paper's
            training pairs; ``mode="all"`` enumerates the 600 per scene) or ``fixed``
            (lighting ``reference_version`` only: the fixed-lighting baseline of Table 3).
        augment: joint crop/flip of training pairs and material maps (e.g.
            ``JointCropFlip(pad=10, crop=(125, 187))``, Appendix F.1).
        check_size: require the paper's number of scenes in the split.

    Returns a VersionedData of (25, 3, H, W) images decoded to [0, 1] and (H, W) material
    maps (labels, classes 0..35), both read only when a batch asks for them.
    """
    split = _check_split(split)
    mip_shape(mip)
    root = Path(root).expanduser()
    if layout == "auto":
        layout = detect_layout(root, mip, split)
    if layout == "scenes":
        images, materials = _load_scenes(root, split, mip, material_mip, check_size)
    elif layout == "numpy":
        if material_mip is not None and material_mip != mip:
            raise ValueError("material_mip applies to the scene-folder layout; numpy batch files hold maps at the images' size")
        images, materials = _load_numpy(root, split, mip, check_size)
    else:
        raise ValueError(f"layout must be 'auto', 'scenes' or 'numpy', got {layout!r}")
    return VersionedData(
        images, materials, pairing=pairing, reference_version=reference_version, channels_last=True, augment=augment
    )


def _is_complete(path: Path, shape: tuple[int, ...]) -> bool:
    """True if ``path`` is a uint8 .npy file of exactly ``shape`` (a finished conversion)."""
    if not path.is_file():
        return False
    try:
        existing = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return isinstance(existing, np.ndarray) and existing.dtype == np.uint8 and existing.shape == shape


def write_numpy_batches(
    root: str | Path,
    out: str | Path,
    mip: int = 5,
    *,
    splits: Sequence[str] = SPLITS,
    material_mip: int | None = None,
    scenes_per_file: int = 200,
    check_size: bool = True,
) -> list[Path]:
    """Convert scene folders to the paper's numpy batch layout, one scene in memory at a time.

    Writes ``dataset-<split>-mip-<m>-batch-<j>.npy`` (scenes, 25, H, W, 3) and
    ``dataset-<split>-materials-mip-<m>-batch-<j>.npy`` (scenes, H, W) with up to
    ``scenes_per_file`` scenes each (the paper's code: 200). Each file is filled through a
    memory map and renamed into place when complete, so an interrupted conversion leaves no
    partial file under a final name, and a rerun skips the files that already hold the
    expected shape (others are rewritten). Reading the
    arrays afterwards is a memory map instead of 50 JPEG decodes per batch of 25 pairs.
    """
    from perturbsets._util.io import atomic_path

    root, out = Path(root).expanduser(), Path(out).expanduser()
    if scenes_per_file < 1:
        raise ValueError(f"scenes_per_file must be >= 1, got {scenes_per_file}")
    h, w = mip_shape(mip)
    written = []
    for split in splits:
        images, materials = _load_scenes(root, _check_split(split), mip, material_mip, check_size)
        for j, start in enumerate(range(0, len(images), scenes_per_file)):
            rows = range(start, min(start + scenes_per_file, len(images)))
            targets = (
                (out / f"dataset-{split}-mip-{mip}-batch-{j}.npy", (len(rows), LIGHTINGS, h, w, 3), images.__getitem__),
                # read(), not indexing: the conversion should not keep every map in the cache.
                (out / f"dataset-{split}-materials-mip-{mip}-batch-{j}.npy", (len(rows), h, w),
                 lambda r: materials.read(materials.scenes[r])),
            )  # fmt: skip
            for path, shape, read in targets:
                if not _is_complete(path, shape):
                    with atomic_path(path) as tmp:
                        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                        for i, r in enumerate(rows):
                            array[i] = read(r)
                        array.flush()
                        del array
                written.append(path)
    return written
