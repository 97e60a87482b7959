"""Every experiment's smoke variant runs end to end on tiny data in the real formats."""

from __future__ import annotations

import json
import threading

import pytest

from perturbsets.cli import main
from perturbsets.config.io import ConfigError
from perturbsets.workflows.experiments import (
    experiment_names,
    load_experiment,
    run_experiment,
    write_paper_table,
)
from perturbsets.datasets.tiny import write_tiny_datasets

from builders import LockHolder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    data = write_tiny_datasets(tmp_path_factory.mktemp("data"))
    return data, tmp_path_factory.mktemp("runs")


def test_every_paper_experiment_is_defined():
    names = set(experiment_names())
    assert {"mnist-linf-fc", "mnist-linf-conv", "mnist-rts", "mnist-rts-1", "mnist-rts-5"} <= names
    assert {"cifar10c-centered", "cifar10c-original-perturbed", "cifar10c-perturbed-only"} <= names
    assert {"cifar10-standard", "cifar10c-data-augmentation", "cifar10-cvae-augmentation", "cifar10-cvae-adversarial"} <= names
    assert {"cifar10-smoothing-084", "cifar10-smoothing-122", "cifar10-smoothing-319"} <= names


def test_full_configs_follow_the_paper():
    rts = load_experiment("mnist-rts").perturbation_set
    assert rts.training.epochs == 100 and rts.training.lr(40) == pytest.approx(8e-4)
    assert rts.training.beta(10) == pytest.approx(0.01) and rts.training.beta(50) == pytest.approx(1.0)
    cifar = load_experiment("cifar10c-centered").perturbation_set
    assert cifar.training.beta(400) == pytest.approx(0.01) and cifar.training.beta(40) == pytest.approx(0.001)
    assert cifar.data.augment == {"pad": 4, "crop": [32, 32], "flip": True}
    adv = load_experiment("cifar10-cvae-adversarial").robust
    assert adv.training.attack.steps == 7 and adv.training.attack.step_divisor == 5
    assert adv.evaluation.attack.steps == 50 and adv.evaluation.attack.step_divisor == 20
    assert [load_experiment(f"cifar10-smoothing-{t}").robust.training.sigma for t in ("084", "122", "319")] == [0.84, 1.22, 3.19]


@pytest.mark.parametrize("name", experiment_names())
def test_smoke_variant_runs(dirs, name):
    data, runs = dirs
    run = run_experiment(name, data, runs, smoke=True, progress=False)
    exp = load_experiment(name, data=data, runs=runs)
    if exp.perturbation_set is not None:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["radius"] > 0 and metrics["pgd_ae"]["mean"] <= metrics["enc_ae"]["mean"] + 1e-9
    if exp.robust is not None:
        metrics = json.loads((run / "robust" / "eval" / "robust_metrics.json").read_text())
        radii = set(exp.robust.evaluation.radii)
        # Smoothed classifiers are certified (Table 9), the others attacked.
        smoothed = exp.robust.training.mode == "smoothing" and exp.robust.evaluation.certify is not None
        assert set(metrics["pgd"]) == (set() if smoothed else radii)
        assert set(metrics["certified"]) == (radii if smoothed else set())
        assert (metrics["ood"] is not None) == (exp.robust.evaluation.ood is not None)
        if exp.robust.data.source == "multi_illumination":
            assert set(metrics["miou"]) == (set() if smoothed else {"clean", "perturbed", *radii})
        if exp.robust.evaluation.certify is not None:
            assert (run / "robust" / "eval" / "certified_accuracy.png").is_file()


def test_a_finished_experiment_is_not_run_again(dirs):
    data, runs = dirs
    run = run_experiment("mnist-linf-fc", data, runs, smoke=True, progress=False)
    stamp = (run / "checkpoints" / "latest.safetensors").stat().st_mtime_ns
    run_experiment("mnist-linf-fc", data, runs, smoke=True, progress=False)
    assert (run / "checkpoints" / "latest.safetensors").stat().st_mtime_ns == stamp


