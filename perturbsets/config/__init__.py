"""Typed run configuration read from YAML with strict keys: perturbation-set runs and robust-training runs."""

from perturbsets.config.io import ConfigError, from_dict, load_config, save_config, to_dict
from perturbsets.config.learn import (
    DATA_SOURCES,
    PAIRINGS,
    Config,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    Schedule,
    TrainingConfig,
)
from perturbsets.config.robust import (
    ROBUST_MODES,
    AttackConfig,
    CertifyConfig,
    ClassifierConfig,
    EvalAttackConfig,
    RobustConfig,
    RobustEvalConfig,
    RobustTrainingConfig,
)

__all__ = [
    "DATA_SOURCES",
    "PAIRINGS",
    "ROBUST_MODES",
    "AttackConfig",
    "CertifyConfig",
    "ClassifierConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalAttackConfig",
    "EvaluationConfig",
    "ModelConfig",
    "RobustConfig",
    "RobustEvalConfig",
    "RobustTrainingConfig",
    "Schedule",
    "TrainingConfig",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
