"""Index arithmetic of pair sources: which items a split, a subset or an epoch visits.

Splits and subsets never copy images: they are index tensors into the storage of the
source they come from. Stored pairs are kept image-major in a CSR layout: ``pair_ids``
lists the stored pairs of image 0, then image 1, ..., and ``offsets[i]:offsets[i + 1]``
are image i's positions in it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbsets._util.checks import as_index, non_negative_int
from perturbsets._util.seeding import DataStream, epoch_generator

__all__ = ["SPLIT_NAMES", "split_indices", "subset_index", "pair_layout", "subset_layout", "epoch_items"]

SPLIT_NAMES = ("train", "val", "test")


def _split_counts(n: int, requested: list[Any]) -> list[int]:
    """Image counts of the three parts, checked against N."""
    counts = []
    for name, size in zip(SPLIT_NAMES, requested):
        if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, float, np.integer, np.floating)):
            raise ValueError(f"split size for {name!r} must be an int count or a float fraction, got {size!r}")
        if isinstance(size, (float, np.floating)):
            if not 0.0 <= size <= 1.0:
                raise ValueError(f"split fraction for {name!r} must be in [0, 1], got {size}")
            count = int(round(size * n))
        else:
            count = int(size)
            if count < 0:
                raise ValueError(f"split size for {name!r} must be >= 0, got {count}")
        if size > 0 and count == 0:
            raise ValueError(
                f"split {name!r} requested {size} of N={n} images, which is 0 images; "
                "use a larger dataset or a larger fraction"
            )
        counts.append(count)
    fractions = [s for s in requested if isinstance(s, (float, np.floating))]
    if len(fractions) == 3:
        if sum(fractions) > 1.0 + 1e-9:
            raise ValueError(f"split fractions sum to {sum(fractions):.6g} > 1; they must sum to at most 1")
        if abs(sum(fractions) - 1.0) <= 1e-9 and fractions[0] > 0:
            counts[0] = n - counts[1] - counts[2]
            if counts[0] <= 0:
                raise ValueError(
                    f"split {dict(zip(SPLIT_NAMES, requested))} of N={n} images leaves no image for 'train' "
                    "after rounding val and test up; use a larger dataset or smaller val/test fractions"
                )
    total = 0
    for name, size, count in zip(SPLIT_NAMES, requested, counts):
        total += count
        if total > n:
            raise ValueError(
                f"split {name!r} requested {size} ({count} images) but only {n - total + count} of N={n} "
                f"images remain after the earlier splits; reduce the sizes {dict(zip(SPLIT_NAMES, requested))}"
            )
    return counts


def split_indices(
    n: int, sizes: Mapping[str, int | float] | Sequence[int | float], seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted (train, val, test) indices of N items, disjoint.

    Args:
        n: number of items (images or examples).
        sizes: ``{"train": a, "val": b, "test": c}`` (missing keys = 0) or ``(a, b, c)``.
            Each entry is an int count or a float fraction of N in [0, 1]. Fractions are
            rounded; when all entries are fractions summing to 1, train takes the
            rounding remainder so the split covers every item.
        seed: non-negative int; the assignment is ``numpy.random.default_rng(seed)
            .permutation(N)``, independent of torch's RNG.

    Raises:
        ValueError: malformed sizes, or a requested non-zero part that would be empty
            or that does not fit in N items.
    """
    seed = non_negative_int(seed, "seed")
    if isinstance(sizes, Mapping):
        unknown = sorted(set(sizes) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"split sizes has unknown key(s) {unknown}; use {list(SPLIT_NAMES)}")
        requested = [sizes.get(name, 0) for name in SPLIT_NAMES]
    else:
        requested = list(sizes)
        if len(requested) != 3:
            raise ValueError(f"split sizes must have 3 entries (train, val, test), got {len(requested)}")
    counts = _split_counts(n, requested)
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *counts])
    train, val, test = (torch.from_numpy(np.sort(perm[bounds[i] : bounds[i + 1]])) for i in range(3))
    return train, val, test


def subset_index(indices: Any, n: int, name: str, noun: str) -> Tensor:
    """``indices`` into N items (negative ones counted from the end) as int64 in [0, N)."""
    idx = as_index(indices, name)
    bad = (idx < -n) | (idx >= n)
    if bool(bad.any()):
        raise ValueError(f"{name} has values outside [-{n}, {n - 1}] (e.g. {int(idx[bad][0])}) for {n} {noun}")
    return torch.where(idx < 0, idx + n, idx)


def pair_layout(owner: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(pair_ids, offsets) of stored pairs owned by ``owner`` (M,) among N images.

    Pairs are sorted by owner (stable, so each image's pairs keep their given order).
    """
    pair_ids = torch.argsort(owner, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)
    return pair_ids, offsets


def subset_layout(pair_ids: Tensor, offsets: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """(pair_ids, offsets) of the images ``idx`` (in that order) with all of their pairs."""
    counts = (offsets[1:] - offsets[:-1])[idx]
    # Group id and position within the group of every slot, without a per-image loop.
    groups = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(groups.numel()) - starts[groups]
    sub_ids = pair_ids[offsets[idx][groups] + within]
    sub_offsets = torch.zeros(idx.numel() + 1, dtype=torch.int64)
    sub_offsets[1:] = torch.cumsum(counts, 0)
    return sub_ids, sub_offsets


def epoch_items(
    n: int, offsets: Tensor | None, mode: str, shuffle: bool, seed: int, epoch: int
) -> tuple[Tensor, Tensor | None]:
    """(image of each item, its position in the image-major pair list) for one epoch of N images.

    ``offsets`` is None for on-the-fly pairs, which have no stored position (None). In
    ``mode="all"`` the items are the stored pairs; in ``"sample"`` the images owning at
    least one pair, each with one of its pairs drawn uniformly from the ``CHOICE`` stream.
    ``shuffle`` permutes the items with the ``ORDER`` stream.
    """
    cpu = torch.device("cpu")
    counts = None if offsets is None else offsets[1:] - offsets[:-1]
    if mode == "all":
        items = torch.arange(int(offsets[-1]))
    elif counts is not None:
        items = torch.nonzero(counts > 0).flatten()
    else:
        items = torch.arange(n)
    if shuffle:
        items = items[torch.randperm(items.numel(), generator=epoch_generator(seed, epoch, DataStream.ORDER, cpu))]
    if mode == "all":
        owner = torch.repeat_interleave(torch.arange(n), counts)
        return owner[items], items
    if counts is None:
        return items, None
    counts = counts[items]
    # One uniform draw per image for the whole epoch; float64 keeps floor(u * count)
    # exact for any realistic count, the clamp guards u * count rounding up to count.
    u = torch.rand(items.numel(), generator=epoch_generator(seed, epoch, DataStream.CHOICE, cpu), dtype=torch.float64)
    choice = torch.minimum((u * counts).long(), counts - 1)
    return items, offsets[items] + choice
