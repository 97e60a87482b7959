"""Downstream models attacked, trained and certified inside a perturbation set, and how their outputs are scored.

``architectures``: the paper's classifiers by name (digits CNNs, PreAct ResNet-18,
WRN-28-10, the material-segmentation U-Net); ``scoring``: labels, per-example losses and
errors, confusion matrices and mIoU for classification (N, K) and segmentation (N, K, H, W).
"""

from perturbsets.classifiers.architectures import CLASSIFIERS, build_classifier, register_classifier
from perturbsets.classifiers.scoring import (
    IGNORE_INDEX,
    Scorer,
    eval_mode,
    mean_iou,
    per_example_error,
    per_example_loss,
)

__all__ = [
    "CLASSIFIERS",
    "IGNORE_INDEX",
    "Scorer",
    "build_classifier",
    "eval_mode",
    "mean_iou",
    "per_example_error",
    "per_example_loss",
    "register_classifier",
]
