"""Long end-to-end checks of the demo's pipeline on the embedded MNIST (``pytest -m slow``; CI runs them).

A scaled-down demo (fewer digits and epochs) whose orderings are the paper's claims that
hold on this budget: the learned set's approximation errors are ordered as in Table 4,
CVAE adversarial training (Algorithm 1) and CVAE augmentation are far more robust in the
set than standard training, and the smoothed classifier certifies most inputs.
"""

from __future__ import annotations

import dataclasses

import pytest

from perturbsets.config.learn import Schedule

from perturbsets.config.robust import CertifyConfig
from perturbsets.workflows.demo import demo_config, robust_config
from perturbsets.workflows.learn import SET_DIR, learn_perturbation_set
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

pytestmark = pytest.mark.slow

SPLIT = {"train": 2000, "val": 300, "test": 200}


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist_set")
    config = demo_config(seed=0, device="cpu")
    config.data.split = dict(SPLIT)
    config.training = dataclasses.replace(
        config.training,
        epochs=6,
        lr=Schedule([0, 2, 6], [0.0, 1e-3, 0.0]),
        beta=Schedule([0, 1, 3, 6], [0.0, 0.01, 1.0, 1.0]),
    )
    config.evaluation = dataclasses.replace(config.evaluation, pgd_steps=10, eae_samples=2, radius_passes=2)
    result = learn_perturbation_set(config, out, progress=False)
    return out, result


def test_learned_rts_set_has_the_papers_quality_ordering(learned):
    _, result = learned
    s = result.report.summary()
    # Appendix B / Table 4: PGD refines the encoder point; the expected error under the
    # truncated prior lies between the best-case and the worst-case errors.
    assert s["pgd_ae"].mean <= s["enc_ae"].mean
    assert s["pgd_ae"].mean < s["eae"].mean < s["oae"].mean
    per = result.report.per_example
    assert (per["oae"] >= per["eae"] - 1e-6).mean() > 0.95


@pytest.fixture(scope="module")
def reports(learned):
    out, result = learned
    found = {}
    for mode, epochs in (("standard", 3), ("cvae_augment", 3), ("cvae_adversarial", 3), ("smoothing", 3)):
        config = robust_config(mode, out / SET_DIR, result.perturbation_set, quick=False, seed=0, device="cpu")
        config.data.split = dict(SPLIT)
        config.training = dataclasses.replace(config.training, epochs=epochs, lr=Schedule([0, 1, epochs], [0.0, 2e-3, 0.0]))
        config.evaluation.radii = ["p50"]
        config.evaluation.attack = dataclasses.replace(config.evaluation.attack, steps=20)
        config.evaluation.ood = None
        if mode == "smoothing":
            config.evaluation.certify = CertifyConfig(n0=50, n=200, alpha=0.01, batch_size=500, max_examples=30)
        run = out / "robust" / mode
        trained = run_robust_training(config, run, progress=False)
        found[mode] = run_robust_evaluation(config, run, run / "eval", model=trained.model, progress=False)
    return found


def test_adversarial_training_is_robust_where_standard_training_is_not(reports):
    standard, adversarial = reports["standard"].pgd["p50"], reports["cvae_adversarial"].pgd["p50"]
    assert adversarial >= 3 * standard and adversarial >= standard + 0.15, (standard, adversarial)


def test_cvae_augmentation_is_more_robust_in_the_set_than_standard_training(reports):
    assert reports["cvae_augment"].pgd["p50"] > reports["standard"].pgd["p50"] + 0.1


def test_smoothed_classifier_certifies_most_inputs(learned, reports):
    from perturbsets.evaluation.certification_store import read_certificates

    out, _ = learned
    table = read_certificates(out / "robust" / "smoothing" / "eval" / "certify.tsv")
    certified = table["predict"] != -1
    assert len(table) == 30 and certified.mean() > 0.5
    assert (table["radius"][certified] > 0).all() and reports["smoothing"].clean > 0.5
