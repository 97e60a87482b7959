"""Image grids as arrays, and PNG files written atomically (no plotting library needed)."""

from __future__ import annotations

import os

import numpy as np

from perturbsets._util.io import atomic_path


def tile_images(images: np.ndarray, pad: int, pad_value: float) -> np.ndarray:
    """Tile ``images`` (R, K, C, H, W), C in {1, 3}, into one (R*H + (R-1)*pad, K*W + (K-1)*pad, 3) float32 array.

    Image (r, k) goes to row r, column k; values are clipped to [0, 1]; grayscale is repeated
    into three channels; ``pad`` pixels of ``pad_value`` separate neighbours (none at the border).
    """
    R, K, C, H, W = images.shape
    cells = np.full((R, K, H + pad, W + pad, 3), pad_value, dtype=np.float32)
    # Broadcasting over the channel axis turns grayscale into three equal channels.
    cells[:, :, :H, :W, :] = np.clip(images, 0.0, 1.0).transpose(0, 1, 3, 4, 2)
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(R * (H + pad), K * (W + pad), 3)
    # Each cell carries its separator on the bottom/right; the last row and column don't need one.
    return grid[: R * (H + pad) - pad, : K * (W + pad) - pad]


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``image`` (H, W, 3) with values in [0, 1] as an 8-bit RGB PNG, atomically."""
    from PIL import Image  # only the writers of images pay for importing PIL

    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format is given rather than inferred.
        Image.fromarray(pixels).save(tmp, format="PNG")
