"""The conditional VAE behind a learned perturbation set (paper Section 4, Equations 5-6).

Three networks, named as in the paper and in the authors' state dicts:

* prior        p(z | x)     = N(μ(x), σ²(x))            ``prior(x) -> (mean, logvar)``
* recognition  q(z | x, x̃)  = N(μ(x, x̃), σ²(x, x̃))      ``recognition(x, x_tilde) -> (mean, logvar)``
* generator    p(x̃ | z, x)  with mean g(z, x)            ``generator(z, x) -> logits``

The generator returns pre-activation values; :class:`CVAE` applies the output activation
(a sigmoid, as in every architecture of the paper), which lets the Bernoulli likelihood use
the numerically stable ``binary_cross_entropy_with_logits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Distribution = Literal["bernoulli", "gaussian"]
DISTRIBUTIONS: tuple[str, ...] = ("bernoulli", "gaussian")

LOGVAR_MIN = math.log(1e-3)
LOGVAR_MAX = math.log(10.0)


class ScaledTanh(nn.Module):
    """Bound a log-variance to (ln 1e-3, ln 10) with a scaled tanh (Appendix E.1).

    ``logvar = shift + scale * tanh(a)`` with ``shift = (lo + hi) / 2`` and
    ``scale = (lo - hi) / 2``. The scale is negative, as in the authors' code: the map is
    decreasing in ``a``, which does not change what can be represented but is needed to
    reproduce the outputs of their released weights.
    """

    def __init__(self, lower: float = LOGVAR_MIN, upper: float = LOGVAR_MAX) -> None:
        super().__init__()
        if not lower < upper:
            raise ValueError(f"ScaledTanh needs lower < upper, got lower={lower}, upper={upper}")
        self.shift = (lower + upper) / 2
        self.scale = (lower - upper) / 2

    def forward(self, a: Tensor) -> Tensor:
        return self.shift + self.scale * torch.tanh(a)


def logvar_head(kind: str) -> nn.Module:
    """The activation applied to a raw log-variance: ``"scaled_tanh"`` (bounded) or ``"linear"``."""
    if kind == "scaled_tanh":
        return ScaledTanh()
    if kind == "linear":
        return nn.Identity()
    raise ValueError(f"unknown logvar head {kind!r}; use 'scaled_tanh' (bounded, the default) or 'linear'")


@dataclass(frozen=True)
class Gaussian:
    """A diagonal Gaussian N(mean, exp(logvar)); both tensors of shape (N, *latent_shape)."""

    mean: Tensor
    logvar: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, noise: Tensor | None = None) -> Tensor:
        """Reparameterisation z = μ + σ·u with u ~ N(0, I) unless ``noise`` gives u."""
        if noise is None:
            noise = torch.randn_like(self.mean)
        return self.mean + noise * self.std


@dataclass(frozen=True)
class CVAEOutput:
    """What :meth:`CVAE.forward` returns.

    reconstruction: (N, C, H, W) mean of p(x̃ | z, x), in the data's value range.
    logits: (N, C, H, W) the generator's pre-activation output.
    prior: p(z | x); posterior: q(z | x, x̃); z: the posterior sample, (N, *latent_shape).
    """

    reconstruction: Tensor
    logits: Tensor
    prior: Gaussian
    posterior: Gaussian
    z: Tensor


@dataclass(frozen=True)
class CVAELoss:
    """The negative ELBO of Equation 6, weighted by β.

    total: scalar, mean over the batch of ``reconstruction + beta * kl`` (for logging and
        validation: comparable across batch sizes).
    reconstruction: (N,) negative log-likelihood per example, summed over pixels.
    kl: (N,) KL(q ‖ p) per example, summed over latent dimensions.
    """

    total: Tensor
    reconstruction: Tensor
    kl: Tensor

    @property
    def objective(self) -> Tensor:
        """The scalar that training minimises: the β-weighted negative ELBO *summed* over the batch.

        Summing, as Equation 6 sums over the data and the authors' code did, matters for the
        weight decay: Adam's coupled L2 adds ``weight_decay · θ`` to this gradient, so with a
        batch mean the same ``weight_decay`` would act B times as strongly.
        """
        return self.total * self.kl.shape[0]


def kl_divergence(q: Gaussian, p: Gaussian) -> Tensor:
    """KL(q ‖ p) between diagonal Gaussians in closed form, summed per example: shape (N,).

    KL = ½ Σ_j [σ_q²/σ_p² + (μ_p − μ_q)²/σ_p² − 1 + ln σ_p² − ln σ_q²].
    """
    inv_var_p = torch.exp(-p.logvar)
    per_dim = 0.5 * (
        torch.exp(q.logvar) * inv_var_p + (p.mean - q.mean) ** 2 * inv_var_p - 1.0 + p.logvar - q.logvar
    )
    return per_dim.flatten(1).sum(1)


def reconstruction_nll(
    logits: Tensor, target: Tensor, distribution: Distribution, activation: str = "sigmoid", variance: float = 1.0
) -> Tensor:
    """Per-example negative log-likelihood of x̃ under the generator, summed over pixels: (N,).

    ``bernoulli``: Σ BCE(sigmoid(logits), x̃) (x̃ may be fractional in [0, 1]).
    ``gaussian``: Σ (g − x̃)² / (2·variance), the negative log-density of N(g, variance·I)
    without its constant. ``variance=1`` is Equation 5's N(g, I); the authors' code summed
    plain squared errors, which is ``variance=0.5`` (a KL weight twice as large relative
    to the reconstruction). ``variance`` is ignored for ``bernoulli``.
    """
    if distribution == "bernoulli":
        err = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif distribution == "gaussian":
        if not variance > 0:
            raise ValueError(f"the Gaussian likelihood's variance must be > 0, got {variance}")
        err = (output_activation(logits, activation) - target) ** 2 / (2.0 * variance)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; use one of {DISTRIBUTIONS}")
    return err.flatten(1).sum(1)


def output_activation(logits: Tensor, activation: str) -> Tensor:
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "identity":
        return logits
    raise ValueError(f"unknown output activation {activation!r}; use 'sigmoid' or 'identity'")


class CVAE(nn.Module):
    """A conditional VAE made of a prior, a recognition network and a generator (Section 4).

    Args:
        prior: module ``x -> (mean, logvar)``, x of shape (N, C, H, W).
        recognition: module ``(x, x_tilde) -> (mean, logvar)``.
        generator: module ``(z, x) -> logits`` of shape (N, C, H, W).
        input_shape: (C, H, W) of x and x̃.
        latent_shape: shape of one latent code (e.g. ``(128,)`` or ``(128, 7, 7)``).
        distribution: output likelihood, ``"bernoulli"`` (data in [0, 1]) or ``"gaussian"``.
        output: activation turning generator logits into the mean, ``"sigmoid"`` or
            ``"identity"`` (Gaussian only, for data not in [0, 1]).
    """

    def __init__(
        self,
        prior: nn.Module,
        recognition: nn.Module,
        generator: nn.Module,
        *,
        input_shape: tuple[int, int, int],
        latent_shape: tuple[int, ...],
        distribution: Distribution = "bernoulli",
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}; use one of {DISTRIBUTIONS}")
        if output not in ("sigmoid", "identity"):
            raise ValueError(f"unknown output activation {output!r}; use 'sigmoid' or 'identity'")
        if distribution == "bernoulli" and output != "sigmoid":
            raise ValueError("a Bernoulli generator needs output='sigmoid' (its mean must lie in [0, 1])")
        self.prior = prior
        self.recognition = recognition
        self.generator = generator
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.distribution = distribution
        self.output = output

    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)

    def prior_params(self, x: Tensor) -> Gaussian:
        """p(z | x) for x of shape (N, C, H, W)."""
        return Gaussian(*self.prior(x))

    def posterior_params(self, x: Tensor, x_tilde: Tensor) -> Gaussian:
        """q(z | x, x̃) for x, x̃ of shape (N, C, H, W)."""
        return Gaussian(*self.recognition(x, x_tilde))

    def generate(self, z: Tensor, x: Tensor) -> Tensor:
        """g(z, x): the mean of p(x̃ | z, x), shape (N, C, H, W)."""
        return output_activation(self.generator(z, x), self.output)

    def generator_context(self, x: Tensor) -> tuple[Tensor, ...]:
        """What the generator computes from x alone, to reuse for every z: tensors of N rows.

        A generator may define ``condition(x) -> tuple`` and ``decode(z, *context) -> logits``
        (with ``forward(z, x) == decode(z, *condition(x))``) when part of its work does not
        depend on z, e.g. the U-Net encoder of ``mi_unet``; otherwise the context is ``(x,)``.
        """
        condition = getattr(self.generator, "condition", None)
        return tuple(condition(x)) if condition is not None else (x,)

    def generator_logits(self, z: Tensor, context: tuple[Tensor, ...]) -> Tensor:
        """The generator's logits (N, C, H, W) for z (N, *latent_shape) and a :meth:`generator_context` of N rows."""
        decode = getattr(self.generator, "decode", None)
        return decode(z, *context) if decode is not None else self.generator(z, *context)

    def forward(self, x: Tensor, x_tilde: Tensor, noise: Tensor | None = None) -> CVAEOutput:
        """Encode (x, x̃), draw z ~ q(z | x, x̃) by reparameterisation, decode g(z, x)."""
        prior = self.prior_params(x)
        posterior = self.posterior_params(x, x_tilde)
        z = posterior.rsample(noise)
        logits = self.generator(z, x)
        return CVAEOutput(output_activation(logits, self.output), logits, prior, posterior, z)

    def loss(self, out: CVAEOutput, x_tilde: Tensor, beta: float, *, variance: float = 1.0) -> CVAELoss:
        """Negative ELBO (Equation 6) with the KL term weighted by ``beta``.

        ``variance``: of the Gaussian likelihood N(g, variance·I) (see :func:`reconstruction_nll`).
        """
        recon = reconstruction_nll(out.logits, x_tilde, self.distribution, self.output, variance)
        kl = kl_divergence(out.posterior, out.prior)
        return CVAELoss(total=(recon + beta * kl).mean(), reconstruction=recon, kl=kl)
