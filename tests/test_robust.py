"""Robust training modes, exact resume, robust evaluation and resumable certification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from perturbsets._util.seeding import derive_seed
from perturbsets.evaluation.certification_store import ExampleTableStore, read_certificates
from perturbsets.evaluation.robust import RobustReport, pgd_scores
from perturbsets.reports.tables import robust_table
from perturbsets.training import robust as robust_mod
from perturbsets import PerturbationSet
from perturbsets.attacks.base import AttackOutput
from perturbsets.cli import main
from perturbsets.config.io import ConfigError, from_dict, to_dict
from perturbsets.config.robust import RobustConfig
from perturbsets.pairs.paired import PairedData
from perturbsets.core.radius import LatentNormStats
from perturbsets.cvae.registry import build_cvae
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

from oracles import algorithm_1_loop




@pytest.fixture(scope="module")
def set_dir(tmp_path_factory):
    torch.manual_seed(0)
    pset = PerturbationSet(
        build_cvae("mnist_fc", input_shape=(1, 8, 8), hidden=16, latent_dim=4),
        2.0,
        architecture="mnist_fc",
        options={"input_shape": [1, 8, 8], "hidden": 16, "latent_dim": 4},
        latent_norms=LatentNormStats(count=4, mean=1.0, std=0.5, min=0.1, max=2.0, percentiles={"p50": 1.0, "p75": 1.5}),
    )
    return pset.save(tmp_path_factory.mktemp("set"))


def labelled_pairs(n=96, seed=0) -> PairedData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    # Class-dependent brightness makes the task learnable.
    images = (0.2 + 0.3 * y.view(-1, 1, 1, 1).float() + 0.1 * torch.rand(n, 1, 8, 8, generator=g)).clamp(0, 1)
    perturbed = (images + 0.05 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return PairedData.from_tensors(images, perturbed, y)


def config(set_dir, mode="standard", **evaluation) -> RobustConfig:
    return from_dict(
        RobustConfig,
        {
            "name": mode,
            "seed": 5,
            "perturbation_set": str(set_dir),
            "data": {"source": "npz", "path": "unused", "perturbation": None, "split": {"train": 64, "val": 16, "test": 16}},
            "model": {"architecture": "digits_cnn", "options": {"image_size": 8, "width": 16, "num_classes": 3}},
            "training": {
                "mode": mode,
                "epochs": 2,
                "batch_size": 16,
                "lr": {"epochs": [0, 2], "values": [3e-3, 0.0]},
                "device": "cpu",
                "attack": {"steps": 2},
                "sigma": 0.5,
            },
            "evaluation": {"radii": ["p50", "max"], "attack": {"steps": 3, "step_divisor": 3}, **evaluation},
        },
    )


@pytest.mark.parametrize("mode", ["standard", "perturbed", "cvae_augment", "cvae_adversarial", "smoothing"])
def test_every_mode_trains_and_evaluates(set_dir, tmp_path, mode):
    cfg = config(set_dir, mode)
    result = run_robust_training(cfg, tmp_path / "run", data=labelled_pairs(), progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1]
    report = run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)
    assert 0 <= report.clean <= 1 and 0 <= report.perturbed <= 1
    assert set(report.pgd) == {"p50", "max"}
    assert report.radii == {"p50": 1.0, "max": 2.0}
    # The attack starts at u = 0 and keeps the worst iterate, so it can only lower the accuracy at the
    # centre g(μ(x), x) of the set (not at x itself, which the generator need not reproduce).
    test = labelled_pairs().split(cfg.data.split, seed=cfg.seed).test
    model, pset = result.model.eval(), PerturbationSet.load(set_dir)
    with torch.no_grad():
        centre = torch.cat([model(pset.perturb(b.x, torch.zeros(len(b.x), 4))).argmax(1) == b.y for b in test.batches(8, shuffle=False, seed=0)])
    assert all(v <= centre.float().mean().item() + 1e-9 for v in report.pgd.values())
    saved = json.loads((tmp_path / "eval" / "robust_metrics.json").read_text())
    assert saved["clean"] == pytest.approx(report.clean)
    assert "| Method | Clean | Perturbed | OOD |" in (tmp_path / "eval" / "robust_table.md").read_text()


def test_adversarial_training_resumes_exactly(set_dir, tmp_path, monkeypatch):
    cfg = config(set_dir, "cvae_adversarial")
    run_robust_training(cfg, tmp_path / "full", data=labelled_pairs(), progress=False)
    real = robust_mod.fit.__globals__["save_checkpoint"]
    calls = {"n": 0}

    def crash_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # best + latest of epoch 1, then epoch 2's first write
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setitem(robust_mod.fit.__globals__, "save_checkpoint", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_robust_training(cfg, tmp_path / "resumed", data=labelled_pairs(), progress=False)
    monkeypatch.setitem(robust_mod.fit.__globals__, "save_checkpoint", real)
    run_robust_training(cfg, tmp_path / "resumed", resume=True, data=labelled_pairs(), progress=False)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "latest.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "latest.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_certification_writes_a_resumable_table(set_dir, tmp_path):
    cfg = config(set_dir, "smoothing", certify={"n0": 10, "n": 50, "alpha": 0.05, "batch_size": 64, "max_examples": 6})
    run_robust_training(cfg, tmp_path / "run", data=labelled_pairs(), progress=False)
    report = run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)
    tsv = tmp_path / "eval" / "certify.tsv"
    first = read_certificates(tsv)
    assert tsv.read_text().splitlines()[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(first) == 6 and report.counts["certified"] == 6
    # Certified accuracy at radius r = fraction correct with radius >= r (slow reference).
    for spec, r in report.radii.items():
        expected = np.mean([(row["correct"] == 1) and row["radius"] >= r for row in first])
        assert report.certified[spec] == pytest.approx(expected)
    assert (tmp_path / "eval" / "certified_accuracy.png").stat().st_size > 1000

    # Simulate a crash that left a cut-off row, then resume with a larger budget.
    text = tsv.read_text().splitlines()
    tsv.write_text("\n".join(text[:4]) + "\n" + text[4][:3])
    cfg.evaluation.certify.max_examples = 10
    run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)
    resumed = read_certificates(tsv)
    assert len(resumed) == 10
    assert sorted(resumed["idx"].tolist()) == sorted(set(resumed["idx"].tolist()))
    # Every row is what an uninterrupted run writes (the time column aside).
    cfg.evaluation.certify.max_examples = 10
    run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "fresh", data=labelled_pairs(), progress=False)
    fresh = read_certificates(tmp_path / "fresh" / "certify.tsv")
    for col in ("idx", "label", "predict", "radius", "correct"):
        np.testing.assert_array_equal(np.sort(resumed, order="idx")[col], np.sort(fresh, order="idx")[col])


def test_resolve_radius(set_dir):
    pset = PerturbationSet.load(set_dir)
    assert pset.resolve_radius("max") == 2.0
    assert pset.resolve_radius("p75") == 1.5
    assert pset.resolve_radius(0.7) == 0.7
    with pytest.raises(ValueError, match="no such percentile"):
        pset.resolve_radius("p99")


def test_config_errors():
    with pytest.raises(ConfigError, match="needs perturbation_set"):
        from_dict(RobustConfig, {"training": {"mode": "cvae_adversarial"}})
    with pytest.raises(ConfigError, match="did you mean 'cvae_adversarial'"):
        from_dict(RobustConfig, {"training": {"mode": "cvae_adversarail"}})
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        from_dict(RobustConfig, {"training": {"sigma": 0.0}})


def test_data_of_the_wrong_shape_for_the_set(set_dir, tmp_path):
    data = PairedData.from_tensors(torch.rand(96, 1, 6, 6), torch.rand(96, 1, 6, 6), torch.randint(0, 3, (96,)))
    with pytest.raises(ValueError, match=r"perturbation set takes \(1, 8, 8\)"):
        run_robust_training(config(set_dir, "cvae_augment"), tmp_path / "run", data=data, progress=False)


def test_labels_out_of_range_are_reported(set_dir, tmp_path):
    pairs = labelled_pairs()
    bad = PairedData.from_tensors(pairs.images, pairs.perturbed, pairs.labels + 5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        run_robust_training(config(set_dir), tmp_path / "run", data=bad, progress=False)


def test_unlabelled_data_is_refused(set_dir, tmp_path):
    pairs = labelled_pairs()
    with pytest.raises(ValueError, match="need labels"):
        run_robust_training(config(set_dir), tmp_path / "run", data=PairedData.from_tensors(pairs.images, pairs.perturbed), progress=False)


def test_markdown_table_layout():
    a = RobustReport("A", 0.9, 0.8, None, {"p50": 0.5}, {}, {"p50": 1.0}, {"test": 10})
    b = RobustReport("B", 0.7, 0.6, 0.5, {"p50": 0.6}, {"p50": 0.4}, {"p50": 1.0}, {"test": 10})
    table = robust_table([a.to_dict(), b.to_dict()])
    assert "| A | 90.0 | 80.0 | – | 50.0 | – |" in table
    assert "| B | 70.0 | 60.0 | 50.0 | 60.0 | 40.0 |" in table


def test_cli_robust_train_and_eval(set_dir, tmp_path, capsys):
    pairs = labelled_pairs()
    np.savez(tmp_path / "pairs.npz", x=pairs.images.numpy(), x_tilde=pairs.perturbed.numpy(), y=pairs.labels.numpy())
    cfg = to_dict(config(set_dir, "cvae_augment"))
    cfg["data"]["path"] = str(tmp_path / "pairs.npz")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["robust-train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "| cvae_augment |" in capsys.readouterr().out
    assert main(["robust-eval", str(tmp_path / "r.yaml"), "--run", str(tmp_path / "run"), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    first = json.loads((tmp_path / "run" / "eval" / "robust_metrics.json").read_text())
    again = json.loads((tmp_path / "ev" / "robust_metrics.json").read_text())
    assert first["clean"] == again["clean"] and first["pgd"] == again["pgd"]


def test_certification_refuses_to_mix_settings(set_dir, tmp_path):
    cfg = config(set_dir, "smoothing", certify={"n0": 10, "n": 30, "alpha": 0.05, "batch_size": 64, "max_examples": 3})
    run_robust_training(cfg, tmp_path / "run", data=labelled_pairs(), progress=False)
    run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)
    cfg.evaluation.certify.sigma = 0.9
    with pytest.raises(ValueError, match="another model or other settings"):
        run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)


def test_a_row_cut_after_its_last_tab_is_dropped(tmp_path):
    tsv = tmp_path / "certify.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0.1\n1\t4\t4\t0.9\t1\t")
    ExampleTableStore(tsv).drop_partial_rows()
    table = read_certificates(tsv)
    assert table["idx"].tolist() == [0]
    assert tsv.read_text().endswith("0.1\n")


def test_attack_radius_warmup_ramps_linearly(set_dir, monkeypatch):
    cfg = config(set_dir, "cvae_adversarial")
    cfg.training.attack.warmup_epochs = 4.0
    pset = PerturbationSet.load(set_dir)
    seen = []

    class Recorder:
        def __init__(self, model, pset, attack_cfg, eps, generator):
            seen.append(eps)

        def __call__(self, x, y):
            return AttackOutput(x, None)

    monkeypatch.setattr(robust_mod, "make_attack", Recorder)
    transform = robust_mod.InputTransform(cfg, torch.nn.Identity(), pset)
    batch = next(labelled_pairs().batches(4, shuffle=False, seed=0))
    for epoch in (1.0, 2.0, 4.0, 9.0):
        transform(batch, torch.Generator(), epoch)
    assert seen == pytest.approx([0.5, 1.0, 2.0, 2.0])  # radius 2.0 reached after 4 epochs
    assert torch.equal(transform(batch, torch.Generator(), 0.0), batch.x)  # ε = 0: the clean input


def test_adversarial_training_trains_at_the_final_point_of_algorithm_1(set_dir):
    """Every example takes all T steps from δ = 0 and the model trains at the last iterate, also the
    examples that are misclassified from the start (an early stop would leave them at u = 0)."""
    cfg = config(set_dir, "cvae_adversarial")
    cfg.training.attack.steps = 7
    pset = PerturbationSet.load(set_dir)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    batch = next(labelled_pairs().batches(16, shuffle=False, seed=0))
    inputs = robust_mod.InputTransform(cfg, model, pset)(batch, torch.Generator())
    eps = pset.radius
    expected = algorithm_1_loop(model, pset, batch.x, batch.y, eps, 7, eps / 5)
    torch.testing.assert_close(inputs, pset.perturb(batch.x, expected), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert (model(batch.x).argmax(1) != batch.y).any()  # the batch holds misclassified examples
    assert torch.all((expected.norm(dim=1) - eps).abs() < 1e-4)  # every example went to the boundary


def test_smoothing_runs_report_the_smoothed_classifier_as_table_9(set_dir, tmp_path):
    """Clean = CERTIFY's prediction, perturbed and OOD = PREDICT on x̃, abstentions wrong; PGD attacks the base model."""
    from perturbsets.certify.smoothed import ABSTAIN, SmoothedClassifier

    certify = {"n0": 12, "n": 30, "alpha": 0.01, "batch_size": 64}
    cfg = config(set_dir, "smoothing", certify=certify)
    cfg.training.sigma = 30.0
    run = run_robust_training(cfg, tmp_path / "run", data=labelled_pairs(), progress=False)
    report = run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "eval", data=labelled_pairs(), progress=False)
    model, pset = run.model.eval(), PerturbationSet.load(set_dir)
    smoothed = SmoothedClassifier(model, pset, 30.0, 3)
    test = labelled_pairs().split(cfg.data.split, seed=cfg.seed).test

    # Clean: CERTIFY called directly on every test input, with the noise seeded per example.
    certified = []
    for batch in test.batches(16, shuffle=False, seed=0):
        for i, idx in enumerate(batch.index.tolist()):
            gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 17, idx))
            cert = smoothed.certify(batch.x[i : i + 1], 12, 30, 0.01, 64, generator=gen)
            certified.append(int(cert.prediction[0]) == int(batch.y[i]))
    assert report.clean == pytest.approx(np.mean(certified))

    # Perturbed: PREDICT on every test pair's x̃ with n0 draws; ABSTAIN never counts as correct.
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 29))
    hits, abstained = [], 0
    for batch in test.evaluation_batches(cfg.evaluation.batch_size, seed=derive_seed(cfg.seed, 13), passes=1):
        pred = smoothed.predict(batch.x_tilde, 12, 0.01, 64, generator=gen).prediction
        hits += (pred == batch.y).tolist()
        abstained += int((pred == ABSTAIN).sum())
    assert report.perturbed == pytest.approx(np.mean(hits))
    assert abstained > 0  # σ = 30 makes the vote split: the columns differ from the base model's
    with torch.no_grad():
        base = np.mean([(model(b.x).argmax(1) == b.y).float().mean().item() for b in test.batches(16, shuffle=False, seed=0)])
    assert report.base_clean == pytest.approx(base)


