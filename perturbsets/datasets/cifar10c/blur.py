"""The blur family of CIFAR-10-C: defocus, glass, motion, zoom and gaussian blur.

Each function takes a uint8 batch (N, 32, 32, 3), one severity's parameter and the random
generator, and returns the result on the 0..255 scale;
:func:`~perturbsets.datasets.cifar10c.registry.corrupt` checks the input and casts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from perturbsets.datasets.cifar10c.imageops import (
    SIZE,
    clipped_zoom,
    correlate_reflect101,
    gauss,
    integers,
    magick_motion_blur,
)

__all__ = [
    "BLUR_PARAMETERS",
    "defocus_kernel",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "gaussian_blur",
]


# Per-severity parameters (severity 1..5), cifar10c.md Section 3 (= make_cifar_c.py).
BLUR_PARAMETERS: dict[str, tuple] = {
    # (disk radius, alias-blur sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (gaussian sigma, max displacement delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # ImageMagick (radius, sigma); angle ~ U(-45, 45)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # end of the float arange(1, end, 0.01) of zoom factors (7, 12, 16, 21, 26 factors)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # gaussian sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
}


def gaussian_blur(x8, sigma, rng):
    """skimage ``gaussian(x, sigma)`` per channel (scipy, mode nearest, truncate 4), float64.
    (``cifar10c.md`` Section 3.)
    """
    return np.clip(gauss(x8 / 255.0, sigma), 0, 1) * 255


def glass_blur(x8, p, rng):
    """uint8(gaussian(x, sigma) * 255), then ``iterations`` sweeps of local pixel copies over
    rows/columns 31..2 (rows and columns 0, 1 never change), then gaussian(., sigma) again.
    (``cifar10c.md`` Section 3.)
    """
    sigma, delta, iterations = p
    if delta != 1:  # the vectorised sweep below relies on sources lying up/left (delta = 1)
        raise NotImplementedError("glass_blur is implemented for delta = 1 (all CIFAR severities)")
    n = x8.shape[0]
    img = (gauss(x8 / 255.0, sigma) * 255).astype(np.uint8)
    hs = np.arange(SIZE - delta, delta, -1)  # rows/columns 31 .. 2, in sweep order
    k = hs.size
    draws = integers(rng, -delta, delta, size=(n, iterations, k, k, 2))
    batch = np.arange(n)[:, None, None]
    for it in range(iterations):
        dx = draws[:, it, :, :, 0]
        dy = draws[:, it, :, :, 1]
        # The reference "swap" is a copy (numpy view aliasing): (h, w) <- (h + dy, w + dx).
        # Sources are up/left or the pixel itself and are visited later in the sweep, so one
        # sweep reads only the previous iteration's values: a parallel gather is exact.
        src = img[batch, hs[None, :, None] + dy, hs[None, None, :] + dx]
        img = img.copy()
        img[:, hs[:, None], hs[None, :]] = src
    return np.clip(gauss(img / 255.0, sigma), 0, 1) * 255


def _cv2_gaussian_kernel3(sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(3, sigma, CV_32F)``: taps cast to float32, normalised by
    the float64 reciprocal of their sum, cast again."""
    taps = [np.float32(math.exp((-0.5 / (sigma * sigma)) * x * x)) for x in (-1.0, 0.0, 1.0)]
    inv = 1.0 / (float(taps[0]) + float(taps[1]) + float(taps[2]))
    return np.array([np.float32(float(t) * inv) for t in taps], dtype=np.float32)


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference defocus kernel, float32 (17, 17), rebuilt as OpenCV computes it.

    A disk indicator ``X^2 + Y^2 <= r^2`` on offsets -8..8 (float32), divided by its float32
    sum, then ``cv2.GaussianBlur(ksize=(3, 3), sigmaX=alias_blur)`` with reflect-101 border:
    a separable 3-tap float32 filter, row pass then column pass, each computed as
    ``centre * k1 + (left + right) * k0`` in float32 (``cifar10c.md`` Section 3, defocus).
    Sums to 1 within ~1e-7.
    """
    if radius > 8:
        raise ValueError("defocus_kernel supports radius <= 8 (all CIFAR severities)")
    offs = np.arange(-8, 9)
    xx, yy = np.meshgrid(offs, offs)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= np.sum(disk, dtype=np.float32)
    g = _cv2_gaussian_kernel3(alias_blur)
    p = np.pad(disk, ((0, 0), (1, 1)), mode="reflect")
    rows = p[:, 1:-1] * g[1] + (p[:, :-2] + p[:, 2:]) * g[0]
    p = np.pad(rows, ((1, 1), (0, 0)), mode="reflect")
    return (p[1:-1] * g[1] + (p[:-2] + p[2:]) * g[0]).astype(np.float32)


def defocus_blur(x8, p, rng):
    """Correlation of each float64 channel with :func:`defocus_kernel` (reflect-101).
    (``cifar10c.md`` Section 3.)
    """
    kernel = defocus_kernel(*p)
    return np.clip(correlate_reflect101(x8 / 255.0, kernel), 0, 1) * 255


def motion_blur(x8, p, rng):
    """ImageMagick motion blur (:func:`~perturbsets.datasets.cifar10c.imageops.motion_blur_kernel`)
    of the uint8 image at a random angle U(-45, 45); the result is already uint8.
    (``cifar10c.md`` Section 3.)
    """
    radius, sigma = p
    angles = rng.uniform(-45, 45, size=x8.shape[0])
    return magick_motion_blur(x8, radius, sigma, angles)


def _zoom_blur_factors(x8: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    x = x8.astype(np.float32) / np.float32(255)
    out = np.zeros_like(x)
    for z in zooms:
        out += clipped_zoom(x, float(z))
    x = (x + out) / np.float32(len(zooms) + 1)
    return np.clip(x, 0, 1) * np.float32(255)


def zoom_blur(x8, end, rng):
    """float32 (x + sum_z clipped_zoom(x, z)) / (n + 1) over z = arange(1, end, 0.01).
    (``cifar10c.md`` Section 3.)
    """
    return _zoom_blur_factors(x8, np.arange(1, end, 0.01))
