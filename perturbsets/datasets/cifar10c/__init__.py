"""CIFAR-10-C (Hendrycks & Dietterich, 2019): reading the released files and regenerating the 19 corruptions.

Wong & Kolter (ICLR 2021) learn a CIFAR-10 perturbation set from *training-split*
CIFAR-10-C corruptions (paper Section 5, Appendix E), but only the test split was ever
released, and the reference generator (``make_cifar_c.py``, also copied by the authors,
``official-implementation.md`` Section 4.7) is unseeded and needs ImageMagick/Wand,
OpenCV, scikit-image < 0.20 and numpy < 2. The corruptions here are an independent
re-implementation of the algorithms described in ``shared/reference/cifar10c.md``
(Sections 2 and 3) with numpy, scipy and Pillow only, and the CIFAR (32 x 32) parameters.

Images are uint8 ``(N, 32, 32, 3)`` HWC RGB (a single ``(32, 32, 3)`` image is accepted
too); results have the same shape and dtype. As in the reference, each corruption computes
a float image on the 0..255 scale, clipped to [0, 255], and the final cast to uint8
**truncates** (floors); rounding would shift the mean by about half a level.

Modules, lower first:

* ``imageops`` -- the image operations several families share (HSV, OpenCV's ``filter2D``,
  scipy's zoom, ImageMagick's motion blur); ``frost_textures`` -- the textures frost crops.
* ``noise``, ``blur``, ``weather``, ``digital`` -- the corruptions of each of Hendrycks'
  families, with their per-severity parameters.
* ``registry`` -- :data:`CORRUPTIONS` (the 19 names in the reference order),
  :data:`TRAIN_CORRUPTIONS` (the 12 the paper trains on), :data:`OOD_CORRUPTIONS` (the 3
  held out), :data:`PARAMETERS`, and :func:`corrupt` (one corruption at one severity,
  seeded; the randomness and fidelity notes are there).
* ``generator`` -- :func:`make_corrupted_split`: a whole split, parallel, resumable,
  written in Hendrycks' layout (``<name>.npy``, 5N rows) and in the authors' layout
  (``<name>_<severity>.npy``).
* ``reader`` -- :func:`load_cifar10c` and :func:`load_cifar10c_versioned`: either layout,
  memory-mapped.
"""

from perturbsets.datasets.cifar10c.blur import defocus_kernel
from perturbsets.datasets.cifar10c.frost_textures import load_frost_textures, procedural_frost_textures
from perturbsets.datasets.cifar10c.generator import CHUNK_SIZE, make_corrupted_split
from perturbsets.datasets.cifar10c.imageops import hsv_to_rgb, motion_blur_kernel, rgb_to_hsv
from perturbsets.datasets.cifar10c.reader import (
    cifar10c_version_names,
    load_cifar10c,
    load_cifar10c_versioned,
)
from perturbsets.datasets.cifar10c.registry import (
    CORRUPTIONS,
    NOISE_CORRUPTIONS,
    OOD_CORRUPTIONS,
    PARAMETERS,
    RANDOM_CORRUPTIONS,
    SEVERITIES,
    TRAIN_CORRUPTIONS,
    corrupt,
)

__all__ = [
    "CHUNK_SIZE",
    "CORRUPTIONS",
    "NOISE_CORRUPTIONS",
    "OOD_CORRUPTIONS",
    "PARAMETERS",
    "RANDOM_CORRUPTIONS",
    "SEVERITIES",
    "TRAIN_CORRUPTIONS",
    "corrupt",
    "make_corrupted_split",
    "load_cifar10c",
    "load_cifar10c_versioned",
    "cifar10c_version_names",
    "defocus_kernel",
    "motion_blur_kernel",
    "procedural_frost_textures",
    "load_frost_textures",
    "rgb_to_hsv",
    "hsv_to_rgb",
]
