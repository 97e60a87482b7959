"""Tests for perturbsets.checkpoint: safetensors training checkpoints that are never unpickled."""

from __future__ import annotations

import builtins
import hashlib

import pytest
import torch
from safetensors.torch import save_file

from perturbsets._util import checkpoint as ckpt
from perturbsets._util.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_safetensors,
    save_checkpoint,
    sha256_file,
)
from perturbsets.cvae.registry import build_cvae




def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=8, latent_dim=3)


def _batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(6, 1, 4, 4, generator=gen), torch.rand(6, 1, 4, 4, generator=gen), torch.randn(6, 3, generator=gen)) for _ in range(n)]


def _train(model, opt, batches):
    for x, xt, noise in batches:
        opt.zero_grad()
        model.loss(model(x, xt, noise), xt, 0.5).total.backward()
        opt.step()


def _make_opt(kind: str, model):
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=1e-3)
    if kind == "amsgrad":
        return torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


@pytest.mark.parametrize("kind", ["adam", "amsgrad", "sgd_momentum"])
def test_round_trip_resumes_bitwise_identically(tmp_path, kind):
    model = _model(0)
    opt = _make_opt(kind, model)
    _train(model, opt, _batches(3, seed=1))
    state = {"epoch": 3, "best_val": 1.25, "history": [{"loss": 2.0}, {"loss": 1.5}]}
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, state)

    copy = _model(42)  # different initial weights
    copy_opt = _make_opt(kind, copy)
    loaded_state = load_checkpoint(path, copy, copy_opt)
    assert loaded_state == state
    for (k, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k

    more = _batches(3, seed=2)
    _train(model, opt, more)
    _train(copy, copy_opt, more)
    for (k, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k
    assert copy_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_model_only_checkpoint_and_missing_optimizer_state(tmp_path):
    model = _model(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, None, {"epoch": 0})
    other = _model(1)
    assert load_checkpoint(path, other) == {"epoch": 0}
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, other, torch.optim.Adam(other.parameters()))


def test_optimizer_without_steps_round_trips(tmp_path):
    model = _model(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    path = tmp_path / "fresh.safetensors"
    save_checkpoint(path, model, opt, {})
    opt2 = torch.optim.Adam(_model(1).parameters(), lr=1.0)
    load_checkpoint(path, _model(1), opt2)
    assert opt2.param_groups[0]["lr"] == 3e-4 and len(opt2.state) == 0


class _SideEffect:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_refuses_pickles(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": _model().state_dict(), "evil": _SideEffect(str(marker))}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path, _model())
    with pytest.raises(CheckpointError, match="never unpickles"):
        read_safetensors(path)
    assert not marker.exists()


def test_metadata_less_safetensors_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in _model().state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="not a perturbsets checkpoint"):
        load_checkpoint(path, _model())


def test_shape_mismatch(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _model(), None, {})
    torch.manual_seed(0)
    bigger = build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=9, latent_dim=3)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, bigger)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", _model())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(garbage, _model())


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB chunk
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def _no_temp_files(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_existing_checkpoint_intact(tmp_path):
    model = _model(0)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, None, {"epoch": 1})
    before = path.read_bytes()
    # state that is not JSON-serialisable fails during the write
    with pytest.raises(TypeError):
        save_checkpoint(path, _model(1), None, {"epoch": object()})
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    assert load_checkpoint(path, _model(3)) == {"epoch": 1}


def test_crash_midway_through_writing_leaves_existing_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, _model(0), None, {"epoch": 1})
    before = path.read_bytes()

    def crashing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crashing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _model(1), None, {"epoch": 2})
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import save_file

    from perturbsets._util.checkpoint import read_safetensors

    # The first byte of a safetensors file is the low byte of its header length; find a
    # key length that makes it 0x80, the first byte of every modern pickle.
    for n in range(1, 400):
        path = tmp_path / f"w{n}.safetensors"
        save_file({"w" * n: torch.arange(3.0)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no key length produced a leading 0x80 byte")
    assert torch.equal(read_safetensors(path)["w" * n], torch.arange(3.0))
