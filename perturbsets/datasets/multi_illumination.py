"""The Multi-Illumination dataset (Murmann et al., 2019) for paper Section 5.2 and Appendix F.

Each of the dataset's 1,015 scenes was photographed under 25 flash directions and carries a
per-pixel material annotation. The dataset is never downloaded here; two on-disk layouts are
read, lazily (only the images of a batch are ever decoded or read):

* **scene folders**, as the dataset's own SDK (``multilum``) stores them::

      root/<scene>/dir_<k>_mip<m>.jpg     k = 0..24, the 25 lightings (RGB JPEG)
      root/<scene>/materials_mip<m>.png   indexed PNG, palette indices of the annotation

* **numpy batches**, the layout the paper's code wrote (uint8, scenes on the first axis)::

      root/dataset-{train,val,test}-mip-<m>-batch-<j>.npy            (n, 25, H, W, 3)
      root/dataset-{train,val,test}-materials-mip-<m>-batch-<j>.npy  (n, H, W) classes 0..35

MIP level m gives images of H × W = 4000 // 2^m × 6000 // 2^m (MIP5 125×187, MIP4
250×375, MIP3 500×750). The splits are the paper's: the 30 test scenes of the dataset
(names starting with ``everett``), 25 validation scenes (names containing
``main_drylab``) and the other 960 for training.

Material annotations use 41 palette entries; like the paper's code they are remapped to
36 classes: the 35 named materials in alphabetical order and ``Other`` (35) for the six
"unknown" entries (unassigned, I can't tell, more than one material, not on list,
splitshape, no consensus). A palette index outside the 41 is an error naming the file.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturbsets.datasets.formats import DatasetFormatError, _open_npy
from perturbsets.pairs.augment import JointAugmentation
from perturbsets.pairs.versioned import VersionedData

__all__ = [
    "MATERIALS",
    "PALETTE",
    "PALETTE_TO_CLASS",
    "LIGHTINGS",
    "SPLIT_SIZES",
    "mip_shape",
    "remap_materials",
    "split_scenes",
    "SceneImages",
    "SceneMaterials",
    "RowConcat",
    "load_multi_illumination",
]

LIGHTINGS = 25
SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 960, "val": 25, "test": 30}

# Palette index -> name, in the order of the dataset's annotation palette.
PALETTE: tuple[str, ...] = (
    "unassigned", "I can't tell", "More than one material", "Cardboard", "Ceramic", "Concrete",
    "Cork/corkboard", "Dirt", "Fabric/cloth", "Foliage", "Food", "Fur", "Glass", "Granite/marble",
    "Laminate", "Leather", "Linoleum", "Metal", "Mirror", "Not on list", "Painted", "Paper/tissue",
    "Plastic - clear", "Plastic - opaque", "Rubber/latex", "Sponge", "Styrofoam", "Tile", "splitshape",
    "Wallpaper", "Wax", "Wicker", "Wood", "Stone", "Chalkboard/blackboard", "Carpet/rug", "Brick", "Skin",
    "Water", "Hair", "no_consensus",
)  # fmt: skip
_UNKNOWN = {"unassigned", "I can't tell", "More than one material", "Not on list", "splitshape", "no_consensus"}
MATERIALS: tuple[str, ...] = (*sorted(n for n in PALETTE if n not in _UNKNOWN), "Other")
OTHER = len(MATERIALS) - 1
# (256,) palette index -> class, -1 for indices the palette does not define.
PALETTE_TO_CLASS = np.full(256, -1, dtype=np.int16)
for _index, _name in enumerate(PALETTE):
    PALETTE_TO_CLASS[_index] = MATERIALS.index(_name) if _name in MATERIALS else OTHER


def mip_shape(mip: int) -> tuple[int, int]:
    """(H, W) of the dataset's images at MIP level ``mip`` (the SDK's ``imshape``)."""
    if isinstance(mip, bool) or not isinstance(mip, (int, np.integer)) or not 0 <= mip <= 11:
        raise ValueError(f"mip must be an integer MIP level in 0..11 (the paper uses 5, 4 and 3), got {mip!r}")
    return 4000 // 2**mip, 6000 // 2**mip


def remap_materials(indices: np.ndarray, where: str = "material map") -> np.ndarray:
    """Palette indices (any shape, integer) -> the 36 material classes, uint8, same shape."""
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise DatasetFormatError(f"{where}: material indices must be integers, got dtype {indices.dtype}")
    bad = (indices < 0) | (indices >= len(PALETTE))
    if bad.any():
        values = sorted({int(v) for v in np.unique(indices[bad])[:5]})
        raise DatasetFormatError(
            f"{where}: palette index {values} is not one of the dataset's {len(PALETTE)} material entries "
            f"(0..{len(PALETTE) - 1}); this is not a Multi-Illumination material map"
        )
    return PALETTE_TO_CLASS[indices].astype(np.uint8)


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


def _image_path(root: Path, scene: str, k: int, mip: int) -> Path:
    return root / scene / f"dir_{k}_mip{mip}.jpg"


def _material_path(root: Path, scene: str, mip: int) -> Path:
    return root / scene / f"materials_mip{mip}.png"


def _integer_index(value: Any, size: int, what: str) -> np.ndarray:
    """An int, a slice or an integer array as int64 indices in [0, size) (negatives wrap)."""
    if isinstance(value, slice):
        return np.arange(size)[value]
    index = np.asarray(value)
    if index.dtype.kind not in "iu":
        raise IndexError(f"{what} indices must be integers (for a boolean mask use np.nonzero(mask)[0]), got {index.dtype}")
    index = index.astype(np.int64)
    if index.size and (index.min() < -size or index.max() >= size):
        raise IndexError(f"{what} index out of range for {size} {what}s")
    return np.where(index < 0, index + size, index)


def _rows_and_cols(key: Any, n: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """Normalise ``obj[rows]`` / ``obj[rows, cols]`` to flat index arrays and the result's leading shape.

    Follows numpy's rules for these keys: ``obj[rows]`` has ``rows``' shape; ``obj[rows,
    cols]`` with integers / integer arrays broadcasts them together (element b is lighting
    ``cols[b]`` of scene ``rows[b]``); a slice on either axis gives the outer product.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) > 2:
        raise IndexError("index the (scene, lighting) axes only; index the result for further axes")
    rows = _integer_index(key[0], n, "scene")
    if len(key) == 1:
        return rows.reshape(-1), None, rows.shape
    cols = _integer_index(key[1], LIGHTINGS, "lighting")
    if isinstance(key[0], slice) or isinstance(key[1], slice):
        rows, cols = np.ix_(rows.reshape(-1), cols.reshape(-1)) if rows.ndim and cols.ndim else (rows, cols)
    rows, cols = np.broadcast_arrays(rows, cols)
    return rows.reshape(-1), cols.reshape(-1), rows.shape


