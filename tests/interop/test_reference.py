"""Loading the authors' released ``.pth`` checkpoints (perturbsets.reference)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import reference_listing
from torch import nn

from perturbsets import PerturbationSet
from perturbsets._util.checkpoint import CheckpointError
from perturbsets.classifiers.architectures import build_classifier
from perturbsets.cvae.registry import build_cvae
from perturbsets.interop.reference import (
    REFERENCE_ARCHITECTURES,
    classifier_from_reference,
    load_reference_state_dict,
    perturbation_set_from_reference,
)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-default BatchNorm affine parameters and running statistics, so buffers matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _save_authors_format(path, model_or_state, **extra):
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    torch.save({"model_state_dict": state, "optimizer_state_dict": {}, "epoch": 3, "val_loss": 1.0, **extra}, path)
    return path


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    source = _randomise(build_cvae("cifar10_rectangle"), seed=1)
    path = _save_authors_format(tmp_path_factory.mktemp("ref") / "checkpoint_latest.pth", source)
    return source, path


@pytest.fixture(scope="module")
def conv_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    source = build_cvae("mnist_conv", **REFERENCE_ARCHITECTURES["mnist_conv"]).eval()
    path = _save_authors_format(tmp_path_factory.mktemp("ref") / "mnist_conv.pth", source)
    return source, path


def test_cifar_checkpoint_reproduces_source_outputs(cifar_checkpoint):
    source, path = cifar_checkpoint
    pset = perturbation_set_from_reference(path, "cifar10_rectangle", radius=28.0, metrics={"note": "test"})
    assert isinstance(pset, PerturbationSet)
    assert pset.architecture == "cifar10_rectangle" and pset.radius == 28.0
    assert pset.options == REFERENCE_ARCHITECTURES["cifar10_rectangle"] and pset.metrics == {"note": "test"}
    assert pset.latent_dim == 512 and pset.input_shape == (3, 32, 32)
    assert not pset.cvae.training
    for key, value in source.state_dict().items():
        assert torch.equal(pset.cvae.state_dict()[key], value), key

    g = torch.Generator().manual_seed(2)
    x, x_tilde, z = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g), torch.randn(2, 512, generator=g)
    with torch.no_grad():
        p_src, p_ref = source.prior_params(x), pset.cvae.prior_params(x)
        assert torch.equal(p_src.mean, p_ref.mean) and torch.equal(p_src.logvar, p_ref.logvar)
        q_src, q_ref = source.posterior_params(x, x_tilde), pset.cvae.posterior_params(x, x_tilde)
        assert torch.equal(q_src.mean, q_ref.mean) and torch.equal(q_src.logvar, q_ref.logvar)
        assert torch.equal(source.generate(z, x), pset.cvae.generate(z, x))
        u = torch.randn(2, 512, generator=g)
        expected = source.generate(p_src.mean + u * p_src.std, x)
        assert torch.allclose(pset.perturb(x, u), expected)


def test_loaded_set_survives_save_and_load(conv_checkpoint, tmp_path):
    _, path = conv_checkpoint
    pset = perturbation_set_from_reference(path, "mnist_conv", radius=2.5)
    pset.save(tmp_path / "set")
    again = PerturbationSet.load(tmp_path / "set")
    assert again.architecture == "mnist_conv" and again.radius == 2.5
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    u = torch.randn(2, 128 * 7 * 7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again.perturb(x, u), pset.perturb(x, u))
    assert isinstance(again.cvae.prior.logvar_act, nn.Identity)  # the linear head survives the round trip


def test_bare_and_module_prefixed_state_dicts_load(conv_checkpoint, tmp_path):
    source, _ = conv_checkpoint
    state = source.state_dict()
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pth")
    for name in ("bare.pth", "dp.pth"):
        loaded = load_reference_state_dict(tmp_path / name)
        assert list(loaded) == list(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        pset = perturbation_set_from_reference(tmp_path / name, "mnist_conv", radius=1.0)
        x = torch.rand(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(pset.cvae.prior_params(x).mean, source.prior_params(x).mean)


def test_numpy_scalars_in_metadata_are_accepted(conv_checkpoint, tmp_path):
    source, _ = conv_checkpoint
    path = _save_authors_format(tmp_path / "np.pth", source, test_loss=np.float64(0.25), step=np.int64(9))
    assert set(load_reference_state_dict(path)) == set(source.state_dict())


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _LocalObject:
    pass


def test_pickled_code_is_refused_and_never_runs(conv_checkpoint, tmp_path):
    source, _ = conv_checkpoint
    # Control: the payload really does run under an unrestricted unpickler.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()

    marker = tmp_path / "marker"
    path = _save_authors_format(tmp_path / "evil.pth", source, val_loss=_Payload(marker))
    with pytest.raises(CheckpointError, match="non-tensor.*will not be unpickled unsafely"):
        load_reference_state_dict(path)
    with pytest.raises(CheckpointError, match="non-tensor"):
        perturbation_set_from_reference(path, "mnist_conv", radius=1.0)
    assert not marker.exists()

    torch.save({"model_state_dict": source.state_dict(), "config": _LocalObject()}, tmp_path / "obj.pth")
    with pytest.raises(CheckpointError, match="non-tensor"):
        load_reference_state_dict(tmp_path / "obj.pth")


def test_missing_unexpected_and_misshaped_keys_are_listed(conv_checkpoint, tmp_path):
    source, _ = conv_checkpoint
    state = dict(source.state_dict())
    del state["generator.conv5.weight"], state["prior.conv31.bias"]
    state["generator.extra.weight"] = torch.zeros(1)
    state["recognition.conv1.weight"] = torch.zeros(32, 1, 3, 3)
    path = _save_authors_format(tmp_path / "partial.pth", state)
    with pytest.raises(CheckpointError) as info:
        perturbation_set_from_reference(path, "mnist_conv", radius=1.0)
    message = str(info.value)
    assert "missing keys (2)" in message and "generator.conv5.weight" in message and "prior.conv31.bias" in message
    assert "unexpected keys (1)" in message and "generator.extra.weight" in message
    assert "recognition.conv1.weight (32, 1, 3, 3) ≠ (32, 2, 3, 3)" in message
    with pytest.raises(CheckpointError, match="missing keys"):
        perturbation_set_from_reference(path, "mnist_fc", radius=1.0)  # wrong architecture altogether


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reference_state_dict(tmp_path / "nope.pth")
    torch.save({"optimizer_state_dict": {}, "epoch": 3}, tmp_path / "no_model.pth")
    with pytest.raises(CheckpointError, match="model_state_dict.*'optimizer_state_dict', 'epoch'"):
        load_reference_state_dict(tmp_path / "no_model.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_reference_state_dict(tmp_path / "junk.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_reference_state_dict(tmp_path / "tensor.pth")


def test_unknown_architecture_lists_known_ones(tmp_path):
    with pytest.raises(ValueError) as info:
        perturbation_set_from_reference(tmp_path / "whatever.pth", "cifar10_rectangel", radius=1.0)
    message = str(info.value)
    assert "did you mean 'cifar10_rectangle'" in message
    for name in ("mnist_fc", "mnist_conv", "mnist_stn", "cifar10_rectangle"):
        assert name in message
    with pytest.raises(ValueError, match="radius"):
        torch.save(build_cvae("mnist_conv").state_dict(), tmp_path / "c.pth")
        perturbation_set_from_reference(tmp_path / "c.pth", "mnist_conv", radius=0.0)


def test_reference_options():
    assert set(REFERENCE_ARCHITECTURES) == {"mnist_fc", "mnist_conv", "mnist_stn", "cifar10_rectangle", "mi_unet"}
    for arch in ("mnist_fc", "mnist_conv", "mnist_stn"):
        assert REFERENCE_ARCHITECTURES[arch]["logvar"] == "linear"
        assert REFERENCE_ARCHITECTURES[arch]["distribution"] == "bernoulli"
    assert REFERENCE_ARCHITECTURES["cifar10_rectangle"]["logvar"] == "scaled_tanh"
    assert REFERENCE_ARCHITECTURES["cifar10_rectangle"]["distribution"] == "gaussian"


@pytest.mark.parametrize(
    "arch, head, inputs",
    [("mnist_fc", "fc22", (1, 28, 28)), ("mnist_conv", "conv32", (1, 28, 28)), ("mnist_stn", "fc32", (1, 42, 42))],
)
def test_mnist_reference_models_have_linear_logvar_heads(arch, head, inputs):
    torch.manual_seed(6)
    model = build_cvae(arch, **REFERENCE_ARCHITECTURES[arch]).eval()
    _, entries = reference_listing(arch)
    # Same keys and shapes (strict loading ignores order; mnist_stn's Block registers bn/conv in another order).
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dict(entries)
    x, x_tilde = torch.rand(2, *inputs), torch.rand(2, *inputs)
    raw = {}
    for name, net in (("prior", model.prior), ("recognition", model.recognition)):
        getattr(net, head).register_forward_hook(lambda m, i, out, name=name: raw.__setitem__(name, out))
    with torch.no_grad():
        prior = model.prior_params(x)
        posterior = model.posterior_params(x, x_tilde)
    assert torch.equal(prior.logvar, raw["prior"])
    assert torch.equal(posterior.logvar, raw["recognition"])


def test_wideresnet_checkpoint_loads(tmp_path):
    torch.manual_seed(7)
    source = _randomise(build_classifier("wideresnet_28_10"), seed=8)
    _, entries = reference_listing("wideresnet_28_10_cifar10")
    assert [(k, tuple(v.shape)) for k, v in source.state_dict().items()] == entries
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model_state_dict": source.state_dict(), "optimizer_state_dict": {}, "epoch": 99, "test_loss": 0.31}, path)
    model = classifier_from_reference(path)
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    with pytest.raises(CheckpointError, match="unexpected keys.*0.mu"):
        classifier_from_reference(path, normalize=False)


def test_unet_checkpoint_loads(tmp_path):
    torch.manual_seed(9)
    source = _randomise(build_classifier("unet"), seed=10)
    path = tmp_path / "unet.pth"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 1, "test_loss": 0.5}, path)
    model = classifier_from_reference(path, "unet")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    with pytest.raises(ValueError, match="unknown classifier"):
        classifier_from_reference(path, "resnet50")


def test_mi_checkpoint_loads_at_another_resolution(tmp_path, monkeypatch):
    """The authors' MIP4/MIP3 sets are the MIP5 architecture at a larger input_shape (scaled-down options here)."""
    small = {"input_shape": (3, 31, 46), "chs": (8, 8, 8, 8, 8), "latent_dim": (4, 4, 2, 2, 2),
             "pool": ((31, 46), (15, 23), (7, 11), (3, 5), (1, 2)), "distribution": "gaussian", "logvar": "scaled_tanh"}  # fmt: skip
    monkeypatch.setitem(REFERENCE_ARCHITECTURES, "mi_unet", small)
    torch.manual_seed(0)
    source = build_cvae("mi_unet", **small)
    torch.save({"model_state_dict": source.state_dict(), "epoch": 999}, tmp_path / "checkpoint_999.pth")
    pset = perturbation_set_from_reference(tmp_path / "checkpoint_999.pth", "mi_unet", radius=25.0, input_shape=(3, 62, 93))
    assert pset.input_shape == (3, 62, 93)
    x = torch.rand(2, 3, 62, 93)
    assert pset.sample(x, 3).shape == (2, 3, 3, 62, 93)
    for key, value in source.state_dict().items():
        assert torch.equal(pset.cvae.state_dict()[key], value)
