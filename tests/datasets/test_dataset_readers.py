"""Dataset readers: MNIST IDX, CIFAR-10 python batches (restricted unpickling), CIFAR-10-C.

Every test writes small files in the exact on-disk format of the real datasets into
tmp_path (the real files are not available offline), then checks the readers on them and
on every kind of damage: wrong magic, truncation, length mismatches, forbidden pickle
globals, missing files, wrong dtypes and shapes. ``check_size=False`` lets the small
files stand in for the 60,000 / 50,000 / 10,000-image originals.
"""

from __future__ import annotations

import builtins
import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from perturbsets.datasets.cifar10 import ForbiddenGlobalError, load_cifar10
from perturbsets.datasets.cifar10c.reader import (
    cifar10c_version_names,
    load_cifar10c,
    load_cifar10c_versioned,
)
from perturbsets.datasets.cifar10c.registry import CORRUPTIONS as ALL_CORRUPTIONS
from perturbsets.datasets.cifar10c.registry import OOD_CORRUPTIONS, TRAIN_CORRUPTIONS
from perturbsets.datasets.files import DatasetFormatError
from perturbsets.datasets.mnist import load_mnist, read_idx
from perturbsets.pairs.augment import JointCropFlip
from perturbsets.pairs.lazy import LazyStack
from perturbsets.pairs.versioned import VersionedData

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX encoding: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder, split="train", n=7, gz=False, images=None, labels=None):
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8) if images is None else images
    labels = RNG.integers(0, 10, n).astype(np.uint8) if labels is None else labels
    for name, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle wrote the CIFAR-10 batches: protocol 2, every
    string as a byte string (SHORT_BINSTRING/BINSTRING), ndarrays via
    ``numpy.core.multiarray._reconstruct``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin1")
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        module, name = obj.__module__, name or obj.__qualname__
        if module == "numpy._core.multiarray":
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)

    dispatch[type] = save_global


def cifar_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def dump(obj, path, protocol="py2"):
    with open(path, "wb") as f:
        if protocol == "py2":
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=protocol)


def write_cifar(root, split="train", n=4, protocol="py2"):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [cifar_batch(n, seed=i) for i in range(len(names))]
    for name, batch in zip(names, batches):
        dump(batch, folder / name, protocol)
    return folder, batches


def corrupted(n, tag):
    """(n, 32, 32, 3) uint8 whose pixel [i, 0, 0, 0] is i and [i, 0, 0, 1] is ``tag``."""
    arr = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    arr[:, 0, 0, 0] = np.arange(n)
    arr[:, 0, 0, 1] = tag
    return arr


def write_per_severity(root, split, corruptions, severities, n, labels=None):
    folder = root / f"cifar-10-c-{split}"
    folder.mkdir(parents=True)
    labels = RNG.integers(0, 10, n) if labels is None else labels
    np.save(folder / "labels.npy", labels)
    for ci, c in enumerate(corruptions):
        for s in severities:
            np.save(folder / f"{c}_{s}.npy", corrupted(n, 10 * ci + s))
    return folder, labels


def write_hendrycks(root, corruptions, n, labels=None):
    root.mkdir(parents=True, exist_ok=True)
    labels = RNG.integers(0, 10, n).astype(np.uint8) if labels is None else labels
    np.save(root / "labels.npy", np.tile(labels, 5))
    for ci, c in enumerate(corruptions):
        np.save(root / f"{c}.npy", np.concatenate([corrupted(n, 10 * ci + s) for s in range(1, 6)]))
    return labels


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8_raw_and_gzip(tmp_path, gz):
    arr = RNG.integers(0, 256, (3, 5, 4), dtype=np.uint8)
    data = idx_bytes(arr)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path, magic=0x00000803)
    assert out.dtype == np.uint8 and out.shape == (3, 5, 4)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable  # torch.from_numpy without warnings


