"""The 19 CIFAR-10-C common corruptions, seeded and reproducible (Hendrycks & Dietterich, 2019).

Wong & Kolter (ICLR 2021) learn a CIFAR-10 perturbation set from *training-split*
CIFAR-10-C corruptions (paper Section 5, Appendix E), but only the test split was ever
released, and the reference generator (``make_cifar_c.py``, also copied by the authors,
``official-implementation.md`` Section 4.7) is unseeded and needs ImageMagick/Wand,
OpenCV, scikit-image < 0.20 and numpy < 2.  This module is an independent re-implementation
of the algorithms described in ``shared/reference/cifar10c.md`` (Sections 2 and 3) with
numpy, scipy and Pillow only, and the CIFAR (32 x 32) parameters.

Images are uint8 ``(N, 32, 32, 3)`` HWC RGB (a single ``(32, 32, 3)`` image is accepted
too); results have the same shape and dtype.  As in the reference, each corruption computes
a float image on the 0..255 scale, clipped to [0, 255], and the final cast to uint8
**truncates** (floors); rounding would shift the mean by about half a level.

API
---
* :data:`CORRUPTIONS` -- the 19 names in the reference order; :data:`TRAIN_CORRUPTIONS` (the
  12 used by the paper for training) and :data:`OOD_CORRUPTIONS` (the 3 used for
  out-of-distribution evaluation), all at severity 5 in the paper.
* :func:`corrupt` ``(images, name, severity, rng)`` -- one corruption at one severity.
* :func:`make_corrupted_split` -- a whole split, parallel, resumable, written in Hendrycks'
  layout (``<name>.npy``, 5N rows) and in the authors' layout (``<name>_<severity>.npy``).
* :data:`PARAMETERS` -- the per-severity parameters (``cifar10c.md`` Section 3).
* helpers used by the corruptions and by the tests: :func:`defocus_kernel`,
  :func:`motion_blur_kernel`, :func:`procedural_frost_textures`, :func:`load_frost_textures`,
  :func:`rgb_to_hsv`, :func:`hsv_to_rgb`.

Randomness
----------
Every random quantity is drawn from the ``rng`` passed to :func:`corrupt`, a
``numpy.random.Generator`` (or a legacy ``numpy.random.RandomState``), in the order of
the reference script: image after image, and within one image in the order listed below.
Draws of a single kind are made for the whole batch at once, which consumes the stream in
exactly that per-image order.  Consequently a seed fixes everything, and with a
``RandomState`` in the state the reference script had, the random parameters are the ones
the reference drew (impulse_noise excepted: the reference used a fresh unseeded generator
per call).  Per image:

=================== ==========================================================================
gaussian_noise      ``normal(0, sigma, (32, 32, 3))``
shot_noise          ``poisson(x * lam)`` with shape (32, 32, 3)
impulse_noise       ``random((32, 32, 3))`` (hit mask) then ``random((32, 32, 3))`` (salt mask)
speckle_noise       ``normal(0, sigma, (32, 32, 3))``
glass_blur          ``integers(-1, 1)`` for (iteration, row 31..2, column 31..2, (dx, dy))
motion_blur         ``uniform(-45, 45)`` (angle in degrees)
snow                ``normal(loc, scale, (32, 32))`` then ``uniform(-135, -45)``
frost               ``integers(len(textures))``, then ``integers(0, H - 32)``,
                    ``integers(0, W - 32)`` (crop corner)
fog                 per plasma level (step 32, 16, 8, 4, 2): ``uniform(-w, w)`` of shape
                    (n, n) three times (squares, diamonds on even rows, diamonds on odd rows)
elastic_transform   ``uniform(-a, a, (3, 2))``, ``uniform(-1, 1, (32, 32))`` (dx),
                    ``uniform(-1, 1, (32, 32))`` (dy)
spatter             ``normal(loc, scale, (32, 32))``
=================== ==========================================================================

The deterministic corruptions (gaussian_blur, defocus_blur, zoom_blur, brightness, contrast,
saturate, pixelate, jpeg_compression) draw nothing.

Fidelity to the reference (``cifar10c.md`` Section 7)
------------------------------------------------------
Checked offline (not in the test suite, which needs none of these libraries) against a
reconstruction of the reference functions run with OpenCV 4.10, scikit-image 0.26 and
scipy 1.17, fed the same legacy ``RandomState`` stream, on 48-64 test images x 5 severities:

* **bit-exact**: gaussian/shot/impulse/speckle noise, gaussian_blur, glass_blur,
  defocus_blur (OpenCV kernel and ``filter2D`` emulated), zoom_blur (scipy's order-1
  ``zoom`` arithmetic reproduced, also checked against scipy in the tests), fog, frost (same
  textures), brightness, contrast, saturate (skimage HSV conventions), elastic_transform
  (OpenCV ``warpAffine`` fixed-point emulation + scipy ``map_coordinates``), spatter at all
  severities (water branch: OpenCV ``Canny``, ``distanceTransform``, ``blur``,
  ``equalizeHist``, ``filter2D`` emulated), pixelate and jpeg_compression (Pillow itself).
* **+-1 on ~1e-5 of values**: snow, from OpenCV's float32 RGB->grey conversion (its SIMD
  summation order is not reproduced; differences of 1 ulp before truncation).
* **emulated, unverifiable here**: motion_blur and snow's snow-layer blur use the
  ImageMagick 6 Q16 ``MotionBlurImage`` emulation that ``cifar10c.md`` reports bit-exact
  against IM 6.9.11; no ImageMagick was available to re-check it.
* **procedural (statistics differ)**: frost with the default textures, see below.
* The OpenCV behaviour emulated is 4.10's (e.g. ``distanceTransform`` with float32 chamfer
  costs); the OpenCV the reference ran in 2019 may have differed by +-1 on a few values.

Frost: the reference blends crops of five frost *photographs* that are not available here.
By default this module uses four seeded procedural ice-crystal textures
(:func:`procedural_frost_textures`), so frost statistics differ from the released
CIFAR-10-C.  Pass the real images with ``frost_textures=load_frost_textures(paths)`` to
reproduce the reference exactly.

Deliberate deviation: spatter's water branch leaves the image unchanged when the water
mask is empty (the reference divides 0/0 there and casts NaN to a black image); it is
practically unreachable with the CIFAR parameters.  Quirks kept for fidelity: the uint8
cast truncates; the mean of a constant image is a float sum, so contrast (like the
reference) can map a constant v to v - 1; spatter's liquid layer above 1 wraps modulo 256
in its uint8 cast (as numpy's C cast did on x86).
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

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
    "defocus_kernel",
    "hsv_to_rgb",
    "load_frost_textures",
    "make_corrupted_split",
    "motion_blur_kernel",
    "procedural_frost_textures",
    "rgb_to_hsv",
]

# Reference order (the order of the reference script and of the released files).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
# Paper (Wong & Kolter 2021, Section 5.2 / configs): the 12 training corruptions, in the
# authors' configured order, and the 3 held-out (OOD) ones; all at severity 5.
TRAIN_CORRUPTIONS: tuple[str, ...] = (
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
OOD_CORRUPTIONS: tuple[str, ...] = ("gaussian_blur", "spatter", "saturate")
NOISE_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
)
RANDOM_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
    "spatter",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
# Images per random stream in make_corrupted_split: part of the definition of the output.
CHUNK_SIZE = 1000

_SIZE = 32  # the CIFAR parameters below are tied to 32 x 32 images

# Per-severity parameters (severity 1..5), cifar10c.md Section 3 (= make_cifar_c.py).
PARAMETERS: dict[str, tuple] = {
    # sigma of the additive N(0, sigma) noise on x in [0, 1]
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # Poisson rate lambda: Poisson(x * lambda) / lambda
    "shot_noise": (500, 250, 100, 75, 50),
    # salt-and-pepper amount (fraction of pixel-channels hit)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # (disk radius, alias-blur sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (gaussian sigma, max displacement delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # ImageMagick (radius, sigma); angle ~ U(-45, 45)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # end of the float arange(1, end, 0.01) of zoom factors (7, 12, 16, 21, 26 factors)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (fog strength, plasma wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # added to HSV value
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # contrast factor around the per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (alpha, sigma, affine jitter) = 32 * (...) as in the reference (IMSIZE = 32)
    "elastic_transform": (
        (_SIZE * 0, _SIZE * 0, _SIZE * 0.08),
        (_SIZE * 0.05, _SIZE * 0.2, _SIZE * 0.07),
        (_SIZE * 0.08, _SIZE * 0.06, _SIZE * 0.06),
        (_SIZE * 0.1, _SIZE * 0.04, _SIZE * 0.05),
        (_SIZE * 0.1, _SIZE * 0.03, _SIZE * 0.03),
    ),
    # down-sampling factor (intermediate size int(32 c) = 30, 28, 27, 24, 20)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # sigma of the multiplicative N(0, sigma) noise
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # gaussian sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    # (loc, scale, sigma, threshold, k, mode) with mode 0 = water, 1 = mud
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    # (a, b) with HSV saturation S -> clip(a S + b, 0, 1)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _integers(rng, low: int, high: int | None = None, size=None):
    """``Generator.integers`` / ``RandomState.randint`` (high exclusive)."""
    if isinstance(rng, np.random.RandomState):
        return rng.randint(low, high, size=size)
    return rng.integers(low, high, size=size)


def _check_rng(rng, name: str):
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    if rng is None:
        if name in RANDOM_CORRUPTIONS:
            raise ValueError(
                f"{name} is random: pass rng=np.random.default_rng(seed) (or an int seed)"
            )
        return None
    raise TypeError(
        f"rng must be a numpy Generator, RandomState or int seed, got {type(rng).__name__}"
    )


def _gauss(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``filters.gaussian`` semantics on a batch: spatial axes 1 and 2 only.

    ``x`` is (N, H, W) or (N, H, W, C); the batch and channel axes get sigma 0 (scipy skips
    them), so each image and channel is filtered exactly as a single-image call would.
    """
    sig = [0.0, sigma, sigma] + [0.0] * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _reflect101(idx: np.ndarray, n: int) -> np.ndarray:
    """OpenCV BORDER_REFLECT_101 index mapping (valid for overshoots smaller than n)."""
    idx = np.abs(idx)
    return np.where(idx >= n, 2 * (n - 1) - idx, idx)


