"""The digital family of CIFAR-10-C: contrast, elastic transform, pixelate, JPEG and saturate.

Each function takes a uint8 batch (N, 32, 32, 3), one severity's parameter and the random
generator, and returns the result on the 0..255 scale;
:func:`~perturbsets.datasets.cifar10c.registry.corrupt` checks the input and casts.
The elastic transform's affine warp emulates OpenCV's fixed-point ``warpAffine``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from perturbsets.datasets.cifar10c.imageops import SIZE, gauss, hsv_to_rgb, rgb_to_hsv

__all__ = ["DIGITAL_PARAMETERS", "contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"]


# Per-severity parameters (severity 1..5), cifar10c.md Section 3 (= make_cifar_c.py).
DIGITAL_PARAMETERS: dict[str, tuple] = {
    # contrast factor around the per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (alpha, sigma, affine jitter) = 32 * (...) as in the reference (IMSIZE = 32)
    "elastic_transform": (
        (SIZE * 0, SIZE * 0, SIZE * 0.08),
        (SIZE * 0.05, SIZE * 0.2, SIZE * 0.07),
        (SIZE * 0.08, SIZE * 0.06, SIZE * 0.06),
        (SIZE * 0.1, SIZE * 0.04, SIZE * 0.05),
        (SIZE * 0.1, SIZE * 0.03, SIZE * 0.03),
    ),
    # down-sampling factor (intermediate size int(32 c) = 30, 28, 27, 24, 20)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # (a, b) with HSV saturation S -> clip(a S + b, 0, 1)
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}


def _reflect101(idx: np.ndarray, n: int) -> np.ndarray:
    """OpenCV BORDER_REFLECT_101 index mapping (valid for overshoots smaller than n)."""
    idx = np.abs(idx)
    return np.where(idx >= n, 2 * (n - 1) - idx, idx)


def saturate(x8, p, rng):
    """HSV saturation S -> clip(a S + b, 0, 1) (skimage conventions, float64). (``cifar10c.md``
    Section 3.)
    """
    a, b = p
    hsv = rgb_to_hsv(x8 / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255


def contrast(x8, c, rng):
    """clip((x - mean) c + mean, 0, 1) * 255 with per-image, per-channel spatial means.
    (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    means = np.mean(x, axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def pixelate(x8, c, rng):
    """Pillow BOX resize to int(32 c) and back to 32 (bit-exact: Pillow itself).
    (``cifar10c.md`` Section 3.)
    """
    small = int(SIZE * c)
    out = np.empty_like(x8)
    for i in range(x8.shape[0]):
        im = Image.fromarray(x8[i]).resize((small, small), Image.Resampling.BOX)
        out[i] = np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BOX))
    return out


def jpeg_compression(x8, quality, rng):
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


def elastic_transform(x8, p, rng):
    """float32: random affine warp (:func:`_warp_affine_cv2`, jitter U(-a, a) on three anchor
    points), then displacement fields alpha * gaussian(U(-1, 1), sigma, mode reflect,
    truncate 3) applied with scipy ``map_coordinates(order=1, mode="reflect")``.
    (``cifar10c.md`` Section 3.)
    """
    alpha, sigma, affine = p
    n = x8.shape[0]
    x = x8.astype(np.float32) / np.float32(255)
    u = rng.random((n, 6 + 2 * SIZE * SIZE))  # per image: affine jitter, dx field, dy field
    jitter = ((-affine) + (affine - (-affine)) * u[:, :6]).reshape(n, 3, 2).astype(np.float32)
    centre, half = SIZE // 2, SIZE // 3
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

    fields = (-1.0) + (1.0 - (-1.0)) * u[:, 6:].reshape(n, 2, SIZE, SIZE)
    dx = (gauss(fields[:, 0], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gauss(fields[:, 1], sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    b, r, c, ch = np.meshgrid(
        np.arange(n), np.arange(SIZE), np.arange(SIZE), np.arange(3), indexing="ij"
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
