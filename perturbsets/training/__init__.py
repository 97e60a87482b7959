"""Training: the resumable epoch loop, CVAE training, and robust training of downstream models."""

from perturbsets.training.cvae import TrainResult, train_cvae
from perturbsets.training.loop import (
    BEST,
    LATEST,
    FitResult,
    StepOutput,
    TrainingDivergedError,
    fit,
    resolve_device,
)
from perturbsets.training.robust import (
    InputTransform,
    RobustTrainResult,
    build_classifier_model,
    load_set,
    make_attack,
    require_labels,
    robust_train,
)

__all__ = [
    "BEST",
    "LATEST",
    "FitResult",
    "InputTransform",
    "RobustTrainResult",
    "StepOutput",
    "TrainResult",
    "TrainingDivergedError",
    "build_classifier_model",
    "fit",
    "load_set",
    "make_attack",
    "require_labels",
    "resolve_device",
    "robust_train",
    "train_cvae",
]
