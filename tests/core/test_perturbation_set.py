"""Tests for perturbsets.perturbation_set: the set's operations and safe persistence."""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
import re

import pytest
import torch
from safetensors.torch import load_file

from perturbsets import __version__
from perturbsets._util.checkpoint import CheckpointError
from perturbsets.cvae.model import CVAE
from builders import linear_set
from perturbsets.core.latent import project, sample_truncated_normal
from perturbsets.cvae.registry import build_cvae
from perturbsets.cvae.mnist import FCEncoder, FCGenerator
from perturbsets.core.perturbation_set import MANIFEST, PerturbationSet
from perturbsets.core.radius import LatentNormStats



SHAPE = (1, 8, 8)
OPTIONS = {"input_shape": [1, 8, 8], "hidden": 16, "latent_dim": 4}


def _pset(radius: float = 1.5, seed: int = 0, dtype=torch.float32, **kw) -> PerturbationSet:
    torch.manual_seed(seed)
    cvae = build_cvae("mnist_fc", **OPTIONS).to(dtype)
    return PerturbationSet(cvae, radius, architecture="mnist_fc", options=dict(OPTIONS), **kw)


def _data(n: int = 5, seed: int = 1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen, dtype=dtype), torch.rand(n, *SHAPE, generator=gen, dtype=dtype)


def _by_hand_encoding(cvae: CVAE, x, xt):
    mu_p, logvar_p = cvae.prior(x)
    mu_q, _ = cvae.recognition(x, xt)
    return ((mu_q - mu_p) / torch.sqrt(torch.exp(logvar_p))).flatten(1)


def _by_hand_perturb(cvae: CVAE, x, u):
    mu_p, logvar_p = cvae.prior(x)
    z = mu_p + u.view_as(mu_p) * torch.sqrt(torch.exp(logvar_p))
    return torch.sigmoid(cvae.generator(z, x))


def _by_hand_project(u, radius):
    norms = u.norm(dim=1, keepdim=True)
    return u * torch.clamp(radius / norms, max=1.0)


# ---------------------------------------------------------------------------- construction


def test_construction_and_properties():
    p = _pset(radius=2)
    assert p.radius == 2.0 and isinstance(p.radius, float)
    assert p.latent_dim == 4 and p.latent_shape == (4,) and p.input_shape == SHAPE
    assert not p.cvae.training
    assert not any(q.requires_grad for q in p.cvae.parameters())
    assert p.device == torch.device("cpu")
    assert "mnist_fc" in repr(p)