# --------------------------------------------------------------------------------------
# HSV (scikit-image conventions, float64)
# --------------------------------------------------------------------------------------


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> HSV in [0, 1], scikit-image ``color.rgb2hsv`` conventions, float64.

    V = max, S = (max - min) / V (0 where max = min), H from the R-max, G-max, B-max formulas
    applied in that order (later ones win ties), divided by 6 and taken modulo 1; H = 0
    where max = min (``cifar10c.md`` Section 3, brightness).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    flat = delta == 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        s = delta / v
        h = np.zeros_like(v)
        sel = r == v
        h[sel] = ((g - b) / delta)[sel]
        sel = g == v
        h[sel] = (2.0 + (b - r) / delta)[sel]
        sel = b == v
        h[sel] = (4.0 + (r - g) / delta)[sel]
    s[flat] = 0.0
    h = (h / 6.0) % 1.0
    h[flat] = 0.0
    return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv` (scikit-image ``color.hsv2rgb``: 6-sector formula)."""
    hsv = np.asarray(hsv, dtype=np.float64)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = hi.astype(np.uint8) % 6
    # (R, G, B) per sector 0..5
    table = (
        (v, t, p),
        (q, v, p),
        (p, v, t),
        (p, q, v),
        (t, p, v),
        (v, p, q),
    )
    out = np.empty(hsv.shape, dtype=np.float64)
    for c in range(3):
        out[..., c] = np.choose(sector, [table[k][c] for k in range(6)])
    return out


# --------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------


def _gaussian_noise(x8, sigma, rng):
    """x = img / 255 (float64); clip(x + N(0, sigma), 0, 1) * 255, iid per pixel and channel.
    (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(x + rng.normal(0.0, sigma, size=x.shape), 0, 1) * 255


def _shot_noise(x8, lam, rng):
    """clip(Poisson(x lam) / lam, 0, 1) * 255 (float64). (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(rng.poisson(x * lam) / lam, 0, 1) * 255


def _impulse_noise(x8, amount, rng):
    """skimage ``random_noise(mode="s&p", amount)``: each pixel *and channel* is hit with
    probability ``amount``; a hit becomes 1 or 0 with probability 1/2 each. (``cifar10c.md``
    Section 3.)
    """
    x = x8 / 255.0
    n = x.shape[0]
    u = rng.random((n, 2) + x.shape[1:])  # per image: hit mask, then salt mask
    hit = u[:, 0] <= amount
    salt = u[:, 1] <= 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return np.clip(out, 0, 1) * 255


def _speckle_noise(x8, sigma, rng):
    """clip(x + x N(0, sigma), 0, 1) * 255 (float64). (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(x + x * rng.normal(0.0, sigma, size=x.shape), 0, 1) * 255


# --------------------------------------------------------------------------------------
# blurs
# --------------------------------------------------------------------------------------


def _gaussian_blur(x8, sigma, rng):
    """skimage ``gaussian(x, sigma)`` per channel (scipy, mode nearest, truncate 4), float64.
    (``cifar10c.md`` Section 3.)
    """
    return np.clip(_gauss(x8 / 255.0, sigma), 0, 1) * 255


def _glass_blur(x8, p, rng):
    """uint8(gaussian(x, sigma) * 255), then ``iterations`` sweeps of local pixel copies over
    rows/columns 31..2 (rows and columns 0, 1 never change), then gaussian(., sigma) again.
    (``cifar10c.md`` Section 3.)
    """
    sigma, delta, iterations = p
    if delta != 1:  # the vectorised sweep below relies on sources lying up/left (delta = 1)
        raise NotImplementedError("glass_blur is implemented for delta = 1 (all CIFAR severities)")
    n = x8.shape[0]
    img = (_gauss(x8 / 255.0, sigma) * 255).astype(np.uint8)
    hs = np.arange(_SIZE - delta, delta, -1)  # rows/columns 31 .. 2, in sweep order
    k = hs.size
    draws = _integers(rng, -delta, delta, size=(n, iterations, k, k, 2))
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
    return np.clip(_gauss(img / 255.0, sigma), 0, 1) * 255


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


def _correlate_reflect101(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.filter2D`` on every (image, channel) of x (N, H, W[, C]): correlation, centre
    anchor, reflect-101 border, kernel taps visited in raster order (zero taps skipped)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    cy, cx = kh // 2, kw // 2
    nz = np.argwhere(kernel != 0)
    r = max(int(np.max(np.abs(nz[:, 0] - cy))), int(np.max(np.abs(nz[:, 1] - cx))))
    pad = [(0, 0), (r, r), (r, r)] + [(0, 0)] * (x.ndim - 3)
    xp = np.pad(x, pad, mode="reflect")
    h, w = x.shape[1], x.shape[2]
    out = np.zeros(x.shape, dtype=np.result_type(x.dtype, np.float64))
    for i, j in nz:
        di, dj = i - cy + r, j - cx + r
        out += kernel[i, j] * xp[:, di : di + h, dj : dj + w]
    return out


def _defocus_blur(x8, p, rng):
    """Correlation of each float64 channel with :func:`defocus_kernel` (reflect-101).
    (``cifar10c.md`` Section 3.)
    """
    kernel = defocus_kernel(*p)
    return np.clip(_correlate_reflect101(x8 / 255.0, kernel), 0, 1) * 255


# ImageMagick 6 constants (magick-type.h / image-private.h)
_MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062
_MAGICK_EPSILON = 1.0e-12


def motion_blur_kernel(
    radius: float, sigma: float, angle: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ImageMagick 6 ``MotionBlurImage`` kernel: ``(weights, dx, dy)``, each of length
    ``width = 2 * ceil(radius) + 1`` (``cifar10c.md`` Section 3, motion_blur).

    One-sided Gaussian ``w_i = exp(-i^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``, i = 0..width-1,
    normalised to sum 1; tap i samples the pixel at column ``x + dx_i`` and row ``y + dy_i``
    with ``dx_i = ceil(i q / hypot(p, q) - 1/2)``, ``dy_i = ceil(i p / hypot(p, q) - 1/2)``,
    ``p = width sin(angle)``, ``q = width cos(angle)`` (angle in degrees). Computed with the
    C library's double arithmetic in IM's order of operations.
    """
    width = int(2.0 * math.ceil(radius) + 1.0)
    s = sigma if abs(sigma) >= _MAGICK_EPSILON else _MAGICK_EPSILON
    taps = [math.exp(-(float(i) * i) / (2.0 * s * s)) / (_MAGICK_SQ2PI * s) for i in range(width)]
    total = 0.0
    for t in taps:
        total += t
    weights = np.array([t / total for t in taps], dtype=np.float64)
    rad = math.pi * angle / 180.0
    px = width * math.sin(rad)
    py = width * math.cos(rad)
    hyp = math.hypot(px, py)
    dx = np.array([math.ceil((i * py) / hyp - 0.5) for i in range(width)], dtype=np.int64)
    dy = np.array([math.ceil((i * px) / hyp - 0.5) for i in range(width)], dtype=np.int64)
    return weights, dx, dy


def _im_motion_blur(
    img8: np.ndarray, radius: float, sigma: float, angles: np.ndarray
) -> np.ndarray:
    """ImageMagick 6 Q16 motion blur of uint8 images (N, H, W, C), one angle per image.

    out(y, x) = sum_i w_i * in(clamp(y + dy_i), clamp(x + dx_i)) on the 16-bit scale
    (v * 257), accumulated in double in tap order, rounded to a 16-bit quantum
    (``ClampToQuantum``: floor(v + 1/2)), then written as 8 bits as floor(Q / 257).
    Edge virtual pixels = coordinate clamping.
    """
    n, h, w = img8.shape[:3]
    kernels = [motion_blur_kernel(radius, sigma, float(a)) for a in angles]
    weights = kernels[0][0] if kernels else None
    q16 = img8.astype(np.float64) * 257.0
    acc = np.zeros_like(q16)
    batch = np.arange(n)[:, None, None]
    ry, rx = np.arange(h), np.arange(w)
    for i in range(len(weights) if weights is not None else 0):
        dx = np.array([k[1][i] for k in kernels])
        dy = np.array([k[2][i] for k in kernels])
        rows = np.clip(ry[None, :] + dy[:, None], 0, h - 1)
        cols = np.clip(rx[None, :] + dx[:, None], 0, w - 1)
        acc += weights[i] * q16[batch, rows[:, :, None], cols[:, None, :]]
    q = np.clip(np.floor(acc + 0.5), 0, 65535)
    return (q // 257).astype(np.uint8)


def _motion_blur(x8, p, rng):
    """ImageMagick motion blur (:func:`motion_blur_kernel`) of the uint8 image at a random
    angle U(-45, 45); the result is already uint8. (``cifar10c.md`` Section 3.)
    """
    radius, sigma = p
    angles = rng.uniform(-45, 45, size=x8.shape[0])
    return _im_motion_blur(x8, radius, sigma, angles)


def _clipped_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
    """Reference ``clipped_zoom`` on a batch (N, H, W, C): centred ceil(H / z) square crop,
    ``scipy.ndimage.zoom(crop, (z, z, 1), order=1)``, centre trim to H x W.

    scipy's order-1 zoom is reproduced exactly (checked against scipy in the tests): output
    size round(ch z), output index i samples input coordinate i (ch - 1) / (out - 1)
    (corners aligned), weights (1 - t, 1 - (1 - t)), and each value is the double sum over
    the four neighbours in C order of ``(value * w_row) * w_col``, cast to the input dtype.
    Only the rows/columns that survive the trim are computed.
    """
    h = img.shape[1]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    crop = img[:, top : top + ch, top : top + ch].astype(np.float64)
    n_out = round(ch * zoom)  # Python's round, as scipy's output shape
    ratio = (ch - 1) / (n_out - 1) if n_out > 1 else 1.0
    trim = (n_out - h) // 2
    coord = np.arange(trim, trim + h) * ratio
    i0 = np.floor(coord).astype(np.int64)
    t = coord - i0
    i1 = np.minimum(i0 + 1, ch - 1)
    w0 = 1 - t
    w1 = 1 - w0  # scipy sets the last spline weight to 1 - (sum of the others)
    shape_r = (1, h, 1) + (1,) * (img.ndim - 3)
    shape_c = (1, 1, h) + (1,) * (img.ndim - 3)
    wc0, wc1 = w0.reshape(shape_c), w1.reshape(shape_c)
    # (value * w_row) only depends on the row: form it before gathering the columns
    r0 = crop[:, i0] * w0.reshape(shape_r)
    r1 = crop[:, i1] * w1.reshape(shape_r)
    out = r0[:, :, i0] * wc0
    out += r0[:, :, i1] * wc1
    out += r1[:, :, i0] * wc0
    out += r1[:, :, i1] * wc1
    return out.astype(img.dtype)


def _zoom_blur_factors(x8: np.ndarray, zooms: Sequence[float]) -> np.ndarray:
    x = x8.astype(np.float32) / np.float32(255)
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    x = (x + out) / np.float32(len(zooms) + 1)
    return np.clip(x, 0, 1) * np.float32(255)


def _zoom_blur(x8, end, rng):
    """float32 (x + sum_z clipped_zoom(x, z)) / (n + 1) over z = arange(1, end, 0.01).
    (``cifar10c.md`` Section 3.)
    """
    return _zoom_blur_factors(x8, np.arange(1, end, 0.01))


# --------------------------------------------------------------------------------------
# weather
# --------------------------------------------------------------------------------------


def _rgb2gray_f32(x: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(RGB2GRAY)`` on float32: 0.299 R + 0.587 G + 0.114 B in float32."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)) + x[..., 2] * np.float32(
        0.114
    )


def _snow(x8, p, rng):
    """Snow layer N(loc, scale) zoomed, thresholded, quantised to uint8, motion-blurred
    (radius, sigma, angle U(-135, -45)); x' = b x + (1 - b) max(x, 1.5 grey(x) + 0.5) in
    float32; output clip(x' + S + rot180(S), 0, 1) * 255. (``cifar10c.md`` Section 3.)
    """
    loc, scale, zoom, threshold, radius, sigma, blend = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    layer = np.empty((n, _SIZE, _SIZE), dtype=np.float64)
    angles = np.empty(n, dtype=np.float64)
    for i in range(n):  # per image: normal field, then the blur angle
        layer[i] = rng.normal(loc, scale, size=(_SIZE, _SIZE))
        angles[i] = rng.uniform(-135, -45)
    layer = _clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    snow = _im_motion_blur(layer8[..., None], radius, sigma, angles)[..., 0] / 255.0
    gray = _rgb2gray_f32(x)[..., None] * np.float32(1.5) + np.float32(0.5)
    x = np.float32(blend) * x + np.float32(1 - blend) * np.maximum(x, gray)
    snow = snow[..., None]
    return np.clip(x + snow + snow[:, ::-1, ::-1], 0, 1) * 255


# Frost: shapes (H, W) of the reference textures after the 5x downscale (cifar10c.md):
# frost1 120x180, frost2 = frost3 63x112, frost4 70x105, frost5 99x132.  The reference draws
# randint(5) over frost1..frost5, two of which are the same picture, so the default slot
# list repeats the second texture (probabilities .2, .4, .2, .2).
_FROST_SHAPES = ((120, 180), (63, 112), (70, 105), (99, 132))
_FROST_SLOTS = (0, 1, 1, 2, 3)


def _splat_segments(
    shape, segs: np.ndarray, weights: np.ndarray, spacing: float = 0.3
) -> np.ndarray:
    """Line density of segments (M, 4) = (y0, x0, y1, x1): points every `spacing` pixels,
    bilinearly splatted with weight w * spacing (so a line deposits ~w per unit length)."""
    h, w = shape
    y0, x0, y1, x1 = segs.T
    length = np.hypot(y1 - y0, x1 - x0)
    counts = np.maximum(np.ceil(length / spacing).astype(np.int64), 1)
    seg_id = np.repeat(np.arange(len(segs)), counts)
    start = np.cumsum(counts) - counts
    t = (np.arange(seg_id.size) - start[seg_id] + 0.5) / counts[seg_id]
    py = y0[seg_id] + t * (y1 - y0)[seg_id]
    px = x0[seg_id] + t * (x1 - x0)[seg_id]
    val = (weights * length / counts)[seg_id]
    fy, fx = np.floor(py), np.floor(px)
    ay, ax = py - fy, px - fx
    out = np.zeros((h + 2) * (w + 2))
    for oy, wy in ((0, 1 - ay), (1, ay)):
        for ox, wx in ((0, 1 - ax), (1, ax)):
            iy = fy.astype(np.int64) + oy + 1
            ix = fx.astype(np.int64) + ox + 1
            ok = (iy >= 0) & (iy < h + 2) & (ix >= 0) & (ix < w + 2)
            out += np.bincount(
                iy[ok] * (w + 2) + ix[ok], weights=(val * wy * wx)[ok], minlength=out.size
            )
    return out.reshape(h + 2, w + 2)[1:-1, 1:-1]


# per texture: (pixels per dendrite, stem length range): a little variety between textures
_FROST_STYLES = (
    (70.0, (4.0, 22.0)),
    (110.0, (6.0, 30.0)),
    (45.0, (3.0, 12.0)),
    (85.0, (8.0, 34.0)),
)


def _frost_texture(
    shape: tuple[int, int],
    rng: np.random.Generator,
    area_per_dendrite: float = 70.0,
    length_range: tuple[float, float] = (4.0, 22.0),
) -> np.ndarray:
    """One procedural frost texture, uint8 (H, W, 3): fern-like ice dendrites (random walks
    with side branches at about +-60 degrees, two levels deep) over fractal haze, with a
    soft glow and a bluish-white tint."""
    h, w = shape
    # fractal haze: sum of blurred white noise over octaves, wrapped, squashed to [0, 1]
    haze = np.zeros(shape)
    for sigma, amp in ((12.0, 1.0), (6.0, 0.6), (3.0, 0.35), (1.5, 0.2), (0.7, 0.1)):
        octave = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        haze += amp * octave / (octave.std() + 1e-12)
    haze = 0.5 + 0.5 * np.tanh(0.6 * (haze - haze.mean()) / (haze.std() + 1e-12))

    segs: list[tuple[float, float, float, float]] = []
    wts: list[float] = []

    def grow(y, x, theta, length, strength, depth):
        step = 1.1
        for s in range(max(int(length / step), 1)):
            theta += rng.normal(0.0, 0.1)
            ny, nx = y + step * math.sin(theta), x + step * math.cos(theta)
            segs.append((y, x, ny, nx))
            wts.append(strength)
            remaining = length - (s + 1) * step
            if depth < 2 and remaining > 2 and rng.random() < 0.5:
                side = 1.0 if rng.random() < 0.5 else -1.0
                grow(
                    ny,
                    nx,
                    theta + side * rng.uniform(0.85, 1.25),
                    remaining * rng.uniform(0.3, 0.65),
                    strength * 0.75,
                    depth + 1,
                )
            y, x = ny, nx

    for _ in range(int(h * w / area_per_dendrite)):
        grow(
            rng.uniform(-8, h + 8),
            rng.uniform(-8, w + 8),
            rng.uniform(0, 2 * math.pi),
            rng.uniform(*length_range),
            rng.uniform(0.35, 1.0),
            0,
        )
    density = _splat_segments(shape, np.array(segs), np.array(wts))
    crystals = 1.0 - np.exp(-2.2 * density)
    glow = ndimage.gaussian_filter(crystals, 1.5, mode="wrap")
    tone = np.clip(0.34 + 0.30 * haze + 0.45 * crystals + 0.40 * glow, 0, 1)
    tint = np.array([0.80, 0.90, 1.0])
    floor = np.array([0.02, 0.05, 0.10])
    rgb = np.clip(floor + tone[..., None] * (tint - floor), 0, 1)
    return np.round(rgb * 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _procedural_frost_cached(seed: int) -> tuple[np.ndarray, ...]:
    textures = []
    for k, shape in enumerate(_FROST_SHAPES):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x46524F53, k]))
        tex = _frost_texture(shape, rng, *_FROST_STYLES[k])
        tex.setflags(write=False)
        textures.append(tex)
    return tuple(textures)


def procedural_frost_textures(seed: int = 0) -> tuple[np.ndarray, ...]:
    """The 5 frost texture *slots* used by default, uint8 (H, W, 3) RGB, cached per seed.

    **Procedural, not Hendrycks' photographs** (which are not available here): four seeded
    ice-crystal textures of the reference textures' downscaled sizes (120x180, 63x112,
    70x105, 99x132), in five slots with the second repeated, so that ``integers(5)`` picks
    them with the reference probabilities (.2, .4, .2, .2).  Frost statistics therefore
    differ from the released CIFAR-10-C; the crop and blend are the reference's.
    """
    t = _procedural_frost_cached(int(seed))
    return tuple(t[k] for k in _FROST_SLOTS)


def load_frost_textures(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """Read frost images as the reference does: RGB (alpha dropped), downscaled 5x.

    ``cv2.resize(fx=fy=0.2, INTER_LINEAR)`` equals the subsampling ``img[2::5, 2::5]`` for a
    factor of exactly 5 (``cifar10c.md``).  To reproduce the reference pass the five files
    ``frost1.png, frost2.png, frost3.png, frost4.jpg, frost5.jpg`` in that order (frost6 is
    never drawn by the reference).
    """
    out = []
    for p in paths:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"))
        out.append(np.ascontiguousarray(arr[2::5, 2::5]))
    return out


def _frost(x8, p, rng, textures):
    """clip(w_i img + w_f crop, 0, 255) with a random 32 x 32 crop of a random texture.
    (``cifar10c.md`` Section 3.)
    """
    wi, wf = p
    n = x8.shape[0]
    crops = np.empty(x8.shape, dtype=np.uint8)
    for i in range(n):  # per image: texture index, then crop row, then crop column
        tex = textures[int(_integers(rng, len(textures)))]
        r0 = int(_integers(rng, 0, tex.shape[0] - _SIZE))
        c0 = int(_integers(rng, 0, tex.shape[1] - _SIZE))
        crops[i] = tex[r0 : r0 + _SIZE, c0 : c0 + _SIZE, :3]
    return np.clip(wi * x8 + wf * crops, 0, 255)


def _plasma(u: np.ndarray, decay: float, size: int = _SIZE) -> np.ndarray:
    """Diamond-square plasma on a toroidal size x size grid for each row of u (N, size^2 - 1)
    of uniform [0, 1) draws, in the reference's draw order (Section 3, fog)."""
    n = u.shape[0]
    m = np.zeros((n, size, size))
    step, wib, pos = size, 100.0, 0

    def noise(k):
        nonlocal pos
        v = u[:, pos : pos + k * k].reshape(n, k, k)
        pos += k * k
        return (-wib) + (wib - (-wib)) * v  # = uniform(-wib, wib)

    while step >= 2:
        half, k = step // 2, size // step
        corners = m[:, 0::step, 0::step]
        sq = corners + np.roll(corners, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half::step, half::step] = sq / 4 + wib * noise(k)
        centres = m[:, half::step, half::step]
        d = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=2))
        m[:, 0::step, half::step] = d / 4 + wib * noise(k)
        d = (centres + np.roll(centres, 1, axis=2)) + (corners + np.roll(corners, -1, axis=1))
        m[:, half::step, 0::step] = d / 4 + wib * noise(k)
        step //= 2
        wib /= decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def _fog(x8, p, rng):
    """clip((x + s P) max(x) / (max(x) + s), 0, 1) * 255 with P the plasma fractal (float64).
    (``cifar10c.md`` Section 3.)
    """
    strength, decay = p
    x = x8 / 255.0
    vmax = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = _plasma(rng.random((x8.shape[0], _SIZE * _SIZE - 1)), decay)
    x = x + strength * plasma[..., None]
    return np.clip(x * vmax / (vmax + strength), 0, 1) * 255


# --------------------------------------------------------------------------------------
# digital
# --------------------------------------------------------------------------------------


def _brightness(x8, c, rng):
    """HSV value V -> clip(V + c, 0, 1) (skimage conventions, float64). (``cifar10c.md``
    Section 3.)
    """
    hsv = rgb_to_hsv(x8 / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def _saturate(x8, p, rng):
    """HSV saturation S -> clip(a S + b, 0, 1) (skimage conventions, float64). (``cifar10c.md``
    Section 3.)
    """
    a, b = p
    hsv = rgb_to_hsv(x8 / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def _contrast(x8, c, rng):
    """clip((x - mean) c + mean, 0, 1) * 255 with per-image, per-channel spatial means.
    (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _pixelate(x8, c, rng):
    """Pillow BOX resize to int(32 c) and back to 32 (bit-exact: Pillow itself).
    (``cifar10c.md`` Section 3.)
    """
    small = int(_SIZE * c)
    out = np.empty_like(x8)
    for i in range(x8.shape[0]):
        im = Image.fromarray(x8[i]).resize((small, small), Image.Resampling.BOX)
        out[i] = np.asarray(im.resize((_SIZE, _SIZE), Image.Resampling.BOX))
    return out


def _jpeg(x8, quality, rng):
    """Pillow JPEG save at ``quality`` (4:2:0, baseline) and decode (Pillow itself).
    (``cifar10c.md`` Section 3.)
    """
    out = np.empty_like(x8)
    for i in range(x8.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(x8[i]).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im)
    return out


def _get_affine_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``cv2.getAffineTransform`` for batches (N, 3, 2) of (x, y) points -> (N, 2, 3)."""
    n = src.shape[0]
    a = np.zeros((n, 6, 6))
    b = np.zeros((n, 6))
    s = src.astype(np.float64)
    for i in range(3):
        a[:, 2 * i, 0:2] = s[:, i]
        a[:, 2 * i, 2] = 1
        a[:, 2 * i + 1, 3:5] = s[:, i]
        a[:, 2 * i + 1, 5] = 1
        b[:, 2 * i] = dst[:, i, 0]
        b[:, 2 * i + 1] = dst[:, i, 1]
    return np.linalg.solve(a, b[..., None])[..., 0].reshape(n, 2, 3)


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """``cv2.invertAffineTransform`` for (N, 2, 3)."""
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a22 = m[:, 1, 1] * d, m[:, 0, 0] * d
    a12, a21 = -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return np.stack([np.stack([a11, a12, b1], 1), np.stack([a21, a22, b2], 1)], 1)


def _warp_affine_cv2(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``cv2.warpAffine(img, M, INTER_LINEAR, BORDER_REFLECT_101)`` for float32 (N, H, W, C).

    Output pixel p samples the source at M^-1 p with OpenCV's fixed-point arithmetic: the
    inverse map is evaluated in 1/1024 pixel units (rounded half to even), reduced to
    1/32 pixel, and bilinear weights are products of multiples of 1/32; the four taps are
    summed in float32 in OpenCV's order, reflect-101 outside the image.
    """
    n, h, w = img.shape[:3]
    im = _invert_affine(m)
    ab_scale, round_delta = 1024, 16  # AB_BITS = 10, INTER_BITS = 5: 1024 / 32 / 2
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    adelta = np.rint(im[:, 0, 0, None] * xs * ab_scale).astype(np.int64)  # (N, W)
    bdelta = np.rint(im[:, 1, 0, None] * xs * ab_scale).astype(np.int64)
    x0 = (
        np.rint((im[:, 0, 1, None] * ys + im[:, 0, 2, None]) * ab_scale).astype(np.int64)
        + round_delta
    )
    y0 = (
        np.rint((im[:, 1, 1, None] * ys + im[:, 1, 2, None]) * ab_scale).astype(np.int64)
        + round_delta
    )
    xq = (x0[:, :, None] + adelta[:, None, :]) >> 5  # (N, H, W) in 1/32 pixel
    yq = (y0[:, :, None] + bdelta[:, None, :]) >> 5
    sx, fx = xq >> 5, (xq & 31).astype(np.float32) / np.float32(32)
    sy, fy = yq >> 5, (yq & 31).astype(np.float32) / np.float32(32)
    one = np.float32(1)
    w00, w01 = (one - fy) * (one - fx), (one - fy) * fx
    w10, w11 = fy * (one - fx), fy * fx
    batch = np.arange(n)[:, None, None]
    c0, c1 = _reflect101(sx, w), _reflect101(sx + 1, w)
    r0, r1 = _reflect101(sy, h), _reflect101(sy + 1, h)
    out = img[batch, r0, c0] * w00[..., None]
    out = out + img[batch, r0, c1] * w01[..., None]
    out = out + img[batch, r1, c0] * w10[..., None]
    out = out + img[batch, r1, c1] * w11[..., None]
    return out.astype(np.float32)


def _elastic_transform(x8, p, rng):
    """float32: random affine warp (:func:`_warp_affine_cv2`, jitter U(-a, a) on three anchor
    points), then displacement fields alpha * gaussian(U(-1, 1), sigma, mode reflect,
    truncate 3) applied with scipy ``map_coordinates(order=1, mode="reflect")``.
    (``cifar10c.md`` Section 3.)
    """
    alpha, sigma, affine = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    u = rng.random((n, 6 + 2 * _SIZE * _SIZE))  # per image: affine jitter, dx field, dy field
    jitter = ((-affine) + (affine - (-affine)) * u[:, :6]).reshape(n, 3, 2).astype(np.float32)
    centre, half = _SIZE // 2, _SIZE // 3
    src = np.array(
        [
            [centre + half, centre + half],
            [centre + half, centre - half],
            [centre - half, centre - half],
        ],
        dtype=np.float32,
    )
    dst = src[None] + jitter
    x = _warp_affine_cv2(x, _get_affine_transform(np.broadcast_to(src, dst.shape), dst))

    fields = (-1.0) + (1.0 - (-1.0)) * u[:, 6:].reshape(n, 2, _SIZE, _SIZE)
    dx = (_gauss(fields[:, 0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gauss(fields[:, 1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    b, r, c, ch = np.meshgrid(
        np.arange(n), np.arange(_SIZE), np.arange(_SIZE), np.arange(3), indexing="ij"
    )
    coords = np.stack(
        [
            b.astype(np.float64),
            r + dy[..., None].astype(np.float64),
            c + dx[..., None].astype(np.float64),
            ch.astype(np.float64),
        ]
    )
    out = ndimage.map_coordinates(x, coords.reshape(4, -1), order=1, mode="reflect").reshape(
        x.shape
    )
    return np.clip(out, 0, 1) * np.float32(255)


# -- spatter --------------------------------------------------------------------------------


def _canny_cv2(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV ``Canny(img, low, high)`` (aperture 3, L1 gradient) for uint8 (N, H, W) -> bool.

    3x3 Sobel with replicated border, magnitude |dx| + |dy|, non-maximum suppression with
    OpenCV's fixed-point tan(22.5) / tan(67.5) sectors and its strict/non-strict
    comparisons, zero magnitude outside the image, then hysteresis: candidates above
    ``low`` connected (8-neighbourhood) to one above ``high``.
    """
    p = np.pad(img.astype(np.int64), ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (
        p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2]
    )
    dy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (
        p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:]
    )
    mag = np.abs(dx) + np.abs(dy)
    mp = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
    left, right = mp[:, 1:-1, :-2], mp[:, 1:-1, 2:]
    up, down = mp[:, :-2, 1:-1], mp[:, 2:, 1:-1]
    ul, ur, dl, dr = mp[:, :-2, :-2], mp[:, :-2, 2:], mp[:, 2:, :-2], mp[:, 2:, 2:]
    ax = np.abs(dx)
    ay = np.abs(dy) << 15
    tg22 = ax * 13573  # int(tan(22.5 deg) * 2^15 + 0.5)
    tg67 = tg22 + (ax << 16)
    horizontal = ay < tg22
    vertical = ~horizontal & (ay > tg67)
    same_sign = (dx ^ dy) >= 0
    diag_max = np.where(same_sign, (mag > ul) & (mag > dr), (mag > ur) & (mag > dl))
    is_max = np.where(
        horizontal,
        (mag > left) & (mag >= right),
        np.where(vertical, (mag > up) & (mag >= down), diag_max),
    )
    cand = (mag > math.floor(low)) & is_max
    strong = cand & (mag > math.floor(high))
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across images
    labels, count = ndimage.label(cand, structure=structure)
    keep = np.zeros(count + 1, dtype=bool)
    keep[labels[strong]] = True
    keep[0] = False
    return keep[labels]


_DIST_COSTS = (np.float32(1.0), np.float32(1.4), np.float32(2.1969))  # (a, b, c), 5x5 L2 mask


def _distance_transform_cv2(nonzero: np.ndarray) -> np.ndarray:
    """OpenCV 4 ``distanceTransform(src, DIST_L2, 5)`` for (N, H, W) bool masks (True =
    nonzero source pixel) -> float32 distance to the nearest zero pixel.

    The 5x5 chamfer metric with float32 costs a = 1 (horizontal/vertical), b = 1.4
    (diagonal), c = 2.1969 (knight moves), two raster passes (forward, backward) in float32
    over a 2-pixel border of FLT_MAX; FLT_MAX where no zero pixel exists.
    """
    n, h, w = nonzero.shape
    a, b, c = _DIST_COSTS
    far = np.float32(np.finfo(np.float32).max)
    d = np.full((n, h + 4, w + 4), far, dtype=np.float32)
    d[:, 2:-2, 2:-2][~nonzero] = 0
    for sweep in (1, -1):
        rows = range(h) if sweep == 1 else range(h - 1, -1, -1)
        for i in rows:
            y = i + 2
            p1, p2 = y - sweep, y - 2 * sweep
            # candidates from the two previous rows (symmetric neighbour sets)
            t = d[:, y, 2:-2].copy()
            for off, cost in ((-1, c), (1, c)):
                t = np.minimum(t, d[:, p2, 2 + off : 2 + off + w] + cost)
            for off, cost in ((-2, c), (-1, b), (0, a), (1, b), (2, c)):
                t = np.minimum(t, d[:, p1, 2 + off : 2 + off + w] + cost)
            t[~nonzero[:, i]] = 0
            row = d[:, y]
            cols = range(w) if sweep == 1 else range(w - 1, -1, -1)
            for j in cols:  # the in-row neighbour was updated just before
                row[:, j + 2] = np.minimum(t[:, j], row[:, j + 2 - sweep] + a)
    return d[:, 2:-2, 2:-2].copy()


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 box sum with reflect-101 border over axes 1, 2 (exact for these inputs)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = x.shape[1:]
    return sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))


def _equalize_hist_cv2(img: np.ndarray) -> np.ndarray:
    """OpenCV ``equalizeHist`` per image of uint8 (N, H, W)."""
    out = np.empty_like(img)
    total = img.shape[1] * img.shape[2]
    for k in range(img.shape[0]):
        hist = np.bincount(img[k].ravel(), minlength=256)
        first = int(np.flatnonzero(hist)[0])
        if hist[first] == total:
            out[k] = first
            continue
        scale = np.float32(255.0) / np.float32(total - hist[first])
        lut = np.zeros(256, dtype=np.uint8)
        csum = np.cumsum(hist[first + 1 :]).astype(np.float32)
        lut[first + 1 :] = np.clip(np.rint(csum * scale), 0, 255).astype(np.uint8)
        out[k] = lut[img[k]]
    return out


def _water_distance(layer8: np.ndarray) -> np.ndarray:
    """Spatter's water shading map (float32) from the uint8 liquid layer, as the reference
    builds it with OpenCV: Canny(50, 150) -> distance to edges (L2, 5x5) -> truncated at 20
    -> 3x3 blur -> uint8 -> equalizeHist -> emboss filter2D to uint8 -> 3x3 blur."""
    edges = _canny_cv2(layer8, 50, 150)
    dist = np.minimum(_distance_transform_cv2(~edges), np.float32(20))
    dist = (_box3(dist.astype(np.float64)) * (1.0 / 9)).astype(np.float32).astype(np.uint8)
    dist = _equalize_hist_cv2(dist)
    kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
    dist = np.clip(_correlate_reflect101(dist.astype(np.float64), kernel), 0, 255)
    dist = np.rint(_box3(dist) * (1.0 / 9))  # uint8 box blur rounds
    return dist.astype(np.float32)


def _spatter(x8, p, rng):
    """Liquid layer gaussian(N(loc, scale), sigma) thresholded; severities 1-3 add water-
    coloured (175, 238, 238) shading from :func:`_water_distance`, severities 4-5 paint mud
    (63, 42, 20) where gaussian(layer > threshold, k) >= 0.8 (float32). (``cifar10c.md``
    Section 3.)
    """
    loc, scale, sigma, threshold, k, mode = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    layer = _gauss(rng.normal(loc, scale, size=(n, _SIZE, _SIZE)), sigma)
    layer[layer < threshold] = 0
    if mode == 0:  # water
        # uint8(layer * 255): values >= 256 wrap modulo 256 as numpy's C cast did on x86
        layer8 = ((layer * 255).astype(np.int64) & 255).astype(np.uint8)
        m = layer8.astype(np.float32) * _water_distance(layer8)
        vmax = m.max(axis=(1, 2), keepdims=True)
        m = np.where(vmax > 0, m / np.where(vmax > 0, vmax, 1), np.float32(0)).astype(np.float32)
        m = (m * np.float32(k))[..., None]
        color = np.array([175 / 255.0, 238 / 255.0, 238 / 255.0], dtype=np.float32)
        return np.clip(x + m * color, 0, 1) * np.float32(255)
    # mud
    mask = _gauss((layer > threshold).astype(np.float32), k)
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    color = np.array([63 / 255.0, 42 / 255.0, 20 / 255.0], dtype=np.float32) * mask
    return np.clip(x * (np.float32(1) - mask) + color, 0, 1) * np.float32(255)


# --------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------

_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": None,  # needs textures, dispatched in corrupt()
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "spatter": _spatter,
    "saturate": _saturate,
}


def _check_textures(textures) -> list[np.ndarray]:
    out = []
    for t in textures:
        t = np.asarray(t)
        if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] < 3:
            raise ValueError("frost textures must be uint8 (H, W, 3) RGB arrays")
        if t.shape[0] <= _SIZE or t.shape[1] <= _SIZE:
            raise ValueError(
                f"frost textures must be larger than {_SIZE} x {_SIZE}, got {t.shape[:2]}"
            )
        out.append(t)
    if not out:
        raise ValueError("frost_textures is empty")
    return out


def corrupt(
    images: np.ndarray,
    name: str,
    severity: int,
    rng: np.random.Generator | np.random.RandomState | int | None,
    *,
    frost_textures: Sequence[np.ndarray] | None = None,
    frost_seed: int = 0,
) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) with the CIFAR-10-C parameters.

    Args:
        images: uint8 ``(N, 32, 32, 3)`` HWC RGB, or a single ``(32, 32, 3)`` image.
        name: one of :data:`CORRUPTIONS`.
        severity: 1..5; parameters in :data:`PARAMETERS` (``cifar10c.md`` Section 3).
        rng: ``numpy.random.Generator`` (or legacy ``RandomState``, or an int seed) supplying
            every random draw, in the per-image order given in the module docstring.  May be
            None for the deterministic corruptions.
        frost_textures: frost only -- uint8 (H, W, 3) RGB textures at crop scale (H, W > 32),
            chosen with ``integers(len(frost_textures))``; see :func:`load_frost_textures`.
            Default: :func:`procedural_frost_textures` ``(frost_seed)`` (**procedural**).
        frost_seed: seed of the default procedural frost textures.

    Returns:
        uint8 array of the input's shape: the float result clipped to [0, 255] and truncated.
    """
    if name not in _FUNCTIONS:
        from perturbsets._util.registry import unknown_name_message

        raise ValueError(unknown_name_message("corruption", name, CORRUPTIONS))
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    arr = np.asarray(images)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (_SIZE, _SIZE, 3):
        raise ValueError(
            f"images must be uint8 (N, {_SIZE}, {_SIZE}, 3) or ({_SIZE}, {_SIZE}, 3); "
            f"got {arr.dtype} {np.shape(images)}"
        )
    rng = _check_rng(rng, name)
    param = PARAMETERS[name][int(severity) - 1]
    if arr.shape[0] == 0:
        out = arr.copy()
    else:
        if name == "frost":
            textures = (
                procedural_frost_textures(frost_seed)
                if frost_textures is None
                else _check_textures(frost_textures)
            )
            res = _frost(arr, param, rng, textures)
        else:
            res = _FUNCTIONS[name](arr, param, rng)
        if res.dtype == np.uint8:
            out = res
        else:
            out = np.clip(res, 0, 255).astype(
                np.uint8
            )  # truncation, as np.uint8(...) in the reference
    return out[0] if single else out


# --------------------------------------------------------------------------------------
# whole splits
# --------------------------------------------------------------------------------------


def _chunk_rng(seed: int, name: str, severity: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), CORRUPTIONS.index(name), int(severity), int(chunk)])
    )


def _corrupt_chunk(args):
    images, name, severity, seed, chunk, frost_textures, frost_seed = args
    rng = _chunk_rng(seed, name, severity, chunk)
    return (
        name,
        severity,
        chunk,
        corrupt(images, name, severity, rng, frost_textures=frost_textures, frost_seed=frost_seed),
    )


def _is_complete(path: Path, shape: tuple[int, ...], dtype=np.uint8) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return False
    return arr.shape == tuple(shape) and arr.dtype == dtype


class _AtomicNpy:
    """A .npy written through a temporary memory map in the same folder, then os.replace'd."""

    def __init__(self, path: Path, shape, dtype=np.uint8):
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=tuple(shape))

    def commit(self):
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)

    def abort(self):
        self.array = None
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass


def _save_atomic(path: Path, array: np.ndarray) -> None:
    writer = _AtomicNpy(path, array.shape, array.dtype)
    try:
        writer.array[...] = array
        writer.commit()
    except BaseException:
        writer.abort()
        raise


def make_corrupted_split(
    images: np.ndarray,
    names: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    layout: Sequence[str] = ("hendrycks", "per_severity"),
    labels: np.ndarray | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    frost_textures: Sequence[np.ndarray] | None = None,
    frost_seed: int = 0,
) -> dict[str, dict[int, np.ndarray]] | None:
    """Corrupt a whole split (e.g. the 50000 CIFAR-10 training images) reproducibly.

    Randomness: images are cut into chunks of ``chunk_size`` (default 1000) in order, and
    chunk ``j`` of corruption ``name`` at severity ``s`` uses its own generator
    ``default_rng(SeedSequence([seed, CORRUPTIONS.index(name), s, j]))``.  The output is
    therefore a function of (images, seed, chunk_size, frost textures) only -- identical
    for any ``workers`` and any subset or order of ``names`` / ``severities``.

    Args:
        images: uint8 (N, 32, 32, 3) HWC RGB, e.g. torchvision ``CIFAR10(...).data``.
        names: corruptions to make (default all 19; see :data:`TRAIN_CORRUPTIONS`).
        severities: subset of 1..5.
        seed: master seed.
        workers: processes (``ProcessPoolExecutor``) when > 1; chunks are the work units.
        progress: show a tqdm bar over chunks.
        out_dir: if given, write files there (created if needed) and return None;
            otherwise return ``{name: {severity: uint8 (N, 32, 32, 3)}}`` (small inputs).
        layout: any of
            ``"hendrycks"`` -- ``<out>/<name>.npy`` uint8 (5N, 32, 32, 3), severity s in rows
            [(s-1)N, sN), as the released CIFAR-10-C (written only when ``severities``
            covers 1..5); with labels, ``labels.npy`` uint8 (5N,) = labels tiled 5 times;
            ``"per_severity"`` -- ``<out>/<name>_<severity>.npy`` uint8 (N, 32, 32, 3), the
            authors' ``cifar-10-c-{train,test}`` layout read by their ``load_cifar10c``.
            With labels and without "hendrycks", ``labels.npy`` is (N,).  (When both
            layouts share a folder, ``labels.npy`` is Hendrycks' (5N,) form, whose first N
            entries are the per-severity labels; the authors' loader takes labels from
            torchvision, not from this file.)
        labels: optional (N,) integer labels, stored as uint8.
        chunk_size: images per random stream (changing it changes the draws).
        frost_textures, frost_seed: as in :func:`corrupt`.

    Files are written atomically (temporary file in the same folder, then ``os.replace``),
    so an existing file is complete; existing files with the expected shape and dtype are
    skipped, which makes an interrupted run resumable (with the same arguments).  A missing
    file is filled from the other layout's existing file when possible instead of
    recomputing.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (_SIZE, _SIZE, 3):
        raise ValueError(
            f"images must be uint8 (N, {_SIZE}, {_SIZE}, 3), got {images.dtype} {images.shape}"
        )
    names = tuple(names)
    for nm in names:
        if nm not in CORRUPTIONS:
            from perturbsets._util.registry import unknown_name_message

            raise ValueError(unknown_name_message("corruption", nm, CORRUPTIONS))
    severities = tuple(int(s) for s in severities)
    if (
        not severities
        or any(s not in SEVERITIES for s in severities)
        or len(set(severities)) != len(severities)
    ):
        raise ValueError(f"severities must be distinct values in 1..5, got {severities}")
    layout = tuple(layout)
    for lay in layout:
        if lay not in ("hendrycks", "per_severity"):
            raise ValueError(f"unknown layout {lay!r}; valid: 'hendrycks', 'per_severity'")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if frost_textures is not None:
        frost_textures = _check_textures(frost_textures)
    n = images.shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
            raise ValueError("labels must fit in uint8")
        labels = labels.astype(np.uint8)
    chunks = [
        (j, slice(j * chunk_size, min(n, (j + 1) * chunk_size))) for j in range(-(-n // chunk_size))
    ]

    from tqdm.auto import tqdm

    executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        if out_dir is None:
            results = {nm: {s: np.empty_like(images) for s in severities} for nm in names}
            tasks = [(nm, s, j, sl) for nm in names for s in severities for j, sl in chunks]
            with tqdm(
                total=len(tasks), disable=not progress, desc="corruptions", unit="chunk"
            ) as bar:
                for nm, s, j, out in _run(
                    executor, workers, images, tasks, seed, frost_textures, frost_seed
                ):
                    results[nm][s][chunks[j][1]] = out
                    bar.update()
            return results
        _write_split(
            images,
            names,
            severities,
            seed,
            executor,
            workers,
            progress,
            Path(out_dir),
            layout,
            labels,
            chunks,
            frost_textures,
            frost_seed,
        )
        return None
    finally:
        if executor is not None:
            executor.shutdown()


def _run(executor, workers, images, tasks, seed, frost_textures, frost_seed):
    """Yield (name, severity, chunk, array) for tasks (name, severity, chunk, slice)."""
    args = [(images[sl], nm, s, seed, j, frost_textures, frost_seed) for nm, s, j, sl in tasks]
    if executor is None:
        for a in args:
            yield _corrupt_chunk(a)
    else:
        # bounded number of chunks in flight keeps memory small
        from concurrent.futures import FIRST_COMPLETED, wait

        pending, it = set(), iter(args)
        limit = 2 * workers
        for a in it:
            pending.add(executor.submit(_corrupt_chunk, a))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()


def _write_split(
    images,
    names,
    severities,
    seed,
    executor,
    workers,
    progress,
    out,
    layout,
    labels,
    chunks,
    frost_textures,
    frost_seed,
):
    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    n = images.shape[0]
    shape = images.shape
    full = set(severities) == set(SEVERITIES)
    hendrycks = "hendrycks" in layout
    if hendrycks and not full:
        warnings.warn(
            "the 'hendrycks' layout needs all 5 severities; writing only the per-severity layout",
            stacklevel=3,
        )
        hendrycks = False
    per_sev = "per_severity" in layout

    if labels is not None:
        lab = np.tile(labels, 5) if hendrycks else labels
        lpath = out / "labels.npy"
        if not (_is_complete(lpath, lab.shape) and np.array_equal(np.load(lpath), lab)):
            _save_atomic(lpath, lab)

    # plan: which (name, severity) must be computed
    plan = []
    for nm in names:
        hpath = out / f"{nm}.npy"
        need_h = hendrycks and not _is_complete(hpath, (5 * n,) + shape[1:])
        for s in severities:
            ppath = out / f"{nm}_{s}.npy"
            need_p = per_sev and not _is_complete(ppath, shape)
            if need_h or need_p:
                plan.append((nm, s, need_h, need_p))

    def copies(need_h, need_p):
        # a missing file is filled from the other layout's existing file
        return (need_h and not need_p and per_sev) or (need_p and not need_h and hendrycks)

    total = len(chunks) * sum(not copies(h, p) for _, _, h, p in plan)
    with tqdm(total=total, disable=not progress, desc="corruptions", unit="chunk") as bar:
        for nm in names:
            items = [p for p in plan if p[0] == nm]
            if not items:
                continue
            hwriter = None
            if items[0][2]:
                hwriter = _AtomicNpy(out / f"{nm}.npy", (5 * n,) + shape[1:])
            pwriters = {}
            try:
                compute = []
                for _, s, need_h, need_p in items:
                    rows = slice((s - 1) * n, s * n)
                    if need_p:
                        pwriters[s] = _AtomicNpy(out / f"{nm}_{s}.npy", shape)
                    if not copies(need_h, need_p):
                        compute.append(s)
                    elif need_h:  # the per-severity file exists
                        hwriter.array[rows] = np.load(out / f"{nm}_{s}.npy", mmap_mode="r")
                    else:  # the hendrycks file exists
                        pwriters[s].array[...] = np.load(out / f"{nm}.npy", mmap_mode="r")[rows]
                for s in [s for s in pwriters if s not in compute]:  # copied: done
                    pwriters.pop(s).commit()
                tasks = [(nm, s, j, sl) for s in compute for j, sl in chunks]
                left = {s: len(chunks) for s in compute}
                for _, s, j, arr in _run(
                    executor, workers, images, tasks, seed, frost_textures, frost_seed
                ):
                    sl = chunks[j][1]
                    if s in pwriters:
                        pwriters[s].array[sl] = arr
                    if hwriter is not None:
                        hwriter.array[(s - 1) * n + sl.start : (s - 1) * n + sl.stop] = arr
                    left[s] -= 1
                    if left[s] == 0 and s in pwriters:  # commit each severity when complete
                        pwriters.pop(s).commit()
                    bar.update()
                for s in list(pwriters):  # only for an empty split (no chunks)
                    pwriters.pop(s).commit()
                if hwriter is not None:
                    hwriter.commit()
                    hwriter = None
            except BaseException:
                for w in pwriters.values():
                    w.abort()
                if hwriter is not None:
                    hwriter.abort()
                raise
