"""Robust training modes: every mode trains, exact resume, Algorithm 1, bad configs and data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from perturbsets.training import robust as robust_mod
from perturbsets.training.distributed import StepDraws
from perturbsets import PerturbationSet
from perturbsets.attacks.base import AttackOutput
from perturbsets.cli import main
from perturbsets.config.io import ConfigError, from_dict, to_dict
from perturbsets.config.robust import RobustConfig
from perturbsets.pairs.paired import PairedData
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

from builders import labelled_pairs, robust_config as config, save_robust_set
from oracles import algorithm_1_loop


@pytest.fixture(scope="module")
def set_dir(tmp_path_factory):
    return save_robust_set(tmp_path_factory.mktemp("set"))


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
        transform(batch, StepDraws(torch.Generator()), epoch)
    assert seen == pytest.approx([0.5, 1.0, 2.0, 2.0])  # radius 2.0 reached after 4 epochs
    assert torch.equal(transform(batch, StepDraws(torch.Generator()), 0.0), batch.x)  # ε = 0: the clean input


def test_adversarial_training_trains_at_the_final_point_of_algorithm_1(set_dir):
    """Every example takes all T steps from δ = 0 and the model trains at the last iterate, also the
    examples that are misclassified from the start (an early stop would leave them at u = 0)."""
    cfg = config(set_dir, "cvae_adversarial")
    cfg.training.attack.steps = 7
    pset = PerturbationSet.load(set_dir)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    batch = next(labelled_pairs().batches(16, shuffle=False, seed=0))
    inputs = robust_mod.InputTransform(cfg, model, pset)(batch, StepDraws(torch.Generator()))
    eps = pset.radius
    expected = algorithm_1_loop(model, pset, batch.x, batch.y, eps, 7, eps / 5)
    torch.testing.assert_close(inputs, pset.perturb(batch.x, expected), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert (model(batch.x).argmax(1) != batch.y).any()  # the batch holds misclassified examples
    assert torch.all((expected.norm(dim=1) - eps).abs() < 1e-4)  # every example went to the boundary
