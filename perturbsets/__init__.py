"""perturbsets: learn perturbation sets from paired data (Wong & Kolter, ICLR 2021).

Pairs (x, x̃) → a conditional VAE plus a radius, the :class:`PerturbationSet`
S(x) = {g(μ(x) + u·σ(x), x) : ‖u‖₂ ≤ ε} → quality report; classifier + set → attack,
robust training, certification.

The names below are the public API. They are imported on first use, so
``import perturbsets`` stays light (no matplotlib, no scikit-learn) until you need them.

Example::

    from perturbsets import PerturbationSet, LatentPGD
    pset = PerturbationSet.load("demo_out/perturbation_set")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it, in the order data flows through the library.
_API: dict[str, str] = {
    # the learned set and its quality (core)
    "PerturbationSet": "perturbsets.core.perturbation_set",
    "ConditionedSet": "perturbsets.core.perturbation_set",
    "RadiusSpec": "perturbsets.core.radius",
    "approximation_errors": "perturbsets.core.quality",
    "evaluate_quality": "perturbsets.core.quality",
    "QualityReport": "perturbsets.core.quality",
    # models by name
    "build_cvae": "perturbsets.cvae.registry",
    "build_classifier": "perturbsets.classifiers.architectures",
    # pairs and synthetic perturbations
    "PairedData": "perturbsets.pairs.paired",
    "VersionedData": "perturbsets.pairs.versioned",
    "LinfNoise": "perturbsets.perturbations",
    "RTS": "perturbsets.perturbations",
    # configs and the run that learns a set
    "Config": "perturbsets.config.learn",
    "RobustConfig": "perturbsets.config.robust",
    "load_config": "perturbsets.config.io",
    "learn_perturbation_set": "perturbsets.workflows.learn",
    # attack and certification
    "LatentPGD": "perturbsets.attacks.latent_pgd",
    "SmoothedClassifier": "perturbsets.certify.smoothed",
    "sigma_for_radius": "perturbsets.certify.statistics",
    "certified_accuracy": "perturbsets.certify.statistics",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'perturbsets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:
    from perturbsets.attacks.latent_pgd import LatentPGD
    from perturbsets.certify.smoothed import SmoothedClassifier
    from perturbsets.certify.statistics import certified_accuracy, sigma_for_radius
    from perturbsets.classifiers.architectures import build_classifier
    from perturbsets.config.io import load_config
    from perturbsets.config.learn import Config
    from perturbsets.config.robust import RobustConfig
    from perturbsets.core.perturbation_set import ConditionedSet, PerturbationSet
    from perturbsets.core.quality import QualityReport, approximation_errors, evaluate_quality
    from perturbsets.core.radius import RadiusSpec
    from perturbsets.cvae.registry import build_cvae
    from perturbsets.workflows.learn import learn_perturbation_set
    from perturbsets.pairs.paired import PairedData
    from perturbsets.pairs.versioned import VersionedData
    from perturbsets.perturbations import RTS, LinfNoise
