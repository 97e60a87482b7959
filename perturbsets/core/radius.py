"""Choosing the radius ε of a learned perturbation set (paper Appendix B, Tables 8 and 11).

The rule of the paper is conservative: ε is the largest prior-relative posterior encoding
‖(μ(x, x̃) − μ(x)) / σ(x)‖₂ over a held-out validation set, so the set contains every
validation perturbation at the encoder's approximation error. Percentiles of the same
norms give the smaller radii used for attacks (e.g. 2.7 / 3.9 / 10.2 on CIFAR-10-C).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Protocol

import numpy as np
import torch
from torch import Tensor

from perturbsets.config.schema import check_radius_rule
from perturbsets.cvae.model import CVAE
from perturbsets.core.latent import latent_norm, relative_encoding

PERCENTILES = (25.0, 50.0, 75.0, 99.9)


class PairLike(Protocol):
    x: Tensor
    x_tilde: Tensor


@dataclass(frozen=True)
class LatentNormStats:
    """Summary of validation latent norms: count, mean, std, min, max and percentiles."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def latent_norms(cvae: CVAE, batches: Iterable[PairLike]) -> np.ndarray:
    """‖(μ(x, x̃) − μ(x)) / σ(x)‖₂ for every pair of every batch: shape (num_pairs,).

    The CVAE is used in eval mode (restored afterwards).
    """
    was_training = cvae.training
    cvae.eval()
    out = []
    try:
        for batch in batches:
            u = relative_encoding(cvae.posterior_params(batch.x, batch.x_tilde), cvae.prior_params(batch.x))
            out.append(latent_norm(u).double().cpu())
    finally:
        cvae.train(was_training)
    if not out:
        raise ValueError("no pairs to compute latent norms on: the validation data is empty")
    return torch.cat(out).numpy()


def _check_norms(norms: np.ndarray) -> np.ndarray:
    norms = np.asarray(norms, dtype=np.float64).ravel()
    if norms.size == 0:
        raise ValueError("no latent norms given")
    if not np.isfinite(norms).all():
        raise ValueError("latent norms contain NaN or Inf: the CVAE produced non-finite encodings")
    return norms


def norm_statistics(norms: np.ndarray, percentiles: Iterable[float] = PERCENTILES) -> LatentNormStats:
    """Mean, std, min, max and percentiles (linear interpolation) of the latent norms."""
    norms = _check_norms(norms)
    return LatentNormStats(
        count=int(norms.size),
        mean=float(norms.mean()),
        std=float(norms.std()),
        min=float(norms.min()),
        max=float(norms.max()),
        percentiles={f"p{q:g}": float(np.percentile(norms, q)) for q in percentiles},
    )


def select_radius(norms: np.ndarray, rule: float | str = "max") -> float:
    """The radius ε: ``"max"`` (Appendix B), a percentile ``"p75"``, or a given number."""
    check_radius_rule(rule)
    if not isinstance(rule, str):
        return float(rule)
    norms = _check_norms(norms)
    if rule == "max":
        radius = float(norms.max())
    else:
        radius = float(np.percentile(norms, float(rule[1:])))
    if not radius > 0:
        raise ValueError(
            f"the selected radius is {radius}: every validation pair encodes at the prior mean; "
            "the CVAE ignores x̃ (check that x̃ differs from x and that training converged)"
        )
    return radius
