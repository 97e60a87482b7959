"""End to end through the command line: demo, train, evaluate, and their errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from perturbsets import PerturbationSet
from perturbsets.cli import main
from perturbsets.datasets.digits import load_digits

METRIC_KEYS = {"radius", "enc_ae", "pgd_ae", "eae", "oae", "recon", "kl", "latent_norms"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    return out


def test_demo_quick_writes_the_whole_run(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    for key in ("enc_ae", "pgd_ae", "eae", "oae", "recon"):
        assert 0 <= metrics[key]["mean"] < 10
    # PGD AE is the best point of a search that starts at the Enc AE point.
    assert metrics["pgd_ae"]["mean"] <= metrics["enc_ae"]["mean"] + 1e-9
    # The radius is the largest validation encoding (Appendix B).
    assert metrics["radius"] == pytest.approx(metrics["latent_norms"]["max"])
    for fig in ("pairs", "samples", "interpolation", "latent_norms"):
        assert (demo_dir / "figures" / f"{fig}.png").stat().st_size > 1000
    report = (demo_dir / "report.md").read_text()
    assert "| Model | ε | Enc. AE | PGD AE | EAE | OAE | Recon. err | KL |" in report
    assert "](figures/samples.png)" in report
    # The robustness half: five training modes, their table, the claims, adversarial examples, certification.
    assert "## Robustness to the learned set" in report and "](figures/adversarial.png)" in report
    assert "### The paper's claims, measured" in report and "σ·Φ⁻¹(α^(1/n)) = " in report
    table = (demo_dir / "robust" / "results.md").read_text()
    rows = ("Standard training", "RTS data augmentation", "CVAE data augmentation", "CVAE adversarial training",
            "Latent randomized smoothing")  # fmt: skip
    for row in rows:
        assert f"| {row} |" in table
    assert (demo_dir / "robust" / "smoothing" / "eval" / "certify.tsv").is_file()
    # The verdicts are saved, and the report's claims table is exactly them.
    claims = json.loads((demo_dir / "robust" / "claims.json").read_text())
    assert len(claims) == 5 and all(set(c) == {"text", "measured", "holds"} for c in claims)
    for c in claims:
        assert f"| {c['text']} | {c['measured']} | {'yes' if c['holds'] else '**no**'} |" in report


def test_demo_set_loads_and_samples(demo_dir):
    pset = PerturbationSet.load(demo_dir / "perturbation_set")
    assert pset.input_shape == (1, 42, 42)
    images, _ = load_digits(42)
    samples = pset.sample(images[:3], 4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 4, 1, 42, 42)
    assert 0 <= samples.min() and samples.max() <= 1


def write_config(path, **overrides):
    config = {
        "name": "cli",
        "seed": 1,
        "data": {
            "source": "digits",
            "canvas": 28,
            "perturbation": {"name": "linf", "epsilon": 0.3},
            "split": {"train": 64, "val": 32, "test": 16},
        },
        "model": {"architecture": "mnist_fc", "options": {"hidden": 32, "latent_dim": 8}},
        "training": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "evaluation": {"pgd_steps": 3, "eae_samples": 2, "radius_passes": 1},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_then_evaluate(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert "perturbation set saved" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run" / "perturbation_set"), "--config", str(cfg), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["radius"] == trained["radius"]
    # Same data, seed and settings: the evaluation is reproducible.
    assert evaluated["enc_ae"]["mean"] == pytest.approx(trained["enc_ae"]["mean"], rel=1e-6)
    assert (tmp_path / "ev" / "report.md").is_file()


def test_train_resume_finishes_a_run(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--resume"]) == 0


def test_config_typo_is_reported_with_the_nearest_key(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", training={"epcohs": 2})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "training.epcohs" in err and "did you mean 'training.epochs'" in err


def test_evaluate_rejects_a_folder_that_is_not_a_set(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--config", str(cfg), "--out", str(tmp_path / "ev")]) == 2
    assert "not a saved perturbation set" in capsys.readouterr().err


def test_evaluate_rejects_data_of_another_shape(demo_dir, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")  # 28×28 data; the demo set takes 42×42
    assert main(["evaluate", str(demo_dir / "perturbation_set"), "--config", str(cfg), "--out", str(tmp_path / "ev")]) == 2
    assert "(N, 1, 42, 42)" in capsys.readouterr().err


def test_unknown_data_source(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", data={"source": "mnsit"})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "unknown data.source 'mnsit'" in capsys.readouterr().err


def test_run_all_skips_experiments_whose_data_is_missing(tmp_path, monkeypatch, capsys):
    import numpy as np

    from perturbsets.workflows import experiments
    from perturbsets.datasets.tiny import write_tiny_mnist

    write_tiny_mnist(tmp_path / "data", 80, 12, np.random.default_rng(0))  # MNIST only, no Multi-Illumination
    monkeypatch.setattr(experiments, "experiment_names", lambda: ["mi-cvae-augmentation", "mnist-linf-fc"])
    code = main(["experiments", "run", "all", "--smoke", "--quiet", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "mi-cvae-augmentation: skipped, its data is missing" in err and "multi-illumination" in err
    assert (tmp_path / "runs" / "mnist-linf-fc" / "metrics.json").is_file()
    # A single named experiment still fails loudly.
    assert main(["experiments", "run", "mi-mip5", "--smoke", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs")]) == 2


def test_demo_claims_are_computed_from_the_measured_figures():
    from perturbsets.workflows.demo import DEMO_MODES, check_claims
    from perturbsets.evaluation.robust import RobustReport

    def report(clean, perturbed, p50, certified=None):
        return RobustReport("m", clean, perturbed, 0.5, {"p50": p50}, {"p50": certified} if certified else {}, {"p50": 1.0}, {})

    figures = [report(0.99, 0.3, 0.1), report(0.98, 0.8, 0.4), report(0.97, 0.5, 0.3), report(0.95, 0.6, 0.7),
               report(0.9, 0.7, 0.2, certified=0.3)]  # fmt: skip
    claims = check_claims(dict(zip(DEMO_MODES, figures)))
    assert [c.holds for c in claims] == [True, True, True, True, True]
    assert claims[0].measured == "70.0% vs 10.0% (7.0×)"
    figures[3] = report(0.92, 0.6, 0.25)  # adversarial: 2.5× standard, clean below 93%
    figures[4] = report(0.9, 0.7, 0.2, certified=0.1)
    claims = check_claims(dict(zip(DEMO_MODES, figures)))
    assert [c.holds for c in claims] == [False, False, True, False, False]


def test_demo_reuses_a_saved_set_for_the_robustness_half(demo_dir, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["demo", "--quick", "--set", str(demo_dir / "perturbation_set"), "--out", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith(f"# Demo with the saved perturbation set {demo_dir / 'perturbation_set'}")
    assert "### The paper's claims, measured" in report and not (out / "perturbation_set").exists()
    assert main(["demo", "--set", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_tools_are_grouped_under_data(tmp_path, capsys):
    assert main(["data", "make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    assert "copies written to" in capsys.readouterr().out
    assert (tmp_path / "tiny" / "cifar-10-batches-py").is_dir()
    for old in (["make-cifar10c", "--help"], ["make-mi-arrays", "--help"], ["experiments", "make-tiny-data"]):
        with pytest.raises(SystemExit) as exit_info:
            main(old)
        assert exit_info.value.code == 2


# ---------------------------------------------------------------- run-folder locks and one-line errors


def one_line_error(capsys, command: str) -> str:
    """The CLI's error output, after checking it is a single line of ours and not a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"perturbsets {command}: error: "), err
    return err