class _SceneArray:
    """What the two lazy scene arrays share: their scenes, MIP level, image size and uint8 dtype."""

    def __init__(self, root: Path, scenes: Sequence[str], mip: int) -> None:
        self.root, self.scenes, self.mip = Path(root), list(scenes), int(mip)
        self.height, self.width = mip_shape(mip)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.scenes)


class SceneImages(_SceneArray):
    """The 25 lightings of scene folders as a lazy (N, 25, H, W, 3) uint8 array.

    ``obj[rows, cols]`` with equal-length integer arrays decodes image ``cols[b]`` of scene
    ``rows[b]`` (B decodes, in a few threads: JPEG decoding releases the GIL);
    ``obj[rows]`` decodes all 25 lightings of each row. Every decoded image is checked to
    have the MIP level's size.
    """

    def __init__(self, root: Path, scenes: Sequence[str], mip: int, threads: int = 4) -> None:
        super().__init__(root, scenes, mip)
        self.threads = max(1, int(threads))

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (len(self.scenes), LIGHTINGS, self.height, self.width, 3)

    def __repr__(self) -> str:
        return f"SceneImages({len(self.scenes)} scenes at MIP{self.mip} under {self.root})"

    def read(self, scene: str, k: int) -> np.ndarray:
        """Lighting ``k`` of ``scene``: (H, W, 3) uint8."""
        from PIL import Image, UnidentifiedImageError

        path = _image_path(self.root, scene, k, self.mip)
        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise FileNotFoundError(f"scene {scene!r}: lighting {k} is missing ({path} does not exist)") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetFormatError(f"scene {scene!r}: {path} is not a readable image ({e})") from None
        if array.shape[:2] != (self.height, self.width):
            raise DatasetFormatError(
                f"scene {scene!r}: {path} is {array.shape[1]}x{array.shape[0]} (width x height) but MIP{self.mip} "
                f"images are {self.width}x{self.height}"
            )
        return array

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols, shape = _rows_and_cols(key, len(self.scenes))
        if cols is None:
            jobs = [(int(r), k) for r in rows for k in range(LIGHTINGS)]
            shape = (*shape, LIGHTINGS)
        else:
            jobs = list(zip(rows.tolist(), cols.tolist()))
        out = np.empty((len(jobs), self.height, self.width, 3), dtype=np.uint8)

        def decode(i: int) -> None:
            r, k = jobs[i]
            out[i] = self.read(self.scenes[r], k)

        if len(jobs) > 1 and self.threads > 1:
            with ThreadPoolExecutor(min(self.threads, len(jobs))) as pool:
                list(pool.map(decode, range(len(jobs))))
        else:
            for i in range(len(jobs)):
                decode(i)
        return out.reshape(*shape, self.height, self.width, 3)


