"""Multi-Illumination end to end: configs, fine-tuning across resolutions, segmentation evaluation, tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import reference_listing

from perturbsets.config.io import ConfigError, from_dict

from perturbsets.config.learn import Config

from perturbsets.config.robust import RobustConfig
from perturbsets.workflows.experiments import load_experiment, run_experiment, write_paper_table
from perturbsets.cvae.registry import build_cvae
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.workflows.learn import learn_perturbation_set
from perturbsets.interop.reference import REFERENCE_ARCHITECTURES
from perturbsets.evaluation.certification_store import PixelMapStore, certify_to_store
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training
from perturbsets.workflows.sources import load_splits
from perturbsets.classifiers.scoring import IGNORE_INDEX
from perturbsets.datasets.tiny import write_tiny_multi_illumination

SMALL = {"chs": [8, 8, 8, 8, 8], "latent_dim": [4, 4, 2, 2, 2], "pool": [[31, 46], [15, 23], [7, 11], [3, 5], [1, 2]]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("mi")
    rng = np.random.default_rng(0)
    for mip in (7, 6):
        write_tiny_multi_illumination(base, rng, mip=mip)
    return base


def _set_config(root, mip=7, **training) -> Config:
    h, w = {7: (31, 46), 6: (62, 93)}[mip]
    return from_dict(
        Config,
        {
            "name": f"mi-{mip}",
            "data": {"source": "multi_illumination", "path": str(root), "mip": mip, "check_size": False},
            "model": {"architecture": "mi_unet", "options": {"input_shape": [3, h, w], **SMALL}, "distribution": "gaussian"},
            "training": {"epochs": 1, "batch_size": 4, **training},
            "evaluation": {"pgd_steps": 1, "eae_samples": 1, "batch_size": 32, "max_pairs": 32},
        },
    )


@pytest.fixture(scope="module")
def mip7_set(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("set7")
    learn_perturbation_set(_set_config(root), out, progress=False)
    return out / "perturbation_set"


def test_reference_options_build_the_authors_layout():
    _, entries = reference_listing("mi_unet")
    with torch.device("meta"):
        cvae = build_cvae("mi_unet", **REFERENCE_ARCHITECTURES["mi_unet"])
    assert [(k, tuple(v.shape)) for k, v in cvae.state_dict().items()] == entries


@pytest.mark.parametrize(
    "data,match",
    [
        ({"pairing": "centered"}, "needs an original version"),
        ({"split": {"train": 0.5, "val": 0.5}}, "paper's scene split"),
        ({"lighting": 25}, "lighting must be in 0..24"),
        ({"layout": "zip"}, "layout must be"),
    ],
)
def test_bad_multi_illumination_configs(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Config, {"data": {"source": "multi_illumination", "path": "x", **data}})


def test_fine_tuning_starts_from_the_saved_set(root, mip7_set, tmp_path):
    config = _set_config(root, mip=6, init_from=str(mip7_set), epochs=1, lr={"epochs": [0], "values": [0.0]})
    result = learn_perturbation_set(config, tmp_path / "mip6", progress=False)
    source = PerturbationSet.load(mip7_set)
    for (key, a), b in zip(source.cvae.state_dict().items(), result.perturbation_set.cvae.state_dict().values()):
        if "running" not in key and "num_batches" not in key:  # lr 0: weights unchanged, BN statistics move
            torch.testing.assert_close(a, b, msg=key)
    assert result.perturbation_set.input_shape == (3, 62, 93)


def test_fine_tuning_refuses_another_architecture(root, mip7_set, tmp_path):
    config = _set_config(root, init_from=str(mip7_set))
    config.model.options["latent_dim"] = [4, 4, 4, 2, 2]
    with pytest.raises(ValueError, match="init_from .* do not fit"):
        learn_perturbation_set(config, tmp_path / "bad", progress=False)


def test_max_pairs_is_a_seeded_random_subset(root):
    test = load_splits(_set_config(root).data, 0).test
    batches = list(test.evaluation_batches(7, seed=3, max_pairs=20))
    assert [b.x.shape[0] for b in batches] == [7, 7, 6]
    index = torch.cat([b.index for b in batches])
    assert set(index.tolist()) == {0, 1}  # both scenes, not a prefix of scene 0's 600 pairs
    again = torch.cat([b.index for b in test.evaluation_batches(5, seed=3, max_pairs=20)])
    assert torch.equal(index, again)


def _robust_config(root, set_dir, mode="smoothing", **evaluation) -> RobustConfig:
    return from_dict(
        RobustConfig,
        {
            "name": "seg",
            "perturbation_set": str(set_dir),
            "data": {"source": "multi_illumination", "path": str(root), "mip": 7, "check_size": False,
                     "augment": {"pad": 2, "crop": [31, 46]}},
            "model": {"architecture": "unet", "options": {"n_classes": 36, "base_channels": 4}},
            "training": {"mode": mode, "epochs": 1, "batch_size": 4, "sigma": 0.5},
            "evaluation": {"radii": ["p50", "max"], "attack": {"steps": 1}, "batch_size": 4, "max_pairs": 8, **evaluation},
        },
    )  # fmt: skip


def test_segmentation_training_evaluation_and_certification(root, mip7_set, tmp_path):
    config = _robust_config(root, mip7_set, certify={"n0": 2, "n": 8, "alpha": 0.1, "batch_size": 8, "max_examples": 2})
    result = run_robust_training(config, tmp_path / "run", progress=False)
    report = run_robust_evaluation(config, tmp_path / "run", tmp_path / "eval", model=result.model, progress=False)
    # A smoothing run is its smoothed classifier: certified, not attacked, and without the base model's mIoU.
    assert report.pgd == {} and report.miou == {} and set(report.certified) == {"p50", "max"}
    assert (tmp_path / "eval" / "adversarial_segmentation.png").is_file()
    maps = sorted((tmp_path / "eval" / "certify").glob("*.npz"))
    assert len(maps) == 2
    # Certified pixel accuracy at radius 0 from the saved maps, recomputed by hand.
    correct = scored = 0
    for path in maps:
        with np.load(path) as m:
            keep = m["label"] != IGNORE_INDEX
            correct += int(((m["prediction"] == m["label"]) & keep).sum())
            scored += int(keep.sum())
    assert report.counts["certified_pixels"] == scored
    assert report.clean == pytest.approx(correct / scored)  # CERTIFY's pixel accuracy, abstentions wrong
    stamp = maps[0].stat().st_mtime_ns
    model = result.model
    radii, ok = certify_to_store(model, PerturbationSet.load(mip7_set), load_splits(config.data, 0).test, config, 0.5,
                                 PixelMapStore(tmp_path / "eval" / "certify"), 36)  # fmt: skip
    assert maps[0].stat().st_mtime_ns == stamp  # resumed: nothing recomputed
    assert ok.sum() == correct and radii.size == scored
    other = _robust_config(root, mip7_set, certify={"n0": 2, "n": 9, "alpha": 0.1, "batch_size": 8, "max_examples": 2})
    with pytest.raises(ValueError, match="another model or other settings"):
        certify_to_store(model, PerturbationSet.load(mip7_set), load_splits(config.data, 0).test, other, 0.5,
                         PixelMapStore(tmp_path / "eval" / "certify"), 36)  # fmt: skip


def test_fixed_lighting_baseline_trains_on_lighting_zero_only(root):
    config = _robust_config(root, None, mode="standard")
    config.data.pairing, config.data.lighting = "fixed", 3
    train = load_splits(config.data, 0).train.with_augment(None)
    batch = next(train.batches(6, shuffle=False, seed=0))
    scene = sorted(p.name for p in root.iterdir() if p.name.startswith("main_experiment"))[0]
    from PIL import Image

    with Image.open(root / scene / "dir_3_mip7.jpg") as im:
        expected = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(batch.x[0], expected)
    assert torch.equal(batch.x, batch.x_tilde)


def test_tables_10_and_11(tmp_path):
    from perturbsets.datasets.tiny import write_tiny_datasets

    data = write_tiny_datasets(tmp_path / "data")
    runs = tmp_path / "runs"
    run_experiment("mi-mip5", data, runs, smoke=True, progress=False)
    text = write_paper_table("Table 10", runs, data=data)
    assert "MIP5 (125 × 187)" in text and "Enc" in text
    norms = write_paper_table("Table 11", runs, data=data)
    metrics = json.loads((runs / "mi-mip5" / "metrics.json").read_text())
    assert f"{metrics['latent_norms']['max']:.2f}" in norms and "| 1 |" in norms  # β = 1 at MIP5
    assert load_experiment("mi-mip3").perturbation_set.training.beta(0) == 10
    run_experiment("mi-cvae-augmentation", data, runs, smoke=True, progress=False)
    table3 = write_paper_table("Table 3", runs, data=data)
    assert "| CVAE data augmentation |" in table3 and "mIoU perturbed" in table3 and "PGD ε=" in table3


def test_full_configs_follow_the_paper():
    mip5 = load_experiment("mi-mip5").perturbation_set
    assert mip5.training.epochs == 1000 and mip5.training.batch_size == 64 and mip5.training.weight_decay == 5e-7
    assert mip5.training.lr(0) == pytest.approx(1e-4) and mip5.training.lr(400) == pytest.approx(1e-3)
    assert mip5.training.beta(0) == 0 and mip5.training.beta(400) == 1 and mip5.training.select == "latest"
    assert mip5.data.augment == {"pad": 10, "crop": [125, 187], "flip": True} and mip5.data.material_mip == 2
    mip4 = load_experiment("mi-mip4").perturbation_set
    assert mip4.training.lr(40) == pytest.approx(2.5e-4) and mip4.training.init_from.endswith("mi-mip5/perturbation_set")
    assert mip4.data.augment["pad"] == 20 and mip4.model.options["input_shape"] == [3, 250, 375]
    mip3 = load_experiment("mi-mip3").perturbation_set
    assert mip3.training.lr(10) == pytest.approx(2.5e-5) and mip3.training.beta(25) == 10 and mip3.training.batch_size == 16
    assert mip3.model.options["checkpoint"] is True and mip3.training.amp
    adv = load_experiment("mi-cvae-adversarial").robust
    assert adv.training.attack.eps == "max" and adv.training.attack.steps == 7 and adv.training.attack.step_divisor == 5
    assert adv.evaluation.radii == ["p50", "p75", "max"] and adv.evaluation.inputs == "versions"
    smooth = load_experiment("mi-smoothing-690").robust
    assert smooth.training.sigma == 6.9 and smooth.evaluation.certify.n == 1000 and smooth.evaluation.certify.n0 == 100
    fixed = load_experiment("mi-fixed-lighting").robust
    assert fixed.data.pairing == "fixed" and fixed.evaluation.test.pairing == "with_original"
    for name in ("mi-fixed-lighting", "mi-data-augmentation", "mi-cvae-augmentation", "mi-cvae-adversarial", "mi-smoothing-690"):
        robust = load_experiment(name).robust
        assert robust.training.epochs == 400 and robust.training.lr(160) == pytest.approx(0.01)
        assert robust.model.architecture == "unet" and robust.model.options["n_classes"] == 36
