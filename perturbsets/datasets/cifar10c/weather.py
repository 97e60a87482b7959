"""The weather family of CIFAR-10-C: snow, frost, fog, brightness and spatter.

Each function takes a uint8 batch (N, 32, 32, 3), one severity's parameter and the random
generator (frost also its textures), and returns the result on the 0..255 scale;
:func:`~perturbsets.datasets.cifar10c.registry.corrupt` checks the input and casts.
Spatter's water branch needs OpenCV's Canny, distance transform and histogram
equalisation, emulated here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from perturbsets.datasets.cifar10c.imageops import (
    SIZE,
    clipped_zoom,
    correlate_reflect101,
    gauss,
    hsv_to_rgb,
    integers,
    magick_motion_blur,
    rgb_to_hsv,
)

__all__ = ["WEATHER_PARAMETERS", "snow", "frost", "fog", "brightness", "spatter"]


# Per-severity parameters (severity 1..5), cifar10c.md Section 3 (= make_cifar_c.py).
WEATHER_PARAMETERS: dict[str, tuple] = {
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
    # (loc, scale, sigma, threshold, k, mode) with mode 0 = water, 1 = mud
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
}


def _rgb2gray_f32(x: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(RGB2GRAY)`` on float32: 0.299 R + 0.587 G + 0.114 B in float32."""
    return (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)) + x[..., 2] * np.float32(
        0.114
    )


def snow(x8, p, rng):
    """Snow layer N(loc, scale) zoomed, thresholded, quantised to uint8, motion-blurred
    (radius, sigma, angle U(-135, -45)); x' = b x + (1 - b) max(x, 1.5 grey(x) + 0.5) in
    float32; output clip(x' + S + rot180(S), 0, 1) * 255. (``cifar10c.md`` Section 3.)
    """
    loc, scale, zoom, threshold, radius, sigma, blend = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    layer = np.empty((n, SIZE, SIZE), dtype=np.float64)
    angles = np.empty(n, dtype=np.float64)
    for i in range(n):  # per image: normal field, then the blur angle
        layer[i] = rng.normal(loc, scale, size=(SIZE, SIZE))
        angles[i] = rng.uniform(-135, -45)
    layer = clipped_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    snow = magick_motion_blur(layer8[..., None], radius, sigma, angles)[..., 0] / 255.0
    gray = _rgb2gray_f32(x)[..., None] * np.float32(1.5) + np.float32(0.5)
    x = np.float32(blend) * x + np.float32(1 - blend) * np.maximum(x, gray)
    snow = snow[..., None]
    return np.clip(x + snow + snow[:, ::-1, ::-1], 0, 1) * 255


def frost(x8, p, rng, textures):
    """clip(w_i img + w_f crop, 0, 255) with a random 32 x 32 crop of a random texture.
    (``cifar10c.md`` Section 3.)
    """
    wi, wf = p
    n = x8.shape[0]
    crops = np.empty(x8.shape, dtype=np.uint8)
    for i in range(n):  # per image: texture index, then crop row, then crop column
        tex = textures[int(integers(rng, len(textures)))]
        r0 = int(integers(rng, 0, tex.shape[0] - SIZE))
        c0 = int(integers(rng, 0, tex.shape[1] - SIZE))
        crops[i] = tex[r0 : r0 + SIZE, c0 : c0 + SIZE, :3]
    return np.clip(wi * x8 + wf * crops, 0, 255)


def _plasma(u: np.ndarray, decay: float, size: int = SIZE) -> np.ndarray:
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


def fog(x8, p, rng):
    """clip((x + s P) max(x) / (max(x) + s), 0, 1) * 255 with P the plasma fractal (float64).
    (``cifar10c.md`` Section 3.)
    """
    strength, decay = p
    x = x8 / 255.0
    vmax = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = _plasma(rng.random((x8.shape[0], SIZE * SIZE - 1)), decay)
    x = x + strength * plasma[..., None]
    return np.clip(x * vmax / (vmax + strength), 0, 1) * 255


def brightness(x8, c, rng):
    """HSV value V -> clip(V + c, 0, 1) (skimage conventions, float64). (``cifar10c.md``
    Section 3.)
    """
    hsv = rgb_to_hsv(x8 / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


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
    dist = np.clip(correlate_reflect101(dist.astype(np.float64), kernel), 0, 255)
    dist = np.rint(_box3(dist) * (1.0 / 9))  # uint8 box blur rounds
    return dist.astype(np.float32)


def spatter(x8, p, rng):
    """Liquid layer gaussian(N(loc, scale), sigma) thresholded; severities 1-3 add water-
    coloured (175, 238, 238) shading from :func:`_water_distance`, severities 4-5 paint mud
    (63, 42, 20) where gaussian(layer > threshold, k) >= 0.8 (float32). (``cifar10c.md``
    Section 3.)
    """
    loc, scale, sigma, threshold, k, mode = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    layer = gauss(rng.normal(loc, scale, size=(n, SIZE, SIZE)), sigma)
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
    mask = gauss((layer > threshold).astype(np.float32), k)
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    color = np.array([63 / 255.0, 42 / 255.0, 20 / 255.0], dtype=np.float32) * mask
    return np.clip(x * (np.float32(1) - mask) + color, 0, 1) * np.float32(255)
