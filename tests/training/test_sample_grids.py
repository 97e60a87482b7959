"""Sample grids logged during training: layout, cadence, resume, TensorBoard, the robust grid, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perturbsets.config.io import ConfigError, from_dict
from perturbsets.config.learn import Config, TrainingConfig
from perturbsets.config.robust import RobustConfig
from perturbsets.training import cvae as train_mod
from perturbsets.training.cvae import train_cvae
from perturbsets.training.robust import robust_train
from perturbsets.training.samples import GRID_PAD, CVAESampleGrid, grid_image, sample_due, sample_rows
from perturbsets.workflows.sources import load_splits

from builders import labelled_pairs, robust_config, save_robust_set, tiny_set
from test_train_cvae import tiny_config


def _looped_grid(rows: np.ndarray, low: float, high: float, pad: int) -> np.ndarray:
    """The grid written out pixel by pixel: background 1, image (r, k) at row r, column k, rescaled and clamped."""
    R, K, C, H, W = rows.shape
    out = np.ones((R * H + (R - 1) * pad, K * W + (K - 1) * pad, 3), np.float32)
    for r in range(R):
        for k in range(K):
            for i in range(H):
                for j in range(W):
                    for c in range(3):
                        v = (rows[r, k, c if C == 3 else 0, i, j] - low) / (high - low)
                        out[r * (H + pad) + i, k * (W + pad) + j, c] = min(max(v, 0.0), 1.0)
    return out


@pytest.mark.parametrize("channels,value_range", [(1, (0.0, 1.0)), (3, (0.0, 1.0)), (3, (-1.0, 1.0))])
def test_grid_layout_matches_an_explicit_loop(channels, value_range):
    rows = torch.rand(3, 4, channels, 5, 6, generator=torch.Generator().manual_seed(0)) * 3.0 - 1.5  # beyond any range
    grid = grid_image(rows, value_range)
    np.testing.assert_allclose(grid, _looped_grid(rows.numpy(), *value_range, GRID_PAD), rtol=0, atol=1e-6)


def test_sample_rows_are_x_x_tilde_the_reconstruction_and_prior_samples():
    """Each row against the set's own conditioned view of the same CVAE."""
    pset = tiny_set()
    g = torch.Generator().manual_seed(1)
    x, x_tilde = torch.rand(5, 1, 8, 8, generator=g), torch.rand(5, 1, 8, 8, generator=g)
    noise, u = torch.randn(5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    rows = sample_rows(pset.cvae, x, x_tilde, noise, u)
    assert rows.shape == (6, 5, 1, 8, 8)
    cond = pset.condition(x)
    expected = [x, x_tilde, cond.reconstruct(x_tilde, noise), *(cond.decode(u_s) for u_s in u)]
    for row, want in zip(rows, expected):
        torch.testing.assert_close(row, want)


def test_grids_are_due_every_n_epochs_and_after_the_last():
    assert [e + 1 for e in range(25) if sample_due(e, 25, 10)] == [10, 20, 25]
    assert [e + 1 for e in range(3) if sample_due(e, 3, 1)] == [1, 2, 3]
    assert not any(sample_due(e, 25, 0) for e in range(25))


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_run_writes_the_grid_of_its_model_at_the_due_epochs(tmp_path):
    config = tiny_config(epochs=3, sample_every=2, select="latest")
    splits = load_splits(config.data, config.seed)
    result = train_cvae(config, splits, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["epoch_0002.png", "epoch_0003.png"]
    written = _png(tmp_path / "run" / "samples" / "epoch_0003.png")
    # 7 rows (x, x̃, reconstruction, 4 samples) of 8 columns of 28×28 digits, 2 pixels apart.
    assert written.shape == (7 * 28 + 6 * 2, 8 * 28 + 7 * 2, 3)
    expected = CVAESampleGrid(result.cvae, splits.val, config.seed, torch.device("cpu"))()
    np.testing.assert_array_equal(written, np.round(expected * 255).astype(np.uint8))


def test_a_killed_and_resumed_run_writes_the_grids_of_an_uninterrupted_one(tmp_path, monkeypatch):
    config = tiny_config(epochs=3, sample_every=2)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "full", progress=False)
    real = train_mod.fit.__globals__["save_checkpoint"]
    calls = {"n": 0}

    def crash_after_the_second_grid(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # best + latest of epoch 1, then epoch 2's first write, after its grid
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setitem(train_mod.fit.__globals__, "save_checkpoint", crash_after_the_second_grid)
    with pytest.raises(KeyboardInterrupt):
        train_cvae(config, load_splits(config.data, config.seed), tmp_path / "resumed", progress=False)
    monkeypatch.setitem(train_mod.fit.__globals__, "save_checkpoint", real)
    assert (tmp_path / "resumed" / "samples" / "epoch_0002.png").is_file()
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "resumed", resume=True, progress=False)
    for name in ("epoch_0002.png", "epoch_0003.png"):
        np.testing.assert_array_equal(_png(tmp_path / "resumed" / "samples" / name), _png(tmp_path / "full" / "samples" / name))


def test_a_resume_may_change_sample_every(tmp_path, monkeypatch):
    config = tiny_config(epochs=2, sample_every=0)
    splits = load_splits(config.data, config.seed)
    real = train_mod.validation_loss
    calls = {"n": 0}

    def crash_in_the_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "validation_loss", crash_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_cvae(config, splits, tmp_path / "run", progress=False)
    monkeypatch.setattr(train_mod, "validation_loss", real)
    assert not (tmp_path / "run" / "samples").exists()
    config.training.sample_every = 1
    train_cvae(config, splits, tmp_path / "run", resume=True, progress=False)
    assert [p.name for p in (tmp_path / "run" / "samples").iterdir()] == ["epoch_0002.png"]


def test_tensorboard_receives_the_grids_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(epochs=2, sample_every=1)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    images = events.Images("samples")
    assert [e.step for e in images] == [0, 1]
    assert (images[-1].height, images[-1].width) == (7 * 28 + 6 * 2, 8 * 28 + 7 * 2)


def test_adversarial_training_logs_clean_inputs_over_their_adversarial_examples(tmp_path):
    config = robust_config(save_robust_set(tmp_path / "set"), "cvae_adversarial")
    config.training.sample_every = 1
    splits = labelled_pairs().split(config.data.split, seed=config.seed)
    robust_train(config, splits, tmp_path / "run", progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert names == ["epoch_0001.png", "epoch_0002.png"]
    grid = _png(tmp_path / "run" / "samples" / "epoch_0002.png")
    assert grid.shape == (2 * 8 + GRID_PAD, 8 * 8 + 7 * GRID_PAD, 3)  # the 8 first validation inputs over their attacks
    clean = next(splits.val.batches(8, shuffle=False, seed=config.seed)).x
    np.testing.assert_array_equal(grid[:8], np.round(grid_image(clean[None], (0.0, 1.0)) * 255).astype(np.uint8))
    assert (grid[8 + GRID_PAD :] != grid[:8]).any()
    other = robust_config(tmp_path / "set", "cvae_augment")
    robust_train(other, splits, tmp_path / "augment", progress=False)
    assert not (tmp_path / "augment" / "samples").exists()  # only adversarial training logs a grid


@pytest.mark.parametrize("value,message", [(-1, "must be a whole number"), (2.5, "must be an integer"), (True, "must be an integer")])
@pytest.mark.parametrize("cls", [Config, RobustConfig])
def test_a_bad_sample_every_is_refused_naming_the_key_and_the_fix(cls, value, message):
    with pytest.raises(ConfigError, match=f"training.sample_every {message}"):
        from_dict(cls, {"training": {"sample_every": value}})
    with pytest.raises(ConfigError, match=r"sample_every must be a whole number of epochs >= 0, got -2: .*0 logs none"):
        TrainingConfig(sample_every=-2)
