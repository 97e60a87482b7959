"""The Multi-Illumination CVAE really learns lighting changes (``pytest -m slow``; CI runs it too).

Scenes whose 25 lightings are brightness gains of one image are written in the dataset's
scene-folder layout; a scaled-down ``mi_unet`` trained on 40 of them for 30 epochs must
reconstruct unseen test scenes' lightings far better than leaving x unchanged does.
"""

from __future__ import annotations

import numpy as np
import pytest

from perturbsets.config.io import from_dict

from perturbsets.config.learn import Config
from perturbsets.workflows.learn import learn_perturbation_set
from perturbsets.workflows.sources import load_splits
from perturbsets.datasets.tiny import write_tiny_multi_illumination

pytestmark = pytest.mark.slow


def test_lighting_set_beats_the_identity_on_unseen_scenes(tmp_path):
    root = write_tiny_multi_illumination(tmp_path / "mi", np.random.default_rng(0), mip=7, scenes={"train": 40, "val": 4, "test": 4})
    config = from_dict(
        Config,
        {
            "name": "mi-slow",
            "data": {"source": "multi_illumination", "path": str(root), "mip": 7, "check_size": False},
            "model": {
                "architecture": "mi_unet",
                "distribution": "gaussian",
                "options": {"input_shape": [3, 31, 46], "chs": [16] * 5, "latent_dim": [8, 4, 4, 2, 2],
                            "pool": [[31, 46], [15, 23], [7, 11], [3, 5], [1, 2]]},
            },
            "training": {"epochs": 30, "batch_size": 8, "select": "latest",
                         "lr": {"epochs": [0, 10, 30], "values": [0.0005, 0.002, 0.0]},
                         "beta": {"epochs": [0, 10, 30], "values": [0.0, 1.0, 1.0]}},
            "evaluation": {"pgd_steps": 20, "eae_samples": 2, "batch_size": 100, "max_pairs": 400, "metric": "mse"},
        },
    )  # fmt: skip
    result = learn_perturbation_set(config, tmp_path / "run", progress=False)
    metrics = result.report.to_dict()
    batch = next(load_splits(config.data, 0).test.evaluation_batches(400, seed=1, max_pairs=400))
    identity = float(((batch.x - batch.x_tilde) ** 2).mean())
    assert metrics["enc_ae"]["mean"] < 0.25 * identity
    assert metrics["pgd_ae"]["mean"] <= metrics["enc_ae"]["mean"] + 1e-9
    assert metrics["recon"]["mean"] < 0.25 * identity
    assert 0 < metrics["radius"] < 20
