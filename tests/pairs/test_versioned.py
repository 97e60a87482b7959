"""VersionedData (pairing strategies of paper Appendix E.2), LazyStack, JointCropFlip, with_augment.

Most checks use a *tagged* dataset: pixel 0 of version v of example n holds n and pixel 1
holds v, so every batch can be decoded back to (example, version of x, version of x̃)
independently of the code under test and compared with a slow, obvious enumeration.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perturbsets.datasets.digits import load_digits
from perturbsets.pairs.augment import JointCropFlip
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.lazy import LazyStack
from perturbsets.pairs.paired import PairedData
from perturbsets.pairs.versioned import PAIRINGS, VersionedData

# --------------------------------------------------------------------------- helpers


def tagged(n: int, v: int) -> torch.Tensor:
    """(n, v, 1, 1, 2) uint8: [e, k, 0, 0] = (e, k)."""
    t = torch.zeros(n, v, 1, 1, 2, dtype=torch.uint8)
    t[..., 0] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    t[..., 1] = torch.arange(v, dtype=torch.uint8).view(1, v, 1, 1)
    return t


def decode(batch: PairBatch) -> list[tuple[int, int, int]]:
    """(example, version of x, version of x_tilde) of each pair of a tagged batch."""
    x = torch.round(batch.x[:, 0, 0] * 255).long()
    xt = torch.round(batch.x_tilde[:, 0, 0] * 255).long()
    assert torch.equal(x[:, 0], xt[:, 0]), "x and x_tilde must be versions of the same example"
    return list(zip(x[:, 0].tolist(), x[:, 1].tolist(), xt[:, 1].tolist()))


def slow_pairs(pairing: str, v: int, ref: int = 0) -> list[tuple[int, int]]:
    if pairing == "centered":
        return [(ref, j) for j in range(v) if j != ref]
    if pairing == "with_original":
        return [(i, j) for i in range(v) for j in range(v) if i != j]
    if pairing == "perturbed_only":
        return [(i, j) for i in range(v) for j in range(v) if i != j and ref not in (i, j)]
    return [(ref, ref)]


def all_pairs(data: VersionedData, batch_size: int = 7, **kwargs) -> list[tuple[int, int, int]]:
    out = []
    for b in data.batches(batch_size, shuffle=False, seed=0, mode="all", **kwargs):
        out += decode(b)
    return out


STRATEGY_CASES = [(p, v, ref) for p in PAIRINGS for v in (3, 5) for ref in (0, 2)] + [
    ("centered", 2, 1), ("with_original", 2, 0), ("fixed", 1, 0), ("perturbed_only", 13, 0)
]


# --------------------------------------------------------------------------- pairing strategies


@pytest.mark.parametrize("pairing,v,ref", STRATEGY_CASES)
def test_pair_table_matches_slow_enumeration(pairing, v, ref):
    data = VersionedData(tagged(2, v), pairing=pairing, reference_version=ref)
    assert [tuple(r) for r in data.pair_table.tolist()] == slow_pairs(pairing, v, ref)
    expected_p = {"centered": v - 1, "with_original": v * (v - 1), "perturbed_only": (v - 1) * (v - 2), "fixed": 1}
    assert data.pairs_per_example == expected_p[pairing]
    assert data.num_pairs == 2 * expected_p[pairing]


def test_paper_pair_counts():
    # CIFAR-10-C: 12 corruptions + the clean image = 13 versions.
    counts = {p: VersionedData(tagged(1, 13), pairing=p).pairs_per_example for p in PAIRINGS}
    assert counts == {"centered": 12, "with_original": 156, "perturbed_only": 132, "fixed": 1}
    # Multi-Illumination: 25 lightings, ordered pairs of distinct lightings.
    assert VersionedData(tagged(1, 25), pairing="with_original").pairs_per_example == 600


@pytest.mark.parametrize("pairing,v,ref", STRATEGY_CASES)
def test_mode_all_enumerates_every_pair_image_major(pairing, v, ref):
    n = 4
    labels = torch.arange(n) * 3
    data = VersionedData(tagged(n, v), labels, pairing=pairing, reference_version=ref)
    expected = [(e, i, j) for e in range(n) for (i, j) in slow_pairs(pairing, v, ref)]
    assert all_pairs(data) == expected
    batches = list(data.evaluation_batches(5, seed=3))
    assert [t for b in batches for t in decode(b)] == expected
    assert torch.equal(torch.cat([b.index for b in batches]), torch.tensor([e for e, _, _ in expected]))
    assert torch.equal(torch.cat([b.y for b in batches]), torch.tensor([3 * e for e, _, _ in expected]))
    assert data.num_batches(5, mode="all") == len(batches)


def test_mode_all_on_a_subset_and_shuffled():
    data = VersionedData(tagged(6, 4), pairing="with_original").subset([4, 1, 5])
    expected = [(e, i, j) for e in (4, 1, 5) for (i, j) in slow_pairs("with_original", 4)]
    assert all_pairs(data) == expected
    shuffled = [t for b in data.batches(5, shuffle=True, seed=1, mode="all") for t in decode(b)]
    assert sorted(shuffled) == sorted(expected) and shuffled != expected


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_sample_mode_draws_only_valid_pairs_uniformly(pairing):
    n, v, ref = 150, 5, 1
    data = VersionedData(tagged(n, v), pairing=pairing, reference_version=ref)
    valid = slow_pairs(pairing, v, ref)
    counts = {pair: 0 for pair in valid}
    for epoch in range(16):
        seen = [t for b in data.batches(64, shuffle=True, seed=5, epoch=epoch) for t in decode(b)]
        assert sorted(e for e, _, _ in seen) == list(range(n))  # one pair per example per epoch
        for _, i, j in seen:
            assert (i, j) in counts, f"invalid pair {(i, j)} for {pairing}"
            counts[(i, j)] += 1
    total = 16 * n
    expected = total / len(valid)
    sd = np.sqrt(expected * (1 - 1 / len(valid)))
    assert all(abs(c - expected) < 5 * sd + 1e-9 for c in counts.values()), counts


def test_sample_mode_is_deterministic_per_seed_and_epoch():
    data = VersionedData(tagged(40, 6), torch.arange(40), pairing="with_original")

    def epoch(seed, ep, bs=8, shuffle=True):
        return [t for b in data.batches(bs, shuffle=shuffle, seed=seed, epoch=ep) for t in decode(b)]

    assert epoch(1, 0) == epoch(1, 0)
    assert epoch(1, 0) != epoch(1, 1)
    assert epoch(1, 0) != epoch(2, 0)
    # The batch size only groups the same epoch differently.
    assert epoch(1, 3, bs=8) == epoch(1, 3, bs=13)
    # Without shuffling examples come in order, the draws are the same per position.
    ordered = epoch(1, 3, shuffle=False)
    assert [e for e, _, _ in ordered] == list(range(40))


def test_batches_labels_index_drop_last_and_num_batches():
    data = VersionedData(tagged(10, 3), torch.arange(10) + 100)
    batches = list(data.batches(4, shuffle=True, seed=0, drop_last=True))
    assert len(batches) == 2 == data.num_batches(4, drop_last=True)
    assert data.num_batches(4) == 3 and data.num_batches(4, mode="all") == 5
    for b in batches:
        assert b.x.shape == (4, 1, 1, 2) and b.x.dtype == torch.float32
        assert torch.equal(b.y, b.index + 100)
        assert [e for e, _, _ in decode(b)] == b.index.tolist()
    with pytest.raises(ValueError, match="mode"):
        data.batches(4, shuffle=False, seed=0, mode="pairs")
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="seed"):
        data.batches(2, shuffle=False, seed=-1)
    assert data.is_stored and len(data) == 10 and data.image_shape == (1, 1, 2)


def test_with_pairing_shares_storage():
    data = VersionedData(tagged(3, 4))
    other = data.with_pairing("perturbed_only")
    assert other.versions is data.versions and other.pairing == "perturbed_only"
    assert all_pairs(other) == [(e, i, j) for e in range(3) for (i, j) in slow_pairs("perturbed_only", 4)]
    fixed = data.with_pairing("fixed", reference_version=2)
    assert all_pairs(fixed) == [(e, 2, 2) for e in range(3)]


# --------------------------------------------------------------------------- splits, subsets, decoding


def test_split_by_example_matches_paired_data():
    n = 50
    data = VersionedData(tagged(n, 3), torch.arange(n), augment=JointCropFlip(pad=1, crop=None))
    sizes = {"train": 0.7, "val": 0.1, "test": 0.2}
    parts = data.split(sizes, seed=4)
    ids = [p.source_index for p in (parts.train, parts.val, parts.test)]
    assert sum(len(i) for i in ids) == n
    assert sorted(torch.cat(ids).tolist()) == list(range(n))  # disjoint and covering
    again = data.split(sizes, seed=4)
    assert all(torch.equal(a.source_index, b.source_index) for a, b in zip(parts.__dict__.values(), again.__dict__.values()))
    assert not torch.equal(data.split(sizes, seed=5).train.source_index, ids[0])
    # Same assignment as PairedData for N images and the same seed.
    paired = PairedData.from_tensors(torch.zeros(n, 1, 2, 2), torch.zeros(n, 1, 2, 2)).split(sizes, seed=4)
    for mine, theirs in zip(ids, (paired.train, paired.val, paired.test)):
        assert torch.equal(mine, theirs.source_index)
    # Labels and versions follow the examples; augmentation stays on train only.
    assert torch.equal(parts.val.labels, ids[1])
    assert [e for b in parts.test.batches(4, shuffle=False, seed=0) for e, _, _ in decode(b)] == ids[2].tolist()
    assert parts.train.augment is not None and parts.val.augment is None and parts.test.augment is None
    with pytest.raises(ValueError, match="remain"):
        data.split({"train": 40, "val": 20}, seed=0)


def test_subset_negative_and_out_of_range_indices():
    data = VersionedData(tagged(5, 2))
    assert data.subset([-1, 0]).source_index.tolist() == [4, 0]
    assert data.subset([2, 0]).subset([1]).source_index.tolist() == [0]
    with pytest.raises(ValueError, match="outside"):
        data.subset([5])
    assert len(data.subset([])) == 0


def test_uint8_decodes_per_batch_and_floats_pass_through():
    raw = torch.randint(0, 256, (6, 3, 2, 4, 4), dtype=torch.uint8)
    data = VersionedData(raw, pairing="with_original")
    b = next(data.batches(6, shuffle=False, seed=0, mode="all"))  # the 6 pairs of example 0
    table = data.pair_table
    assert torch.equal(b.x, raw[0, table[:, 0]].float() / 255)
    assert torch.equal(b.x_tilde, raw[0, table[:, 1]].float() / 255)
    floats = np.random.default_rng(0).random((4, 2, 1, 3, 3))  # float64 numpy
    fd = VersionedData(floats)
    fb = next(fd.batches(4, shuffle=False, seed=0, mode="all"))
    assert fb.x.dtype == torch.float32
    torch.testing.assert_close(fb.x_tilde, torch.from_numpy(floats[:, 1]).float())
    big_endian = VersionedData(floats.astype(">f4"))
    torch.testing.assert_close(next(big_endian.batches(4, shuffle=False, seed=0, mode="all")).x, fb.x)
    shifted = VersionedData(torch.from_numpy(floats * 2 - 1).float(), value_range=(-1, 1))
    assert shifted.value_range == (-1.0, 1.0)


def test_constructor_validation():
    with pytest.raises(ValueError, match=r"\(N, V, C, H, W\)"):
        VersionedData(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, V, H, W, C\)"):
        VersionedData(torch.zeros(2, 3, 4, 4), channels_last=True)
    with pytest.raises(ValueError, match="uint8 or float"):
        VersionedData(torch.zeros(2, 3, 1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="uint8 or float"):
        VersionedData(np.zeros((2, 3, 1, 4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="empty"):
        VersionedData(torch.zeros(0, 3, 1, 4, 4))
    with pytest.raises(ValueError, match="pairing must be one of"):
        VersionedData(tagged(2, 3), pairing="random")
    with pytest.raises(ValueError, match="at least 3 versions"):
        VersionedData(tagged(2, 2), pairing="perturbed_only")
    with pytest.raises(ValueError, match="at least 2 versions"):
        VersionedData(tagged(2, 1))
    with pytest.raises(ValueError, match="reference_version"):
        VersionedData(tagged(2, 3), reference_version=3)
    with pytest.raises(ValueError, match="labels must have shape"):
        VersionedData(tagged(2, 3), torch.arange(3))
    with pytest.raises(ValueError, match="integer"):
        VersionedData(tagged(2, 3), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        VersionedData(torch.full((2, 2, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="value_range"):
        VersionedData(torch.full((2, 2, 1, 2, 2), 1.5))
    with pytest.raises(ValueError, match="value_range"):
        VersionedData(np.full((2, 2, 1, 2, 2), -0.5))
    with pytest.raises(ValueError, match="value_range"):  # uint8 255 decodes to 1.0 > 0.5
        VersionedData(torch.full((2, 2, 1, 2, 2), 255, dtype=torch.uint8), value_range=(0, 0.5))
    with pytest.raises(ValueError, match="callable"):
        VersionedData(tagged(2, 3), augment="cropflip")
    with pytest.raises(ValueError, match="array"):
        VersionedData([[1, 2]])


# --------------------------------------------------------------------------- memory maps / LazyStack


def test_memmap_backed_versions(tmp_path):
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (9, 4, 5, 6, 3), dtype=np.uint8)  # (N, V, H, W, C)
    np.save(tmp_path / "v.npy", nhwc)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    reference = VersionedData(torch.from_numpy(nhwc).permute(0, 1, 4, 2, 3).contiguous(), pairing="with_original")
    permuted = VersionedData(mm.transpose(0, 1, 4, 2, 3), pairing="with_original")  # a view of the memory map
    channels_last = VersionedData(mm, pairing="with_original", channels_last=True)
    assert permuted.image_shape == channels_last.image_shape == (3, 5, 6)
    for mode in ("all", "sample"):
        for a, b, c in zip(
            reference.batches(5, shuffle=True, seed=2, mode=mode),
            permuted.batches(5, shuffle=True, seed=2, mode=mode),
            channels_last.batches(5, shuffle=True, seed=2, mode=mode),
        ):
            assert torch.equal(a.x, b.x) and torch.equal(a.x, c.x)
            assert torch.equal(a.x_tilde, b.x_tilde) and torch.equal(a.x_tilde, c.x_tilde)
            assert b.x.is_contiguous() and c.x_tilde.is_contiguous()
    # The storage is still the memory map: nothing was copied at construction.
    assert isinstance(channels_last.versions, np.memmap)


def test_lazy_stack_of_memmaps(tmp_path):
    rng = np.random.default_rng(2)
    parts = [rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8) for _ in range(3)]
    for k, p in enumerate(parts):
        np.save(tmp_path / f"p{k}.npy", p)
    stack = LazyStack([np.load(tmp_path / f"p{k}.npy", mmap_mode="r") for k in range(3)])
    full = np.stack(parts, axis=1)
    assert stack.shape == full.shape and stack.dtype == np.uint8 and len(stack) == 7 and stack.ndim == 5
    rows, cols = np.array([3, 0, 6, 3]), np.array([2, 0, 1, -1])
    np.testing.assert_array_equal(stack[rows, cols], full[rows, cols])
    np.testing.assert_array_equal(stack[rows[:, None], np.array([0, 2])[None]], full[rows[:, None], np.array([0, 2])[None]])
    np.testing.assert_array_equal(stack[rows], full[rows])
    np.testing.assert_array_equal(stack[2], full[2])
    np.testing.assert_array_equal(stack[1:5, 1], full[1:5, 1])
    np.testing.assert_array_equal(stack[1:5, 1:], full[1:5, 1:])
    np.testing.assert_array_equal(stack[:, [2, 0]], full[:, [2, 0]])
    np.testing.assert_array_equal(stack[torch.tensor([1, 2]), torch.tensor([0, 2])], full[[1, 2], [0, 2]])
    np.testing.assert_array_equal(np.asarray(stack), full)
    with pytest.raises(IndexError):
        stack[0, 0, 0]
    with pytest.raises(IndexError):
        stack[np.array([0]), np.array([3])]
    with pytest.raises(ValueError, match="part 1"):
        LazyStack([parts[0], parts[1][:3]])
    # As VersionedData storage (channels last), equal to the stacked array.
    lazy = VersionedData(stack, pairing="perturbed_only", channels_last=True)
    eager = VersionedData(torch.from_numpy(full).permute(0, 1, 4, 2, 3).contiguous(), pairing="perturbed_only")
    for a, b in zip(lazy.batches(4, shuffle=True, seed=0), eager.batches(4, shuffle=True, seed=0)):
        assert torch.equal(a.x, b.x) and torch.equal(a.x_tilde, b.x_tilde)


# --------------------------------------------------------------------------- JointCropFlip


def slow_crop_flip(img: torch.Tensor, pad: int, top: int, left: int, flip: bool, ch: int, cw: int) -> torch.Tensor:
    padded = F.pad(img, (pad, pad, pad, pad))
    crop = padded[:, top : top + ch, left : left + cw]
    return crop.flip(-1) if flip else crop


@pytest.mark.parametrize("pad,crop,shape", [(4, (32, 32), (3, 32, 32)), (2, (5, 7), (2, 6, 9)), (0, None, (1, 4, 4))])
def test_joint_crop_flip_matches_per_sample_reference(pad, crop, shape):
    aug = JointCropFlip(pad=pad, crop=crop)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, *shape) + 0.01
    x_tilde = torch.rand(64, *shape)
    top, left, flip = aug.draw(64, shape[1], shape[2], gen)
    out_x, out_t = aug.apply(x, x_tilde, top, left, flip)
    ch, cw = crop or shape[1:]
    assert out_x.shape == (64, shape[0], ch, cw) and out_t.shape == out_x.shape
    for b in range(64):
        args = (pad, int(top[b]), int(left[b]), bool(flip[b]), ch, cw)
        assert torch.equal(out_x[b], slow_crop_flip(x[b], *args))
        assert torch.equal(out_t[b], slow_crop_flip(x_tilde[b], *args))


def test_joint_crop_flip_keeps_pairs_aligned_and_moves_pixels():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(512, 3, 32, 32) * 0.9 + 0.1  # no zeros, so padding is recognisable
    x_tilde = x * x  # a pixelwise function with f(0) = 0
    out_x, out_t = JointCropFlip(pad=4, crop=(32, 32))(x, x_tilde, gen)
    assert torch.equal(out_t, out_x * out_x)  # the same crop and flip, pixel for pixel
    unchanged = (out_x == x).flatten(1).all(1)
    # Identity needs offset (4, 4) and no flip: probability 1/81 · 1/2 per pair.
    assert unchanged.float().mean() < 0.05
    assert ((out_x == 0).flatten(1).any(1)).float().mean() > 0.5  # most crops show padding


def test_joint_crop_flip_rates_and_offsets():
    aug = JointCropFlip(pad=4)
    top, left, flip = aug.draw(8000, 32, 32, torch.Generator().manual_seed(2))
    assert abs(flip.float().mean().item() - 0.5) < 0.03
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert abs(top.float().mean().item() - 4) < 0.15
    no_flip = JointCropFlip(pad=4, flip=False).draw(100, 32, 32, torch.Generator().manual_seed(2))[2]
    assert not no_flip.any()
    # Detect the flip from content: a horizontal ramp decreases after flipping.
    ramp = torch.arange(32.0).expand(300, 1, 32, 32) + 1
    out, _ = JointCropFlip(pad=0)(ramp, ramp.clone(), torch.Generator().manual_seed(3))
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert 0.4 < flipped.float().mean() < 0.6


def test_joint_crop_flip_misc():
    aug = JointCropFlip(pad=1, crop=3)
    x = torch.randint(0, 256, (5, 2, 3, 3), dtype=torch.uint8)
    out_x, out_t = aug(x, x.clone(), torch.Generator().manual_seed(0))
    assert out_x.dtype == torch.uint8 and torch.equal(out_x, out_t)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a = torch.rand(4, 1, 8, 8)
    assert torch.equal(aug(a, a, g1)[0], aug(a, a, g2)[0])  # same generator state, same crops
    # Different channel counts for x and x_tilde are fine (e.g. an image and a label map).
    ox, ot = JointCropFlip(pad=2, crop=None)(torch.rand(3, 3, 6, 6), torch.rand(3, 1, 6, 6))
    assert ox.shape == (3, 3, 6, 6) and ot.shape == (3, 1, 6, 6)
    with pytest.raises(ValueError, match="does not fit"):
        JointCropFlip(pad=1, crop=(40, 40))(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="batch size, height and width"):
        aug(torch.rand(2, 1, 3, 3), torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="pad"):
        JointCropFlip(pad=-1)
    with pytest.raises(ValueError, match="crop"):
        JointCropFlip(crop=(0, 3))


def scaled_versions(n: int, v: int, size: int = 8) -> torch.Tensor:
    """(n, v, 1, size, size) float: version k = (k + 1) · base_n, base integers in 1..20."""
    base = torch.randint(1, 21, (n, 1, 1, size, size), generator=torch.Generator().manual_seed(4)).float()
    return base * torch.arange(1, v + 1).float().view(1, v, 1, 1, 1)


def assert_aligned(x: torch.Tensor, x_tilde: torch.Tensor) -> None:
    """x̃ = c·x pixelwise for some c per pair (exact in float64 on integer-valued data)."""
    x, x_tilde = x.double(), x_tilde.double()
    sx, st = x.flatten(1).sum(1), x_tilde.flatten(1).sum(1)
    assert torch.equal(x_tilde * sx.view(-1, 1, 1, 1), x * st.view(-1, 1, 1, 1))


def test_versioned_data_augments_training_batches_only():
    versions = scaled_versions(64, 4)
    plain = VersionedData(versions, pairing="with_original", value_range=(0, 100))
    data = plain.with_augment(JointCropFlip(pad=2, crop=None))
    changed = 0
    for a, b in zip(data.batches(16, shuffle=True, seed=0, epoch=1), plain.batches(16, shuffle=True, seed=0, epoch=1)):
        assert torch.equal(a.index, b.index)  # augmentation does not change which pairs are drawn
        assert_aligned(a.x, a.x_tilde)
        changed += int((a.x != b.x).flatten(1).any(1).sum())
    assert changed > 48
    again = [b.x for b in data.batches(16, shuffle=True, seed=0, epoch=1)]
    assert all(torch.equal(p, q) for p, q in zip(again, [b.x for b in data.batches(16, shuffle=True, seed=0, epoch=1)]))
    assert not torch.equal(again[0], next(data.batches(16, shuffle=True, seed=0, epoch=2)).x)
    # Enumeration and evaluation never augment.
    for a, b in zip(data.evaluation_batches(16, seed=0), plain.evaluation_batches(16, seed=0)):
        assert torch.equal(a.x, b.x) and torch.equal(a.x_tilde, b.x_tilde)


def test_with_augment_for_paired_data():
    x = torch.randint(1, 21, (40, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 40
    paired = PairedData.from_tensors(x, torch.stack([x * 0.5, x * 2], 1), torch.arange(40))
    wrapped = paired.with_augment(JointCropFlip(pad=2, crop=None))
    assert len(wrapped) == 40 and wrapped.image_shape == (1, 8, 8) and wrapped.num_pairs == 80
    changed = 0
    for a, b in zip(wrapped.batches(10, shuffle=True, seed=1), paired.batches(10, shuffle=True, seed=1)):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        assert_aligned(a.x * 40, a.x_tilde * 40)
        changed += int((a.x != b.x).flatten(1).any(1).sum())
    assert changed > 30
    ev = [b.x for b in wrapped.evaluation_batches(16, seed=0)]
    assert all(torch.equal(p, q.x) for p, q in zip(ev, paired.evaluation_batches(16, seed=0)))
    parts = wrapped.split({"train": 30, "val": 5, "test": 5}, seed=0)
    assert parts.train.augment is not None and parts.val.augment is None and parts.test.augment is None
    assert wrapped.subset([0, 1]).augment is not None and paired.augment is None
    with pytest.raises(ValueError, match="callable"):
        paired.with_augment("cropflip")


# --------------------------------------------------------------------------- duck typing with the loops


def test_train_cvae_accepts_versioned_data(tmp_path):
    from perturbsets.config.learn import Config, DataConfig, ModelConfig, Schedule, TrainingConfig
    from perturbsets.training.cvae import train_cvae
    from perturbsets.workflows.sources import load_splits

    images, labels = load_digits(28)
    x = images[:160]
    versions = torch.stack([x, x.roll(1, -1), x.roll(-1, -2)], 1)  # (160, 3, 1, 28, 28)
    data = VersionedData(versions, labels[:160], augment=JointCropFlip(pad=2, crop=(28, 28)))
    config = Config(
        name="versions",
        seed=0,
        data=DataConfig(source="digits", canvas=28, perturbation={"name": "linf", "epsilon": 0.3},
                        split={"train": 96, "val": 32, "test": 32}),
        model=ModelConfig(architecture="mnist_fc", options={"hidden": 32, "latent_dim": 4}),
        training=TrainingConfig(epochs=1, batch_size=32, lr=Schedule([0, 1], [1e-3, 1e-3]),
                                beta=Schedule([0, 1], [1.0, 1.0]), device="cpu"),
    )
    result = train_cvae(config, load_splits(config.data, config.seed, data), tmp_path / "run", progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["val_loss"])
    assert result.splits.train.augment is not None and result.splits.val.augment is None


def test_negative_labels_are_refused_but_label_maps_keep_the_ignore_index():
    from perturbsets.classifiers.scoring import IGNORE_INDEX

    with pytest.raises(ValueError, match=r"labels must be class indices 0..K-1, found 1 negative value\(s\) \(e.g. -3\)"):
        VersionedData(tagged(2, 3), torch.tensor([1, -3]))
    with pytest.raises(ValueError, match="class indices 0..K-1"):
        VersionedData(tagged(2, 3), np.array([-1, 0]))
    maps = torch.zeros(2, 1, 2, dtype=torch.int64)  # tagged images are 1×2 pixels
    maps[0, 0, 0] = IGNORE_INDEX  # unlabelled pixels are allowed in label maps
    data = VersionedData(tagged(2, 3), maps)
    assert int(data.labels.min()) == IGNORE_INDEX
    maps[1, 0, 1] = -2
    with pytest.raises(ValueError, match=rf"0..K-1 \(or {IGNORE_INDEX}, the ignore index of unlabelled pixels\).*\(e.g. -2\)"):
        VersionedData(tagged(2, 3), maps)