def write_robust_files(tmp_path):
    """A saved 1×8×8 set, labelled pairs as .npz and a robust config reading them; the config's path."""
    import numpy as np

    from builders import labelled_images, robust_config, save_robust_set
    from perturbsets.config.io import save_config

    x, x_tilde, y = labelled_images()
    np.savez(tmp_path / "pairs.npz", x=x.numpy(), x_tilde=x_tilde.numpy(), y=y.numpy())
    config = robust_config(save_robust_set(tmp_path / "set"))
    config.data.path = str(tmp_path / "pairs.npz")
    save_config(config, tmp_path / "robust.yaml")
    return tmp_path / "robust.yaml"


@pytest.fixture(scope="module")
def robust_run(tmp_path_factory):
    """A trained two-epoch robust run (its config and folder)."""
    folder = tmp_path_factory.mktemp("robust")
    cfg = write_robust_files(folder)
    assert main(["robust-train", str(cfg), "--out", str(folder / "run"), "--no-eval", "--quiet"]) == 0
    return cfg, folder / "run"


@pytest.mark.parametrize("command", ["train", "evaluate", "robust-train", "robust-eval", "demo", "experiments"])
def test_a_second_writer_of_a_run_folder_fails_with_one_line(command, tmp_path, robust_run, lock_holder, capsys):
    cfg, run = robust_run
    out = tmp_path / "out"
    argv = {
        "train": ["train", str(write_config(tmp_path / "c.yaml")), "--out", str(out)],
        "evaluate": ["evaluate", str(cfg.parent / "set"), "--config", str(write_config(tmp_path / "c.yaml")), "--out", str(out)],
        "robust-train": ["robust-train", str(cfg), "--out", str(out)],
        "robust-eval": ["robust-eval", str(cfg), "--run", str(run), "--out", str(out)],
        "demo": ["demo", "--quick", "--out", str(out)],
        "experiments": ["experiments", "run", "mnist-linf-fc", "--smoke", "--data", str(tmp_path), "--out", str(tmp_path)],
    }[command]
    if command == "experiments":
        out = tmp_path / "mnist-linf-fc"
    lock_holder.hold(out)
    before = sorted(p.name for p in out.iterdir())
    assert main([*argv, "--quiet"]) == 2
    err = one_line_error(capsys, command)
    assert f"another process is writing to the run folder {out}" in err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing of the other run's touched


