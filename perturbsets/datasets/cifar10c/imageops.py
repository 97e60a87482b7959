"""Image operations shared by the corruption families, each reproducing one library's arithmetic.

The corruptions of :mod:`perturbsets.datasets.cifar10c.blur`, ``weather`` and ``digital``
reuse these: scikit-image's Gaussian filter and HSV conversion, OpenCV's ``filter2D``,
scipy's order-1 zoom and ImageMagick 6's motion blur, all on batches (N, H, W[, C]) so
that one call draws and computes for many images at once.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "SIZE",
    "integers",
    "gauss",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "correlate_reflect101",
    "motion_blur_kernel",
    "magick_motion_blur",
    "clipped_zoom",
]

SIZE = 32  # the CIFAR parameters of every corruption are tied to 32 x 32 images


def integers(rng, low: int, high: int | None = None, size=None):
    """``Generator.integers`` / ``RandomState.randint`` (high exclusive)."""
    if isinstance(rng, np.random.RandomState):
        return rng.randint(low, high, size=size)
    return rng.integers(low, high, size=size)


def gauss(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image ``filters.gaussian`` semantics on a batch: spatial axes 1 and 2 only.

    ``x`` is (N, H, W) or (N, H, W, C); the batch and channel axes get sigma 0 (scipy skips
    them), so each image and channel is filtered exactly as a single-image call would.
    """
    sig = [0.0, sigma, sigma] + [0.0] * (x.ndim - 3)
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


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


def correlate_reflect101(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
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


def magick_motion_blur(
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


def clipped_zoom(img: np.ndarray, zoom: float) -> np.ndarray:
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
