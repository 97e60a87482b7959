"""Tests for perturbsets.config: strict YAML configs, schedules, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from perturbsets.config.io import ConfigError, from_dict, load_config, save_config, to_dict

from perturbsets.config.learn import Config, DataConfig, EvaluationConfig, Schedule, TrainingConfig


FULL = """
name: my_run
seed: 3
data:
  source: npz
  path: data/pairs.npz
  canvas: 28
  perturbation: null
  fixed_perturbations: 5
  split: {train: 0.7, val: 0.2, test: 0.1}
  value_range: [0, 1]
model:
  architecture: mnist_conv
  options: {input_shape: [1, 28, 28]}
  distribution: gaussian
training:
  epochs: 20
  batch_size: 64
  lr: {epochs: [0, 5, 20], values: [0.0, 0.001, 0.0]}
  beta: {epochs: [0, 10], values: [0.0, 1.0]}
  weight_decay: 0.0001
  device: cpu
  select: latest
evaluation:
  radius: p99
  radius_passes: 2
  pgd_steps: 10
  pgd_step_size: 0.05
  eae_samples: 3
  metric: mse
  batch_size: 32
  passes: 2
"""


def _write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_full_config(tmp_path):
    cfg = load_config(_write(tmp_path, FULL), Config)
    assert isinstance(cfg, Config)
    assert cfg.name == "my_run" and cfg.seed == 3
    assert cfg.data.source == "npz" and cfg.data.path == "data/pairs.npz" and cfg.data.canvas == 28
    assert cfg.data.perturbation is None and cfg.data.fixed_perturbations == 5
    assert cfg.data.split == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert cfg.data.value_range == [0.0, 1.0] and all(isinstance(v, float) for v in cfg.data.value_range)
    assert cfg.model.architecture == "mnist_conv" and cfg.model.options == {"input_shape": [1, 28, 28]}
    assert cfg.model.distribution == "gaussian"
    t = cfg.training
    assert (t.epochs, t.batch_size, t.weight_decay, t.device, t.select) == (20, 64, 1e-4, "cpu", "latest")
    assert isinstance(t.lr, Schedule) and t.lr.epochs == [0, 5, 20] and t.lr.values == [0.0, 0.001, 0.0]
    assert t.lr(2.5) == pytest.approx(0.0005)
    e = cfg.evaluation
    assert (e.radius, e.radius_passes, e.pgd_steps, e.pgd_step_size, e.eae_samples, e.metric, e.batch_size, e.passes) == (
        "p99", 2, 10, 0.05, 3, "mse", 32, 2
    )


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, ""), Config)
    assert cfg == Config()
    assert cfg.evaluation.radius == "max" and cfg.model.architecture == "mnist_stn"


def test_numeric_radius_and_int_to_float():
    cfg = from_dict(Config, {"evaluation": {"radius": 3, "pgd_step_size": 1}, "training": {"weight_decay": 0}})
    assert cfg.evaluation.radius == 3.0 and isinstance(cfg.evaluation.radius, float)
    assert isinstance(cfg.evaluation.pgd_step_size, float) and isinstance(cfg.training.weight_decay, float)


@pytest.mark.parametrize(
    "data,dotted,suggestion",
    [
        ({"nmae": "x"}, "nmae", "name"),
        ({"data": {"sourse": "digits"}}, "data.sourse", "data.source"),
        ({"model": {"architecure": "mnist_fc"}}, "model.architecure", "model.architecture"),
        ({"training": {"lrr": {"epochs": [0], "values": [1.0]}}}, "training.lrr", "training.lr"),
        ({"training": {"lr": {"epochs": [0], "valeus": [1.0]}}}, "training.lr.valeus", "training.lr.values"),
        ({"evaluation": {"pgd_stepz": 3}}, "evaluation.pgd_stepz", "evaluation.pgd_steps"),
    ],
)
def test_unknown_keys_name_dotted_path_and_suggestion(tmp_path, data, dotted, suggestion):
    path = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path, Config)
    msg = str(info.value)
    assert f"'{dotted}'" in msg
    assert f"did you mean '{suggestion}'" in msg


@pytest.mark.parametrize(
    "data,match",
    [
        ({"seed": "zero"}, "seed must be an integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"training": {"epochs": "10"}}, "training.epochs must be an integer"),
        ({"training": {"weight_decay": "0.1"}}, "training.weight_decay must be a number"),
        ({"training": {"weight_decay": False}}, "training.weight_decay must be a number"),
        ({"name": 5}, "name must be a string"),
        ({"data": "digits"}, "data must be a mapping"),
        ({"data": {"value_range": 1.0}}, "data.value_range must be a list"),
        ({"data": {"value_range": [0, "one"]}}, r"data.value_range\[1\] must be a number"),
        ({"data": {"split": [0.8, 0.2]}}, "data.split must be a mapping"),
        ({"model": {"options": "big"}}, "model.options must be a mapping"),
        ({"training": {"lr": 0.001}}, "training.lr must be a mapping"),
        ({"evaluation": {"radius": [1, 2]}}, "evaluation.radius"),
        ({"data": {"fixed_perturbations": "five"}}, "data.fixed_perturbations"),
    ],
)
def test_wrong_types(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Config, data)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"evaluation": {"eae_samples": 0}}, "evaluation.eae_samples"),
        ({"evaluation": {"pgd_steps": -1}}, "evaluation.pgd_steps"),
        ({"training": {"select": "median"}}, "training.select"),
        ({"evaluation": {"metric": "l1"}}, "evaluation.metric"),
    ],
)
def test_out_of_range_values(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Config, data)


def test_top_level_must_be_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"), Config)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", Config)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------- Schedule


@pytest.mark.parametrize(
    "epochs,values",
    [([0, 40, 100], [0.0, 8e-4, 0.0]), ([0, 10, 50, 100], [0.0, 0.01, 1.0, 1.0]), ([5], [2.0]), ([0, 3, 3, 6], [1.0, 2.0, 5.0, 0.0])],
)
def test_schedule_matches_numpy_interp(epochs, values):
    s = Schedule(epochs, values)
    for t in np.linspace(-5, 120, 251):
        assert s(float(t)) == np.interp(t, epochs, values)


def test_schedule_hand_values():
    s = Schedule([0, 40, 100], [0.0, 8e-4, 0.0])
    assert s(0) == 0.0 and s(40) == pytest.approx(8e-4) and s(20) == pytest.approx(4e-4)
    assert s(70) == pytest.approx(4e-4) and s(-3) == 0.0 and s(1000) == 0.0
    assert Schedule.constant(0.3)(17.5) == 0.3


def test_schedule_errors():
    with pytest.raises(ConfigError, match="as many epochs as values"):
        Schedule([0, 1], [1.0])
    with pytest.raises(ConfigError, match="as many epochs as values"):
        Schedule([], [])
    with pytest.raises(ConfigError, match="non-decreasing"):
        Schedule([0, 10, 5], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="training.lr.*as many epochs as values"):
        from_dict(Config, {"training": {"lr": {"epochs": [0, 1, 2], "values": [1.0]}}})
    with pytest.raises(ConfigError, match="training.beta.*non-decreasing"):
        from_dict(Config, {"training": {"beta": {"epochs": [3, 1], "values": [1.0, 0.0]}}})


# ---------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    cfg = load_config(_write(tmp_path, FULL), Config)
    out = tmp_path / "sub" / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out, Config)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    # the saved file is plain YAML with every default filled in
    raw = yaml.safe_load(out.read_text())
    assert set(raw) == {"name", "seed", "data", "model", "training", "evaluation"}
    assert raw["training"]["lr"] == {"epochs": [0, 5, 20], "values": [0.0, 0.001, 0.0]}


def test_default_round_trip(tmp_path):
    save_config(Config(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml", Config) == Config()


def test_from_dict_on_sub_configs():
    t = from_dict(TrainingConfig, {"epochs": 7})
    assert t.epochs == 7 and t.batch_size == TrainingConfig().batch_size
    d = from_dict(DataConfig, {"source": "folder", "path": "x"})
    assert d.source == "folder"
    e = from_dict(EvaluationConfig, {"pgd_step_size": None})
    assert e.pgd_step_size is None
    with pytest.raises(ConfigError, match="'foo'"):
        from_dict(EvaluationConfig, {"foo": 1})


def test_training_attack_defaults_to_algorithm_1_and_evaluation_to_the_stronger_attack():
    from perturbsets.config.robust import AttackConfig, EvalAttackConfig, RobustConfig

    train = AttackConfig()
    assert (train.random_start, train.early_stop, train.select, train.steps, train.step_divisor) == (False, False, "final", 7, 5.0)
    evaluation = from_dict(RobustConfig, {"evaluation": {"attack": {"steps": 40}}}).evaluation.attack
    assert isinstance(evaluation, EvalAttackConfig)
    assert (evaluation.early_stop, evaluation.select, evaluation.steps, evaluation.step_divisor) == (True, "best", 40, 20.0)
    with pytest.raises(ConfigError, match="select must be 'final' or 'best'"):
        from_dict(RobustConfig, {"training": {"attack": {"select": "worst"}}})


def test_gaussian_variance_must_be_positive():
    with pytest.raises(ConfigError, match="variance must be > 0"):
        from_dict(Config, {"model": {"distribution": "gaussian", "variance": 0.0}})


@pytest.mark.parametrize(
    "cls, data, match",
    [
        ("Config", {"training": {"lr": {"epochs": [0, 1], "values": [1e-3, -1e-4]}}}, r"training\.lr\.values must be >= 0"),
        ("Config", {"training": {"lr": {"epochs": [0, 1], "values": [float("nan"), 0.0]}}}, r"training\.lr: .*finite"),
        ("Config", {"training": {"lr": {"epochs": [0, float("inf")], "values": [1e-3, 0.0]}}}, r"training\.lr: .*finite"),
        ("Config", {"training": {"beta": {"epochs": [0, 1], "values": [0.0, -0.5]}}}, r"training\.beta\.values must be >= 0"),
        ("Config", {"training": {"beta": {"epochs": [0], "values": [float("nan")]}}}, r"training\.beta: .*finite"),
        ("RobustConfig", {"training": {"lr": {"epochs": [0, 1], "values": [-1.0, 0.0]}}}, r"training\.lr\.values must be >= 0"),
        ("RobustConfig", {"training": {"lr": {"epochs": [0], "values": [float("nan")]}}}, r"training\.lr: .*finite"),
    ],
)  # fmt: skip
def test_negative_or_non_finite_schedules_are_refused_naming_the_key(cls, data, match):
    from perturbsets.config.robust import RobustConfig

    with pytest.raises(ConfigError, match=match):
        from_dict({"Config": Config, "RobustConfig": RobustConfig}[cls], data)


def test_a_nan_learning_rate_in_yaml_is_refused(tmp_path):
    path = _write(tmp_path, "training:\n  lr: {epochs: [0, 10], values: [.nan, 0.0]}\n")
    with pytest.raises(ConfigError, match=r"training\.lr: .*finite"):
        load_config(path, Config)