def test_tables_collect_the_rows(dirs):
    data, runs = dirs
    for name in ("mnist-linf-fc", "cifar10-standard"):
        run_experiment(name, data, runs, smoke=True, progress=False)
    table4 = write_paper_table("Table 4", runs, data=data)
    assert "| Fully connected ℓ∞ |" in table4 and "Enc. AE" in table4
    table2 = write_paper_table("Table 2", runs, data=data)
    assert "| Standard training |" in table2 and "| Method | Clean | Perturbed | OOD |" in table2
    assert (runs / "table_2.md").is_file()


def test_a_table_waits_for_another_writer_of_the_runs_folder(dirs):
    """Reading the finished runs and writing the table is one step under the runs folder's lock."""
    data, runs = dirs
    run_experiment("mnist-linf-fc", data, runs, smoke=True, progress=False)
    holder = LockHolder()
    try:
        holder.hold(runs)
        writer = threading.Thread(target=write_paper_table, args=("Table 4", runs), kwargs={"data": data})
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive(), "the table was written while another process held the runs folder"
    finally:
        holder.close()
    writer.join(timeout=60)
    assert not writer.is_alive() and "| Fully connected ℓ∞ |" in (runs / "table_4.md").read_text()


def test_unknown_experiment_and_cli(dirs, capsys):
    data, runs = dirs
    with pytest.raises(ValueError, match="did you mean 'mnist-rts'"):
        load_experiment("mnist-rst")
    assert main(["experiments", "list"]) == 0
    assert "cifar10c-centered" in capsys.readouterr().out
    assert main(["experiments", "run", "mnist-linf-conv", "--data", str(data), "--out", str(runs), "--smoke", "--quiet"]) == 0
    assert "Convolutional ℓ∞" in capsys.readouterr().out


def test_missing_dataset_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST"):
        run_experiment("mnist-linf-fc", tmp_path / "nothing", tmp_path / "runs", smoke=True, progress=False)


def test_experiment_files_are_strict(tmp_path):
    with pytest.raises(ConfigError):
        from perturbsets.config.io import from_dict
        from perturbsets.config.learn import Config

        from_dict(Config, {"data": {"source": "mnist", "pairng": "centered"}})


def test_table_8_reports_latent_norm_statistics(dirs):
    data, runs = dirs
    run_experiment("cifar10c-centered", data, runs, smoke=True, progress=False)
    table8 = write_paper_table("Table 8", runs, data=data)
    assert "| Method | β | Mean | Std | 25% | 50% | 75% | Max |" in table8
    assert "| Centered at original | 0.01 |" in table8


def test_make_cifar10c_writes_readable_layouts(tmp_path):
    import shutil

    from perturbsets.datasets.cifar10c.reader import load_cifar10c, load_cifar10c_versioned

    data = write_tiny_datasets(tmp_path / "d", n_train=20, n_test=6)
    shutil.rmtree(data / "cifar-10-c-train")
    shutil.rmtree(data / "cifar-10-c-test")
    common = ["--cifar", str(data), "--out", str(data), "--any-size", "--quiet"]
    assert main(["data", "make-cifar10c", "--split", "train", "--severities", "5", "--corruptions", "fog,contrast,jpeg_compression", *common]) == 0
    assert main(["data", "make-cifar10c", "--split", "test", "--corruptions", "fog", *common]) == 0
    train = load_cifar10c_versioned(data, data, ["fog", "contrast", "jpeg_compression"], split="train", check_size=False)
    assert train.num_versions == 4 and len(train) == 20
    stack, labels = load_cifar10c(data / "CIFAR-10-C", ["fog"], [1, 5], split="test", layout="hendrycks", check_size=False)
    assert stack.shape == (6, 2, 32, 32, 3) and labels.shape == (6,)
    # Seeded: a second run into another folder writes identical files.
    other = tmp_path / "again"
    assert main(["data", "make-cifar10c", "--split", "train", "--severities", "5", "--corruptions", "fog", "--cifar", str(data), "--out", str(other), "--any-size", "--quiet"]) == 0
    import numpy as np

    assert np.array_equal(np.load(other / "cifar-10-c-train" / "fog_5.npy"), np.load(data / "cifar-10-c-train" / "fog_5.npy"))
