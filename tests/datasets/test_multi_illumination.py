"""Multi-Illumination reader: both on-disk layouts, the 36-class remap, splits, pairs, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perturbsets.datasets.files import DatasetFormatError
from perturbsets.datasets.multi_illumination.arrays import LIGHTINGS, SceneImages, mip_shape
from perturbsets.datasets.multi_illumination.loader import load_multi_illumination, split_scenes
from perturbsets.datasets.multi_illumination.materials import MATERIALS, PALETTE, remap_materials
from perturbsets.classifiers.scoring import IGNORE_INDEX
from perturbsets.datasets.tiny import write_tiny_multi_illumination
from perturbsets.pairs.augment import JointCropFlip

# The 36 classes as listed in shared/reference/official-implementation.md §4.6.
REFERENCE_CLASSES = (
    "Brick, Cardboard, Carpet/rug, Ceramic, Chalkboard/blackboard, Concrete, Cork/corkboard, Dirt, Fabric/cloth, "
    "Foliage, Food, Fur, Glass, Granite/marble, Hair, Laminate, Leather, Linoleum, Metal, Mirror, Painted, "
    "Paper/tissue, Plastic - clear, Plastic - opaque, Rubber/latex, Skin, Sponge, Stone, Styrofoam, Tile, Wallpaper, "
    "Water, Wax, Wicker, Wood, Other"
).split(", ")
UNKNOWN = {"unassigned", "I can't tell", "More than one material", "Not on list", "splitshape", "no_consensus"}
MIP = 7  # 31 x 46: the real size rule at a level small enough for tests


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_tiny_multi_illumination(tmp_path_factory.mktemp("mi"), np.random.default_rng(0), mip=MIP)


def _decode(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_mip_sizes_follow_the_dataset():
    assert mip_shape(5) == (125, 187) and mip_shape(4) == (250, 375) and mip_shape(3) == (500, 750)
    with pytest.raises(ValueError, match="MIP level"):
        mip_shape(-1)


def test_remap_gives_the_reference_classes():
    assert list(MATERIALS) == REFERENCE_CLASSES and len(PALETTE) == 41
    mapped = remap_materials(np.arange(len(PALETTE)))
    for index, name in enumerate(PALETTE):
        assert MATERIALS[mapped[index]] == ("Other" if name in UNKNOWN else name)
    assert mapped[PALETTE.index("Brick")] == 0 and mapped[PALETTE.index("Wood")] == 34


def test_unknown_palette_index_is_named():
    with pytest.raises(DatasetFormatError, match="palette index \\[41\\]"):
        remap_materials(np.array([[3, 41]]), "x.png")


def test_paper_split_rules():
    names = ["everett_kitchen2", "main_drylab3", "main_experiment1", "kingston_dining10", "everett_lobby1"]
    split = split_scenes(names)
    assert split == {
        "train": ["kingston_dining10", "main_experiment1"],
        "val": ["main_drylab3"],
        "test": ["everett_kitchen2", "everett_lobby1"],
    }


def test_scene_layout_reads_the_right_images_and_maps(scenes):
    data = load_multi_illumination(scenes, "train", MIP, check_size=False)
    h, w = mip_shape(MIP)
    assert len(data) == 6 and data.num_versions == LIGHTINGS and data.image_shape == (3, h, w)
    names = sorted(p.name for p in scenes.iterdir() if p.name.startswith("main_experiment"))
    table = data.pair_table
    batch = next(data.batches(7, shuffle=False, seed=0, mode="all"))
    for b in range(7):
        scene = names[b // len(table)]
        i, j = table[b % len(table)].tolist()
        expect_x = _decode(scenes / scene / f"dir_{i}_mip{MIP}.jpg")
        expect_xt = _decode(scenes / scene / f"dir_{j}_mip{MIP}.jpg")
        torch.testing.assert_close(batch.x[b], torch.from_numpy(expect_x.copy()).permute(2, 0, 1).float() / 255)
        torch.testing.assert_close(batch.x_tilde[b], torch.from_numpy(expect_xt.copy()).permute(2, 0, 1).float() / 255)
        with Image.open(scenes / scene / f"materials_mip{MIP}.png") as im:
            indices = np.asarray(im)
        expect_y = np.empty(indices.shape, dtype=np.int64)
        for r in range(indices.shape[0]):  # slow, obviously-correct remap
            for c in range(indices.shape[1]):
                name = PALETTE[indices[r, c]]
                expect_y[r, c] = REFERENCE_CLASSES.index("Other" if name in UNKNOWN else name)
        assert torch.equal(batch.y[b], torch.from_numpy(expect_y))


def test_only_the_batch_is_decoded(scenes, monkeypatch):
    data = load_multi_illumination(scenes, "val", MIP, check_size=False)
    calls = []
    original = SceneImages.read
    monkeypatch.setattr(SceneImages, "read", lambda self, s, k: calls.append((s, k)) or original(self, s, k))
    next(data.batches(2, shuffle=True, seed=1))
    assert len(calls) == 4  # x and x_tilde of 2 pairs


def test_training_pairs_are_distinct_and_cover_every_lighting(scenes):
    data = load_multi_illumination(scenes, "test", MIP, check_size=False)
    assert data.pairs_per_example == LIGHTINGS * (LIGHTINGS - 1)
    table = data.pair_table
    assert (table[:, 0] != table[:, 1]).all() and len({tuple(p) for p in table.tolist()}) == 600
    gen = torch.Generator().manual_seed(0)
    draws = table[torch.randint(len(table), (20000,), generator=gen)]
    assert set(draws[:, 0].tolist()) == set(range(LIGHTINGS)) == set(draws[:, 1].tolist())
    fixed = load_multi_illumination(scenes, "test", MIP, check_size=False, pairing="fixed")
    assert fixed.pair_table.tolist() == [[0, 0]]
    batch = next(fixed.batches(2, shuffle=False, seed=0))
    assert torch.equal(batch.x, batch.x_tilde)


def test_numpy_batch_layout(tmp_path):
    rng = np.random.default_rng(1)
    h, w = mip_shape(MIP)
    parts = [rng.integers(0, 256, (n, LIGHTINGS, h, w, 3), dtype=np.uint8) for n in (3, 2)]
    maps = [rng.integers(0, 36, (n, h, w), dtype=np.uint8) for n in (3, 2)]
    for j, (im, ma) in enumerate(zip(parts, maps)):
        np.save(tmp_path / f"dataset-train-mip-{MIP}-batch-{j}.npy", im)
        np.save(tmp_path / f"dataset-train-materials-mip-{MIP}-batch-{j}.npy", ma)
    data = load_multi_illumination(tmp_path, "train", MIP, check_size=False)
    images, labels = np.concatenate(parts), np.concatenate(maps)
    table = data.pair_table
    batch = next(data.batches(len(table) * 5, shuffle=False, seed=0, mode="all"))
    scene = batch.index.numpy()
    i, j = table[torch.arange(len(batch.index)) % len(table)].unbind(1)
    torch.testing.assert_close(batch.x, torch.from_numpy(images[scene, i.numpy()]).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(batch.x_tilde, torch.from_numpy(images[scene, j.numpy()]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(batch.y, torch.from_numpy(labels[scene]).long())
    with pytest.raises(DatasetFormatError, match="the paper's split has 960"):
        load_multi_illumination(tmp_path, "train", MIP)


def test_material_maps_from_a_finer_level_are_resized_by_nearest(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(2), mip=MIP, scenes={"test": 1}, material_mip=MIP - 1)
    data = load_multi_illumination(root, "test", MIP, material_mip=MIP - 1, check_size=False)
    y = next(data.batches(1, shuffle=False, seed=0)).y[0].numpy()
    with Image.open(next(root.glob("*/materials_mip6.png"))) as im:
        fine = remap_materials(np.asarray(im))
    h, w = mip_shape(MIP)
    rows = np.floor((np.arange(h) + 0.5) * fine.shape[0] / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * fine.shape[1] / w).astype(int)
    assert np.array_equal(y, fine[rows][:, cols])


def test_crop_flip_pads_label_maps_with_the_ignore_index():
    aug = JointCropFlip(pad=3, crop=(6, 7), flip=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 6, 7)
    y = torch.randint(0, 36, (4, 6, 7))
    top, left, flip = aug.draw(4, 6, 7, gen)
    xa, _, ya = aug.apply(x, x.clone(), top, left, flip, y)
    for b in range(4):
        padded = np.pad(y[b].numpy(), 3, constant_values=IGNORE_INDEX)
        padded_x = np.pad(x[b].numpy(), ((0, 0), (3, 3), (3, 3)))
        t, l = int(top[b]), int(left[b])
        crop, crop_x = padded[t : t + 6, l : l + 7], padded_x[:, t : t + 6, l : l + 7]
        if flip[b]:
            crop, crop_x = crop[:, ::-1], crop_x[:, :, ::-1]
        assert np.array_equal(ya[b].numpy(), crop)
        np.testing.assert_allclose(xa[b].numpy(), crop_x)
    assert (ya == IGNORE_INDEX).any() and not (ya == 0).sum() > (y == 0).sum()


def test_training_augmentation_reaches_the_label_maps(scenes):
    h, w = mip_shape(MIP)
    data = load_multi_illumination(scenes, "train", MIP, check_size=False, augment=JointCropFlip(pad=4, crop=(h, w)))
    batch = next(data.batches(6, shuffle=True, seed=0))
    assert batch.y.shape == (6, h, w) and (batch.y == IGNORE_INDEX).any()
    assert ((batch.x == 0).all(1) | (batch.y != IGNORE_INDEX)).all()  # ignored pixels are padding


# --------------------------------------------------------------------------- bad input


def test_missing_lighting_names_scene(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(3), mip=MIP, scenes={"test": 1})
    (root / "everett_kitchen1" / f"dir_7_mip{MIP}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="everett_kitchen1.*lighting\\(s\\) \\[7\\]"):
        load_multi_illumination(root, "test", MIP, check_size=False)


def test_wrong_material_size_names_file(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(4), mip=MIP, scenes={"test": 1})
    Image.fromarray(np.zeros((30, 46), np.uint8), mode="P").save(root / "everett_kitchen1" / f"materials_mip{MIP}.png")
    with pytest.raises(DatasetFormatError, match="everett_kitchen1.*materials_mip7.png is 46x30.*material_mip: 2"):
        load_multi_illumination(root, "test", MIP, check_size=False)


def test_unknown_palette_index_in_a_scene_names_file(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(5), mip=MIP, scenes={"test": 1})
    h, w = mip_shape(MIP)
    im = Image.fromarray(np.full((h, w), 200, np.uint8), mode="P")
    im.putpalette(list(range(256)) * 3)  # a full palette, so PNG writing keeps index 200
    im.save(root / "everett_kitchen1" / f"materials_mip{MIP}.png")
    with pytest.raises(DatasetFormatError, match="everett_kitchen1.*palette index \\[200\\]"):
        load_multi_illumination(root, "test", MIP, check_size=False)


def test_rgb_material_map_is_refused(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(6), mip=MIP, scenes={"test": 1})
    h, w = mip_shape(MIP)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "everett_kitchen1" / f"materials_mip{MIP}.png")
    with pytest.raises(DatasetFormatError, match="mode 'RGB'.*indexed"):
        load_multi_illumination(root, "test", MIP, check_size=False)


def test_mip_level_without_files(scenes):
    with pytest.raises(FileNotFoundError, match="no Multi-Illumination files at MIP level 5.*MIP level\\(s\\) 7"):
        load_multi_illumination(scenes, "test", 5)


def test_wrong_image_size_names_file(tmp_path):
    root = write_tiny_multi_illumination(tmp_path, np.random.default_rng(7), mip=MIP, scenes={"test": 1})
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "everett_kitchen1" / f"dir_0_mip{MIP}.jpg")
    with pytest.raises(DatasetFormatError, match="everett_kitchen1.*dir_0_mip7.jpg is 20x20"):
        load_multi_illumination(root, "test", MIP, check_size=False)


def test_numpy_layout_checks_shapes_and_classes(tmp_path):
    h, w = mip_shape(MIP)
    np.save(tmp_path / f"dataset-test-mip-{MIP}-batch-0.npy", np.zeros((2, LIGHTINGS, h, w, 3), np.uint8))
    np.save(tmp_path / f"dataset-test-materials-mip-{MIP}-batch-0.npy", np.full((2, h, w), 40, np.uint8))
    with pytest.raises(DatasetFormatError, match="material class 40"):
        load_multi_illumination(tmp_path, "test", MIP, check_size=False)
    np.save(tmp_path / f"dataset-test-materials-mip-{MIP}-batch-0.npy", np.zeros((2, h, w + 1), np.uint8))
    with pytest.raises(DatasetFormatError, match="expected uint8 \\(2, 31, 46\\)"):
        load_multi_illumination(tmp_path, "test", MIP, check_size=False)


def test_too_few_scenes_is_reported(scenes):
    with pytest.raises(DatasetFormatError, match="test split has 2 scenes.*has 30"):
        load_multi_illumination(scenes, "test", MIP)


def test_versions_mode_visits_every_lighting_of_every_scene_once(scenes):
    data = load_multi_illumination(scenes, "test", MIP, check_size=False)
    batches = list(data.batches(16, shuffle=False, seed=0, mode="versions"))
    assert data.num_batches(16, mode="versions") == len(batches) == -(-2 * LIGHTINGS // 16)
    x = torch.cat([b.x for b in batches])
    assert x.shape[0] == 2 * LIGHTINGS and all(torch.equal(b.x, b.x_tilde) for b in batches)
    names = sorted(p.name for p in scenes.iterdir() if p.name.startswith("everett"))
    for item in (0, 7, 24, 25, 49):
        expect = _decode(scenes / names[item // LIGHTINGS] / f"dir_{item % LIGHTINGS}_mip{MIP}.jpg")
        torch.testing.assert_close(x[item], torch.from_numpy(expect.copy()).permute(2, 0, 1).float() / 255)


def test_scene_folders_convert_to_the_numpy_layout(scenes, tmp_path):
    from perturbsets.cli import main

    assert main(["data", "make-mi-arrays", "--data", str(scenes), "--mip", str(MIP), "--out", str(tmp_path), "--no-check-size"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        f"dataset-{s}-{kind}mip-{MIP}-batch-0.npy" for s in ("train", "val", "test") for kind in ("", "materials-")
    )
    for split in ("train", "val", "test"):
        a = load_multi_illumination(scenes, split, MIP, check_size=False, layout="scenes")
        b = load_multi_illumination(tmp_path, split, MIP, check_size=False, layout="numpy")
        ba, bb = next(a.batches(64, shuffle=False, seed=0, mode="versions")), next(b.batches(64, shuffle=False, seed=0, mode="versions"))
        assert torch.equal(ba.x, bb.x) and torch.equal(ba.y, bb.y)


KEYS = [
    2, -1, [0, 3, 3], np.array([[1, 2], [0, 4]]), slice(1, 4), (2, 7), (-1, -2), ([0, 4], [3, 24]),
    (2, [1, 2, 3]), ([0, 1], slice(1, 3)), (slice(None), 3), (slice(1, 3), [0, 5]), (np.array([[0], [2]]), [1, 2]),
]  # fmt: skip


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_lazy_arrays_index_like_numpy(key):
    from perturbsets.datasets.multi_illumination.arrays import RowConcat

    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 255, (n, LIGHTINGS, 2, 3, 1), dtype=np.uint8) for n in (2, 3)]
    expected = np.concatenate(parts)[key]
    got = RowConcat(parts)[key]
    assert got.shape == expected.shape and np.array_equal(got, expected)


def test_scene_images_index_like_numpy(scenes):
    data = SceneImages(scenes, sorted(p.name for p in scenes.iterdir() if p.name.startswith("everett")), MIP)
    full = data[[0, 1]]
    for key in [(1, [0, 24, 3]), ([0, 1], slice(2, 4)), (-1, -1), ([1, 0], [5, 6])]:
        assert np.array_equal(data[key], full[key])
    with pytest.raises(IndexError, match="lighting index out of range"):
        data[0, 25]
    with pytest.raises(IndexError, match="np.nonzero"):
        data[np.array([True, False])]


def test_tensor_label_maps_of_any_integer_type_are_padded_with_the_ignore_index():
    from perturbsets.pairs.versioned import VersionedData

    versions = torch.rand(3, 4, 3, 8, 8)
    maps = torch.randint(0, 5, (3, 8, 8), dtype=torch.uint8)
    data = VersionedData(versions, maps, pairing="with_original", augment=JointCropFlip(pad=3, crop=(8, 8)))
    y = next(data.batches(3, shuffle=False, seed=0)).y
    assert y.dtype == torch.int64 and (y == IGNORE_INDEX).any() and ((y >= 0) | (y == IGNORE_INDEX)).all()


def test_max_pairs_reads_no_batch_beyond_the_cap(scenes, monkeypatch):
    data = load_multi_illumination(scenes, "test", MIP, check_size=False)
    calls = []
    original = SceneImages.read
    monkeypatch.setattr(SceneImages, "read", lambda self, s, k: calls.append(k) or original(self, s, k))
    assert sum(b.x.shape[0] for b in data.evaluation_batches(4, seed=0, max_pairs=8)) == 8
    assert len(calls) == 16  # two batches of 4 pairs, 2 images each


def test_conversion_rewrites_a_file_of_the_wrong_shape(scenes, tmp_path):
    from perturbsets.datasets.multi_illumination.loader import write_numpy_batches

    h, w = mip_shape(MIP)
    stale = tmp_path / f"dataset-test-mip-{MIP}-batch-0.npy"
    np.save(stale, np.zeros((1, LIGHTINGS, h, w, 3), np.uint8))
    write_numpy_batches(scenes, tmp_path, MIP, splits=["test"], check_size=False)
    assert np.load(stale, mmap_mode="r").shape == (2, LIGHTINGS, h, w, 3)