def test_malformed_yaml_is_one_line_naming_the_place(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\ntraining:\n  epochs: [1\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys, "train")
    assert f"{cfg} is not valid YAML" in err and "line 4" in err and "fix the syntax" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_image_in_a_pair_folder_is_one_line_naming_the_file(damage, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("clean", "perturbed"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        for name in ("a", "b", "c"):
            pixels = (rng.random((28, 28)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pairs" / sub / f"{name}{'_1' if sub == 'perturbed' else ''}.png")
    bad = tmp_path / "pairs" / "perturbed" / "b_1.png"
    # A truncated file still opens (its header is whole); decoding its pixels fails.
    bad.write_bytes(b"not an image" if damage == "garbage" else bad.read_bytes()[:400])
    cfg = write_config(
        tmp_path / "c.yaml", data={"source": "folder", "path": str(tmp_path / "pairs"), "perturbation": None, "split": {"train": 1, "val": 1, "test": 1}}
    )
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys, "train")
    assert f"{bad} is not a readable image" in err and "replace it or remove it" in err


def test_an_unwritable_out_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["train", str(cfg), "--out", str(tmp_path / "file" / "run")]) == 2
    err = one_line_error(capsys, "train")
    assert f"cannot write to the run folder {tmp_path / 'file' / 'run'}" in err and "choose a folder" in err


@pytest.mark.parametrize(
    "options,message",
    [({"hidden": "abc"}, "option 'hidden' of CVAE architecture 'mnist_fc' must be int, got 'abc'"),
     ({"hidden": 1.5}, "option 'hidden' of CVAE architecture 'mnist_fc' must be int, got 1.5"),
     ({"input_shape": [1, "28", 28]}, "option 'input_shape' of CVAE architecture 'mnist_fc' must be tuple[int, int, int]"),
     ({"input_shape": [1, 28]}, "input_shape must be (C, H, W)")],
)  # fmt: skip
def test_wrongly_typed_model_options_are_one_line(options, message, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", model={"architecture": "mnist_fc", "options": options})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys, "train")


@pytest.mark.parametrize("dtype", ["float64", "uint8"])
def test_npz_pairs_of_other_dtypes_train_through_the_cli(dtype, tmp_path):
    import numpy as np

    images, _ = load_digits(28)
    x = images[:112].numpy().astype(np.float64)
    x_tilde = np.clip(x + 0.1, 0, 1)
    if dtype == "uint8":
        x, x_tilde = (np.round(a * 255).astype(np.uint8) for a in (x, x_tilde))
    np.savez(tmp_path / "pairs.npz", x=x, x_tilde=x_tilde)
    cfg = write_config(tmp_path / "c.yaml", data={"source": "npz", "path": str(tmp_path / "pairs.npz"), "perturbation": None})
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
