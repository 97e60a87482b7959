"""Tests for perturbsets.latent: truncated-normal and uniform-ball sampling, projection, coordinates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from perturbsets.cvae.model import Gaussian
from perturbsets.core.latent import (
    from_latent,
    latent_norm,
    project,
    relative_encoding,
    sample_truncated_normal,
    sample_uniform_ball,
    to_latent,
    truncated_chi_icdf,
)




def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _truncated_chi_cdf_scipy(dim: int, radius: float):
    mass = stats.chi.cdf(radius, dim)
    return lambda r: np.clip(stats.chi.cdf(r, dim) / mass, 0.0, 1.0)


def _log_density(r: float, dim: int) -> float:
    return (dim - 1) * math.log(r) - r * r / 2 if r > 0 else -math.inf


def _reference_cdf_quad(dim: int, radius: float):
    """CDF of chi(dim) truncated at radius by quadrature of r^(dim-1) e^(-r²/2), log-stabilised.

    Independent of the library: no incomplete gamma function involved.
    """
    mode = math.sqrt(dim - 1)
    c = _log_density(min(radius, mode), dim)  # the density's maximum on [0, radius]
    f = lambda r: math.exp(_log_density(r, dim) - c)  # noqa: E731
    pts = [p for p in (radius - 1.0, radius - 0.2, radius - 0.05, radius - 0.01, mode) if 0 < p < radius]

    def integral(a: float, b: float) -> float:
        inner = [p for p in pts if a < p < b]
        return integrate.quad(f, a, b, points=inner or None, limit=500, epsabs=0.0, epsrel=1e-11)[0]

    total = integral(0.0, radius)

    def cdf(rs: np.ndarray) -> np.ndarray:
        rs = np.asarray(rs, dtype=np.float64)
        order = np.argsort(rs)
        out = np.empty_like(rs)
        acc, prev = 0.0, 0.0
        for i in order:  # accumulate over successive intervals
            r = min(max(rs[i], 0.0), radius)
            acc += integral(prev, r) if r > prev else 0.0
            prev = max(prev, r)
            out[i] = acc / total
        return out

    return cdf


# ---------------------------------------------------------------------------- truncated normal


@pytest.mark.parametrize(
    "dim,radius",
    [(1, 0.5), (2, 0.5), (5, 1.0), (10, 3.0), (10, 10.0), (50, 5.0), (128, 20.0)],
)
def test_truncated_normal_norms_match_truncated_chi(dim, radius):
    u = sample_truncated_normal(3000, dim, radius, _gen(dim * 7 + 1), dtype=torch.float64)
    assert u.shape == (3000, dim) and u.dtype == torch.float64
    norms = u.norm(dim=1).numpy()
    assert norms.max() <= radius * (1 + 1e-12)
    pvalue = stats.kstest(norms, _truncated_chi_cdf_scipy(dim, radius)).pvalue
    assert pvalue > 0.01


@pytest.mark.parametrize("dim,radius", [(3, 0.3), (20, 2.0), (784, 14.0), (6272, 29.0), (300, 40.0)])
def test_never_outside_ball_float32(dim, radius):
    u = sample_truncated_normal(400, dim, radius, _gen(3))
    assert u.dtype == torch.float32
    assert u.norm(dim=1).max().item() <= radius * (1 + 1e-6)


@pytest.mark.parametrize("dim", [3, 16])
def test_truncated_normal_directions_uniform(dim):
    n = 6000
    u = sample_truncated_normal(n, dim, 1.5, _gen(11), dtype=torch.float64)
    d = u / u.norm(dim=1, keepdim=True)
    assert d.mean(0).abs().max().item() < 5 / math.sqrt(n)
    second = (d**2).mean(0)
    assert torch.allclose(second, torch.full((dim,), 1 / dim, dtype=torch.float64), atol=5 / math.sqrt(n) / dim * 3)
    # directions independent of norms: mean norm in each half-space of coordinate 0 agrees
    norms = u.norm(dim=1)
    pos, neg = norms[u[:, 0] > 0].mean(), norms[u[:, 0] <= 0].mean()
    assert abs(pos - neg).item() < 0.05


def test_untruncated_limit_matches_standard_normal():
    # radius far beyond the bulk: the sample is a standard normal; each coordinate N(0, 1)
    u = sample_truncated_normal(3000, 4, 50.0, _gen(5), dtype=torch.float64)
    for j in range(4):
        assert stats.kstest(u[:, j].numpy(), stats.norm.cdf).pvalue > 0.01


@pytest.mark.parametrize("dim,radius", [(6272, 29.0), (784, 14.0)])
def test_deep_truncation_icdf_quantiles_match_quadrature(dim, radius):
    q = np.array([0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999])
    r = truncated_chi_icdf(q, dim, radius)
    assert np.all(r <= radius) and np.all(np.diff(r) > 0)
    ref = _reference_cdf_quad(dim, radius)(r)
    np.testing.assert_allclose(ref, q, atol=1e-6)


@pytest.mark.parametrize("dim,radius", [(6272, 29.0), (784, 14.0)])
def test_deep_truncation_samples(dim, radius):
    u = sample_truncated_normal(600, dim, radius, _gen(17), dtype=torch.float64)
    norms = u.norm(dim=1).numpy()
    assert np.all(norms <= radius * (1 + 1e-12))
    assert np.all(np.isfinite(norms)) and norms.min() > 0
    assert stats.kstest(norms, _reference_cdf_quad(dim, radius)).pvalue > 0.01


@pytest.mark.parametrize("dim,radius", [(2, 0.5), (10, 3.0), (10, 10.0), (200, 12.0)])
def test_icdf_matches_scipy_ppf(dim, radius):
    q = np.linspace(0, 1, 11)
    mass = stats.chi.cdf(radius, dim)
    ref = stats.chi.ppf(q * mass, dim)
    ref[-1] = radius
    np.testing.assert_allclose(truncated_chi_icdf(q, dim, radius), ref, rtol=1e-8, atol=1e-10)


def test_truncated_normal_seeded_determinism():
    a = sample_truncated_normal(50, 7, 2.0, _gen(123))
    b = sample_truncated_normal(50, 7, 2.0, _gen(123))
    c = sample_truncated_normal(50, 7, 2.0, _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    deep_a = sample_truncated_normal(5, 6272, 29.0, _gen(9))
    deep_b = sample_truncated_normal(5, 6272, 29.0, _gen(9))
    assert torch.equal(deep_a, deep_b)


def test_truncated_normal_bad_args():
    with pytest.raises(ValueError, match="n >= 0"):
        sample_truncated_normal(-1, 3, 1.0)
    with pytest.raises(ValueError, match="dim >= 1"):
        sample_truncated_normal(3, 0, 1.0)
    for r in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="radius must be a finite number > 0"):
            sample_truncated_normal(3, 3, r)
    assert sample_truncated_normal(0, 3, 1.0).shape == (0, 3)


# ---------------------------------------------------------------------------- uniform ball


@pytest.mark.parametrize("dim,radius", [(1, 2.0), (2, 1.0), (5, 3.0), (20, 0.7)])
def test_uniform_ball_norms(dim, radius):
    u = sample_uniform_ball(3000, dim, radius, _gen(dim), dtype=torch.float64)
    assert u.shape == (3000, dim)
    norms = u.norm(dim=1).numpy()
    assert norms.max() <= radius * (1 + 1e-12)
    assert stats.kstest((norms / radius) ** dim, stats.uniform.cdf).pvalue > 0.01


def test_uniform_ball_directions_and_determinism():
    u = sample_uniform_ball(5000, 3, 1.0, _gen(0), dtype=torch.float64)
    d = u / u.norm(dim=1, keepdim=True)
    assert d.mean(0).abs().max().item() < 5 / math.sqrt(5000)
    assert torch.equal(sample_uniform_ball(10, 4, 2.0, _gen(1)), sample_uniform_ball(10, 4, 2.0, _gen(1)))
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        sample_uniform_ball(3, 3, 0.0)


# ---------------------------------------------------------------------------- projection


def _slow_project(u: torch.Tensor, radius) -> torch.Tensor:
    out = u.clone()
    for i in range(u.shape[0]):
        r = float(radius[i]) if isinstance(radius, torch.Tensor) else radius
        norm = math.sqrt(sum(float(v) ** 2 for v in u[i].flatten()))
        if norm > r:
            out[i] = u[i] * (r / norm)
    return out


def test_project_inside_unchanged_outside_on_sphere():
    gen = _gen(0)
    u = torch.randn(40, 6, generator=gen, dtype=torch.float64) * 1.5
    radius = 3.0
    p = project(u, radius)
    norms = u.norm(dim=1)
    inside = norms <= radius
    assert inside.any() and (~inside).any()
    assert torch.equal(p[inside], u[inside])
    torch.testing.assert_close(p[~inside].norm(dim=1), torch.full((int((~inside).sum()),), radius, dtype=torch.float64))
    cos = torch.nn.functional.cosine_similarity(p[~inside], u[~inside], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    torch.testing.assert_close(p, _slow_project(u, radius))


def test_project_idempotent():
    u = torch.randn(30, 5, 2, generator=_gen(1), dtype=torch.float64) * 3
    p = project(u, 2.0)
    torch.testing.assert_close(project(p, 2.0), p, rtol=1e-14, atol=1e-14)


def test_project_is_per_example_not_per_column():
    # Per-coordinate (column) renormalisation across the batch would shrink row 1 as well.
    u = torch.tensor([[3.0, 4.0], [0.1, 0.1]], dtype=torch.float64)
    column_renorm = torch.renorm(u, p=2, dim=1, maxnorm=1.0)
    assert not torch.allclose(column_renorm[1], u[1])  # the batch really distinguishes the two
    p = project(u, 1.0)
    torch.testing.assert_close(p[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert torch.equal(p[1], u[1])


def test_project_4d_latent_uses_whole_example_norm():
    u = torch.randn(4, 8, 2, 2, generator=_gen(2), dtype=torch.float64) * 2
    p = project(u, 1.0)
    assert p.shape == u.shape
    torch.testing.assert_close(p.flatten(1).norm(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(p, _slow_project(u, 1.0))


def test_project_tensor_radius_per_example():
    u = torch.randn(5, 3, generator=_gen(3), dtype=torch.float64) * 4
    radius = torch.tensor([0.5, 1.0, 2.0, 100.0, 3.0], dtype=torch.float64)
    p = project(u, radius)
    torch.testing.assert_close(p, _slow_project(u, radius))
    assert torch.equal(p[3], u[3])


def test_project_zero_vector_and_bad_radius():
    z = torch.zeros(2, 3)
    assert torch.equal(project(z, 1.0), z)
    for r in (0.0, -2.0):
        with pytest.raises(ValueError, match="radius must be a finite number > 0"):
            project(z, r)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        project(z, torch.tensor([1.0, 0.0]))


def test_project_gradcheck():
    u = torch.tensor([[3.0, 1.0, -2.0], [0.1, 0.2, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: project(t, 1.5), (u,))


# ---------------------------------------------------------------------------- coordinates


def test_latent_norm_matches_loop():
    u = torch.randn(6, 4, 3, generator=_gen(4), dtype=torch.float64)
    expected = torch.tensor([math.sqrt(sum(float(v) ** 2 for v in u[i].flatten())) for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(latent_norm(u), expected)


def test_to_from_latent_inverse_and_formula():
    gen = _gen(5)
    prior = Gaussian(torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64), torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64))
    u = torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64)
    z = to_latent(u, prior)
    torch.testing.assert_close(z, prior.mean + u * torch.sqrt(torch.exp(prior.logvar)))
    torch.testing.assert_close(from_latent(z, prior), u)
    torch.testing.assert_close(to_latent(from_latent(z, prior), prior), z)


def test_relative_encoding():
    gen = _gen(6)
    prior = Gaussian(torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randn(4, 5, generator=gen, dtype=torch.float64))
    post = Gaussian(torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randn(4, 5, generator=gen, dtype=torch.float64))
    expected = (post.mean - prior.mean) / torch.sqrt(torch.exp(prior.logvar))
    torch.testing.assert_close(relative_encoding(post, prior), expected)
    # a posterior equal to the prior mean encodes at the origin
    assert torch.equal(relative_encoding(Gaussian(prior.mean, post.logvar), prior), torch.zeros(4, 5, dtype=torch.float64))
