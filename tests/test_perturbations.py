"""Tests for perturbsets.perturbations against scipy.ndimage and analytic expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from perturbsets.perturbations import (
    PERTURBATIONS,
    RTS,
    LinfNoise,
    RTSParams,
    affine_theta,
    apply_affine,
    build_perturbation,
    linf_noise,
    rts,
    sample_rts_params,
)


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _params(angles, scales, shifts) -> RTSParams:
    return RTSParams(
        angle_deg=torch.tensor(angles, dtype=torch.float32),
        scale=torch.tensor(scales, dtype=torch.float32),
        translate=torch.tensor(shifts, dtype=torch.float32),
    )


def _scipy_rts(img: np.ndarray, angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    """Reference: forward map in (x, y) pixel-index coordinates, inverted numerically.

    Pixel centres sit at integer indices, the rotation is about the image centre
    ((W-1)/2, (H-1)/2), and a positive angle turns content counter-clockwise on screen
    (y axis pointing down).
    """
    h, w = img.shape
    a = math.radians(angle_deg)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    linear = scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    forward = np.eye(3)
    forward[:2, :2] = linear
    forward[:2, 2] = centre + np.array([tx, ty]) - linear @ centre
    inverse = np.linalg.inv(forward)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # (x, y) <-> scipy's (row, col)
    m = swap @ inverse @ swap
    # grid-constant = zero padding *with* interpolation against the border, like grid_sample.
    return ndimage.affine_transform(img, m[:2, :2], offset=m[:2, 2], order=1, mode="grid-constant", cval=0.0)


# --------------------------------------------------------------------------- linf


def test_linf_within_epsilon_and_range():
    x = torch.rand(8, 1, 12, 12, generator=_gen(0))
    out = linf_noise(x, epsilon=0.3, generator=_gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out - x).abs().max() <= 0.3 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    # Noise is actually applied, roughly uniformly: interior pixels move by ~eps/2 on average.
    interior = (x > 0.3) & (x < 0.7)
    assert (out - x)[interior].abs().mean() == pytest.approx(0.15, abs=0.02)


def test_linf_custom_range_and_dtype():
    x = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    out = linf_noise(x, epsilon=0.5, generator=_gen(0), value_range=(-0.1, 0.1))
    assert out.dtype == torch.float64
    assert out.min() >= -0.1 and out.max() <= 0.1


def test_linf_seeded():
    x = torch.rand(4, 2, 6, 6)
    a = linf_noise(x, generator=_gen(3))
    b = linf_noise(x, generator=_gen(3))
    c = linf_noise(x, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan")])
def test_linf_bad_epsilon(eps):
    with pytest.raises(ValueError, match="epsilon"):
        linf_noise(torch.rand(1, 1, 4, 4), epsilon=eps)


def test_linf_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        linf_noise(torch.rand(4, 4))
    with pytest.raises(ValueError, match="floating"):
        linf_noise(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="value_range"):
        linf_noise(torch.rand(1, 1, 4, 4), value_range=(1.0, 0.0))


# --------------------------------------------------------------------------- rts vs scipy


@pytest.mark.parametrize("shape", [(28, 28), (30, 50), (41, 23)])
def test_apply_affine_matches_scipy(shape):
    h, w = shape
    x = torch.rand(3, 2, h, w, generator=_gen(7), dtype=torch.float64)
    params = _params([30.0, -70.0, 12.5], [1.2, 0.8, 1.0], [[2.5, -1.5], [0.0, 3.0], [-4.2, 1.1]])
    out = apply_affine(x, params)
    for i in range(3):
        tx, ty = params.translate[i].tolist()
        for c in range(2):
            ref = _scipy_rts(x[i, c].numpy(), params.angle_deg[i].item(), params.scale[i].item(), tx, ty)
            np.testing.assert_allclose(out[i, c].numpy(), ref, atol=1e-4)


def test_rts_random_params_match_scipy():
    # rts() must apply exactly the parameters sample_rts_params draws from the same stream.
    x = torch.rand(4, 1, 42, 42, generator=_gen(0))
    out = rts(x, generator=_gen(5))
    params = sample_rts_params(4, generator=_gen(5))
    for i in range(4):
        tx, ty = params.translate[i].tolist()
        ref = _scipy_rts(x[i, 0].numpy(), params.angle_deg[i].item(), params.scale[i].item(), tx, ty)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-4)


# --------------------------------------------------------------------------- analytic dots


def _dot(h: int, w: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, h, w)
    x[0, 0, row, col] = 1.0
    return x


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
    mass = img.sum()
    return float((rows * img).sum() / mass), float((cols * img).sum() / mass)


def test_dot_pure_rotation_square():
    # 41x41: centre pixel (20, 20). A dot 10 px right of centre, rotated +90° (CCW on
    # screen), ends 10 px above the centre.
    out = apply_affine(_dot(41, 41, 20, 30), _params([90.0], [1.0], [[0.0, 0.0]]))[0, 0]
    assert out[10, 20] == pytest.approx(1.0, abs=1e-5)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_dot_pure_rotation_non_square():
    # H=31, W=51: centre (15, 25). Dot 8 px right of centre -> 8 px above after +90°.
    # A rotation done in normalised instead of pixel coordinates would land elsewhere.
    out = apply_affine(_dot(31, 51, 15, 33), _params([90.0], [1.0], [[0.0, 0.0]]))[0, 0]
    assert out[7, 25] == pytest.approx(1.0, abs=1e-5)
    # And a dot 6 px below centre goes 6 px right (-90° would send it left).
    out = apply_affine(_dot(31, 51, 21, 25), _params([90.0], [1.0], [[0.0, 0.0]]))[0, 0]
    assert out[15, 31] == pytest.approx(1.0, abs=1e-5)


def test_dot_pure_scale():
    # Scale 2 about the centre (20, 20): a dot at offset (row -3, col +5) moves to (-6, +10),
    # spread into a symmetric tent whose centroid is exactly there.
    out = apply_affine(_dot(41, 41, 17, 25), _params([0.0], [2.0], [[0.0, 0.0]]))[0, 0]
    r, c = _centroid(out)
    assert (r, c) == (pytest.approx(14.0, abs=1e-4), pytest.approx(30.0, abs=1e-4))


def test_dot_pure_translation_subpixel():
    # Bilinear interpolation reproduces linear functions, so the centroid moves by exactly t.
    out = apply_affine(_dot(20, 30, 8, 12), _params([0.0], [1.0], [[2.5, -1.25]]))[0, 0]
    r, c = _centroid(out)
    assert (r, c) == (pytest.approx(8 - 1.25, abs=1e-4), pytest.approx(12 + 2.5, abs=1e-4))
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_identity_params_return_input():
    x = torch.rand(3, 2, 17, 25, generator=_gen(1))
    out = apply_affine(x, _params([0.0] * 3, [1.0] * 3, [[0.0, 0.0]] * 3))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    # rts with a degenerate range is the identity as well.
    torch.testing.assert_close(rts(x, angle=0.0, scale=(1.0, 1.0), translate=0.0), x, atol=1e-5, rtol=0)


def test_affine_theta_identity_and_shape():
    theta = affine_theta(_params([0.0, 0.0], [1.0, 1.0], [[0.0, 0.0]] * 2), 10, 20)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    torch.testing.assert_close(theta, expected)


# --------------------------------------------------------------------------- rts properties


def test_rts_shape_dtype_device_and_seed():
    x = torch.rand(5, 3, 20, 24, dtype=torch.float64)
    a = rts(x, generator=_gen(11))
    b = rts(x, generator=_gen(11))
    c = rts(x, generator=_gen(12))
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_rts_params_ranges():
    p = sample_rts_params(4000, angle=30.0, scale=(0.8, 1.1), translate=3.0, generator=_gen(0))
    assert len(p) == 4000
    assert p.angle_deg.abs().max() <= 30.0 and p.angle_deg.abs().max() > 29.0
    assert p.scale.min() >= 0.8 and p.scale.max() <= 1.1
    assert p.translate.abs().max() <= 3.0 and p.translate.shape == (4000, 2)
    # Continuous (not integer) shifts, centred on zero.
    assert not torch.equal(p.translate, p.translate.round())
    assert p.translate.mean().abs() < 0.1


def test_rts_empty_batch():
    x = torch.zeros(0, 1, 8, 8)
    assert rts(x).shape == (0, 1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"scale": (1.3, 0.7)}, "scale range"),
        ({"scale": (0.0, 1.0)}, "scale range"),
        ({"angle": -1.0}, "angle"),
        ({"translate": -2.0}, "translate"),
    ],
)
def test_rts_bad_ranges(kwargs, words):
    with pytest.raises(ValueError, match=words):
        rts(torch.rand(1, 1, 8, 8), **kwargs)
    with pytest.raises(ValueError, match=words):
        RTS(**kwargs)


def test_rts_bad_inputs():
    with pytest.raises(ValueError, match=r"3-D"):
        rts(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        rts(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2 parameter sets for a batch of 3"):
        apply_affine(torch.rand(3, 1, 8, 8), _params([0.0, 0.0], [1.0, 1.0], [[0.0, 0.0]] * 2))
    with pytest.raises(ValueError, match="scale must be > 0"):
        _params([0.0], [0.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="translate"):
        RTSParams(torch.zeros(2), torch.ones(2), torch.zeros(2))


def test_generator_device_mismatch():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device type")
    with pytest.raises(ValueError, match="generator lives on"):
        rts(torch.rand(1, 1, 8, 8, device="cuda"), generator=_gen(0))


# --------------------------------------------------------------------------- config objects


def test_config_objects_match_functions():
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(LinfNoise(epsilon=0.1)(x, _gen(2)), linf_noise(x, 0.1, generator=_gen(2)))
    torch.testing.assert_close(
        RTS(angle=10, scale=[0.9, 1.1], translate=2)(x, generator=_gen(2)),
        rts(x, 10.0, (0.9, 1.1), 2.0, generator=_gen(2)),
    )


def test_build_perturbation():
    p = build_perturbation("rts", angle=30, scale=[0.8, 1.2])
    assert isinstance(p, RTS) and p.scale == (0.8, 1.2) and p.angle == 30.0
    assert isinstance(build_perturbation("linf", epsilon=0.2), LinfNoise)
    assert set(PERTURBATIONS) == {"linf", "rts"}


def test_build_perturbation_errors():
    with pytest.raises(ValueError, match=r"unknown perturbation 'rst' \(did you mean 'rts'\?\); valid: linf, rts"):
        build_perturbation("rst")
    with pytest.raises(ValueError, match=r"unknown option for perturbation 'linf' 'eps' \(did you mean 'epsilon'\?\)"):
        build_perturbation("linf", eps=0.3)
    with pytest.raises(ValueError, match="epsilon"):
        build_perturbation("linf", epsilon=0)
