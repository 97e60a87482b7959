"""Long end-to-end checks on the embedded digits (``pytest -m slow``; CI runs them too)."""

from __future__ import annotations

import dataclasses

import pytest

from perturbsets.config import Schedule
from perturbsets.demo import demo_config, robust_config
from perturbsets.pipeline import SET_DIR, learn_perturbation_set
from perturbsets.robust import robust_evaluate, robust_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits_set")
    config = demo_config(seed=0, device="cpu")
    config.training = dataclasses.replace(
        config.training,
        epochs=20,
        lr=Schedule([0, 8, 20], [0.0, 1e-3, 0.0]),
        beta=Schedule([0, 2, 10, 20], [0.0, 0.01, 1.0, 1.0]),
    )
    # ε at the 75th percentile of the validation norms: the maximum rule picks an outlier
    # (twice the 75th percentile here) whose ball holds other digits, where no classifier
    # can be robust.
    config.evaluation = dataclasses.replace(config.evaluation, pgd_steps=20, radius="p75")
    result = learn_perturbation_set(config, out, progress=False)
    return out, result


def test_learned_rts_set_has_the_papers_quality_ordering(learned):
    _, result = learned
    s = result.report.summary()
    # Appendix B / Table 4: PGD refines the encoder point; the expected error under the
    # truncated prior lies between the best-case and the worst-case errors.
    assert s["pgd_ae"].mean <= s["enc_ae"].mean
    assert s["pgd_ae"].mean < s["eae"].mean < s["oae"].mean
    # Per example, the worst case over the ball is at least the mean over the ball.
    per = result.report.per_example
    assert (per["oae"] >= per["eae"] - 1e-6).mean() > 0.95


def test_adversarial_training_raises_robust_accuracy_at_the_full_radius(learned):
    out, result = learned
    accuracy = {}
    for mode in ("standard", "cvae_adversarial"):
        config = robust_config(mode, out / SET_DIR, result.perturbation_set, quick=False, seed=0, device="cpu")
        config.training = dataclasses.replace(config.training, epochs=10, lr=Schedule([0, 4, 10], [0.0, 2e-3, 0.0]))
        config.training.attack = dataclasses.replace(config.training.attack, eps="max")
        config.evaluation.radii = ["max"]
        config.evaluation.attack = dataclasses.replace(config.evaluation.attack, steps=20)
        config.evaluation.ood = None
        run = out / "robust" / mode
        trained = robust_train(config, run, progress=False)
        accuracy[mode] = robust_evaluate(config, run, run / "eval", model=trained.model, progress=False).pgd["max"]
    assert accuracy["cvae_adversarial"] > accuracy["standard"] + 0.03, accuracy