class SceneMaterials(_SceneArray):
    """Material maps of scene folders as a lazy (N, H, W) uint8 array of the 36 classes.

    Each map is decoded on first use and then kept in memory.

    ``material_mip`` is the MIP level of the PNGs read; a finer level than the images'
    (e.g. 2 for MIP5 images, as the paper's data did, because the dataset's own MIP5 maps
    are off by one pixel) is resized to the image size by nearest neighbour, which never
    invents a class.
    """

    def __init__(self, root: Path, scenes: Sequence[str], mip: int, material_mip: int | None = None) -> None:
        super().__init__(root, scenes, mip)
        # Decoded maps are kept (uint8 at the image size: 24 MB for all MIP5 scenes, 380 MB
        # at MIP3): decoding a MIP2 PNG for every example of every batch would dominate.
        self._cache: dict[int, np.ndarray] = {}
        self.material_mip = self.mip if material_mip is None else int(material_mip)
        mip_shape(self.material_mip)
        if self.material_mip > self.mip:
            raise ValueError(
                f"material_mip {self.material_mip} is coarser than the images' MIP{self.mip}; use a level <= {self.mip}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.scenes), self.height, self.width)

    def __repr__(self) -> str:
        return f"SceneMaterials({len(self.scenes)} scenes, MIP{self.material_mip} maps at {self.width}x{self.height})"

    def read(self, scene: str) -> np.ndarray:
        """The material map of ``scene``: (H, W) uint8 classes 0..35."""
        from PIL import Image, UnidentifiedImageError

        path = _material_path(self.root, scene, self.material_mip)
        try:
            with Image.open(path) as im:
                if im.mode != "P":
                    raise DatasetFormatError(
                        f"scene {scene!r}: {path} has image mode {im.mode!r}; material maps are indexed ('P') PNGs "
                        "whose pixel values are palette indices"
                    )
                expected = mip_shape(self.material_mip)
                if im.size != (expected[1], expected[0]):
                    hint = (
                        " (the dataset's own MIP5 maps are off by one; set material_mip: 2 to resize the MIP2 maps, "
                        "as the paper's data did)"
                        if self.material_mip == self.mip
                        else ""
                    )
                    raise DatasetFormatError(
                        f"scene {scene!r}: {path} is {im.size[0]}x{im.size[1]} (width x height) but a MIP{self.material_mip} "
                        f"material map is {expected[1]}x{expected[0]}{hint}"
                    )
                if im.size != (self.width, self.height):
                    im = im.resize((self.width, self.height), Image.NEAREST)
                indices = np.asarray(im)
        except FileNotFoundError:
            raise FileNotFoundError(f"scene {scene!r}: the material map {path} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:  # OSError: a truncated file
            raise DatasetFormatError(f"scene {scene!r}: {path} is not a readable PNG ({e})") from None
        return remap_materials(indices, f"scene {scene!r}: {path}")

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) > 1:
            raise IndexError("material maps have one axis of examples; index them with rows only")
        rows, _, shape = _rows_and_cols(key, len(self.scenes))
        for r in rows.tolist():
            if r not in self._cache:
                self._cache[r] = self.read(self.scenes[r])
        out = np.empty((rows.size, self.height, self.width), np.uint8)
        for i, r in enumerate(rows.tolist()):
            out[i] = self._cache[r]
        return out.reshape(*shape, self.height, self.width)


class RowConcat:
    """A lazy ``np.concatenate(parts)`` along the first axis (the paper's numpy batch files).

    Indexing the first axis (and, for 5-D parts, the lighting axis with ``obj[rows, cols]``)
    reads only the requested rows of each memory-mapped part.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("RowConcat needs at least one part")
        tail = tuple(parts[0].shape[1:])
        for p in parts:
            if tuple(p.shape[1:]) != tail or p.dtype != parts[0].dtype:
                raise ValueError(f"RowConcat parts must share trailing shape and dtype, got {p.shape} {p.dtype} vs {tail}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.offsets[-1]), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) > 1 and len(self.shape) < 5:
            raise IndexError(f"these parts have shape {self.shape[1:]} per row; index them with rows only")
        rows, cols, shape = _rows_and_cols(key, len(self))
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        tail = self.shape[2:] if cols is not None else self.shape[1:]
        out = np.empty((rows.size, *tail), dtype=self.dtype)
        for j in np.unique(part):
            sel = part == j
            local = rows[sel] - self.offsets[j]
            out[sel] = self.parts[j][local] if cols is None else self.parts[j][local, cols[sel]]
        return out.reshape(*shape, *tail)


# --------------------------------------------------------------------------- layouts


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
        missing = [k for k in range(LIGHTINGS) if not _image_path(root, scene, k, mip).is_file()]
        if missing:
            raise FileNotFoundError(
                f"scene {scene!r} lacks lighting(s) {missing} at MIP{mip} (expected {root / scene}/dir_<k>_mip{mip}.jpg "
                f"for k = 0..{LIGHTINGS - 1})"
            )
        path = _material_path(root, scene, materials.material_mip)
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
        im, ma = _open_npy(ip, "image batch"), _open_npy(mp, "material batch")
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
