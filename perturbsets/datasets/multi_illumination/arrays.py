"""Multi-Illumination scenes as lazy uint8 arrays: only the images a batch asks for are read.

:class:`SceneImages` decodes the 25 lightings of scene folders and :class:`SceneMaterials`
their material maps; :class:`RowConcat` joins the memory-mapped numpy batch files. All
three are indexed ``obj[rows]`` or ``obj[rows, lightings]`` with numpy's rules.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from perturbsets.datasets.files import DatasetFormatError
from perturbsets.datasets.multi_illumination.materials import remap_materials

__all__ = [
    "LIGHTINGS",
    "mip_shape",
    "image_path",
    "material_path",
    "SceneImages",
    "SceneMaterials",
    "RowConcat",
]

LIGHTINGS = 25


def mip_shape(mip: int) -> tuple[int, int]:
    """(H, W) of the dataset's images at MIP level ``mip`` (the SDK's ``imshape``)."""
    if isinstance(mip, bool) or not isinstance(mip, (int, np.integer)) or not 0 <= mip <= 11:
        raise ValueError(f"mip must be an integer MIP level in 0..11 (the paper uses 5, 4 and 3), got {mip!r}")
    return 4000 // 2**mip, 6000 // 2**mip


def image_path(root: Path, scene: str, k: int, mip: int) -> Path:
    """Where the scene-folder layout keeps lighting ``k`` of ``scene`` at MIP level ``mip``."""
    return root / scene / f"dir_{k}_mip{mip}.jpg"


def material_path(root: Path, scene: str, mip: int) -> Path:
    """Where the scene-folder layout keeps the material map of ``scene`` at MIP level ``mip``."""
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

        path = image_path(self.root, scene, k, self.mip)
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

        path = material_path(self.root, scene, self.material_mip)
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
