"""Pairs from an image folder: ``clean/NAME.png`` and its perturbations ``perturbed/NAME*.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbsets.datasets.files import DatasetFormatError
from perturbsets.pairs.paired import PairedData

__all__ = ["load_pair_folder"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
_STEM_SEPARATORS = "_-."
_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _list_images(folder: Path) -> list[Path]:
    # Hidden files (e.g. macOS "._x.png" resource forks) are not images even with an image suffix.
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def _format_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f", ... ({len(names)} in total)" if len(names) > 5 else "")


def _match_clean_stem(stem: str, clean: Mapping[str, int]) -> str | None:
    """Longest clean stem S with ``stem == S`` or ``stem`` starting with S + one of ``_-.``.

    Only cuts at separators are tried, so ``cat10`` never matches ``cat1``; the longest
    match wins so ``cat_1_fog`` belongs to ``cat_1`` when both ``cat`` and ``cat_1`` exist.
    """
    if stem in clean:
        return stem
    for i in range(len(stem) - 1, 0, -1):
        if stem[i] in _STEM_SEPARATORS and stem[:i] in clean:
            return stem[:i]
    return None


def _read_image(path: Path, convert: str | None = None) -> tuple[str, tuple[int, int], np.ndarray | None]:
    """(mode, (W, H), pixels converted to ``convert`` or None) of one image file, naming the file if it is unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = None if convert is None else np.asarray(img.convert(convert), dtype=np.uint8)
            return img.mode, img.size, pixels
    except Exception as err:  # Pillow reports corrupt files as OSError, SyntaxError, ValueError, zlib.error…
        raise DatasetFormatError(
            f"{path} is not a readable image ({type(err).__name__}: {err}); it is probably truncated or corrupt: "
            "replace it or remove it from the pair folder"
        ) from None


def load_pair_folder(root: str | Path, value_range: tuple[float, float] = (0.0, 1.0)) -> PairedData:
    """Load paired images from a folder (stored as uint8).

    Layout::

        root/clean/NAME.png          one clean image per NAME
        root/perturbed/NAME.png      perturbations of NAME: stem equal to NAME or NAME
        root/perturbed/NAME_1.png    followed by one of "_", "-", "." and anything
        root/perturbed/NAME-fog.png  (``cat10_x`` belongs to ``cat10``, never to ``cat1``)

    PNG, JPEG, BMP, TIFF and WebP files are read with Pillow; other files are ignored.
    All images become RGB if any of them is colour, else greyscale ('L'); alpha channels
    are dropped. Clean images are ordered by sorted name (image i = i-th clean name) and
    the perturbations of each image by sorted file name.

    Args:
        root: folder holding ``clean/`` and ``perturbed/``.
        value_range: declared range of the decoded values (uint8 decodes to [0, 1]).

    Returns:
        PairedData with (N, C, H, W) uint8 images and (M, C, H, W) uint8 perturbations.

    Raises:
        FileNotFoundError: ``root``, ``root/clean`` or ``root/perturbed`` is missing.
        ValueError: no clean images, duplicate names, a clean image with no perturbation,
            a perturbed file with no clean image, mismatched sizes or unsupported modes;
            :class:`~perturbsets.datasets.files.DatasetFormatError` for an unreadable (corrupt) image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pair folder {str(root)!r} does not exist or is not a directory")
    dirs = {}
    for sub in ("clean", "perturbed"):
        dirs[sub] = root / sub
        if not dirs[sub].is_dir():
            raise FileNotFoundError(
                f"{str(dirs[sub])!r} is missing; a pair folder needs clean/NAME.png and perturbed/NAME*.png"
            )
    clean_files = _list_images(dirs["clean"])
    if not clean_files:
        raise ValueError(
            f"no clean images in {str(dirs['clean'])!r} (looked for {sorted(_IMAGE_SUFFIXES)} files)"
        )
    clean_index: dict[str, int] = {}
    for i, path in enumerate(clean_files):
        if path.stem in clean_index:
            raise ValueError(
                f"two clean images share the name {path.stem!r} ({clean_files[clean_index[path.stem]].name}, "
                f"{path.name}); rename one"
            )
        clean_index[path.stem] = i

    owner_of: list[int] = []
    perturbed_files: list[Path] = []
    orphans: list[str] = []
    for path in _list_images(dirs["perturbed"]):
        stem = _match_clean_stem(path.stem, clean_index)
        if stem is None:
            orphans.append(path.name)
        else:
            perturbed_files.append(path)
            owner_of.append(clean_index[stem])
    if orphans:
        raise ValueError(
            f"perturbed image(s) with no clean image: {_format_names(orphans)}; each perturbed/NAME*.png needs a "
            "clean/NAME.png, where the perturbed name is NAME or NAME followed by '_', '-' or '.'"
        )
    owned = set(owner_of)
    lonely = [p.name for i, p in enumerate(clean_files) if i not in owned]
    if lonely:
        raise ValueError(
            f"clean image(s) with no perturbation: {_format_names(lonely)}; add perturbed/NAME.png or "
            "perturbed/NAME_<suffix>.png for each, or remove them from clean/"
        )

    all_files = clean_files + perturbed_files
    modes, sizes = [], []
    for path in all_files:
        mode, size, _ = _read_image(path)
        if mode not in _GREY_MODES | _COLOUR_MODES:
            raise ValueError(
                f"{path} has image mode {mode!r} (16-bit, 32-bit or float pixels), which is not supported; "
                "save it as 8-bit greyscale or RGB"
            )
        modes.append(mode)
        sizes.append(size)
    expected = sizes[0]
    for path, size in zip(all_files, sizes):
        if size != expected:
            raise ValueError(
                f"{path} has size {size[0]}x{size[1]} (WxH) but expected {expected[0]}x{expected[1]} "
                f"(the size of {all_files[0]}); all images must have the same size"
            )
    target = "RGB" if any(m in _COLOUR_MODES for m in modes) else "L"

    def read(paths: list[Path]) -> Tensor:
        stacked = np.stack([_read_image(path, target)[2] for path in paths])
        stacked = stacked[:, None] if target == "L" else stacked.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(stacked))

    return PairedData(
        read(clean_files),
        perturbed=read(perturbed_files),
        owner=torch.tensor(owner_of, dtype=torch.int64),
        value_range=value_range,
    )
