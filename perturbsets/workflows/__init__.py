"""Runs end to end: load the data a config describes, train, evaluate, and write results, figures and reports.

What the command line runs: learning a set (:mod:`~perturbsets.workflows.learn`), robust
training and evaluation (:mod:`~perturbsets.workflows.robust`), the paper's experiments
(:mod:`~perturbsets.workflows.experiments`), the demo and the data tools.
"""

from perturbsets.workflows.data import make_cifar10c, make_mi_arrays, make_tiny
from perturbsets.workflows.demo import run_demo
from perturbsets.workflows.experiments import (
    Experiment,
    experiment_names,
    list_experiments,
    load_experiment,
    run_experiment,
    run_experiments,
    write_paper_table,
)
from perturbsets.workflows.learn import (
    SET_DIR,
    LearnResult,
    evaluate_from_file,
    evaluate_saved_set,
    learn_from_file,
    learn_perturbation_set,
)
from perturbsets.workflows.robust import (
    robust_evaluate_from_file,
    robust_train_from_file,
    run_robust_evaluation,
    run_robust_training,
)
from perturbsets.workflows.sources import load_splits, load_test

__all__ = [
    "SET_DIR",
    "Experiment",
    "LearnResult",
    "evaluate_from_file",
    "evaluate_saved_set",
    "experiment_names",
    "learn_from_file",
    "learn_perturbation_set",
    "list_experiments",
    "load_experiment",
    "load_splits",
    "load_test",
    "make_cifar10c",
    "make_mi_arrays",
    "make_tiny",
    "robust_evaluate_from_file",
    "robust_train_from_file",
    "run_demo",
    "run_experiment",
    "run_experiments",
    "run_robust_evaluation",
    "run_robust_training",
    "write_paper_table",
]
