"""Robust evaluation: PGD scores, the smoothed classifier's report, resumable certification, the table."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from perturbsets._util.seeding import derive_seed
from perturbsets.evaluation.certification_store import ExampleTableStore, Shard, read_certificates
from perturbsets._util.sharding import BatchShard
from perturbsets.certify.smoothed import SmoothedClassifier
from perturbsets.classifiers.scoring import Scorer
from perturbsets.config.robust import EvalAttackConfig
from perturbsets.evaluation.robust import RobustReport, merge_certificate_shards, pgd_scores, predict_score, score
from perturbsets.reports.tables import robust_table
from perturbsets import PerturbationSet
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

from builders import labelled_pairs, linear_set, robust_config as config, save_robust_set


@pytest.fixture(scope="module")
def set_dir(tmp_path_factory):
    return save_robust_set(tmp_path_factory.mktemp("set"))


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


def test_markdown_table_layout():
    a = RobustReport("A", 0.9, 0.8, None, {"p50": 0.5}, {}, {"p50": 1.0}, {"test": 10})
    b = RobustReport("B", 0.7, 0.6, 0.5, {"p50": 0.6}, {"p50": 0.4}, {"p50": 1.0}, {"test": 10})
    table = robust_table([a.to_dict(), b.to_dict()])
    assert "| A | 90.0 | 80.0 | – | 50.0 | – |" in table
    assert "| B | 70.0 | 60.0 | 50.0 | 60.0 | 40.0 |" in table


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


def test_sharded_certification_merges_into_the_unsharded_table_row_for_row(set_dir, tmp_path):
    cfg = config(set_dir, "smoothing", certify={"n0": 10, "n": 40, "alpha": 0.05, "batch_size": 64, "max_examples": 7})
    data = labelled_pairs()
    run_robust_training(cfg, tmp_path / "run", data=data, progress=False)
    whole = run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "whole", data=data, progress=False)
    for i in (2, 0, 1):  # any order, any machine
        assert run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "sharded", data=data, progress=False, shard=Shard(i, 3)) is None
    assert not (tmp_path / "sharded" / "robust_metrics.json").exists()
    merged = run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "sharded", data=data, progress=False, merge_shards=3)
    a = read_certificates(tmp_path / "whole" / "certify.tsv")
    b = read_certificates(tmp_path / "sharded" / "certify.tsv")
    assert len(a) == len(b) == 7
    for col in ("idx", "label", "predict", "radius", "correct"):
        np.testing.assert_array_equal(a[col], b[col])
    assert merged.certified == whole.certified and merged.clean == whole.clean


def test_a_certification_shard_under_torchrun_is_refused(set_dir, tmp_path, monkeypatch):
    """Every rank would certify the same shard into the same store: refused, naming both ways to run it."""
    from perturbsets.training.distributed import World
    from perturbsets.workflows import robust as workflow

    cfg = config(set_dir, "smoothing", certify={"n0": 10, "n": 40, "alpha": 0.05, "batch_size": 64, "max_examples": 7})
    run_robust_training(cfg, tmp_path / "run", data=labelled_pairs(), progress=False)
    monkeypatch.setattr(workflow, "init_distributed", lambda device: World(0, 2))
    monkeypatch.setattr(workflow, "share_weights", lambda model, world: None)
    with pytest.raises(ValueError, match=r"--shard 1/3 runs one certification shard in one process, but torchrun started 2"):
        run_robust_evaluation(cfg, tmp_path / "run", tmp_path / "sharded", data=labelled_pairs(), progress=False, shard=Shard(1, 3))
    assert not (tmp_path / "sharded" / "certify").exists() and not (tmp_path / "sharded" / "certify.tsv").exists()


def test_merging_refuses_missing_shards_and_shards_of_other_settings(set_dir, tmp_path):
    cfg = config(set_dir, "smoothing", certify={"n0": 10, "n": 30, "alpha": 0.05, "batch_size": 64, "max_examples": 4})
    data = labelled_pairs()
    run_robust_training(cfg, tmp_path / "run", data=data, progress=False)
    out = tmp_path / "sharded"
    run_robust_evaluation(cfg, tmp_path / "run", out, data=data, progress=False, shard=Shard(0, 2))
    with pytest.raises(FileNotFoundError, match=r"certify\.shard-1-of-2\.tsv"):
        merge_certificate_shards(out, 2)
    cfg.evaluation.certify.n = 31
    run_robust_evaluation(cfg, tmp_path / "run", out, data=data, progress=False, shard=Shard(1, 2))
    with pytest.raises(ValueError, match=r"differing: n\)"):
        merge_certificate_shards(out, 2)


@pytest.mark.parametrize("text,match", [("3/3", "0 <= i < k"), ("1-4", "written i/k"), ("a/b", "written i/k")])
def test_shard_parsing(text, match):
    with pytest.raises(ValueError, match=match):
        Shard.parse(text)
    assert Shard.parse("1/4").takes(5) and not Shard.parse("1/4").takes(4)


def _counts(scorer: Scorer) -> tuple:
    confusion = None if scorer.confusion is None else scorer.confusion.tolist()
    return scorer.examples, scorer.correct, scorer.total, confusion


@pytest.mark.parametrize("random_start", [False, True])
def test_two_shards_add_up_to_the_unsharded_scores(set_dir, random_start):
    """Clean and PGD scores of shards 0/2 and 1/2 (5 batches) add up to one process's; random starts stay on rank 0."""
    pset = PerturbationSet.load(set_dir)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    data = labelled_pairs(n=44, seed=3)
    images = lambda: data.batches(10, shuffle=False, seed=0)  # noqa: E731
    shards = [BatchShard(r, 2) for r in (1, 0)]
    clean = Scorer.combined(score(model, images(), lambda b: b.x, s) for s in shards)
    assert _counts(clean) == _counts(score(model, images(), lambda b: b.x))

    cfg, radii = EvalAttackConfig(steps=4, random_start=random_start), [1.0, 0.3]
    parts = [pgd_scores(model, pset, images(), cfg, radii, 3, s) for s in shards]
    single = pgd_scores(model, pset, images(), cfg, radii, 3)
    for i in range(len(radii)):
        assert _counts(Scorer.combined(p[i] for p in parts)) == _counts(single[i])
    assert parts[0][0].examples == (0 if random_start else 20)


class Brightness(torch.nn.Module):
    """Classifies :func:`labelled_pairs` by mean brightness (0.25, 0.55, 0.85 per class): noise in x moves its votes."""

    def forward(self, x):
        return -40 * (x.flatten(1).mean(1, keepdim=True) - torch.tensor([0.25, 0.55, 0.85])) ** 2


def test_two_shards_replay_the_smoothed_predictions_draws():
    """PREDICT's noise runs through all batches: each shard replays the draws of the batches it leaves."""
    data = labelled_pairs(n=44, seed=3)
    batches = list(data.evaluation_batches(10, seed=2, passes=1))
    cfg = config("unused", "smoothing", certify={"n0": 30, "alpha": 0.5, "batch_size": 16})
    smoothed = SmoothedClassifier(Brightness(), linear_set(dim=4, shape=(1, 8, 8), radius=2.0), 8.0, 3)
    shards = [predict_score(smoothed, batches, cfg, 8, BatchShard(r, 2)) for r in (0, 1)]
    assert _counts(Scorer.combined(shards)) == _counts(predict_score(smoothed, batches, cfg, 8))
    # Without the replay batches 1 and 3 would take the draws of batches 0 and 1, and those change their votes.
    assert _counts(predict_score(smoothed, batches[1::2], cfg, 8)) != _counts(shards[1])
