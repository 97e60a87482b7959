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
"unknown" entries.

Modules: ``materials`` (the palette and its 36 classes), ``arrays`` (lazy scene arrays)
and ``loader`` (layouts, the paper's split, the loader and the numpy batch writer).
"""

from perturbsets.datasets.multi_illumination.arrays import (
    LIGHTINGS,
    RowConcat,
    SceneImages,
    SceneMaterials,
    mip_shape,
)
from perturbsets.datasets.multi_illumination.loader import (
    SPLIT_SIZES,
    detect_layout,
    load_multi_illumination,
    split_scenes,
    write_numpy_batches,
)
from perturbsets.datasets.multi_illumination.materials import (
    MATERIALS,
    PALETTE,
    PALETTE_TO_CLASS,
    remap_materials,
)

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
    "detect_layout",
    "load_multi_illumination",
    "write_numpy_batches",
]
