"""Paired data ``(x, x_tilde[, y])`` for learning perturbation sets (paper Sections 3 and 4.1).

A perturbation set is learned from pairs of a clean image ``x`` and a perturbed version
``x_tilde`` of it. :class:`PairedData` holds N clean images and either

* **stored** perturbations: M perturbed images, each owned by one clean image (an image
  may own zero, one or many), e.g. CIFAR10-C corruptions, multi-illumination captures or
  the fixed RTS-1 / RTS-5 perturbations of paper Table 4; or
* an **on-the-fly** perturbation ``(x_batch, generator) -> x_tilde_batch`` that draws a
  fresh ``x_tilde`` for every batch (the MNIST ℓ∞ and RTS settings, Appendix D.1).

Images are (N, C, H, W) and may be stored as float32 in ``value_range`` or as uint8
(decoded to float32 / 255 one batch at a time, so large datasets stay 4× smaller in
memory). Splits and subsets share the storage of the dataset they come from; only index
tensors are copied.

Batches are produced with index tensors, never per-sample Python loops, and every random
choice is drawn from generators seeded by ``(seed, epoch)`` alone, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from perturbsets._util.checks import check_tensor_values, check_value_range
from perturbsets._util.seeding import DataStream, epoch_generator
from perturbsets.pairs.augment import JointAugmentation
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.source import PairSource
from perturbsets.pairs.splits import epoch_items, subset_index, subset_layout
from perturbsets.pairs.tensors import (
    as_images,
    check_labels,
    check_perturbation,
    decode,
    fixed_perturbations,
    stack_perturbed,
    stored_pairs,
)
from perturbsets.perturbations import Perturbation

__all__ = ["PairedData"]


class PairedData(PairSource):
    """N clean images paired with stored or on-the-fly perturbations.

    Use the constructors :meth:`from_tensors`, :meth:`on_the_fly`,
    :meth:`with_fixed_perturbations`, :func:`~perturbsets.datasets.folder.load_pair_folder`,
    or the general form::

        PairedData(images, labels=None, *, perturbed=..., owner=..., value_range=(0., 1.))
        PairedData(images, labels=None, *, perturbation=..., value_range=(0., 1.))

    Args:
        images: (N, C, H, W) float (converted to float32) with values in ``value_range``,
            or uint8 (0..255, decoded to [0, 1] batch by batch). Tensor or numpy array.
        labels: optional (N,) integer labels (stored as int64).
        perturbed: (M, C, H, W) perturbed images, same rules as ``images``.
        owner: (M,) indices into ``images``: ``perturbed[j]`` perturbs
            ``images[owner[j]]``. May be omitted when M == N (one perturbation per image).
        perturbation: callable ``(x, generator) -> x_tilde`` on (B, C, H, W) float32
            batches, applied on the fly instead of stored perturbations.
        value_range: (low, high) every decoded image must lie in.

    Raises:
        ValueError: empty data, mismatched shapes or lengths, NaN/Inf, values outside
            ``value_range``, owner indices out of range, or both/neither of
            ``perturbed`` and ``perturbation``.

    Stored pairs are kept in image-major order: :attr:`perturbed` and :attr:`owner` list
    the perturbations of image 0 first, then image 1, etc. (stable within an image).

    Example::

        data = PairedData.from_tensors(images, perturbed, labels)   # your own pairs (x, x̃)
        splits = data.split({"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None = None,
        *,
        perturbed: Tensor | np.ndarray | None = None,
        owner: Tensor | np.ndarray | None = None,
        perturbation: Perturbation | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        value_range = check_value_range(value_range, "PairedData")
        images = as_images(images, "images")
        n = images.shape[0]
        if n == 0:
            raise ValueError("images is empty (N = 0); a PairedData needs at least one image")
        check_tensor_values(images, "images", value_range)

        labels = check_labels(labels, n)
        if (perturbed is None) == (perturbation is None):
            raise ValueError(
                "pass exactly one of perturbed= (stored perturbations) or perturbation= (a callable applied on the fly)"
            )
        pair_ids = offsets = None
        if perturbation is not None:
            check_perturbation(perturbation)
            if owner is not None:
                raise ValueError("owner= only applies to stored perturbations; drop it when passing perturbation=")
        else:
            perturbed, pair_ids, offsets = stored_pairs(images, perturbed, owner, value_range)
        self._init(images, labels, None, perturbed, pair_ids, offsets, perturbation, value_range, None)

    def _init(
        self,
        images: Tensor,
        labels: Tensor | None,
        image_ids: Tensor | None,
        perturbed: Tensor | None,
        pair_ids: Tensor | None,
        offsets: Tensor | None,
        perturbation: Perturbation | None,
        value_range: tuple[float, float],
        augment: JointAugmentation | None,
    ) -> None:
        # Storage tensors (_images, _labels, _perturbed) are shared with subsets; the
        # index tensors say which rows this object sees. image_ids None = all, in order.
        self._images = images
        self._labels = labels
        self._image_ids = image_ids
        self._perturbed = perturbed
        self._pair_ids = pair_ids
        self._offsets = offsets
        self._perturbation = perturbation
        self._value_range = value_range
        self._augment = augment

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_tensors(
        cls,
        images: Tensor | np.ndarray,
        perturbed: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> PairedData:
        """Pairs from aligned tensors.

        Args:
            images: (N, C, H, W) float or uint8.
            perturbed: (N, C, H, W) — one perturbation per image — or (N, K, C, H, W) —
                K perturbations per image; float or uint8.
            labels: optional (N,) integer labels.
            value_range: declared range of the decoded values.
        """
        images_t = as_images(images, "images")
        flat, owner = stack_perturbed(images_t, perturbed)
        return cls(images_t, labels, perturbed=flat, owner=owner, value_range=value_range)

    @classmethod
    def on_the_fly(
        cls,
        images: Tensor | np.ndarray,
        perturbation: Perturbation,
        labels: Tensor | np.ndarray | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> PairedData:
        """Pairs whose ``x_tilde = perturbation(x, generator)`` is drawn afresh per batch.

        Args:
            images: (N, C, H, W) float or uint8.
            perturbation: callable ``(x, generator)`` on (B, C, H, W) float32 batches on the
                batch device, e.g. :class:`~perturbsets.perturbations.RTS`; it must not
                modify ``x`` in place (``x`` is returned as the clean half of the pair).
            labels: optional (N,) integer labels.
        """
        return cls(images, labels, perturbation=perturbation, value_range=value_range)

    @classmethod
    def with_fixed_perturbations(
        cls,
        images: Tensor | np.ndarray,
        perturbation: Perturbation,
        k: int,
        seed: int,
        labels: Tensor | np.ndarray | None = None,
        batch_size: int = 1024,
        value_range: tuple[float, float] = (0.0, 1.0),
        device: torch.device | str = "cpu",
    ) -> PairedData:
        """Draw ``k`` perturbations per image once and store them (RTS-1 / RTS-5, Table 4).

        The perturbation is applied in batches of ``batch_size`` on ``device`` with one
        generator seeded by ``seed``, so the result is reproducible for a given seed,
        ``k``, ``batch_size`` and device type. uint8 images get uint8 perturbations
        (rounded to the nearest 1/255, as in the authors' 8-bit pipeline); float images get
        float32 perturbations.

        Args:
            images: (N, C, H, W) float or uint8.
            perturbation: callable ``(x, generator) -> x_tilde`` on float32 batches.
            k: perturbations per image (>= 1).
            seed: non-negative int.
            labels: optional (N,) integer labels.
            batch_size: images per perturbation call.
            value_range: declared range of the decoded values.
            device: where the perturbation runs.
        """
        images_t, out = fixed_perturbations(images, perturbation, k, seed, batch_size, value_range, device)
        return cls.from_tensors(images_t, out, labels, value_range=value_range)

    # ----------------------------------------------------------------- properties

    def __len__(self) -> int:
        """Number N of clean images."""
        return self._images.shape[0] if self._image_ids is None else self._image_ids.shape[0]

    def __repr__(self) -> str:
        kind = f"stored, {self.num_pairs} pairs" if self.is_stored else f"on the fly: {self._perturbation!r}"
        return (
            f"PairedData({len(self)} images of shape {self.image_shape}, {self._images.dtype}, "
            f"labels={'yes' if self._labels is not None else 'no'}, {kind}, value_range={self._value_range}"
            + ("" if self._augment is None else f", augment={self._augment!r}")
            + ")"
        )

    @property
    def is_stored(self) -> bool:
        """True for stored perturbations, False for an on-the-fly perturbation."""
        return self._perturbation is None

    @property
    def num_pairs(self) -> int:
        """M stored pairs, or N (one fresh pair per image per epoch) for on-the-fly data."""
        return len(self) if self._pair_ids is None else int(self._offsets[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self._images.shape[1:])

    @property
    def value_range(self) -> tuple[float, float]:
        """(low, high) of the decoded float32 values."""
        return self._value_range

    @property
    def perturbation(self) -> Perturbation | None:
        """The on-the-fly perturbation, or None for stored perturbations."""
        return self._perturbation

    @property
    def source_index(self) -> Tensor:
        """(N,) int64 indices of these images in the dataset they were first built from."""
        return torch.arange(len(self)) if self._image_ids is None else self._image_ids.clone()

    @property
    def images(self) -> Tensor:
        """(N, C, H, W) clean images as stored (float32 or uint8, not decoded).

        A subset materialises a copy here; training code should use :meth:`batches`.
        """
        return self._images if self._image_ids is None else self._images[self._image_ids]

    @property
    def labels(self) -> Tensor | None:
        """(N,) int64 labels or None."""
        if self._labels is None or self._image_ids is None:
            return self._labels
        return self._labels[self._image_ids]

    @property
    def counts(self) -> Tensor:
        """(N,) int64 number of stored perturbations of each image (on the fly: all 1)."""
        if self._offsets is None:
            return torch.ones(len(self), dtype=torch.int64)
        return self._offsets[1:] - self._offsets[:-1]

    @property
    def owner(self) -> Tensor | None:
        """(M,) int64 image index of each stored pair (image-major order), None on the fly."""
        if self._offsets is None:
            return None
        return torch.repeat_interleave(torch.arange(len(self)), self.counts)

    @property
    def perturbed(self) -> Tensor | None:
        """(M, C, H, W) stored perturbations (as stored, image-major), None on the fly."""
        if self._pair_ids is None:
            return None
        return self._perturbed[self._pair_ids.to(self._perturbed.device)]

    # ----------------------------------------------------------------- subsets

    def subset(self, image_indices: Tensor | np.ndarray | Sequence[int]) -> PairedData:
        """The images at ``image_indices`` (in that order) with all of their perturbations.

        Shares storage with ``self``. An empty index list gives an empty PairedData.
        """
        idx = subset_index(image_indices, len(self), "image_indices", "images")
        image_ids = idx if self._image_ids is None else self._image_ids[idx]
        pair_ids = offsets = None
        if self._pair_ids is not None:
            pair_ids, offsets = subset_layout(self._pair_ids, self._offsets, idx)
        out = PairedData.__new__(PairedData)
        out._init(self._images, self._labels, image_ids, self._perturbed, pair_ids, offsets,
                  self._perturbation, self._value_range, self._augment)
        return out

    # ----------------------------------------------------------------- iteration

    def _gather_images(self, idx: Tensor) -> Tensor:
        rows = idx if self._image_ids is None else self._image_ids[idx]
        return self._images[rows.to(self._images.device)]

    def _gather_labels(self, idx: Tensor, device: torch.device) -> Tensor | None:
        if self._labels is None:
            return None
        rows = idx if self._image_ids is None else self._image_ids[idx]
        return self._labels[rows.to(self._labels.device)].to(device)

    def _check_mode(self, mode: str) -> None:
        if mode not in ("sample", "all"):
            raise ValueError(f"mode must be 'sample' or 'all', got {mode!r}")
        if mode == "all" and not self.is_stored:
            raise ValueError(
                "mode='all' enumerates stored pairs, but this PairedData draws perturbations on the fly, "
                "so its set of pairs is infinite; use mode='sample', or store k perturbations per image with "
                "PairedData.with_fixed_perturbations(...)"
            )

    def _num_items(self, mode: str) -> int:
        if mode == "all":
            return self.num_pairs
        return len(self) if not self.is_stored else int((self.counts > 0).sum())

    def _iterate(
        self, batch_size: int, shuffle: bool, seed: int, epoch: int, mode: str, device: torch.device, drop_last: bool
    ) -> Iterator[PairBatch]:
        images_of_items, pair_pos = epoch_items(len(self), self._offsets, mode, shuffle, seed, epoch)
        if pair_pos is None:
            perturb_gen = epoch_generator(seed, epoch, DataStream.PERTURB, device)
        total = images_of_items.numel()
        stop = total - total % batch_size if drop_last else total
        for start in range(0, stop, batch_size):
            idx = images_of_items[start : start + batch_size]
            x = decode(self._gather_images(idx).to(device))
            if pair_pos is None:
                x_tilde = self._perturbation(x, perturb_gen)
                if x_tilde.shape != x.shape:
                    raise ValueError(
                        f"perturbation returned shape {tuple(x_tilde.shape)} for a batch of shape {tuple(x.shape)}"
                    )
                x_tilde = x_tilde.float()
            else:
                rows = self._pair_ids[pair_pos[start : start + batch_size]]
                x_tilde = decode(self._perturbed[rows.to(self._perturbed.device)].to(device))
            yield PairBatch(x=x, x_tilde=x_tilde, y=self._gather_labels(idx, device), index=idx)
