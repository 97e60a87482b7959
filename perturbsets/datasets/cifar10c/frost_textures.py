"""The frost textures that the frost corruption crops: procedural by default, or the reference photographs.

Hendrycks' five frost photographs are not available here, so by default four seeded
procedural ice-crystal textures of the same downscaled sizes stand in for them
(:func:`procedural_frost_textures`); :func:`load_frost_textures` reads the real ones.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from perturbsets.datasets.cifar10c.imageops import SIZE

__all__ = ["procedural_frost_textures", "load_frost_textures", "check_frost_textures"]


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


def check_frost_textures(textures) -> list[np.ndarray]:
    """``textures`` as a list of arrays, after checking each is uint8 RGB larger than one crop."""
    out = []
    for t in textures:
        t = np.asarray(t)
        if t.dtype != np.uint8 or t.ndim != 3 or t.shape[2] < 3:
            raise ValueError("frost textures must be uint8 (H, W, 3) RGB arrays")
        if t.shape[0] <= SIZE or t.shape[1] <= SIZE:
            raise ValueError(
                f"frost textures must be larger than {SIZE} x {SIZE}, got {t.shape[:2]}"
            )
        out.append(t)
    if not out:
        raise ValueError("frost_textures is empty")
    return out