def test_pgd_scores_count_an_example_broken_at_a_smaller_radius_as_broken_at_every_larger_one(set_dir):
    """Reference: independent attacks at each radius on the whole batch; an example is robust at
    radius r_k when it survives every attack at radii ≤ r_k (the smaller balls lie inside)."""
    from perturbsets.attacks.latent_pgd import LatentPGD
    from perturbsets.config.robust import EvalAttackConfig

    pset = PerturbationSet.load(set_dir)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    data = labelled_pairs(n=48, seed=3)
    cfg = EvalAttackConfig(steps=8)
    radii = [2.0, 0.3, 1.0]  # any order
    scorers = pgd_scores(model, pset, data.batches(20, shuffle=False, seed=0), cfg, radii, seed=0)
    x, y = data.images, data.labels
    survive = {}
    for r in radii:
        x_adv, _ = LatentPGD(model, pset, r, steps=8, step_size=r / 20, early_stop=True, select="best")(x, y)
        with torch.no_grad():
            survive[r] = model(x_adv).argmax(1) == y
    for r, scorer in zip(radii, scorers):
        robust = torch.stack([survive[q] for q in radii if q <= r]).all(0)
        assert scorer.examples == 48 and scorer.accuracy == pytest.approx(robust.float().mean().item())
    assert scorers[1].accuracy >= scorers[2].accuracy >= scorers[0].accuracy
