"""Certification by randomized smoothing in the latent space (paper Algorithm 2, Appendix C.2, E.6, F.3)."""

from perturbsets.certify.smoothed import ABSTAIN, Certificate, Prediction, SmoothedClassifier
from perturbsets.certify.statistics import (
    SmoothingWarning,
    certified_accuracy,
    certified_accuracy_curve,
    clopper_pearson_lower,
    family_wise_reject,
    max_certifiable_radius,
    sigma_for_radius,
    two_sided_binomial_pvalue,
)

__all__ = [
    "ABSTAIN",
    "Certificate",
    "Prediction",
    "SmoothedClassifier",
    "SmoothingWarning",
    "certified_accuracy",
    "certified_accuracy_curve",
    "clopper_pearson_lower",
    "family_wise_reject",
    "max_certifiable_radius",
    "sigma_for_radius",
    "two_sided_binomial_pvalue",
]
