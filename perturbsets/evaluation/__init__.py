"""Measuring trained downstream models: robust accuracy under latent PGD and resumable certification."""

from perturbsets.evaluation.certification_store import (
    CERT_COLUMNS,
    CertificateStore,
    ExampleTableStore,
    PixelMapStore,
    certify_to_store,
    read_certificates,
)
from perturbsets.evaluation.robust import (
    AdversarialMaps,
    Certificates,
    RobustEvaluation,
    RobustReport,
    adversarial_maps,
    certify_sigma,
    image_batches,
    pgd_scores,
    predict_score,
    robust_evaluate,
)

__all__ = [
    "AdversarialMaps",
    "CERT_COLUMNS",
    "CertificateStore",
    "Certificates",
    "ExampleTableStore",
    "PixelMapStore",
    "RobustEvaluation",
    "RobustReport",
    "adversarial_maps",
    "certify_sigma",
    "certify_to_store",
    "image_batches",
    "pgd_scores",
    "predict_score",
    "read_certificates",
    "robust_evaluate",
]
