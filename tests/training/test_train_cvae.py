"""Training loop: schedules, checkpoints, exact resume, divergence, config handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributions as D
from safetensors.torch import load_file

from perturbsets.training import cvae as train_mod
from perturbsets.training.loop import TIMING_KEYS, TrainingDivergedError
from perturbsets.config.io import ConfigError, from_dict, load_config
from perturbsets.config.learn import Config, DataConfig, ModelConfig, Schedule, TrainingConfig
from perturbsets.pairs.paired import PairedData
from perturbsets.perturbations import LinfNoise
from perturbsets.training.cvae import train_cvae
from perturbsets.workflows.sources import load_splits


def tiny_config(epochs: int = 2, **training) -> Config:
    return Config(
        name="tiny",
        seed=3,
        data=DataConfig(
            source="digits",
            canvas=28,
            perturbation={"name": "linf", "epsilon": 0.3},
            split={"train": 96, "val": 32, "test": 32},
        ),
        model=ModelConfig(architecture="mnist_fc", options={"hidden": 32, "latent_dim": 8}),
        training=TrainingConfig(
            epochs=epochs,
            batch_size=32,
            lr=Schedule([0, 1, epochs], [1e-3, 2e-3, 1e-4]),
            beta=Schedule([0, epochs], [0.0, 1.0]),
            device="cpu",
            **training,
        ),
    )


def test_lr_and_beta_follow_the_schedule_every_batch(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    config = tiny_config()
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    n_batches = 3  # 96 training images / 32
    expected = [
        np.interp(e + (i + 1) / n_batches, [0, 1, 2], [1e-3, 2e-3, 1e-4]) for e in range(2) for i in range(n_batches)
    ]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_run_folder_contents_and_saved_config(tmp_path):
    config = tiny_config()
    result = train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert load_config(run / "config.yaml", Config) == config
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert (run / "checkpoints" / "latest.safetensors").is_file()
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert result.best_epoch == int(np.argmin([h["val_loss"] for h in history]))
    # The loss must go down on this easy problem: a real training signal, not a no-op.
    assert history[-1]["loss"] < history[0]["loss"]


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    config = tiny_config(epochs=1)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train_cvae(config, load_splits(config.data, config.seed), tmp_path / "other", resume=True, progress=False)


def _tensors(path):
    return load_file(str(path))


def test_resume_reaches_the_uninterrupted_result(tmp_path, monkeypatch):
    config = tiny_config(epochs=3)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "full", progress=False)

    real_validation = train_mod.validation_loss
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(train_mod, "validation_loss", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_cvae(config, load_splits(config.data, config.seed), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_mod, "validation_loss", real_validation)
    # Garbage in torch's global RNG must not matter: every draw is seeded by (seed, epoch).
    torch.manual_seed(12345)
    torch.rand(100)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "resumed", resume=True, progress=False)

    for name in ("latest.safetensors", "best.safetensors"):
        full = _tensors(tmp_path / "full" / "checkpoints" / name)
        resumed = _tensors(tmp_path / "resumed" / "checkpoints" / name)
        assert full.keys() == resumed.keys()
        for key in full:
            assert torch.equal(full[key], resumed[key]), f"{name}: {key} differs after resume"
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_res = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["val_loss"] for h in h_full] == [h["val_loss"] for h in h_res]


def test_resume_with_a_different_config_is_refused(tmp_path):
    config, changed = tiny_config(epochs=1), tiny_config(epochs=1, weight_decay=0.1)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="config differs"):
        train_cvae(changed, load_splits(changed.data, changed.seed), tmp_path / "run", resume=True, progress=False)


class NaNAfter:
    """An ℓ∞ perturbation that turns to NaN after ``calls`` batches."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.inner = LinfNoise(0.3)

    def __call__(self, x, generator=None):
        self.calls -= 1
        out = self.inner(x, generator)
        return out if self.calls >= 0 else torch.full_like(out, float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(epochs=3)
    images = torch.rand(160, 1, 28, 28)
    # 3 training batches + 1 validation batch make the first epoch; NaN arrives in epoch 2.
    data = PairedData.on_the_fly(images, NaNAfter(4))
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2.*last good checkpoint.*Lower training.lr"):
        train_cvae(config, load_splits(config.data, config.seed, data), tmp_path / "run", progress=False)
    state = _tensors(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 1


def test_data_shape_must_match_the_model(tmp_path):
    config = tiny_config(epochs=1)
    data = PairedData.on_the_fly(torch.rand(160, 1, 20, 20), LinfNoise(0.3))
    with pytest.raises(ValueError, match=r"\(1, 20, 20\).*input_shape"):
        train_cvae(config, load_splits(config.data, config.seed, data), tmp_path / "run", progress=False)


def test_too_small_dataset_for_the_split(tmp_path):
    config = tiny_config(epochs=1)
    data = PairedData.on_the_fly(torch.rand(50, 1, 28, 28), LinfNoise(0.3))
    with pytest.raises(ValueError, match="split"):
        train_cvae(config, load_splits(config.data, config.seed, data), tmp_path / "run", progress=False)


def test_cuda_request_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        config = tiny_config(epochs=1)
        config.training.device = "cuda"
        train_cvae(config, load_splits(config.data, config.seed), tmp_path / "r", progress=False)


def test_options_may_not_carry_the_distribution():
    with pytest.raises(ConfigError, match="model.distribution"):
        from_dict(Config, {"model": {"options": {"distribution": "gaussian"}}})


def test_data_outside_the_generators_range_is_refused(tmp_path):
    config = tiny_config(epochs=1)
    images = torch.rand(160, 1, 28, 28) * 255
    data = PairedData.on_the_fly(images, LinfNoise(0.3, value_range=(0.0, 255.0)), value_range=(0.0, 255.0))
    with pytest.raises(ValueError, match=r"value range is \[0.0, 255.0\].*rescale the data to \[0, 1\]"):
        train_cvae(config, load_splits(config.data, config.seed, data), tmp_path / "run", progress=False)


def test_prefetch_keeps_order_reraises_and_stops_early():
    from perturbsets.training.loop import prefetch

    assert list(prefetch(iter(range(50)), 3)) == list(range(50))
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise RuntimeError("boom")

    it = prefetch(failing(), 2)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops early: the producer thread must stop too
    count = len(produced)
    import time as _time

    _time.sleep(0.3)
    assert len(produced) <= count + 1


def test_training_minimises_the_batch_sum_so_weight_decay_is_the_papers(tmp_path, monkeypatch):
    """Adam's coupled L2 must act on the batch-summed negative ELBO, as in the paper (Appendix F.1's
    5e-7 for Multi-Illumination): a batch mean would make the same weight_decay B times stronger."""
    from perturbsets.workflows.experiments import load_experiment

    wd = load_experiment("mi-mip5").perturbation_set.training.weight_decay
    assert wd == 5e-7
    config = tiny_config(epochs=1, weight_decay=wd)
    config.training.beta = Schedule.constant(0.5)
    model, reference = train_mod.build_model(config), train_mod.build_model(config)
    monkeypatch.setattr(train_mod, "build_model", lambda _: model)
    calls, grads, groups = [], [], []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        if not grads:
            grads.append([p.grad.clone() for p in self.param_groups[0]["params"]])
            groups.append(dict(self.param_groups[0]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    assert groups[0]["weight_decay"] == wd

    # Reference: the first batch's negative ELBO summed over the batch, from torch.distributions.
    (x, x_tilde), kwargs = calls[0]
    out = reference(x, x_tilde, **kwargs)
    nll = -D.Bernoulli(logits=out.logits, validate_args=False).log_prob(x_tilde).flatten(1).sum(1)
    q, p = out.posterior, out.prior
    kl = D.kl_divergence(D.Normal(q.mean, q.std), D.Normal(p.mean, p.std)).flatten(1).sum(1)
    (nll + 0.5 * kl).sum().backward()
    for ours, (name, param) in zip(grads[0], reference.named_parameters()):
        torch.testing.assert_close(ours, param.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


class Killed(Exception):
    """Stands for a kill of the process at a chosen point."""


def _checkpoint_state(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["perturbsets"])["state"]


def _without_times(history):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


@pytest.mark.parametrize("killed_epoch", [0, 1])
def test_history_agrees_with_the_checkpoint_after_a_kill_before_the_history_write(tmp_path, monkeypatch, killed_epoch):
    from perturbsets.training import logs

    config = tiny_config(epochs=2)
    splits = load_splits(config.data, config.seed)
    reference = train_cvae(config, splits, tmp_path / "reference", progress=False).history
    real_write = logs.write_json

    def killed_after_the_checkpoint(path, obj):
        if path.name == "history.json" and obj and obj[-1]["epoch"] == killed_epoch:
            raise Killed
        real_write(path, obj)

    run = tmp_path / "run"
    monkeypatch.setattr(logs, "write_json", killed_after_the_checkpoint)
    with pytest.raises(Killed):
        train_cvae(config, splits, run, progress=False)
    monkeypatch.setattr(logs, "write_json", real_write)
    assert _checkpoint_state(run / "checkpoints" / "latest.safetensors")["epoch"] == killed_epoch

    train_cvae(config, splits, run, resume=True, progress=False)
    history = json.loads((run / "history.json").read_text())
    state = _checkpoint_state(run / "checkpoints" / "latest.safetensors")
    assert [h["epoch"] for h in history] == [h["epoch"] for h in state["history"]] == [0, 1]
    assert _without_times(history) == _without_times(reference)


def test_a_run_start_removes_the_temporary_files_of_killed_writes(tmp_path):
    import os
    import tempfile

    config = tiny_config(epochs=1)
    run = tmp_path / "run"
    train_cvae(config, load_splits(config.data, config.seed), run, progress=False)
    # What atomic_path leaves when the process is killed mid-write: the same mkstemp names.
    leftovers = []
    for folder, target in ((run, "history.json"), (run / "checkpoints", "latest.safetensors")):
        fd, path = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)
        os.write(fd, b"half written")
        os.close(fd)
        leftovers.append(Path(path))
    kept = [run / "notes.tmp", run / ".notes.tmp"]  # not names our writers make
    for path in kept:
        path.write_text("the user's")
    train_cvae(config, load_splits(config.data, config.seed), run, resume=True, progress=False)
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_text() == "the user's" for p in kept)


def test_every_epoch_is_logged_as_json_lines_and_csv_that_agree_with_history(tmp_path):
    import csv

    config = tiny_config(epochs=2)
    result = train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert lines == history == result.history and len(rows) == 2
    for row, record in zip(rows, history):
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: float(v) for k, v in record.items()})
    assert {"loss", "kl", "beta", "lr", "val_loss", "pairs_per_second"} <= set(history[0])


def test_tensorboard_receives_the_epoch_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(epochs=2)
    train_cvae(config, load_splits(config.data, config.seed), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [0, 1]
