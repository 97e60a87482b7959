"""The data tools of ``perturbsets data``: write CIFAR-10-C corruptions, Multi-Illumination arrays, tiny copies."""

from __future__ import annotations

from pathlib import Path

from perturbsets.datasets.cifar10c.registry import CORRUPTIONS
from perturbsets.datasets.cifar10c.frost_textures import load_frost_textures
from perturbsets.datasets.cifar10c.generator import make_corrupted_split
from perturbsets.datasets.cifar10 import load_cifar10
from perturbsets.datasets.multi_illumination.loader import write_numpy_batches
from perturbsets.datasets.tiny import write_tiny_datasets


def make_cifar10c(
    cifar: str | Path,
    split: str,
    out: str | Path,
    *,
    seed: int,
    workers: int,
    severities: list[int],
    corruptions: list[str] | None,
    frost: str | Path | None,
    check_size: bool,
    progress: bool,
) -> None:
    """The CIFAR-10-C corruptions (default: all 19) of one CIFAR-10 split, per severity.

    The test split with all five severities is also written in Hendrycks' layout
    (``CIFAR-10-C/``).
    """
    images, labels = load_cifar10(cifar, split, check_size=check_size)
    hwc = images.transpose(0, 2, 3, 1)
    names = corruptions or list(CORRUPTIONS)
    textures = load_frost_textures(sorted(Path(frost).glob("frost*"))) if frost else None
    out = Path(out)
    # The two layouts go to separate folders: their labels.npy files differ in length.
    layouts = [("per_severity", out / f"cifar-10-c-{split}")]
    if split == "test" and len(severities) == 5:
        layouts.append(("hendrycks", out / "CIFAR-10-C"))
    for layout, folder in layouts:
        make_corrupted_split(
            hwc, names, severities, seed=seed, workers=workers, progress=progress,
            out_dir=folder, layout=(layout,), labels=labels, frost_textures=textures,
        )  # fmt: skip
        print(f"{layout} layout written to {folder}")


def make_mi_arrays(data: str | Path, out: str | Path, *, mip: int, material_mip: int | None, check_size: bool) -> None:
    """Multi-Illumination scene folders → the paper's numpy batch files."""
    paths = write_numpy_batches(data, out, mip, material_mip=material_mip, check_size=check_size)
    print(f"wrote {len(paths)} files to {out}")


def make_tiny(out: str | Path) -> None:
    """Tiny copies of MNIST, CIFAR-10, CIFAR-10-C and Multi-Illumination in their real formats."""
    print(f"tiny MNIST, CIFAR-10, CIFAR-10-C and Multi-Illumination copies written to {write_tiny_datasets(out)}")
