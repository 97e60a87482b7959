"""CIFAR-10-C corruptions: shapes, determinism, analytic cases and the split writer."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from perturbsets.datasets.cifar10c import generator as C
from perturbsets.datasets.cifar10c.blur import _zoom_blur_factors, defocus_kernel
from perturbsets.datasets.cifar10c.digital import _warp_affine_cv2, contrast
from perturbsets.datasets.cifar10c.frost_textures import procedural_frost_textures
from perturbsets.datasets.cifar10c.generator import make_corrupted_split
from perturbsets.datasets.cifar10c.imageops import (
    clipped_zoom,
    hsv_to_rgb,
    magick_motion_blur,
    motion_blur_kernel,
    rgb_to_hsv,
)
from perturbsets.datasets.cifar10c.registry import (
    CORRUPTIONS,
    OOD_CORRUPTIONS,
    PARAMETERS,
    RANDOM_CORRUPTIONS,
    TRAIN_CORRUPTIONS,
    corrupt,
)
from perturbsets.datasets.cifar10c.weather import (
    _canny_cv2,
    _distance_transform_cv2,
    _equalize_hist_cv2,
    _plasma,
)

SEVERITIES = (1, 2, 3, 4, 5)


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Small test set: smooth colour fields with edges, pure noise, constant and grey images."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((n, 32, 32, 3)), (0, 2, 2, 0))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    x = np.clip(smooth * 255 + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
    x[:, 10:20, 6:26] = rng.integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)  # a flat block: edges
    x[1] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x[2] = np.uint8(77)  # constant grey
    x[3] = x[3, :, :, :1]  # grey image with structure
    return x


X = _images()


def test_names():
    assert len(CORRUPTIONS) == 19 and len(set(CORRUPTIONS)) == 19
    assert CORRUPTIONS[:3] == ("gaussian_noise", "shot_noise", "impulse_noise")
    assert CORRUPTIONS[-4:] == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert len(TRAIN_CORRUPTIONS) == 12 and set(TRAIN_CORRUPTIONS) <= set(CORRUPTIONS)
    assert OOD_CORRUPTIONS == ("gaussian_blur", "spatter", "saturate")
    assert not set(TRAIN_CORRUPTIONS) & set(OOD_CORRUPTIONS)
    assert set(PARAMETERS) == set(CORRUPTIONS)
    assert all(len(PARAMETERS[n]) == 5 for n in CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_determinism(name):
    x = X.copy()
    for s in SEVERITIES:
        a = corrupt(x, name, s, np.random.default_rng(1))
        assert a.shape == x.shape and a.dtype == np.uint8
        assert np.array_equal(x, X), "input modified"
        b = corrupt(x, name, s, np.random.default_rng(1))
        assert np.array_equal(a, b)
        single = corrupt(x[0], name, s, np.random.default_rng(1))
        assert single.shape == (32, 32, 3) and single.dtype == np.uint8
        assert np.array_equal(single, a[0])  # image 0 consumes the stream first
        if name in RANDOM_CORRUPTIONS:
            c = corrupt(x, name, s, np.random.default_rng(2))
            assert not np.array_equal(a, c), f"{name} severity {s} ignores the seed"
        else:
            assert np.array_equal(a, corrupt(x, name, s, None))


@pytest.mark.parametrize("name", RANDOM_CORRUPTIONS)
def test_draws_are_per_image_in_order(name):
    """A batch consumes the stream exactly as one image after another (documented order)."""
    for s in (2, 5):
        rng = np.random.default_rng(11)
        batch = corrupt(X[:3], name, s, rng)
        after_batch = rng.random()
        rng = np.random.default_rng(11)
        one_by_one = np.stack([corrupt(im, name, s, rng) for im in X[:3]])
        assert np.array_equal(batch, one_by_one)
        assert rng.random() == after_batch


def test_legacy_randomstate_and_int_seed():
    a = corrupt(X, "glass_blur", 5, np.random.RandomState(3))
    b = corrupt(X, "glass_blur", 5, np.random.RandomState(3))
    assert np.array_equal(a, b)
    assert np.array_equal(corrupt(X, "fog", 3, 5), corrupt(X, "fog", 3, np.random.default_rng(5)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="did you mean"):
        corrupt(X, "gausian_noise", 1, 0)
    with pytest.raises(ValueError):
        corrupt(X, "fog", 6, 0)
    with pytest.raises(ValueError):
        corrupt(X.astype(np.float32), "fog", 1, 0)
    with pytest.raises(ValueError):
        corrupt(np.zeros((2, 28, 28, 3), np.uint8), "fog", 1, 0)
    with pytest.raises(ValueError, match="random"):
        corrupt(X, "fog", 1, None)
    assert corrupt(X[:0], "fog", 1, 0).shape == (0, 32, 32, 3)


# ---------------------------------------------------------------------- digital corruptions


def test_contrast_of_constant_image_is_identity():
    for v in (0, 1, 9, 77, 128, 254, 255):
        img = np.full((2, 32, 32, 3), v, np.uint8)
        img[1] = (v, 255 - v, v // 2)
        for s in SEVERITIES:
            c = PARAMETERS["contrast"][s - 1]
            # before the cast the result is the image (up to float rounding of the mean) ...
            assert np.allclose(contrast(img, c, None), img, rtol=0, atol=1e-9)
            # ... and truncation, as in the reference, can turn v - 1e-13 into v - 1
            out = corrupt(img, "contrast", s, None).astype(int)
            assert np.all((out == img) | (out == img.astype(int) - 1))
            if v in (0, 9, 255):  # sums of these are exact here
                assert np.array_equal(out[0], img[0])


def test_contrast_formula():
    for s in SEVERITIES:
        c = PARAMETERS["contrast"][s - 1]
        x = X / 255.0
        m = x.mean(axis=(1, 2), keepdims=True)
        expected = (np.clip((x - m) * c + m, 0, 1) * 255).astype(np.uint8)
        assert np.array_equal(corrupt(X, "contrast", s, None), expected)


def test_brightness_adds_to_value():
    grey = np.full((1, 32, 32, 3), 100, np.uint8)
    colour = np.full((1, 32, 32, 3), (120, 60, 30), np.uint8)
    for s in SEVERITIES:
        c = PARAMETERS["brightness"][s - 1]
        out = corrupt(grey, "brightness", s, None)
        assert np.array_equal(out, np.full_like(grey, int(min(100 / 255 + c, 1) * 255)))
        out = corrupt(colour, "brightness", s, None).astype(float)
        v_new = min(120 / 255 + c, 1.0)
        expected = np.array([120, 60, 30]) * v_new / (120 / 255)  # S and H fixed: all scale
        assert np.all(np.abs(out - expected) <= 1)
        assert np.all(out == out[0, 0, 0])


def test_hsv_round_trip_and_conventions():
    x = X / 255.0
    hsv = rgb_to_hsv(x)
    assert np.allclose(hsv_to_rgb(hsv), x, atol=1e-12)
    assert np.allclose(hsv[..., 2], x.max(-1))
    assert np.all(hsv[2, ..., :2] == 0)  # grey: H = S = 0
    pure = rgb_to_hsv(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))
    assert np.allclose(pure[:, 0], [0, 1 / 3, 2 / 3, 1 / 6])


def test_saturate_grey():
    grey = X[2:4]  # constant grey and structured grey
    for s in (1, 2, 3):  # b = 0: S = a * 0 stays 0
        assert np.array_equal(corrupt(grey, "saturate", s, None), grey)
    for s in (4, 5):  # S becomes b with hue 0: R = V, G = B = V (1 - b)
        b = PARAMETERS["saturate"][s - 1][1]
        out = corrupt(grey, "saturate", s, None).astype(int)
        v = grey[..., 0] / 255.0
        assert np.array_equal(out[..., 0], grey[..., 0])
        gb = (v * (1 - b) * 255).astype(int)
        assert np.all(np.abs(out[..., 1] - gb) <= 1) and np.array_equal(out[..., 1], out[..., 2])


def _pillow_box_coeffs(n_in: int, n_out: int):
    """Pillow's BOX resampling coefficients in 22-bit fixed point (Resample.c semantics)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    out = []
    for xx in range(n_out):
        centre = (xx + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        w = [1.0 if -0.5 < (x - centre + 0.5) / filterscale <= 0.5 else 0.0 for x in range(lo, hi)]
        total = sum(w)
        out.append((lo, [int(0.5 + v / total * (1 << 22)) for v in w]))
    return out


def _pillow_box_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Slow explicit integer emulation: horizontal pass, round to uint8, vertical pass."""

    def one_pass(a, n_out):  # resample axis 1 of (H, W, C)
        res = np.empty((a.shape[0], n_out, a.shape[2]), np.uint8)
        for j, (lo, k) in enumerate(_pillow_box_coeffs(a.shape[1], n_out)):
            acc = np.full((a.shape[0], a.shape[2]), 1 << 21, np.int64)
            for t, kk in enumerate(k):
                acc += a[:, lo + t].astype(np.int64) * kk
            res[:, j] = np.clip(acc >> 22, 0, 255)
        return res

    h = one_pass(img, size)
    return one_pass(h.transpose(1, 0, 2), size).transpose(1, 0, 2)


def test_pixelate_matches_pillow_box_and_blocks():
    for s in SEVERITIES:
        small = int(32 * PARAMETERS["pixelate"][s - 1])
        out = corrupt(X, "pixelate", s, None)
        for i in range(len(X)):
            ref = _pillow_box_resize(_pillow_box_resize(X[i], small), 32)
            assert np.array_equal(out[i], ref), (s, i)
    # severity 5: 20 px up-sampled by BOX is nearest-neighbour, constant on the implied blocks
    out = corrupt(X, "pixelate", 5, None)
    src = np.floor((np.arange(32) + 0.5) * 20 / 32).astype(int)
    for i in range(len(X)):
        down = np.asarray(Image.fromarray(X[i]).resize((20, 20), Image.Resampling.BOX))
        assert np.array_equal(out[i], down[src][:, src])
    assert len(np.unique(src)) == 20


def test_jpeg_equals_pillow_round_trip():
    for s in SEVERITIES:
        q = PARAMETERS["jpeg_compression"][s - 1]
        out = corrupt(X, "jpeg_compression", s, None)
        for i in range(len(X)):
            buf = io.BytesIO()
            Image.fromarray(X[i]).save(buf, format="JPEG", quality=q)
            ref = np.array(Image.open(io.BytesIO(buf.getvalue())))
            assert np.array_equal(out[i], ref)


# ------------------------------------------------------------------------------- blurs


def test_defocus_kernels():
    expected_centre = (0.844973, 0.619347, 0.445213, 0.2, 1 / 9)
    for s in SEVERITIES:
        k = defocus_kernel(*PARAMETERS["defocus_blur"][s - 1])
        assert k.dtype == np.float32 and k.shape == (17, 17)
        assert abs(float(k.astype(np.float64).sum()) - 1) < 1e-6
        assert np.allclose(k, k.T) and np.allclose(k, k[::-1, ::-1])
        assert abs(k[8, 8] - expected_centre[s - 1]) < 1e-5
        assert np.all(k[np.abs(np.arange(17) - 8) > 2] == 0)  # support within 5 x 5
    k1 = defocus_kernel(0.3, 0.4)
    assert abs(k1[8, 9] - 0.037126) < 1e-6 and abs(k1[9, 9] - 0.001631) < 1e-6


def test_defocus_matches_direct_correlation():
    for s in (1, 4, 5):
        k = defocus_kernel(*PARAMETERS["defocus_blur"][s - 1]).astype(np.float64)
        x = X / 255.0
        p = np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")
        ref = np.zeros_like(x)
        for i in range(17):
            for j in range(17):
                ref += k[i, j] * p[:, i : i + 32, j : j + 32]
        got = corrupt(X, "defocus_blur", s, None).astype(int)
        assert np.abs(got - (np.clip(ref, 0, 1) * 255).astype(int)).max() <= 1


def test_gaussian_blur_equals_scipy():
    for s in SEVERITIES:
        sigma = PARAMETERS["gaussian_blur"][s - 1]
        x = X / 255.0
        ref = np.empty_like(x)
        for i in range(len(X)):
            for c in range(3):
                ref[i, :, :, c] = ndimage.gaussian_filter(
                    x[i, :, :, c], sigma, mode="nearest", truncate=4
                )
        assert np.array_equal(
            corrupt(X, "gaussian_blur", s, None), (np.clip(ref, 0, 1) * 255).astype(np.uint8)
        )
        const = np.full((1, 32, 32, 3), 200, np.uint8)
        assert np.array_equal(corrupt(const, "gaussian_blur", s, None), const)


def test_motion_blur_kernel():
    widths = (13, 13, 13, 17, 19)
    for s in SEVERITIES:
        radius, sigma = PARAMETERS["motion_blur"][s - 1]
        for angle in (-45.0, -30.0, -0.5, 0.0, 12.3, 44.9, 45.0):
            w, dx, dy = motion_blur_kernel(radius, sigma, angle)
            assert len(w) == len(dx) == len(dy) == widths[s - 1]
            assert abs(w.sum() - 1) < 1e-12 and np.all(np.diff(w) < 0)  # one-sided Gaussian
            assert dx[0] == 0 and dy[0] == 0
            assert np.all(dx >= 0) and np.all(np.abs(dy) <= dx + 1)  # streak to the right
        w, dx, dy = motion_blur_kernel(radius, sigma, 0.0)
        assert np.array_equal(dx, np.arange(len(w))) and np.all(dy == 0)


def test_motion_blur_constant_and_streak():
    const = np.full((2, 32, 32, 3), 173, np.uint8)
    for s in SEVERITIES:
        assert np.array_equal(corrupt(const, "motion_blur", s, np.random.default_rng(0)), const)
    # a bright dot at angle 0 smears only to its left (output at x samples x + dx, dx >= 0)
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 16, 20] = 255
    out = magick_motion_blur(img, 6, 1, np.array([0.0]))[0, :, :, 0]
    assert out[16, 20] > 0 and out[16, 10:21].min() >= 0 and np.all(out[16, 21:] == 0)
    assert np.all(np.delete(out, 16, axis=0) == 0)


def test_zoom_blur_factor_one_is_identity_and_zoom_matches_scipy():
    assert np.array_equal(_zoom_blur_factors(X, [1.0]), X.astype(np.float32))
    assert np.array_equal(np.clip(_zoom_blur_factors(X, [1.0]), 0, 255).astype(np.uint8), X)
    assert [len(np.arange(1, e, 0.01)) for e in PARAMETERS["zoom_blur"]] == [7, 12, 16, 21, 26]
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        img = rng.random((3, 32, 32, 2)).astype(dtype)
        for z in (1.0, 1.03, 1.11, 1.25, 1.75, 2.25):
            ch = int(np.ceil(32 / z))
            top = (32 - ch) // 2
            for i in range(3):
                ref = ndimage.zoom(img[i, top : top + ch, top : top + ch], (z, z, 1), order=1)
                t = (ref.shape[0] - 32) // 2
                assert np.array_equal(clipped_zoom(img, z)[i], ref[t : t + 32, t : t + 32])


def test_glass_blur_copies_from_up_left_neighbours():
    # severity 1: sigma .05 has radius 0, so the output is the shuffled image itself
    out = corrupt(X, "glass_blur", 1, np.random.default_rng(4))
    assert np.array_equal(out[:, :2], X[:, :2]) and np.array_equal(out[:, :, :2], X[:, :, :2])
    for i in range(len(X)):
        for h in range(2, 32):
            for w in range(2, 32):
                cands = [X[i, h + dy, w + dx] for dy in (-1, 0) for dx in (-1, 0)]
                assert any(np.array_equal(out[i, h, w], c) for c in cands)


# ------------------------------------------------------------------------------- noise


def test_noise_statistics():
    grey = np.full((64, 32, 32, 3), 128, np.uint8)
    x = 128 / 255
    for s in SEVERITIES:
        sigma = PARAMETERS["gaussian_noise"][s - 1]
        out = corrupt(grey, "gaussian_noise", s, np.random.default_rng(s)).astype(float)
        assert abs(out.std() - sigma * 255) < 0.03 * sigma * 255
        assert abs(out.mean() - (128 - 0.5)) < 0.3  # truncation lowers the mean by 1/2
        sigma = PARAMETERS["speckle_noise"][s - 1]
        out = corrupt(grey, "speckle_noise", s, np.random.default_rng(s)).astype(float)
        assert abs(out.std() - x * sigma * 255) < 0.03 * x * sigma * 255
        lam = PARAMETERS["shot_noise"][s - 1]
        out = corrupt(grey, "shot_noise", s, np.random.default_rng(s)).astype(float)
        assert (
            abs(out.std() - math.sqrt(x * lam) / lam * 255) < 0.04 * math.sqrt(x * lam) / lam * 255
        )
        amount = PARAMETERS["impulse_noise"][s - 1]
        out = corrupt(grey, "impulse_noise", s, np.random.default_rng(s))
        hit = out != 128
        assert set(np.unique(out[hit])) <= {0, 255}
        assert abs(hit.mean() - amount) < 0.1 * amount
        assert abs((out[hit] == 255).mean() - 0.5) < 0.05


# ------------------------------------------------------------------------ weather / other


def test_fog_plasma():
    u = np.random.default_rng(0).random((4, 1023))
    p = _plasma(u, 1.75)
    assert p.shape == (4, 32, 32)
    assert np.allclose(p.min(axis=(1, 2)), 0) and np.allclose(p.max(axis=(1, 2)), 1)


def test_frost_textures():
    tex = procedural_frost_textures(0)
    assert len(tex) == 5 and tex[1] is tex[2]  # frost2 == frost3 in the reference
    assert [t.shape[:2] for t in tex] == [(120, 180), (63, 112), (63, 112), (70, 105), (99, 132)]
    assert all(t.dtype == np.uint8 for t in tex)
    assert procedural_frost_textures(0)[0] is tex[0]  # cached
    assert not np.array_equal(procedural_frost_textures(1)[0], tex[0])
    means = np.array([t.reshape(-1, 3).mean(0) for t in tex])
    assert np.all(means[:, 2] > means[:, 0])  # bluish
    # user textures: a constant texture gives the analytic blend
    flat = [np.full((40, 50, 3), 200, np.uint8)]
    for s in SEVERITIES:
        wi, wf = PARAMETERS["frost"][s - 1]
        out = corrupt(X, "frost", s, 0, frost_textures=flat)
        assert np.array_equal(out, np.clip(wi * X + wf * 200.0, 0, 255).astype(np.uint8))
    with pytest.raises(ValueError):
        corrupt(X, "frost", 1, 0, frost_textures=[np.zeros((32, 40, 3), np.uint8)])


def test_frost_crops_come_from_textures():
    tex = [
        np.random.default_rng(k).integers(0, 256, (40 + k, 45, 3), dtype=np.uint8) for k in range(3)
    ]
    out = corrupt(X, "frost", 1, 3, frost_textures=tex)  # weights (1, .2)
    crops = (out.astype(float) - X) / 0.2  # within (0.2 * crop) truncation
    for i in range(len(X)):
        ok = False
        for t in tex:
            for r in range(t.shape[0] - 32):
                for c in range(t.shape[1] - 32):
                    cand = t[r : r + 32, c : c + 32].astype(float)
                    unclipped = X[i] + 0.2 * cand <= 255
                    if np.all(np.abs(crops[i] - cand)[unclipped] <= 5):
                        ok = True
                        break
                if ok:
                    break
            if ok:
                break
        assert ok


def test_warp_affine_identity_and_spatter_mud_fraction():
    img = X.astype(np.float32) / 255
    eye = np.broadcast_to(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (len(X), 2, 3))
    assert np.array_equal(_warp_affine_cv2(img, eye), img)
    shift = np.broadcast_to(
        np.array([[1.0, 0, 1], [0, 1.0, 0]]), (len(X), 2, 3)
    )  # dst = src + 1 col
    out = _warp_affine_cv2(img, shift)
    assert np.array_equal(out[:, :, 1:], img[:, :, :-1]) and np.array_equal(
        out[:, :, 0], img[:, :, 1]
    )
    # mud (severity 5) darkens/browns a few percent of pixels and leaves the rest unchanged
    out = corrupt(X, "spatter", 5, np.random.default_rng(0))
    changed = np.any(out != X, axis=-1).mean()
    assert 0.005 < changed < 0.3


def test_water_distance_pieces():
    mask = np.ones((1, 9, 9), bool)
    mask[0, 4, 4] = False
    d = _distance_transform_cv2(mask)[0]
    assert (
        d[4, 4] == 0 and d[4, 5] == 1 and np.isclose(d[5, 5], 1.4) and np.isclose(d[6, 5], 2.1969)
    )
    assert np.isclose(d[0, 0], 5.6)
    img = np.zeros((1, 16, 16), np.uint8)
    img[0, 4:12, 4:12] = 200
    edges = _canny_cv2(img, 50, 150)[0]
    assert edges.any() and not edges[8, 8] and not edges[0, 0]
    eq = _equalize_hist_cv2(np.array([[[0, 0], [1, 2]]], np.uint8))
    assert eq.tolist() == [[[0, 0], [128, 255]]]


# -------------------------------------------------------------------------- split writer


NAMES = ("gaussian_noise", "brightness", "frost")


def _split(tmp_path, **kw):
    kw.setdefault("names", NAMES)
    kw.setdefault("progress", False)
    kw.setdefault("chunk_size", 4)
    return make_corrupted_split(X[:5].repeat(2, axis=0), **kw)


def test_split_in_memory_and_chunk_independence():
    images = X[:5].repeat(2, axis=0)
    res = make_corrupted_split(
        images, names=("fog",), severities=(2, 5), seed=3, progress=False, chunk_size=4
    )
    assert set(res) == {"fog"} and set(res["fog"]) == {2, 5}
    assert res["fog"][5].shape == images.shape and res["fog"][5].dtype == np.uint8
    # chunk j of (name, severity) has its own stream: a prefix of whole chunks is unchanged
    part = make_corrupted_split(
        images[:8], names=("fog",), severities=(5,), seed=3, progress=False, chunk_size=4
    )
    assert np.array_equal(part["fog"][5], res["fog"][5][:8])
    rng = C._chunk_rng(3, "fog", 5, 1)
    assert np.array_equal(res["fog"][5][4:8], corrupt(images[4:8], "fog", 5, rng))
    other = make_corrupted_split(
        images, names=("fog",), severities=(5,), seed=4, progress=False, chunk_size=4
    )
    assert not np.array_equal(other["fog"][5], res["fog"][5])


def test_split_files_layouts_workers_and_resume(tmp_path, monkeypatch):
    n = 10
    labels = np.arange(n) % 10
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    assert _split(tmp_path, out_dir=out1, labels=labels, workers=1) is None
    _split(tmp_path, out_dir=out2, labels=labels, workers=2)
    mem = _split(tmp_path)
    for nm in NAMES:
        h = np.load(out1 / f"{nm}.npy")
        assert h.shape == (5 * n, 32, 32, 3) and h.dtype == np.uint8
        assert np.array_equal(h, np.load(out2 / f"{nm}.npy"))
        for s in SEVERITIES:
            p = np.load(out1 / f"{nm}_{s}.npy")
            assert p.shape == (n, 32, 32, 3) and p.dtype == np.uint8
            assert np.array_equal(p, h[(s - 1) * n : s * n])
            assert np.array_equal(p, mem[nm][s])
            assert np.array_equal(p, np.load(out2 / f"{nm}_{s}.npy"))
    lab = np.load(out1 / "labels.npy")
    assert lab.dtype == np.uint8 and np.array_equal(lab, np.tile(labels, 5))
    assert not [f for f in os.listdir(out1) if f.startswith(".")]  # no temporary files left

    # resume: nothing to do -> nothing is computed and no file is rewritten
    stamps = {f: os.stat(out1 / f).st_mtime_ns for f in os.listdir(out1)}

    def boom(args):
        raise AssertionError("recomputed a complete file")

    monkeypatch.setattr(C, "_corrupt_chunk", boom)
    _split(tmp_path, out_dir=out1, labels=labels)
    assert stamps == {f: os.stat(out1 / f).st_mtime_ns for f in os.listdir(out1)}
    # a missing file is rebuilt from the other layout, still without computing
    os.remove(out1 / "frost_3.npy")
    os.remove(out1 / "brightness.npy")
    _split(tmp_path, out_dir=out1, labels=labels)
    assert np.array_equal(np.load(out1 / "frost_3.npy"), np.load(out2 / "frost_3.npy"))
    assert np.array_equal(np.load(out1 / "brightness.npy"), np.load(out2 / "brightness.npy"))
    # a truncated (incomplete) file is recomputed
    monkeypatch.undo()
    data = (out1 / "gaussian_noise.npy").read_bytes()
    (out1 / "gaussian_noise.npy").write_bytes(data[: len(data) // 2])
    os.remove(out1 / "gaussian_noise_2.npy")
    _split(tmp_path, out_dir=out1, labels=labels)
    assert np.array_equal(
        np.load(out1 / "gaussian_noise.npy"), np.load(out2 / "gaussian_noise.npy")
    )
    assert np.array_equal(
        np.load(out1 / "gaussian_noise_2.npy"), np.load(out2 / "gaussian_noise_2.npy")
    )


def test_split_per_severity_only(tmp_path):
    out = tmp_path / "ps"
    _split(
        tmp_path,
        out_dir=out,
        names=("contrast",),
        severities=(5,),
        labels=np.zeros(10, int),
        layout=("per_severity",),
    )
    assert sorted(os.listdir(out)) == ["contrast_5.npy", "labels.npy"]
    assert np.load(out / "labels.npy").shape == (10,)
    with pytest.warns(UserWarning, match="all 5 severities"):
        _split(
            tmp_path,
            out_dir=tmp_path / "warn",
            names=("contrast",),
            severities=(1,),
            layout=("hendrycks", "per_severity"),
        )
    with pytest.raises(ValueError):
        _split(tmp_path, names=("nope",))
    with pytest.raises(ValueError):
        _split(tmp_path, layout=("other",))
