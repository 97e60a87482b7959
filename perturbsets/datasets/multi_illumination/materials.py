"""The Multi-Illumination material annotation: its 41-entry palette and the paper's 36 classes.

Like the paper's code, the palette is remapped to the 35 named materials in alphabetical
order and ``Other`` (35) for the six "unknown" entries (unassigned, I can't tell, more than
one material, not on list, splitshape, no consensus). A palette index outside the 41 is an
error naming the file.
"""

from __future__ import annotations

import numpy as np

from perturbsets.datasets.files import DatasetFormatError

__all__ = ["PALETTE", "MATERIALS", "OTHER", "PALETTE_TO_CLASS", "remap_materials"]

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