@pytest.mark.parametrize("code,dtype", [(0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_big_endian_types(tmp_path, code, dtype):
    arr = (np.arange(12).reshape(3, 4) * 1000 - 5000).astype(dtype)
    (tmp_path / "b.idx").write_bytes(idx_bytes(arr, code))
    out = read_idx(tmp_path / "b.idx")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_damage(tmp_path):
    arr = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    good = idx_bytes(arr)
    cases = {
        "wrong_magic": (good[:3] + b"\x01" + good[4:], "magic number 0x00000801 but expected 0x00000803"),
        "truncated": (good[:-10], "truncated"),
        "trailing": (good + b"\x00\x00", "trailing"),
        "short_header": (good[:6], "truncated IDX header"),
        "tiny": (b"\x00\x00", "too short"),
        "bad_type": (b"\x00\x00\x07\x01" + good[4:], "unknown IDX type code"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetFormatError, match=message) as info:
            read_idx(path, magic=0x00000803 if name != "bad_type" else None)
        assert name in str(info.value)  # the message names the file
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG" + good[4:])
    with pytest.raises(DatasetFormatError, match="not an IDX file"):
        read_idx(not_idx)
    with pytest.raises(FileNotFoundError, match="nothing.idx"):
        read_idx(tmp_path / "nothing.idx")


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(RNG.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="cut.gz.*truncated or corrupt"):
        read_idx(path)


@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_layouts(tmp_path, layout, gz):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    train = write_mnist(folder, "train", n=7, gz=gz)
    test = write_mnist(folder, "test", n=3, gz=gz)
    for split, (images, labels) in (("train", train), ("test", test)):
        x, y = load_mnist(tmp_path, split, check_size=False)
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == np.uint8
        assert y.shape == (len(labels),) and y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], images)
        np.testing.assert_array_equal(y, labels)
        torch.from_numpy(x)  # usable as a tensor without a copy


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train", check_size=False)
    write_mnist(tmp_path, "train", n=5)
    with pytest.raises(DatasetFormatError, match="60000"):
        load_mnist(tmp_path, "train")  # 5 images are not the official split
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")
    # Label/image length mismatch.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DatasetFormatError, match="5 images.*4 labels"):
        load_mnist(tmp_path, "train", check_size=False)
    # Images and labels swapped: the magic numbers catch it.
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    with pytest.raises(DatasetFormatError, match="0x00000803 but expected 0x00000801"):
        load_mnist(tmp_path, "train", check_size=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(5, 12, np.uint8)))
    with pytest.raises(DatasetFormatError, match="0..9"):
        load_mnist(tmp_path, "train", check_size=False)
    write_mnist(tmp_path, "train", images=np.zeros((5, 27, 28), np.uint8), labels=np.zeros(5, np.uint8))
    with pytest.raises(DatasetFormatError, match="28x28"):
        load_mnist(tmp_path, "train", check_size=False)


def test_load_mnist_official_sizes_accepted(tmp_path):
    write_mnist(tmp_path, "test", n=10000, gz=True)
    x, y = load_mnist(tmp_path, "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_load_cifar10_python_batches(tmp_path, protocol):
    _, batches = write_cifar(tmp_path, "train", n=4, protocol=protocol)
    write_cifar(tmp_path, "test", n=3, protocol=protocol)
    x, y = load_cifar10(tmp_path, "train", check_size=False)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    data = np.concatenate([b[b"data"] for b in batches])
    np.testing.assert_array_equal(y, np.concatenate([b[b"labels"] for b in batches]))
    # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32×32 plane.
    for k, c, r, col in [(0, 0, 0, 0), (3, 1, 5, 7), (19, 2, 31, 30)]:
        assert x[k, c, r, col] == data[k, c * 1024 + r * 32 + col]
    xt, yt = load_cifar10(tmp_path / "cifar-10-batches-py", "test", check_size=False)  # the folder itself
    assert xt.shape == (3, 3, 32, 32) and yt.shape == (3,)


def test_load_cifar10_size_check(tmp_path):
    write_cifar(tmp_path, "test", n=3)
    with pytest.raises(DatasetFormatError, match="10000"):
        load_cifar10(tmp_path, "test")


class _Evil:
    """Unpickling this runs ``func(*args)``: what a malicious dataset file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", ["py2", 2, 4])
@pytest.mark.parametrize("attack", ["os.system", "open", "eval", "numpy.load"])
def test_cifar10_forbidden_globals_never_run(tmp_path, protocol, attack):
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "open": _Evil(builtins.open, str(marker), "w"),
        "eval": _Evil(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "numpy.load": _Evil(np.load, str(marker)),
    }[attack]
    folder, _ = write_cifar(tmp_path, "test", n=2, protocol=protocol)
    batch = cifar_batch(2)
    batch[b"data"] = payload
    dump(batch, folder / "test_batch", protocol)
    with pytest.raises(pickle.UnpicklingError, match="forbidden global") as info:
        load_cifar10(tmp_path, "test", check_size=False)
    assert isinstance(info.value, ForbiddenGlobalError)
    assert "test_batch" in str(info.value)
    assert not marker.exists()


def test_cifar10_codecs_encode_only_admits_latin1(tmp_path):
    # Protocol-2 pickles from Python 3 use _codecs.encode(str, "latin1") for bytes; any
    # other codec through that global is refused.
    folder, _ = write_cifar(tmp_path, "test", n=2, protocol=2)
    data = pickle.dumps(cifar_batch(2), protocol=2).replace(b"latin1", b"rot_13")
    (folder / "test_batch").write_bytes(data)
    with pytest.raises(pickle.UnpicklingError, match="latin1"):
        load_cifar10(tmp_path, "test", check_size=False)


def test_cifar10_malformed_files(tmp_path):
    folder, _ = write_cifar(tmp_path, "train", n=3)
    path = folder / "data_batch_3"

    def expect(obj, message, raw=None):
        if raw is not None:
            path.write_bytes(raw)
        else:
            dump(obj, path)
        with pytest.raises(DatasetFormatError, match=message) as info:
            load_cifar10(tmp_path, "train", check_size=False)
        assert "data_batch_3" in str(info.value)

    good = io.BytesIO()
    Py2Pickler(good, protocol=2).dump(cifar_batch(3))
    expect(None, "truncated or corrupt", raw=good.getvalue()[:-200])
    expect(None, "truncated or corrupt", raw=b"")
    expect([1, 2, 3], "expected a dict")
    bad = cifar_batch(3)
    del bad[b"labels"]
    expect(bad, "no 'labels' entry")
    bad = cifar_batch(3)
    bad[b"data"] = bad[b"data"].astype(np.float32)
    expect(bad, "uint8 array of shape")
    bad = cifar_batch(3)
    bad[b"data"] = bad[b"data"][:, :3000]
    expect(bad, r"\(n, 3072\)")
    bad = cifar_batch(3)
    bad[b"labels"] = bad[b"labels"][:2]
    expect(bad, "3 images .* 2 labels")
    bad = cifar_batch(3)
    bad[b"labels"] = [0, 1, 10]
    expect(bad, "0..9")
    path.unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, "train", check_size=False)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path / "elsewhere", "train", check_size=False)


# --------------------------------------------------------------------------- CIFAR-10-C


def test_corruption_lists_match_the_paper():
    assert len(TRAIN_CORRUPTIONS) == 12 and len(OOD_CORRUPTIONS) == 3
    assert not set(TRAIN_CORRUPTIONS) & set(OOD_CORRUPTIONS)
    assert set(TRAIN_CORRUPTIONS) | set(OOD_CORRUPTIONS) <= set(ALL_CORRUPTIONS)
    assert len(ALL_CORRUPTIONS) == 19
    assert not any("noise" in c for c in TRAIN_CORRUPTIONS)  # noise corruptions are left out
    assert cifar10c_version_names(["fog", "snow"], [4, 5]) == ["fog_4", "fog_5", "snow_4", "snow_5"]


def _parts_are_memory_maps(stack):
    def mapped(a):
        while isinstance(a, np.ndarray):
            if isinstance(a, np.memmap):
                return True
            a = a.base
        return False

    return all(mapped(p) for p in stack.parts)


@pytest.mark.parametrize("layout", ["auto", "per_severity"])
def test_load_cifar10c_per_severity(tmp_path, layout):
    names = ["fog", "snow", "contrast"]
    _, labels = write_per_severity(tmp_path, "train", names, [3, 5], n=6)
    stack, y = load_cifar10c(tmp_path, names, severities=[5, 3], split="train", layout=layout, check_size=False)
    assert isinstance(stack, LazyStack) and stack.shape == (6, 6, 32, 32, 3) and stack.dtype == np.uint8
    assert _parts_are_memory_maps(stack)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64
    # Corruption-major, in the order of the lists: version k = (names[k // 2], [5, 3][k % 2]).
    tags = np.asarray(stack)[:, :, 0, 0, 1]
    expected = [10 * ci + s for ci in range(3) for s in (5, 3)]
    assert (tags == np.array(expected)).all()
    np.testing.assert_array_equal(np.asarray(stack)[:, :, 0, 0, 0], np.arange(6)[:, None].repeat(6, 1))
    # The folder itself can be given.
    stack2, _ = load_cifar10c(tmp_path / "cifar-10-c-train", names, [3], "train", check_size=False)
    assert stack2.shape == (6, 3, 32, 32, 3)


@pytest.mark.parametrize("folder", [".", "CIFAR-10-C"])
def test_load_cifar10c_hendrycks(tmp_path, folder):
    names = ["gaussian_blur", "spatter", "saturate"]
    labels = write_hendrycks(tmp_path / folder, names, n=4)
    stack, y = load_cifar10c(tmp_path, names, severities=(2, 5), split="test", check_size=False)
    assert stack.shape == (4, 6, 32, 32, 3) and _parts_are_memory_maps(stack)
    np.testing.assert_array_equal(y, labels)
    full = np.load(tmp_path / folder / "spatter.npy")
    # Version 3 = spatter at severity 5 = rows [4·4, 5·4) of spatter.npy.
    np.testing.assert_array_equal(stack[:, 3], full[16:20])
    np.testing.assert_array_equal(stack[np.arange(4), np.full(4, 2)], full[4:8])
    with pytest.raises(ValueError, match="test split only"):
        load_cifar10c(tmp_path, names, split="train", check_size=False)
    with pytest.raises(DatasetFormatError, match="10000"):
        load_cifar10c(tmp_path, names, split="test")


def test_load_cifar10c_missing_files(tmp_path):
    write_per_severity(tmp_path, "test", ["fog"], [5], n=3)
    with pytest.raises(FileNotFoundError, match="snow_5.npy") as info:
        load_cifar10c(tmp_path, ["fog", "snow"], split="test", check_size=False)
    assert "fog_5.npy" in str(info.value)  # lists what the folder does hold
    (tmp_path / "cifar-10-c-test" / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_cifar10c(tmp_path, ["fog"], split="test", check_size=False)
    with pytest.raises(FileNotFoundError, match="cifar-10-c-train"):
        load_cifar10c(tmp_path, ["fog"], split="train", layout="per_severity", check_size=False)
    with pytest.raises(FileNotFoundError, match="Hendrycks"):
        load_cifar10c(tmp_path / "cifar-10-c-test" / "..", ["fog"], split="train", check_size=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10c(tmp_path / "nope", ["fog"], split="test")
    write_hendrycks(tmp_path / "h", ["fog"], n=2)
    with pytest.raises(FileNotFoundError, match="frost.npy"):
        load_cifar10c(tmp_path / "h", ["fog", "frost"], split="test", check_size=False)


def test_load_cifar10c_malformed_npy(tmp_path):
    folder, _ = write_per_severity(tmp_path, "test", ["fog", "snow"], [5], n=3)
    target = folder / "snow_5.npy"

    def expect(message):
        with pytest.raises(DatasetFormatError, match=message) as info:
            load_cifar10c(tmp_path, ["fog", "snow"], split="test", check_size=False)
        assert "snow_5.npy" in str(info.value)

    raw = target.read_bytes()
    target.write_bytes(raw[:-500])  # truncated data
    expect("truncated or corrupt")
    target.write_bytes(raw[:40])  # truncated header
    expect("truncated or corrupt")
    np.save(target, corrupted(3, 0).astype(np.float32))
    expect("dtype float32, expected uint8")
    np.save(target, corrupted(3, 0).transpose(0, 3, 1, 2).copy())  # CHW instead of HWC
    expect(r"\(N, 32, 32, 3\)")
    np.save(target, corrupted(4, 0))  # one image too many
    expect("4 images, but labels.npy")
    np.save(target, np.array([corrupted(3, 0)], dtype=object), allow_pickle=True)  # pickled object array
    expect("truncated or corrupt|not a readable")
    np.save(target, corrupted(3, 0))
    np.save(folder / "labels.npy", np.array([0.5, 1.0, 2.0]))
    with pytest.raises(DatasetFormatError, match="integer"):
        load_cifar10c(tmp_path, ["fog"], split="test", check_size=False)


def test_load_cifar10c_hendrycks_malformed(tmp_path):
    write_hendrycks(tmp_path, ["fog"], n=3)
    np.save(tmp_path / "labels.npy", np.zeros(14, np.uint8))  # not 5·N
    with pytest.raises(DatasetFormatError, match=r"5·N"):
        load_cifar10c(tmp_path, ["fog"], split="test", check_size=False)
    np.save(tmp_path / "labels.npy", np.arange(20) % 10)  # severities disagree
    with pytest.raises(DatasetFormatError, match="severity 5 differ"):
        load_cifar10c(tmp_path, ["fog"], severities=[1, 5], split="test", check_size=False)
    np.save(tmp_path / "labels.npy", np.zeros(20, np.uint8))  # N = 4 but fog has 15 rows
    with pytest.raises(DatasetFormatError, match="15 images, but labels.npy"):
        load_cifar10c(tmp_path, ["fog"], split="test", check_size=False)


def test_load_cifar10c_argument_checks(tmp_path):
    write_per_severity(tmp_path, "test", ["fog"], [5], n=3)
    for corruptions, severities, message in [
        ([], (5,), "empty"),
        (["../fog"], (5,), "plain file stems"),
        (["fog", "fog"], (5,), "twice"),
        (["fog"], (0,), "1..5"),
        (["fog"], (6,), "1..5"),
        (["fog"], (), "1..5"),
        (["fog"], (5, 5), "twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_cifar10c(tmp_path, corruptions, severities, split="test", check_size=False)
    with pytest.raises(ValueError, match="layout"):
        load_cifar10c(tmp_path, ["fog"], split="test", layout="zenodo")
    stack, _ = load_cifar10c(tmp_path, "fog", 5, split="test", check_size=False)  # scalars accepted
    assert stack.shape[1] == 1


def test_load_cifar10c_versioned(tmp_path):
    write_cifar(tmp_path / "c10", "test", n=5)
    clean, labels = load_cifar10(tmp_path / "c10", "test", check_size=False)
    write_per_severity(tmp_path / "c10c", "test", ["fog", "snow"], [5], n=5, labels=labels)
    data = load_cifar10c_versioned(
        tmp_path / "c10", tmp_path / "c10c", ["fog", "snow"], split="test", check_size=False
    )
    assert isinstance(data, VersionedData)
    assert len(data) == 5 and data.num_versions == 3 and data.image_shape == (3, 32, 32)
    assert data.pairing == "centered" and data.num_pairs == 10
    batches = list(data.evaluation_batches(4, seed=0))
    x = torch.cat([b.x for b in batches])
    x_tilde = torch.cat([b.x_tilde for b in batches])
    assert x.shape == (10, 3, 32, 32)
    # Version 0 is the clean CIFAR-10 image, decoded to [0, 1].
    torch.testing.assert_close(x[::2], torch.from_numpy(clean).float() / 255, rtol=0, atol=0)
    # x_tilde is the corrupted HWC file, transposed to CHW.
    fog = np.load(tmp_path / "c10c" / "cifar-10-c-test" / "snow_5.npy")
    torch.testing.assert_close(x_tilde[1::2], torch.from_numpy(fog).permute(0, 3, 1, 2).float() / 255, rtol=0, atol=0)
    assert torch.equal(torch.cat([b.y for b in batches]), torch.from_numpy(labels).repeat_interleave(2))

    augmented = load_cifar10c_versioned(
        tmp_path / "c10", tmp_path / "c10c", ["fog", "snow"], split="test", check_size=False,
        augment=JointCropFlip(pad=4), pairing="with_original",
    )
    assert augmented.num_pairs == 5 * 6
    assert next(augmented.batches(5, shuffle=True, seed=0)).x.shape == (5, 3, 32, 32)

    # CIFAR-10-C files in another order than CIFAR-10: refused.
    np.save(tmp_path / "c10c" / "cifar-10-c-test" / "labels.npy", (labels + 1) % 10)
    with pytest.raises(DatasetFormatError, match="not in CIFAR-10's order"):
        load_cifar10c_versioned(tmp_path / "c10", tmp_path / "c10c", ["fog"], split="test", check_size=False)
