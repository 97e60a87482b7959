"""The perturbation set itself (paper Section 4, Appendix B): latent geometry, the set, its radius, its quality.

``latent`` (u ↔ z, projection, exact samplers) → ``perturbation_set`` (the set and its
conditioned view) → ``pgd`` (the one projected ℓ2 ascent) → ``radius`` (choosing ε) →
``quality`` (the six approximation metrics).
"""

from perturbsets.core.latent import latent_norm, project, sample_truncated_normal, sample_uniform_ball
from perturbsets.core.perturbation_set import ConditionedSet, PerturbationSet
from perturbsets.core.pgd import AscentResult, projected_ascent
from perturbsets.core.quality import QualityDraws, QualityReport, approximation_errors, evaluate_quality, quality_batches, quality_report
from perturbsets.core.radius import LatentNormStats, RadiusSpec, latent_norms, norm_statistics, select_radius

__all__ = [
    "AscentResult",
    "ConditionedSet",
    "LatentNormStats",
    "PerturbationSet",
    "QualityDraws",
    "QualityReport",
    "RadiusSpec",
    "approximation_errors",
    "evaluate_quality",
    "latent_norm",
    "latent_norms",
    "norm_statistics",
    "project",
    "projected_ascent",
    "quality_batches",
    "quality_report",
    "sample_truncated_normal",
    "sample_uniform_ball",
    "select_radius",
]
