"""Latent geometry of a learned perturbation set (paper Section 4 and Appendix B).

The set is defined *before* the reparameterisation: a standard ℓ2 ball {u : ‖u‖₂ ≤ ε}
mapped to the latent code by z = μ(x) + u·σ(x). Everything here works on u, flattened per
example, whatever the latent's shape.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special
from torch import Tensor

from perturbsets._util.checks import positive_finite
from perturbsets.cvae.model import Gaussian


def to_latent(u: Tensor, prior: Gaussian) -> Tensor:
    """z = μ(x) + u·σ(x). u has the prior's shape (N, *latent_shape)."""
    return prior.mean + u * prior.std


def from_latent(z: Tensor, prior: Gaussian) -> Tensor:
    """u = (z − μ(x)) / σ(x), the inverse of :func:`to_latent`."""
    return (z - prior.mean) / prior.std


def relative_encoding(posterior: Gaussian, prior: Gaussian) -> Tensor:
    """The posterior mean in prior coordinates, u = (μ(x, x̃) − μ(x)) / σ(x) (Appendix B)."""
    return from_latent(posterior.mean, prior)


def latent_norm(u: Tensor) -> Tensor:
    """Per-example ℓ2 norm of u (N, ...) over all non-batch dimensions: shape (N,)."""
    return torch.linalg.vector_norm(u.flatten(1), dim=1)


def _check_radius(radius: float | Tensor) -> None:
    if not isinstance(radius, Tensor) or radius.dim() == 0:
        positive_finite(radius, "radius")
    elif not bool(((radius > 0) & torch.isfinite(radius)).all()):
        raise ValueError(f"every radius must be a finite number > 0, got {radius}")


def project(u: Tensor, radius: float | Tensor) -> Tensor:
    """Project each example of u (N, ...) onto the ℓ2 ball of the given radius.

    ``radius`` is a float or a tensor of shape (N,). Points inside the ball are unchanged;
    points outside are scaled onto the sphere. Each example's norm is taken over all its
    elements (not per coordinate across the batch, the defect of the authors' ``renorm``).
    """
    _check_radius(radius)
    norm = latent_norm(u)
    radius = torch.as_tensor(radius, dtype=u.dtype, device=u.device)
    scale = torch.clamp(radius / norm.clamp_min(torch.finfo(u.dtype).tiny), max=1.0)
    return u * scale.view(-1, *([1] * (u.dim() - 1)))


def _log_lower_gamma_regularized(a: float, x: np.ndarray) -> np.ndarray:
    """ln P(a, x), the log of the regularised lower incomplete gamma function.

    scipy's ``gammainc`` underflows to 0 when x ≪ a (a radius far inside the bulk of a
    high-dimensional Gaussian, e.g. ε = 29 for a 6,272-dimensional latent); there the
    series P(a, x) = x^a e^{-x} / Γ(a+1) · Σ_n x^n / ((a+1)…(a+n)) converges fast and is
    summed in log space.
    """
    x = np.asarray(x, dtype=np.float64)
    direct = special.gammainc(a, x)
    with np.errstate(divide="ignore"):
        out = np.log(direct)
    tiny = direct < 1e-250
    if np.any(tiny):
        xt = x[tiny]
        term = np.ones_like(xt)
        total = np.ones_like(xt)
        for n in range(1, 100000):
            term = term * xt / (a + n)
            total += term
            if np.all(term < 1e-17 * total):
                break
        with np.errstate(divide="ignore"):
            out[tiny] = a * np.log(xt) - xt - special.gammaln(a + 1) + np.log(total)
    return out


def truncated_chi_icdf(q: np.ndarray, dim: int, radius: float) -> np.ndarray:
    """Inverse CDF of the chi distribution with ``dim`` degrees of freedom truncated to [0, radius].

    The norm of a standard normal vector in R^dim has CDF F(r) = P(dim/2, r²/2); truncated
    at ε, r = F⁻¹(q·F(ε)) for q ∈ [0, 1].
    """
    q = np.asarray(q, dtype=np.float64)
    a = dim / 2.0
    mass = special.gammainc(a, radius**2 / 2.0)
    if mass > 1e-250:
        r = np.sqrt(2.0 * special.gammaincinv(a, q * mass))
        return np.minimum(r, radius)
    # Deep truncation: invert ln F by bisection on [0, ε] (monotone, 60 halvings reach
    # double precision relative to ε).
    log_target = np.log(np.maximum(q, 1e-300)) + _log_lower_gamma_regularized(a, np.array([radius**2 / 2.0]))[0]
    lo = np.zeros_like(q)
    hi = np.full_like(q, radius)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = _log_lower_gamma_regularized(a, mid**2 / 2.0) < log_target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _uniform_directions(n: int, dim: int, generator, device, dtype) -> Tensor:
    v = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    # A zero Gaussian draw has probability 0 but would divide by zero; redirect it to e₁.
    degenerate = norm.squeeze(1) == 0
    if degenerate.any():
        v[degenerate] = 0
        v[degenerate, 0] = 1
        norm[degenerate] = 1
    return v / norm


def _resolve_device(device, generator) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def _check_sampling_args(n: int, dim: int, radius: float) -> None:
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    _check_radius(radius)


def sample_truncated_normal(
    n: int,
    dim: int,
    radius: float,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw n samples of N(0, I_dim) conditioned on ‖u‖₂ ≤ radius, exactly: shape (n, dim).

    The standard normal is rotation invariant, so its restriction to the ball factorises
    into a uniform direction and a norm distributed as chi(dim) truncated at the radius,
    drawn by the inverse CDF (:func:`truncated_chi_icdf`). This is the probabilistic
    perturbation set N_ε(0, I) of Appendix B; clipping or per-coordinate truncation would
    give a different distribution.
    """
    _check_sampling_args(n, dim, radius)
    device = _resolve_device(device, generator)
    directions = _uniform_directions(n, dim, generator, device, dtype)
    # The uniforms come from the same torch generator so a seed fixes the whole draw.
    q = torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu().numpy()
    r = torch.from_numpy(truncated_chi_icdf(q, dim, float(radius))).to(device=device, dtype=dtype)
    return directions * r.unsqueeze(1)


def sample_uniform_ball(
    n: int,
    dim: int,
    radius: float,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw n points uniformly from the ℓ2 ball of the given radius in R^dim: shape (n, dim).

    Norm ε·U^{1/dim} (U uniform) times a uniform direction.
    """
    _check_sampling_args(n, dim, radius)
    device = _resolve_device(device, generator)
    directions = _uniform_directions(n, dim, generator, device, dtype)
    q = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    r = radius * q ** (1.0 / dim)
    return directions * r.to(dtype).unsqueeze(1)