@pytest.mark.parametrize("radius", [0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_construction_rejects_bad_radius(radius):
    torch.manual_seed(0)
    cvae = build_cvae("mnist_fc", **OPTIONS)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        PerturbationSet(cvae, radius)


def test_construction_rejects_non_cvae():
    with pytest.raises(TypeError, match="CVAE"):
        PerturbationSet(torch.nn.Linear(2, 2), 1.0)


# ---------------------------------------------------------------------------- perturb / encode


def test_perturb_shape_and_formula():
    p = _pset()
    x, _ = _data()
    u = torch.randn(5, 4)
    out = p.perturb(x, u)
    assert out.shape == (5, *SHAPE)
    torch.testing.assert_close(out, _by_hand_perturb(p.cvae, x, u))
    # u = 0 gives the generator at the prior mean
    mu_p, _ = p.cvae.prior(x)
    torch.testing.assert_close(p.perturb(x, torch.zeros(5, 4)), torch.sigmoid(p.cvae.generator(mu_p, x)))


def test_perturb_gradcheck_in_u():
    p = _pset(dtype=torch.float64)
    x, _ = _data(2, dtype=torch.float64)
    u = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: p.perturb(x, t), (u,), eps=1e-6, atol=1e-5)


def test_perturb_gradient_flows_although_weights_frozen():
    p = _pset()
    x, _ = _data(3)
    u = torch.randn(3, 4, requires_grad=True)
    p.perturb(x, u).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


def test_encode_matches_subnetworks():
    p = _pset()
    x, xt = _data()
    u = p.encode(x, xt)
    assert u.shape == (5, 4)
    with torch.no_grad():
        torch.testing.assert_close(u, _by_hand_encoding(p.cvae, x, xt))


def test_encode_4d_latent_is_flattened():
    torch.manual_seed(0)
    p = PerturbationSet(build_cvae("mnist_conv", input_shape=SHAPE), 3.0)
    x, xt = _data(2)
    u = p.encode(x, xt)
    assert u.shape == (2, 128 * 2 * 2)
    with torch.no_grad():
        torch.testing.assert_close(u, _by_hand_encoding(p.cvae, x, xt))
        torch.testing.assert_close(p.perturb(x, u), _by_hand_perturb(p.cvae, x, u))


def test_bad_inputs():
    p = _pset()
    x, xt = _data()
    with pytest.raises(ValueError, match=r"takes \(N, 1, 8, 8\)"):
        p.perturb(torch.rand(5, 1, 9, 9), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"takes \(N, 1, 8, 8\)"):
        p.encode(x, torch.rand(5, 64))
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        p.perturb(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        p.perturb(x, torch.zeros(4, 4))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        p.sample(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        p.sample(x.numpy())


# ---------------------------------------------------------------------------- sample / interpolate


def test_sample_shape_and_draws_inside_ball():
    p = _pset(radius=0.8)
    x, _ = _data(3)
    out = p.sample(x, n=4, generator=torch.Generator().manual_seed(7))
    assert out.shape == (3, 4, *SHAPE)
    # the same generator state drawn directly gives the latent points used
    u = sample_truncated_normal(12, 4, 0.8, torch.Generator().manual_seed(7))
    assert u.norm(dim=1).max() <= 0.8 * (1 + 1e-6)
    with torch.no_grad():
        expected = _by_hand_perturb(p.cvae, x.repeat_interleave(4, dim=0), u).view(3, 4, *SHAPE)
    torch.testing.assert_close(out, expected)


def test_sample_seeded_determinism_and_errors():
    p = _pset()
    x, _ = _data(2)
    a = p.sample(x, 3, torch.Generator().manual_seed(1))
    b = p.sample(x, 3, torch.Generator().manual_seed(1))
    c = p.sample(x, 3, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="n must be >= 1"):
        p.sample(x, 0)


def test_interpolate_endpoints_and_path():
    p0 = _pset()
    x, xa = _data(4, seed=2)
    _, xb = _data(4, seed=3)
    with torch.no_grad():
        ua, ub = _by_hand_encoding(p0.cvae, x, xa), _by_hand_encoding(p0.cvae, x, xb)
    norms = torch.cat([ua.norm(dim=1), ub.norm(dim=1)])
    radius = float(norms.median())  # some endpoints inside, some projected
    p = PerturbationSet(p0.cvae, radius)
    out = p.interpolate(x, xa, xb, steps=5)
    assert out.shape == (4, 5, *SHAPE)
    pa, pb = _by_hand_project(ua, radius), _by_hand_project(ub, radius)
    with torch.no_grad():
        torch.testing.assert_close(out[:, 0], _by_hand_perturb(p.cvae, x, pa))
        torch.testing.assert_close(out[:, -1], _by_hand_perturb(p.cvae, x, pb))
        torch.testing.assert_close(out[:, 2], _by_hand_perturb(p.cvae, x, 0.5 * (pa + pb)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        p.interpolate(x, xa, xb, steps=1)


# ---------------------------------------------------------------------------- save / load


def _weights_files(directory):
    return sorted(q.name for q in directory.glob("*.safetensors"))


def test_save_load_round_trip(tmp_path):
    metrics = {"enc_ae": {"mean": 0.1, "std": 0.01, "count": 5}, "note": "x"}
    p = _pset(radius=1.25, value_range=(-1.0, 2.0), metrics=metrics)
    d = p.save(tmp_path / "set")
    manifest = json.loads((d / MANIFEST).read_text())
    q = PerturbationSet.load(d)
    x, xt = _data()
    u = torch.randn(5, 4)
    assert torch.equal(q.perturb(x, u), p.perturb(x, u))
    assert torch.equal(q.encode(x, xt), p.encode(x, xt))
    assert q.radius == p.radius == manifest["radius"] == 1.25
    assert q.input_shape == p.input_shape and list(p.input_shape) == manifest["input_shape"]
    assert q.latent_shape == p.latent_shape and list(p.latent_shape) == manifest["latent_shape"]
    assert q.architecture == "mnist_fc" == manifest["architecture"]["name"]
    assert q.options == p.options == manifest["architecture"]["options"]
    assert q.metrics == metrics == manifest["metrics"]
    assert q.value_range == (-1.0, 2.0) and manifest["value_range"] == [-1.0, 2.0]
    assert manifest["library_version"] == __version__
    assert manifest["distribution"] == "bernoulli"
    for k, v in p.cvae.state_dict().items():
        assert torch.equal(q.cvae.state_dict()[k], v)
    # saving the loaded set reproduces the same manifest
    q.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / MANIFEST).read_text()) == manifest


def test_round_trip_stn_with_batchnorm_buffers(tmp_path):
    torch.manual_seed(0)
    options = {"input_shape": [1, 12, 12], "latent_dim": 8}
    cvae = build_cvae("mnist_stn", **options)
    cvae.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their initial values
        cvae(torch.rand(4, 1, 12, 12), torch.rand(4, 1, 12, 12))
    p = PerturbationSet(cvae, 2.0, architecture="mnist_stn", options=options)
    q = PerturbationSet.load(p.save(tmp_path))
    x = torch.rand(2, 1, 12, 12)
    u = torch.randn(2, 8)
    assert torch.equal(q.perturb(x, u), p.perturb(x, u))
    assert q.cvae.generator.block.bn1.num_batches_tracked.item() == 1


def test_manifest_sha256(tmp_path):
    p = _pset()
    d = p.save(tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    weights = d / manifest["weights"]["file"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["weights"]["sha256"] == digest
    assert digest[:16] in weights.name
    # the weights file is a plain safetensors file with the CVAE's state dict
    tensors = load_file(str(weights))
    assert set(tensors) == set(p.cvae.state_dict())


def test_tampered_weights_fail_checksum(tmp_path):
    d = _pset().save(tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    weights = d / manifest["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip a byte of tensor data: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        PerturbationSet.load(d)


@pytest.mark.parametrize("name", ["../victim.safetensors", "/tmp/victim.safetensors", "sub/w.safetensors", "..", "", 7])
def test_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path, name):
    """A tampered manifest must neither make load read, nor save delete, a file outside the set."""
    d = _pset().save(tmp_path / "set")
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"keep me")
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["weights"]["file"] = name
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="only name a file inside the set folder"):
        PerturbationSet.load(d)
    _pset().save(d)  # saving over it replaces the manifest and touches nothing outside the folder
    assert victim.read_bytes() == b"keep me"
    assert PerturbationSet.load(d).radius == 1.5


def test_missing_weights_file(tmp_path):
    d = _pset().save(tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    (d / manifest["weights"]["file"]).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        PerturbationSet.load(d)


class _SideEffect:
    """Unpickling this object creates ``path`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("how", ["torch_zip", "torch_legacy", "pickle"])
def test_pickle_in_place_of_weights_is_refused_and_never_unpickled(tmp_path, how):
    d = _pset().save(tmp_path / "set")
    manifest = json.loads((d / MANIFEST).read_text())
    weights = d / manifest["weights"]["file"]
    marker = tmp_path / "unpickled.marker"
    payload = {"state": _SideEffect(str(marker))}
    if how == "torch_zip":
        torch.save(payload, weights)
    elif how == "torch_legacy":
        torch.save(payload, weights, _use_new_zipfile_serialization=False)
    else:
        weights.write_bytes(pickle.dumps(payload, protocol=4))
    # sanity check: the marker mechanism works
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="pickle"):
        PerturbationSet.load(d)
    assert not marker.exists()


def test_not_a_saved_set_and_missing_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a saved perturbation set"):
        PerturbationSet.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PerturbationSet.load(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PerturbationSet.load(tmp_path / "bad")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        PerturbationSet.load(tmp_path / "other")


def test_newer_format_version_refused(tmp_path):
    d = _pset().save(tmp_path)
    manifest = json.loads((d / MANIFEST).read_text())
    manifest["format_version"] = 99
    (d / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="newer"):
        PerturbationSet.load(d)


def test_saving_twice_keeps_one_weights_file_and_newest_loads(tmp_path):
    d = tmp_path / "set"
    _pset(seed=0).save(d)
    first = _weights_files(d)
    newer = _pset(seed=1, radius=0.9)
    newer.save(d)
    files = _weights_files(d)
    assert len(files) == 1 and files != first
    assert not list(d.glob("*.partial")) and not list(d.glob(".*tmp"))
    q = PerturbationSet.load(d)
    x, _ = _data()
    u = torch.randn(5, 4)
    assert torch.equal(q.perturb(x, u), newer.perturb(x, u)) and q.radius == 0.9
    # identical weights saved again: still exactly one file, still loadable
    newer.save(d)
    assert _weights_files(d) == files
    PerturbationSet.load(d)


def _custom_cvae(seed: int = 0) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(FCEncoder(64, 8, 3, "linear"), FCEncoder(128, 8, 3, "linear"), FCGenerator(SHAPE, 8, 3), input_shape=SHAPE, latent_shape=(3,))


def test_custom_module_set_needs_cvae_to_load(tmp_path):
    p = PerturbationSet(_custom_cvae(0), 1.0)
    d = p.save(tmp_path)
    assert json.loads((d / MANIFEST).read_text())["architecture"]["name"] is None
    with pytest.raises(ValueError, match="cvae="):
        PerturbationSet.load(d)
    q = PerturbationSet.load(d, cvae=_custom_cvae(5))
    x, _ = _data()
    u = torch.randn(5, 3)
    assert torch.equal(q.perturb(x, u), p.perturb(x, u))


def test_load_into_wrong_architecture(tmp_path):
    d = PerturbationSet(_custom_cvae(0), 1.0).save(tmp_path)
    torch.manual_seed(0)
    wrong = build_cvae("mnist_fc", **OPTIONS)
    with pytest.raises(CheckpointError, match="do not fit"):
        PerturbationSet.load(d, cvae=wrong)


def test_side_effect_marker_mechanism_really_fires(tmp_path):
    # Guards the pickle test above: unpickling the payload does create the marker.
    marker = tmp_path / "fired.marker"
    pickle.loads(pickle.dumps({"state": _SideEffect(str(marker))}))
    assert marker.exists()


def test_load_when_options_include_distribution(tmp_path):
    # regression: load() once passed distribution= twice (from the manifest and from options)
    opts = dict(OPTIONS, distribution="gaussian")
    torch.manual_seed(0)
    p = PerturbationSet(build_cvae("mnist_fc", **opts), 1.0, architecture="mnist_fc", options=opts)
    q = PerturbationSet.load(p.save(tmp_path))
    assert q.cvae.distribution == "gaussian"


def test_protocol0_pickle_is_refused_without_unpickling(tmp_path):
    # protocol-0 pickles have no \x80 magic; they must still be rejected (as invalid safetensors)
    d = _pset().save(tmp_path / "set")
    weights = d / json.loads((d / MANIFEST).read_text())["weights"]["file"]
    marker = tmp_path / "p0.marker"
    weights.write_bytes(pickle.dumps({"state": _SideEffect(str(marker))}, protocol=0))
    with pytest.raises(CheckpointError):
        PerturbationSet.load(d)
    assert not marker.exists()


def test_tampered_header_is_refused(tmp_path):
    d = _pset().save(tmp_path)
    weights = d / json.loads((d / MANIFEST).read_text())["weights"]["file"]
    data = bytearray(weights.read_bytes())
    data[12] ^= 0x01  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        PerturbationSet.load(d)


# ---------------------------------------------------------------------------- the conditioned view


def test_conditioned_view_decodes_like_the_formula_written_out():
    pset = _pset(dtype=torch.float64)
    x, xt = _data(dtype=torch.float64)
    u = torch.randn(5, 4, dtype=torch.float64)
    mu, logvar = pset.cvae.prior(x)
    by_hand = torch.sigmoid(pset.cvae.generator(mu + u * torch.exp(0.5 * logvar), x))
    cond = pset.condition(x)
    torch.testing.assert_close(cond.decode(u), by_hand)
    torch.testing.assert_close(torch.sigmoid(cond.decode_logits(u)), by_hand)
    mu_q, _ = pset.cvae.recognition(x, xt)
    torch.testing.assert_close(cond.encode(xt), (mu_q - mu) / torch.exp(0.5 * logvar))


def test_conditioned_view_select_and_repeat_equal_conditioning_the_gathered_inputs():
    pset = _pset(dtype=torch.float64)
    x, _ = _data(dtype=torch.float64)
    index = torch.tensor([3, 0, 3, 4])
    u = torch.randn(4, 4, dtype=torch.float64)
    torch.testing.assert_close(pset.condition(x).select(index).decode(u), pset.condition(x[index]).decode(u))
    u = torch.randn(15, 4, dtype=torch.float64)
    torch.testing.assert_close(
        pset.condition(x).repeat(3).decode(u), pset.condition(x.repeat_interleave(3, dim=0)).decode(u)
    )


def test_conditioned_view_gradcheck_in_u():
    pset = _pset(dtype=torch.float64)
    x, _ = _data(n=2, dtype=torch.float64)
    cond = pset.condition(x)
    u = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: cond.decode(v), (u,))


def test_conditioned_view_bad_input():
    pset = _pset()
    x, xt = _data()
    cond = pset.condition(x)
    with pytest.raises(ValueError, match=r"expected \(5, 4\)"):
        cond.decode(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        cond.decode([[0.0] * 4] * 5)
    with pytest.raises(ValueError, match="x_tilde has 3 examples but x has 5"):
        cond.encode(xt[:3])
    with pytest.raises(ValueError, match="m must be >= 1"):
        cond.repeat(0)


# ---------------------------------------------------------------------------- latent-norm statistics and radii


def test_latent_norms_round_trip_and_resolve_percentiles(tmp_path):
    stats = LatentNormStats(count=3, mean=1.0, std=0.5, min=0.5, max=1.5, percentiles={"p50": 1.0, "p75": 1.25})
    pset = _pset(radius=1.5, latent_norms=stats)
    loaded = PerturbationSet.load(pset.save(tmp_path / "set"))
    assert loaded.latent_norms == stats
    assert loaded.resolve_radius("p75") == 1.25 and loaded.resolve_radius("max") == 1.5 and loaded.resolve_radius(0.3) == 0.3
    with pytest.raises(ValueError, match="stores no such percentile"):
        loaded.resolve_radius("p90")


def test_sets_saved_before_latent_norms_was_a_field_still_resolve_percentiles(tmp_path):
    stats = {"count": 3, "mean": 1.0, "std": 0.5, "min": 0.5, "max": 1.5, "percentiles": {"p50": 1.0}}
    directory = _pset(metrics={"latent_norms": stats}).save(tmp_path / "set")
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["latent_norms"]  # the manifest layout of earlier versions
    (directory / MANIFEST).write_text(json.dumps(manifest))
    assert PerturbationSet.load(directory).resolve_radius("p50") == 1.0


# ---------------------------------------------------------------------------- the analytic linear set S(x) = {x + W u}


def test_linear_set_operations_have_their_closed_forms(device):
    pset = linear_set(dim=2, shape=(1, 2, 2), radius=1.5).to(device)
    w = pset.cvae.generator.w
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(6, 1, 2, 2, generator=gen).to(device)
    u_true = torch.randn(6, 2, generator=gen).to(device)
    x_tilde = x + (u_true @ w.T).view_as(x)
    torch.testing.assert_close(pset.encode(x, x_tilde), u_true, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pset.perturb(x, u_true), x_tilde)
    samples = pset.sample(x, n=7, generator=torch.Generator(device=device).manual_seed(0))
    offsets = (samples - x.unsqueeze(1)).flatten(2)  # = W u for each draw
    u = offsets @ torch.linalg.pinv(w).T
    assert samples.shape == (6, 7, 1, 2, 2) and bool((u.norm(dim=2) <= 1.5 * (1 + 1e-5)).all())
    path = pset.interpolate(x, x, x_tilde, steps=3)
    torch.testing.assert_close(path[:, 1], x + 0.5 * (project(u_true, 1.5) @ w.T).view_as(x), atol=1e-5, rtol=1e-5)


def _save_in_subprocess(directory, seed):
    _pset(seed=seed).save(directory)


def test_concurrent_saves_leave_one_loadable_set_and_no_stray_files(tmp_path):
    import multiprocessing

    directory = tmp_path / "set"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_in_subprocess, args=(directory, seed)) for seed in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    loaded = PerturbationSet.load(directory)
    weights = sorted(p.name for p in directory.glob("weights-*.safetensors"))
    assert weights == [json.loads((directory / MANIFEST).read_text())["weights"]["file"]]
    assert not list(directory.glob("*.tmp")) and not list(directory.glob(".*.tmp"))
    candidates = [_pset(seed=seed).cvae.state_dict() for seed in range(4)]
    assert any(all(torch.equal(loaded.cvae.state_dict()[k], c[k]) for k in c) for c in candidates)


def test_a_save_cleans_up_what_interrupted_saves_left(tmp_path):
    directory = _pset().save(tmp_path / "set")
    (directory / ".weights-0123.safetensors.abc.tmp").write_bytes(b"half written")
    (directory / "weights-deadbeefdeadbeef.safetensors").write_bytes(b"written, manifest never swapped")
    _pset(seed=1).save(directory)
    names = sorted(p.name for p in directory.iterdir() if not p.name.startswith(".perturbsets.lock"))
    assert names == sorted([MANIFEST, json.loads((directory / MANIFEST).read_text())["weights"]["file"]])


@pytest.mark.parametrize("dtype,fix", [(torch.float64, "x.to(torch.float32)"), (torch.uint8, "x.float() / 255")])
def test_inputs_of_another_dtype_are_refused_with_the_fix(dtype, fix):
    pset = _pset()
    x = torch.zeros(2, *SHAPE, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(fix)):
        pset.sample(x)


def test_non_finite_latent_points_are_refused():
    pset = _pset()
    x, _ = _data(n=2)
    with pytest.raises(ValueError, match="u contains NaN or Inf"):
        pset.perturb(x, torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0] * 4]))


def test_decode_draws_broadcasts_like_repeating_the_inputs():
    pset = _pset(dtype=torch.float64)
    x, _ = _data(n=3, dtype=torch.float64)
    u = torch.randn(3, 4, 4, dtype=torch.float64)
    cond = pset.condition(x)
    torch.testing.assert_close(cond.decode_draws(u), cond.repeat(4).decode(u.reshape(12, 4)))
    with pytest.raises(ValueError, match=r"expected \(3, m, 4\)"):
        cond.decode_draws(u.reshape(12, 4))


def _tiny_mi_set() -> PerturbationSet:
    torch.manual_seed(0)
    cvae = build_cvae("mi_unet", input_shape=(3, 16, 24), chs=(4, 4, 4, 4, 4), latent_dim=(3, 2, 2, 1, 1), pool=((16, 24), (8, 12), (4, 6), (2, 3), (1, 1)))
    return PerturbationSet(cvae.double(), radius=2.0)


def test_generator_context_is_computed_once_per_view_and_decodes_like_the_plain_generator(monkeypatch):
    pset = _tiny_mi_set()
    gen = pset.cvae.generator
    x = torch.rand(3, 3, 16, 24, dtype=torch.float64)
    u = torch.randn(3, 9, dtype=torch.float64)
    mu, logvar = pset.cvae.prior(x)
    by_hand = torch.sigmoid(gen(mu + u * torch.exp(0.5 * logvar), x))
    calls = []
    original = gen.condition
    monkeypatch.setattr(gen, "condition", lambda inp: calls.append(inp.shape[0]) or original(inp))
    cond = pset.condition(x)
    for _ in range(3):
        torch.testing.assert_close(cond.decode(u), by_hand)
    assert calls == [3]  # the U-Net's encoder half ran once for three decodes
    many = torch.randn(3, 4, 9, dtype=torch.float64)
    torch.testing.assert_close(cond.decode_draws(many), cond.repeat(4).decode(many.reshape(12, 9)))
    one = cond.select(slice(1, 2))
    torch.testing.assert_close(one.decode_draws(many[1:2]), pset.condition(x[1:2]).repeat(4).decode(many[1].reshape(4, 9)))
    assert calls == [3, 1]  # views derived after the first decode reuse its context; a fresh view computes its own
