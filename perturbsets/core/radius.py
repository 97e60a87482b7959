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

from perturbsets._util.checks import positive_finite
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

    @classmethod
    def from_dict(cls, data: dict) -> "LatentNormStats":
        """Inverse of :meth:`to_dict` (also reads the ``latent_norms`` of older saved sets)."""
        try:
            return cls(
                count=int(data["count"]),
                mean=float(data["mean"]),
                std=float(data["std"]),
                min=float(data["min"]),
                max=float(data["max"]),
                percentiles={str(k): float(v) for k, v in dict(data["percentiles"]).items()},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"latent-norm statistics {data!r} are incomplete or malformed ({err})") from None


@dataclass(frozen=True)
class RadiusSpec:
    """How a radius is named in a config or an argument: one parser, one rule for every use.

    * a number > 0: that radius;
    * ``"max"``: the largest validation norm when choosing a set's radius (Appendix B), and
      the set's own radius when attacking or certifying inside a saved set;
    * ``"pQ"`` (0 < Q ≤ 100): the Q-th percentile of the validation norms, e.g. the attack
      radii 2.7 / 3.9 / 10.2 of CIFAR-10-C (Table 8); inside a saved set, the percentile
      stored with it.

    Example::

        spec = RadiusSpec.parse("p75")
        eps = spec.select(norms)              # from validation norms, shape (num_pairs,)
        eps = spec.resolve(pset.radius, pset.latent_norms)
    """

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, spec: "float | str | RadiusSpec") -> "RadiusSpec":
        """A spec from a number, ``"max"`` or ``"pQ"``; a ValueError names what is accepted."""
        if isinstance(spec, RadiusSpec):
            return spec
        if isinstance(spec, (int, float, np.floating, np.integer)) and not isinstance(spec, bool):
            return cls("value", positive_finite(spec, "a radius"))
        if spec == "max":
            return cls("max")
        if isinstance(spec, str) and spec.startswith("p"):
            try:
                q = float(spec[1:])
            except ValueError:
                q = -1.0
            if 0 < q <= 100:
                return cls("percentile", q)
            raise ValueError(f"radius rule {spec!r}: a percentile rule is 'p' followed by a number in (0, 100], e.g. 'p75'")
        raise ValueError(f"unknown radius rule {spec!r}; use 'max', a percentile like 'p75', or a number")

    def __str__(self) -> str:
        if self.kind == "value":
            return f"{self.value:g}"
        return "max" if self.kind == "max" else f"p{self.value:g}"

    def select(self, norms: np.ndarray) -> float:
        """The radius from validation latent norms (shape (num_pairs,)), Appendix B's rule for ``max``."""
        if self.kind == "value":
            return float(self.value)
        norms = _check_norms(norms)
        radius = float(norms.max()) if self.kind == "max" else float(np.percentile(norms, self.value))
        if not radius > 0:
            raise ValueError(
                f"the selected radius is {radius}: every validation pair encodes at the prior mean; "
                "the CVAE ignores x̃ (check that x̃ differs from x and that training converged)"
            )
        return radius

    def resolve(self, set_radius: float, stats: LatentNormStats | None) -> float:
        """The radius inside a saved set: its own radius for ``max``, a stored percentile for ``pQ``."""
        if self.kind == "value":
            return float(self.value)
        if self.kind == "max":
            return float(set_radius)
        stored = stats.percentiles if stats is not None else {}
        key = str(self)
        if key not in stored:
            raise ValueError(
                f"radius {key!r}: the perturbation set stores no such percentile of its latent norms "
                f"(it has {sorted(stored) or 'none'}); give a number or 'max'"
            )
        return float(stored[key])


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
    """The radius ε from validation norms: ``RadiusSpec.parse(rule).select(norms)``."""
    return RadiusSpec.parse(rule).select(norms)
