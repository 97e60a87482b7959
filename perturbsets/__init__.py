"""perturbsets: learn perturbation sets from paired data (Wong & Kolter, ICLR 2021).

Pairs (x, x̃) → a conditional VAE plus a radius, the :class:`PerturbationSet`
S(x) = {g(μ(x) + u·σ(x), x) : ‖u‖₂ ≤ ε} → quality report, attacks and robust training.
"""

__version__ = "0.1.0"

from perturbsets.core.perturbation_set import PerturbationSet  # noqa: E402

__all__ = ["PerturbationSet", "__version__"]
