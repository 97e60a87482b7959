"""Tests for perturbsets.data: paired datasets, splits, batching and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_load_digits

from perturbsets.datasets.digits import load_digits
from perturbsets.datasets.folder import load_pair_folder
from perturbsets.pairs.batch import DataSplits, PairBatch
from perturbsets.pairs.paired import PairedData
from perturbsets.perturbations import RTS, LinfNoise

# --------------------------------------------------------------------------- fixtures

# Content-coded data: image i is the constant i / 1000 and stored pair j the constant
# 0.5 + j / 1000, so a batch can be decoded back to (image id, pair id) independently of
# the code under test.
OWNER = [2, 0, 0, 3, 2, 2, 5, 0, 3, 6]  # image 1 and 4 own nothing; image 0 owns 3
N_IMAGES = 7


def _coded(n_images=N_IMAGES, owner=OWNER, labels=True) -> PairedData:
    images = (torch.arange(n_images, dtype=torch.float32) / 1000).view(-1, 1, 1, 1).expand(-1, 1, 3, 3).clone()
    perturbed = (0.5 + torch.arange(len(owner), dtype=torch.float32) / 1000).view(-1, 1, 1, 1).expand(-1, 1, 3, 3)
    y = torch.arange(n_images) * 10 if labels else None
    return PairedData(images, y, perturbed=perturbed.clone(), owner=torch.tensor(owner))


def _image_ids(batch: PairBatch) -> list[int]:
    return torch.round(batch.x[:, 0, 0, 0] * 1000).long().tolist()


def _pair_ids(batch: PairBatch) -> list[int]:
    return torch.round((batch.x_tilde[:, 0, 0, 0] - 0.5) * 1000).long().tolist()


def _slow_pairs_of(owner: list[int]) -> dict[int, list[int]]:
    pairs: dict[int, list[int]] = {}
    for j, i in enumerate(owner):
        pairs.setdefault(i, []).append(j)
    return pairs


def _stack(batches) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(batches)
    return torch.cat([b.x for b in batches]), torch.cat([b.x_tilde for b in batches])


# --------------------------------------------------------------------------- load_digits


def test_load_digits_shape_range_and_border():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 42, 42) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.99
    # 7-pixel canvas padding plus MNIST's 4-pixel border: only the 20x20 box [11, 31) is inked.
    box = torch.zeros(42, 42, dtype=torch.bool)
    box[11:31, 11:31] = True
    assert images[:, :, ~box].abs().max() == 0
    assert (images[:, 0, 11:31, 11:31].flatten(1).max(1).values > 0.5).all()


def test_load_digits_matches_pil_resize():
    images, labels = load_digits(canvas=28)
    assert images.shape == (1797, 1, 28, 28)
    bunch = sk_load_digits()
    np.testing.assert_array_equal(labels.numpy(), bunch.target)
    for i in range(0, 1797, 97):
        digit = Image.fromarray((bunch.images[i] / 16).astype(np.float32), mode="F")
        ref = np.clip(np.asarray(digit.resize((20, 20), Image.BILINEAR)), 0, 1)
        np.testing.assert_allclose(images[i, 0, 4:24, 4:24].numpy(), ref, atol=1e-3)
    torch.testing.assert_close(load_digits(canvas=42)[0][:, :, 7:35, 7:35], images)


@pytest.mark.parametrize("canvas", [27, 43, 20])
def test_load_digits_bad_canvas(canvas):
    with pytest.raises(ValueError, match="canvas"):
        load_digits(canvas=canvas)


# --------------------------------------------------------------------------- constructors


def test_from_tensors_one_per_image_numpy():
    images = np.random.default_rng(0).random((5, 2, 4, 6), dtype=np.float32)
    perturbed = np.clip(images + 0.1, 0, 1)
    data = PairedData.from_tensors(images, perturbed, labels=np.arange(5))
    assert len(data) == 5 and data.num_pairs == 5 and data.image_shape == (2, 4, 6)
    assert data.value_range == (0.0, 1.0) and data.is_stored
    assert data.owner.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(data.perturbed.numpy(), perturbed)
    assert data.labels.dtype == torch.int64


def test_from_tensors_k_per_image():
    images = torch.rand(4, 1, 5, 5)
    perturbed = torch.rand(4, 3, 1, 5, 5)
    data = PairedData.from_tensors(images, perturbed)
    assert data.num_pairs == 12
    assert data.owner.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for j in range(12):  # slow reference of the (N, K) -> (N*K) layout
        torch.testing.assert_close(data.perturbed[j], perturbed[j // 3, j % 3])


def test_general_constructor_groups_pairs_image_major():
    data = _coded()
    assert len(data) == N_IMAGES and data.num_pairs == len(OWNER)
    assert data.counts.tolist() == [OWNER.count(i) for i in range(N_IMAGES)]
    pairs = _slow_pairs_of(OWNER)
    expected_order = [j for i in range(N_IMAGES) for j in pairs.get(i, [])]
    assert data.owner.tolist() == sorted(OWNER)
    assert torch.round((data.perturbed[:, 0, 0, 0] - 0.5) * 1000).long().tolist() == expected_order


def test_on_the_fly_constructor_and_batches():
    images = torch.rand(10, 1, 8, 8)
    calls = []

    def shift(x, generator):
        calls.append(generator)
        return (x + 0.25).clamp(0, 1)

    data = PairedData.on_the_fly(images, shift, labels=torch.arange(10))
    assert not data.is_stored and data.num_pairs == 10 and data.owner is None and data.perturbed is None
    batches = list(data.batches(4, shuffle=False, seed=0))
    assert [len(b.x) for b in batches] == [4, 4, 2]
    x, xt = _stack(batches)
    torch.testing.assert_close(x, images)
    torch.testing.assert_close(xt, (images + 0.25).clamp(0, 1))
    assert all(isinstance(g, torch.Generator) for g in calls)
    assert torch.cat([b.y for b in batches]).tolist() == list(range(10))


def test_on_the_fly_linf_seeded_by_epoch():
    images = torch.rand(12, 1, 6, 6)
    data = PairedData.on_the_fly(images, LinfNoise(epsilon=0.2))
    a = _stack(data.batches(5, shuffle=True, seed=3, epoch=1))
    b = _stack(data.batches(5, shuffle=True, seed=3, epoch=1))
    c = _stack(data.batches(5, shuffle=True, seed=3, epoch=2))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])
    assert (a[1] - a[0]).abs().max() <= 0.2 + 1e-6


def test_with_fixed_perturbations_deterministic():
    images = torch.rand(9, 1, 10, 10)
    kw = dict(k=3, labels=torch.arange(9), batch_size=4)
    a = PairedData.with_fixed_perturbations(images, LinfNoise(0.3), seed=1, **kw)
    b = PairedData.with_fixed_perturbations(images, LinfNoise(0.3), seed=1, **kw)
    c = PairedData.with_fixed_perturbations(images, LinfNoise(0.3), seed=2, **kw)
    assert a.num_pairs == 27 and a.owner.tolist() == [i for i in range(9) for _ in range(3)]
    assert torch.equal(a.perturbed, b.perturbed)
    assert not torch.equal(a.perturbed, c.perturbed)
    for j in range(27):  # each stored perturbation is a perturbation of its own image
        i = j // 3
        assert (a.perturbed[j] - images[i]).abs().max() <= 0.3 + 1e-6
    # The k draws of one image differ from each other.
    assert not torch.equal(a.perturbed[0], a.perturbed[1])


def test_with_fixed_perturbations_uint8_quantised():
    images = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    data = PairedData.with_fixed_perturbations(images, LinfNoise(0.1), k=2, seed=0)
    assert data.perturbed.dtype == torch.uint8 and data.images.dtype == torch.uint8
    diff = data.perturbed.float() - images.repeat_interleave(2, 0).float()
    assert diff.abs().max() <= 0.1 * 255 + 0.5


def test_rts5_on_digits_end_to_end():
    # The paper's RTS-5 setting (Table 4) on the embedded digits: 5 stored RTS draws per image.
    images, labels = load_digits()
    data = PairedData.with_fixed_perturbations(images[:64], RTS(), k=5, seed=0, labels=labels[:64], batch_size=32)
    assert data.num_pairs == 320 and data.image_shape == (1, 42, 42)
    splits = data.split((0.75, 0.25, 0.0), seed=0)
    assert splits.train.num_pairs == 240 and splits.val.num_pairs == 80
    batch = next(iter(splits.train.batches(16, shuffle=True, seed=0)))
    assert batch.x.shape == batch.x_tilde.shape == (16, 1, 42, 42) and batch.y.shape == (16,)
    # Each stored draw keeps roughly the digit's ink (scale in [0.7, 1.3] scales mass by s^2).
    mass_ratio = data.perturbed.sum((1, 2, 3)) / images[:64].repeat_interleave(5, 0).sum((1, 2, 3))
    assert mass_ratio.min() > 0.45 and mass_ratio.max() < 1.75


def test_with_fixed_perturbations_bad_args():
    with pytest.raises(ValueError, match="k must be >= 1"):
        PairedData.with_fixed_perturbations(torch.rand(2, 1, 4, 4), LinfNoise(), k=0, seed=0)
    with pytest.raises(ValueError, match="returned shape"):
        PairedData.with_fixed_perturbations(torch.rand(2, 1, 4, 4), lambda x, g: x[:, :, :2], k=1, seed=0)


# --------------------------------------------------------------------------- validation


def test_uint8_decoded_per_batch():
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    perturbed = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    data = PairedData.from_tensors(images, perturbed)
    assert data.images.dtype == torch.uint8  # stored compactly, not converted up front
    x, xt = _stack(data.batches(4, shuffle=False, seed=0, mode="all"))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, images.float() / 255)
    torch.testing.assert_close(xt, perturbed.float() / 255)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: PairedData.from_tensors(torch.rand(3, 1, 4, 4), torch.rand(3, 1, 5, 4)), r"\(3, 1, 5, 4\)"),
        (lambda: PairedData(torch.rand(3, 1, 4, 4), perturbed=torch.rand(3, 2, 4, 4)), r"\(1, 4, 4\).*\(2, 4, 4\)"),
        (lambda: PairedData.from_tensors(torch.rand(3, 4, 4), torch.rand(3, 4, 4)), r"\(N, C, H, W\)"),
        (lambda: PairedData.from_tensors(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4)), "empty"),
        (lambda: PairedData.from_tensors(torch.rand(3, 1, 2, 2), torch.rand(3, 0, 1, 2, 2)), "K = 0"),
        (lambda: PairedData.from_tensors(torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2), labels=torch.arange(4)),
         r"labels must have shape \(3,\)"),
        (lambda: PairedData.from_tensors(torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2), labels=torch.rand(3)),
         "integer"),
        (lambda: PairedData(torch.rand(3, 1, 2, 2), perturbed=torch.rand(2, 1, 2, 2), owner=torch.tensor([0, 3])),
         r"outside \[0, 2\]"),
        (lambda: PairedData(torch.rand(3, 1, 2, 2), perturbed=torch.rand(2, 1, 2, 2), owner=torch.tensor([0])),
         r"owner must have shape \(2,\)"),
        (lambda: PairedData(torch.rand(3, 1, 2, 2), perturbed=torch.rand(2, 1, 2, 2)), "pass owner="),
        (lambda: PairedData(torch.rand(3, 1, 2, 2)), "exactly one of"),
        (lambda: PairedData(torch.rand(3, 1, 2, 2), perturbed=torch.rand(3, 1, 2, 2), perturbation=LinfNoise()),
         "exactly one of"),
        (lambda: PairedData.on_the_fly(torch.rand(3, 1, 2, 2), "rts"), "callable"),
        (lambda: PairedData.from_tensors(torch.zeros(3, 1, 2, 2, dtype=torch.int32), torch.rand(3, 1, 2, 2)),
         "float .* or uint8"),
        (lambda: PairedData.from_tensors(torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2), value_range=(1, 0)),
         "low < high"),
    ],
)
def test_bad_construction(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_nan_and_range_messages():
    images = torch.rand(4, 1, 3, 3)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    bad[2, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="perturbed contains 2 NaN/Inf"):
        PairedData.from_tensors(images, bad)
    one_nan = images.clone()
    one_nan[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="images contains 1 NaN/Inf"):
        PairedData.from_tensors(one_nan, images)
    out = images.clone()
    out[0, 0, 0, 0], out[1, 0, 0, 0] = -0.2, 1.3
    with pytest.raises(ValueError, match=r"perturbed values lie in \[-0.2, 1.3\] but value_range is \(0.0, 1.0\)"):
        PairedData.from_tensors(images, out)
    # Declaring the range makes the same data valid.
    assert PairedData.from_tensors(images, out, value_range=(-1, 2)).value_range == (-1.0, 2.0)


# --------------------------------------------------------------------------- subset / split


def test_subset_keeps_perturbations_of_kept_images_only():
    data = _coded()
    keep = [5, 0, 1, 2]
    sub = data.subset(keep)
    assert len(sub) == 4 and sub.source_index.tolist() == keep
    pairs = _slow_pairs_of(OWNER)
    expected = [j for i in keep for j in pairs.get(i, [])]
    got = torch.round((sub.perturbed[:, 0, 0, 0] - 0.5) * 1000).long().tolist()
    assert got == expected
    assert sub.owner.tolist() == [k for k, i in enumerate(keep) for _ in pairs.get(i, [])]
    assert sub.labels.tolist() == [10 * i for i in keep]
    assert torch.round(sub.images[:, 0, 0, 0] * 1000).long().tolist() == keep
    # Subsets of subsets compose, and share the original storage.
    subsub = sub.subset(torch.tensor([2, 0]))
    assert subsub.source_index.tolist() == [1, 5] and subsub.num_pairs == len(pairs[5])
    assert sub._images.data_ptr() == data._images.data_ptr()


def test_subset_bad_and_empty():
    data = _coded()
    with pytest.raises(ValueError, match="outside"):
        data.subset([0, 7])
    with pytest.raises(ValueError, match="integer"):
        data.subset(torch.tensor([0.5]))
    empty = data.subset([])
    assert len(empty) == 0 and empty.num_pairs == 0 and list(empty.batches(4, shuffle=True, seed=0)) == []


def test_split_disjoint_cover_deterministic():
    data = _coded(n_images=100, owner=list(range(100)) * 2)
    s1 = data.split((0.7, 0.2, 0.1), seed=0)
    s2 = data.split({"train": 0.7, "val": 0.2, "test": 0.1}, seed=0)
    s3 = data.split((0.7, 0.2, 0.1), seed=1)
    assert isinstance(s1, DataSplits)
    parts = [set(p.source_index.tolist()) for p in (s1.train, s1.val, s1.test)]
    assert [len(p) for p in parts] == [70, 20, 10]
    assert parts[0] | parts[1] | parts[2] == set(range(100))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for a, b in zip((s1.train, s1.val, s1.test), (s2.train, s2.val, s2.test)):
        assert torch.equal(a.source_index, b.source_index)
    assert not torch.equal(s1.train.source_index, s3.train.source_index)
    # Perturbations follow their images: no pair leaks across splits.
    assert s1.val.num_pairs == 40
    # Same assignment as numpy's generator, independent of torch's global RNG.
    perm = np.random.default_rng(0).permutation(100)
    assert sorted(perm[70:90].tolist()) == s1.val.source_index.tolist()


def test_split_counts_and_empty_test():
    data = _coded(n_images=50, owner=list(range(50)))
    s = data.split([30, 15, 0], seed=4)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 15, 0)
    s = data.split({"train": 40, "val": 10}, seed=4)
    assert len(s.test) == 0


@pytest.mark.parametrize(
    "sizes, words",
    [
        ((40, 10, 5), r"split 'test' requested 5 \(5 images\) but only 0 of N=50"),
        ((0.8, 0.1, 0.001), r"split 'test' requested 0.001 of N=50 images, which is 0"),
        ((0.8, 0.3, 0.1), "sum to 1.2"),
        ((0.5, 1.5, 0.0), r"fraction for 'val' must be in \[0, 1\]"),
        ((10, -1, 0), "'val' must be >= 0"),
        ((10, 5), "3 entries"),
        ({"train": 10, "valid": 5}, r"unknown key\(s\) \['valid'\]"),
        ((10, "5", 0), "int count or a float fraction"),
    ],
)
def test_split_errors(sizes, words):
    data = _coded(n_images=50, owner=list(range(50)))
    with pytest.raises(ValueError, match=words):
        data.split(sizes, seed=0)


# --------------------------------------------------------------------------- batches


def test_all_mode_enumerates_every_pair_once():
    data = _coded()
    pairs = _slow_pairs_of(OWNER)
    slow = [(i, j) for i in range(N_IMAGES) for j in pairs.get(i, [])]  # image-major
    got = []
    for b in data.batches(3, shuffle=False, seed=0, mode="all"):
        got += list(zip(_image_ids(b), _pair_ids(b)))
        assert b.y.tolist() == [10 * i for i in _image_ids(b)]
        assert b.index.tolist() == _image_ids(b)
    assert got == slow
    shuffled = []
    for b in data.batches(4, shuffle=True, seed=0, mode="all"):
        shuffled += list(zip(_image_ids(b), _pair_ids(b)))
    assert sorted(shuffled) == sorted(slow) and shuffled != slow
    assert data.num_batches(3, mode="all") == 4 and data.num_batches(3, mode="all", drop_last=True) == 3


def test_sample_mode_pairs_belong_to_their_image():
    data = _coded()
    pairs = _slow_pairs_of(OWNER)
    seen: dict[int, list[int]] = {}
    for epoch in range(300):
        batches = list(data.batches(2, shuffle=True, seed=9, epoch=epoch))
        images = [i for b in batches for i in _image_ids(b)]
        # Images without perturbations are skipped; every other image appears once.
        assert sorted(images) == sorted(pairs)
        for b in batches:
            for i, j in zip(_image_ids(b), _pair_ids(b)):
                assert OWNER[j] == i  # slow check against the owner mapping
                seen.setdefault(i, []).append(j)
    # The choice is uniform among an image's perturbations (image 0 owns 3, image 2 owns 3).
    for i in (0, 2):
        freq = np.bincount([pairs[i].index(j) for j in seen[i]], minlength=3)
        assert freq.min() > 70, freq


def test_sample_mode_unshuffled_order_and_num_batches():
    data = _coded()
    batches = list(data.batches(2, shuffle=False, seed=0))
    assert [i for b in batches for i in _image_ids(b)] == [0, 2, 3, 5, 6]
    assert len(batches) == data.num_batches(2) == 3
    dropped = list(data.batches(2, shuffle=False, seed=0, drop_last=True))
    assert len(dropped) == data.num_batches(2, drop_last=True) == 2


def test_batches_reproducible_by_seed_and_epoch():
    data = _coded(n_images=40, owner=[i % 40 for i in range(120)])

    def run(seed, epoch):
        return [(b.x, b.x_tilde, b.y) for b in data.batches(8, shuffle=True, seed=seed, epoch=epoch)]

    def same(a, b):
        return all(torch.equal(u, v) for pa, pb in zip(a, b) for u, v in zip(pa, pb))

    # Resuming at epoch 2 gives the batches an uninterrupted run sees at epoch 2.
    run(5, 0), run(5, 1)
    uninterrupted = run(5, 2)
    torch.manual_seed(1234)  # the global RNG must not matter
    assert same(run(5, 2), uninterrupted)
    assert not same(run(5, 3), uninterrupted)
    assert not same(run(6, 2), uninterrupted)


def test_batches_on_device_and_no_labels():
    data = _coded(labels=False)
    b = next(iter(data.batches(4, shuffle=False, seed=0, device=torch.device("cpu"))))
    assert b.y is None and b.x.device.type == "cpu" and b.x.dtype == torch.float32


def test_batches_argument_errors():
    data = _coded()
    with pytest.raises(ValueError, match="mode must be 'sample' or 'all'"):
        data.batches(4, shuffle=False, seed=0, mode="every")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.batches(0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        data.batches(4, shuffle=False, seed=-1)
    fly = PairedData.on_the_fly(torch.rand(3, 1, 2, 2), LinfNoise())
    with pytest.raises(ValueError, match="mode='all'.*on the fly.*with_fixed_perturbations"):
        fly.batches(4, shuffle=False, seed=0, mode="all")
    with pytest.raises(ValueError, match="mode='all'"):
        fly.num_batches(4, mode="all")


# --------------------------------------------------------------------------- folder loader


def _write(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)


def _grey(value: int, size=(6, 5)) -> np.ndarray:  # size = (H, W)
    return np.full(size, value, dtype=np.uint8)


def test_load_pair_folder_grey_multi_and_prefix_trap(tmp_path):
    names = {
        "clean/cat1.png": 10, "clean/cat10.png": 20, "clean/cat.png": 30,
        "perturbed/cat1_a.png": 11, "perturbed/cat1.png": 12,
        "perturbed/cat10_a.png": 21, "perturbed/cat10-b.png": 22,
        "perturbed/cat.fog.png": 31,
    }
    for name, value in names.items():
        _write(tmp_path / name, _grey(value), "L")
    (tmp_path / "clean" / "notes.txt").write_text("ignored")
    data = load_pair_folder(tmp_path)
    assert data.images.dtype == torch.uint8 and data.image_shape == (1, 6, 5)
    # Sorted clean names: cat, cat1, cat10.
    assert data.images[:, 0, 0, 0].tolist() == [30, 10, 20]
    assert data.owner.tolist() == [0, 1, 1, 2, 2]
    # Within an image, perturbed files in sorted name order: cat1.png < cat1_a.png; cat10-b < cat10_a.
    assert data.perturbed[:, 0, 0, 0].tolist() == [31, 12, 11, 22, 21]
    x, xt = _stack(data.batches(8, shuffle=False, seed=0, mode="all"))
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([30, 10, 10, 20, 20]) / 255)


def test_load_pair_folder_longest_stem_wins(tmp_path):
    for name, value in {"clean/cat.png": 1, "clean/cat_1.png": 2, "perturbed/cat_1_fog.png": 3,
                        "perturbed/cat_x.png": 4}.items():
        _write(tmp_path / name, _grey(value), "L")
    data = load_pair_folder(tmp_path)
    assert data.owner.tolist() == [0, 1]
    assert data.perturbed[:, 0, 0, 0].tolist() == [4, 3]


def test_load_pair_folder_rgb_when_any_colour(tmp_path):
    rgb = np.zeros((6, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    _write(tmp_path / "clean/a.png", _grey(100), "L")
    _write(tmp_path / "perturbed/a_1.png", rgb, "RGB")
    data = load_pair_folder(tmp_path)
    assert data.image_shape == (3, 6, 5)
    assert data.images[0, :, 0, 0].tolist() == [100, 100, 100]
    assert data.perturbed[0, :, 0, 0].tolist() == [200, 0, 50]


def test_load_pair_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pair_folder(tmp_path / "nope")
    (tmp_path / "clean").mkdir()
    with pytest.raises(FileNotFoundError, match="perturbed.*is missing"):
        load_pair_folder(tmp_path)
    (tmp_path / "perturbed").mkdir()
    with pytest.raises(ValueError, match="no clean images"):
        load_pair_folder(tmp_path)

    for i in range(7):
        _write(tmp_path / f"clean/img{i}.png", _grey(i), "L")
    _write(tmp_path / "perturbed/img0_a.png", _grey(1), "L")
    with pytest.raises(ValueError, match=r"no perturbation: img1.png, .*img5.png, \.\.\. \(6 in total\).*perturbed/"):
        load_pair_folder(tmp_path)
    for i in range(1, 7):
        _write(tmp_path / f"perturbed/img{i}.png", _grey(1), "L")

    _write(tmp_path / "perturbed/dog_1.png", _grey(1), "L")
    with pytest.raises(ValueError, match="no clean image: dog_1.png"):
        load_pair_folder(tmp_path)
    (tmp_path / "perturbed/dog_1.png").unlink()
    _write(tmp_path / "perturbed/img10.png", _grey(1), "L")  # prefix trap: not a perturbation of img1
    with pytest.raises(ValueError, match="no clean image: img10.png"):
        load_pair_folder(tmp_path)
    (tmp_path / "perturbed/img10.png").unlink()

    _write(tmp_path / "perturbed/img3_big.png", _grey(1, size=(8, 5)), "L")
    with pytest.raises(ValueError, match=r"img3_big.png has size 5x8 \(WxH\) but expected 5x6"):
        load_pair_folder(tmp_path)
    (tmp_path / "perturbed/img3_big.png").unlink()

    _write(tmp_path / "clean/img0.jpg", _grey(1), "L")
    with pytest.raises(ValueError, match="share the name 'img0'"):
        load_pair_folder(tmp_path)
    (tmp_path / "clean/img0.jpg").unlink()

    Image.fromarray(np.zeros((6, 5), dtype=np.uint16)).save(tmp_path / "perturbed/img2_deep.png")  # 16-bit
    with pytest.raises(ValueError, match="img2_deep.png has image mode 'I;16'.*not supported"):
        load_pair_folder(tmp_path)
    (tmp_path / "perturbed/img2_deep.png").unlink()
    assert load_pair_folder(tmp_path).num_pairs == 7


@pytest.mark.parametrize(
    "make",
    [
        lambda y: PairedData(torch.rand(3, 1, 2, 2), y, perturbed=torch.rand(3, 1, 2, 2)),
        lambda y: PairedData.from_tensors(torch.rand(3, 1, 2, 2), torch.rand(3, 2, 1, 2, 2), y),
        lambda y: PairedData.from_tensors(np.random.rand(3, 1, 2, 2), np.random.rand(3, 1, 2, 2), y.numpy()),
        lambda y: PairedData.on_the_fly(torch.rand(3, 1, 2, 2), LinfNoise(), y),
        lambda y: PairedData.with_fixed_perturbations(torch.rand(3, 1, 2, 2), LinfNoise(), 2, 0, y),
    ],
)
def test_negative_labels_are_refused_with_the_fix(make):
    with pytest.raises(ValueError, match=r"labels must be class indices 0..K-1, found 1 negative value\(s\) \(e.g. -1\); map the classes"):
        make(torch.tensor([0, -1, 2]))
    assert make(torch.tensor([0, 1, 2])).labels.tolist() == [0, 1, 2]
