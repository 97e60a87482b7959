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

import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perturbsets.perturbations import Perturbation, _check_value_range

__all__ = [
    "JointAugmentation",
    "augmented_batches",
    "PairBatch",
    "PairSource",
    "DataSplits",
    "PairedData",
    "load_pair_folder",
    "load_digits",
]

# Relative slack on the value-range check, so float round-off in upstream transforms
# (e.g. bilinear weights summing to 1 + 1e-7) is not reported as out-of-range data.
_RANGE_TOL = 1e-5
# Elements per chunk when scanning tensors for NaN/Inf and their range: bounds the
# temporary memory of the scan for datasets that barely fit in memory.
_SCAN_ELEMENTS = 1 << 22
_SPLIT_NAMES = ("train", "val", "test")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
_STEM_SEPARATORS = "_-."
_GREY_MODES = {"1", "L", "LA"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
# Stream ids keep the shuffle, the choice of stored perturbation and the on-the-fly
# perturbation independent, so e.g. changing the batch size never changes the shuffle.
_STREAM_ORDER, _STREAM_CHOICE, _STREAM_PERTURB = 0, 1, 2
# Augmentation draws have their own stream, so adding an augmentation never changes which
# pairs are drawn.
_STREAM_AUGMENT = 3

# (x, x_tilde, generator[, labels=y]) -> (x_aug, x_tilde_aug[, y_aug]), all batched (B, ...).
JointAugmentation = Callable[..., "tuple[Tensor, ...]"]


@dataclass
class PairBatch:
    """One batch of pairs, all on the requested device.

    Attributes:
        x: (B, C, H, W) float32 clean images.
        x_tilde: (B, C, H, W) float32 perturbed images; ``x_tilde[i]`` perturbs ``x[i]``.
        y: (B,) int64 labels, or ``None`` when the data has no labels.
        index: (B,) int64 CPU indices of the clean images in the :class:`PairedData`
            the batch came from (useful for per-example bookkeeping).
    """

    x: Tensor
    x_tilde: Tensor
    y: Tensor | None
    index: Tensor | None = None


@dataclass
class DataSplits:
    """Train / validation / test parts of a :class:`PairedData`, split by image."""

    train: PairedData
    val: PairedData
    test: PairedData


# --------------------------------------------------------------------------- helpers


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ValueError(f"{name} is a numpy array of Python objects; stack it into a numeric array first")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _as_images(value: Any, name: str) -> Tensor:
    """Validate an (N, C, H, W) image tensor; floats become float32, uint8 is kept."""
    t = _as_tensor(value, name)
    if t.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}; "
            "for single-channel (N, H, W) data add the channel axis with [:, None]"
        )
    if t.dtype == torch.uint8:
        return t
    if t.dtype.is_floating_point:
        return t.float()
    raise ValueError(f"{name} must be float (values in value_range) or uint8 (0..255), got dtype {t.dtype}")


def _decode(t: Tensor) -> Tensor:
    """Stored images -> float32; uint8 maps 0..255 onto [0, 1]."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _check_values(t: Tensor, name: str, value_range: tuple[float, float]) -> None:
    """Raise if ``t`` has NaN/Inf or decoded values outside ``value_range`` (chunked scan)."""
    if t.numel() == 0:
        return
    rows = max(1, _SCAN_ELEMENTS // max(1, t[0].numel()))
    non_finite, lo, hi = 0, math.inf, -math.inf
    for chunk in t.split(rows):
        if chunk.dtype.is_floating_point:
            finite = torch.isfinite(chunk)
            bad = int(finite.numel() - finite.sum())
            if bad:
                non_finite += bad
                continue
        c_lo, c_hi = torch.aminmax(chunk)
        lo, hi = min(lo, float(c_lo)), max(hi, float(c_hi))
    if non_finite:
        raise ValueError(
            f"{name} contains {non_finite} NaN/Inf value(s) out of {t.numel()}; remove or repair those images"
        )
    if t.dtype == torch.uint8:
        lo, hi = lo / 255.0, hi / 255.0
    r_lo, r_hi = value_range
    tol = _RANGE_TOL * (r_hi - r_lo)
    if lo < r_lo - tol or hi > r_hi + tol:
        raise ValueError(
            f"{name} values lie in [{lo:.4g}, {hi:.4g}] but value_range is {value_range}; "
            f"rescale your data to [{r_lo:g}, {r_hi:g}] or pass value_range=..."
        )


def _as_index(value: Any, name: str) -> Tensor:
    t = _as_tensor(value, name) if not isinstance(value, (list, tuple, range)) else torch.as_tensor(list(value))
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {tuple(t.shape)}")
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer indices, got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.int64)


def _non_negative_int(value: Any, name: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def _positive_int(value: Any, name: str) -> int:
    out = _non_negative_int(value, name)
    if out == 0:
        raise ValueError(f"{name} must be >= 1, got 0")
    return out


def _generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """Generator seeded by (seed, epoch, stream) only, so resumed runs reproduce epochs."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return gen


def _repeat_arange(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts c: (group id of each slot, position of each slot within its group)."""
    groups = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(groups.numel()) - starts[groups]
    return groups, within


# --------------------------------------------------------------------------- PairedData


def augmented_batches(
    batches: Iterator[PairBatch], augment: JointAugmentation, seed: int, epoch: int, device: torch.device
) -> Iterator[PairBatch]:
    """Apply a joint augmentation to every batch, with draws seeded by (seed, epoch).

    Label maps (y of shape (B, H, W)) go through the augmentation with the images
    (``augment(x, x_tilde, generator, labels=y)`` returns the three); one label per example
    is left as it is.
    """
    gen = _generator(seed, epoch, _STREAM_AUGMENT, device)
    for batch in batches:
        y = batch.y
        if y is not None and y.dim() == 3:
            x, x_tilde, y = augment(batch.x, batch.x_tilde, gen, labels=y)
        else:
            x, x_tilde = augment(batch.x, batch.x_tilde, gen)
        if x.shape != x_tilde.shape:
            raise ValueError(f"augment returned shapes {tuple(x.shape)} and {tuple(x_tilde.shape)}; both halves must match")
        yield PairBatch(x=x, x_tilde=x_tilde, y=y, index=batch.index)


class PairSource:
    """What the training and evaluation loops need from pair data; subclasses supply
    ``__len__``, ``num_pairs``, ``is_stored``, ``_num_items(mode)`` and ``_iterate(...)``.
    """

    is_stored: bool

    def _check_mode(self, mode: str) -> None:
        if mode not in ("sample", "all"):
            raise ValueError(f"mode must be 'sample' or 'all', got {mode!r}")

    def _num_items(self, mode: str) -> int:
        raise NotImplementedError

    def _iterate(
        self, batch_size: int, shuffle: bool, seed: int, epoch: int, mode: str, device: torch.device, drop_last: bool
    ) -> Iterator[PairBatch]:
        raise NotImplementedError

    def num_batches(self, batch_size: int, mode: str = "sample", drop_last: bool = False) -> int:
        """Number of batches :meth:`batches` yields with the same arguments.

        ``mode="sample"`` iterates over examples (for stored pairs: those owning at least
        one); ``mode="all"`` over every stored pair.
        """
        batch_size = _positive_int(batch_size, "batch_size")
        self._check_mode(mode)
        items = self._num_items(mode)
        return items // batch_size if drop_last else -(-items // batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int = 0,
        mode: str = "sample",
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> Iterator[PairBatch]:
        """Iterate over one epoch of :class:`PairBatch` es on ``device``.

        Modes:
            ``"sample"``: one pair per example, drawn uniformly among the example's own
            pairs (for on-the-fly data the perturbation is applied to the whole batch on
            ``device``; for data with a joint augmentation it is applied here).
            ``"all"``: every stored pair exactly once, example-major unless ``shuffle``;
            never augmented, and not available for on-the-fly data.
            ``"versions"`` (:class:`~perturbsets.versions.VersionedData` only): every
            stored version of every example once as x (and x̃ = x), e.g. every lighting
            of every test scene; never augmented.

        Every random draw (order, choice of stored perturbation, on-the-fly perturbation)
        comes from generators seeded by ``(seed, epoch)`` only: the same arguments always
        give identical batches, including after resuming at ``epoch``. On-the-fly draws
        also depend on ``batch_size`` and the device type, since they follow the batches.

        Args:
            batch_size: items per batch (the last one may be smaller unless ``drop_last``).
            shuffle: randomise the order of images (``"sample"``) or pairs (``"all"``).
            seed: non-negative int.
            epoch: non-negative int; each epoch has its own draws.
            mode: ``"sample"`` or ``"all"``.
            device: where the batches are put (and on-the-fly perturbations run).
            drop_last: drop a final incomplete batch.

        Yields:
            PairBatch with x, x_tilde (B, C, H, W) float32, y (B,) int64 or None, and the
            (B,) CPU indices of the examples.
        """
        batch_size = _positive_int(batch_size, "batch_size")
        seed = _non_negative_int(seed, "seed")
        epoch = _non_negative_int(epoch, "epoch")
        self._check_mode(mode)
        device = torch.device(device)
        return self._iterate(batch_size, bool(shuffle), seed, epoch, mode, device, bool(drop_last))

    def evaluation_batches(
        self,
        batch_size: int,
        *,
        seed: int,
        passes: int = 1,
        device: torch.device | str = "cpu",
        max_pairs: int | None = None,
    ) -> Iterator[PairBatch]:
        """Batches for measuring a model: every stored pair exactly once, in order, or for
        on-the-fly data ``passes`` passes of fresh pairs drawn from ``seed`` (epochs 0..passes-1).

        ``max_pairs`` caps the count: stored pairs are then a uniformly random subset drawn
        from ``seed`` (not a prefix, which would hold only the first examples' pairs).
        """
        if max_pairs is not None:
            limit = _positive_int(max_pairs, "max_pairs")
            if self.is_stored and limit < self._num_items("all"):
                inner = self.batches(batch_size, shuffle=True, seed=seed, mode="all", device=device)
            else:
                inner = self.evaluation_batches(batch_size, seed=seed, passes=passes, device=device)
            yield from _first_pairs(inner, limit)
            return
        if self.is_stored:
            yield from self.batches(batch_size, shuffle=False, seed=seed, mode="all", device=device)
            return
        for p in range(_positive_int(passes, "passes")):
            yield from self.batches(batch_size, shuffle=False, seed=seed, epoch=p, device=device)


def _first_pairs(batches: Iterator[PairBatch], limit: int) -> Iterator[PairBatch]:
    """The first ``limit`` pairs of a stream of batches (the last batch cut short)."""
    seen = 0
    for batch in batches:
        keep = min(limit - seen, batch.x.shape[0])
        seen += keep
        if keep == batch.x.shape[0]:
            yield batch
        else:
            cut = lambda t: None if t is None else t[:keep]  # noqa: E731
            yield PairBatch(cut(batch.x), cut(batch.x_tilde), cut(batch.y), cut(batch.index))
        if seen >= limit:  # stop before reading (and decoding) another batch
            return



class PairedData(PairSource):
    """N clean images paired with stored or on-the-fly perturbations.

    Use the constructors :meth:`from_tensors`, :meth:`on_the_fly`,
    :meth:`with_fixed_perturbations`, :func:`load_pair_folder`, or the general form::

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
        value_range = _check_value_range(value_range, "PairedData")
        images = _as_images(images, "images")
        n = images.shape[0]
        if n == 0:
            raise ValueError("images is empty (N = 0); a PairedData needs at least one image")
        _check_values(images, "images", value_range)

        if labels is not None:
            labels = _as_tensor(labels, "labels")
            if labels.dim() != 1 or labels.shape[0] != n:
                raise ValueError(f"labels must have shape ({n},) to match {n} images, got {tuple(labels.shape)}")
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
            labels = labels.long()

        if (perturbed is None) == (perturbation is None):
            raise ValueError(
                "pass exactly one of perturbed= (stored perturbations) or perturbation= (a callable applied on the fly)"
            )
        pair_ids = offsets = None
        if perturbation is not None:
            if not callable(perturbation):
                raise ValueError(f"perturbation must be callable as perturbation(x, generator), got {perturbation!r}")
            if owner is not None:
                raise ValueError("owner= only applies to stored perturbations; drop it when passing perturbation=")
        else:
            perturbed = _as_images(perturbed, "perturbed")
            if perturbed.shape[1:] != images.shape[1:]:
                raise ValueError(
                    f"images have shape (C, H, W) = {tuple(images.shape[1:])} but perturbed have "
                    f"{tuple(perturbed.shape[1:])}; each perturbed image must match its clean image"
                )
            m = perturbed.shape[0]
            if m == 0:
                raise ValueError("perturbed is empty (M = 0); pass at least one perturbed image")
            _check_values(perturbed, "perturbed", value_range)
            if owner is None:
                if m != n:
                    raise ValueError(
                        f"got {m} perturbed images for {n} images; pass owner= (M,) mapping each perturbed image "
                        "to its clean image, or use PairedData.from_tensors with shape (N, K, C, H, W)"
                    )
                owner = torch.arange(n)
            owner = _as_index(owner, "owner")
            if owner.shape[0] != m:
                raise ValueError(
                    f"owner must have shape ({m},) to match {m} perturbed images, got {tuple(owner.shape)}"
                )
            bad = (owner < 0) | (owner >= n)
            if bool(bad.any()):
                raise ValueError(
                    f"owner has {int(bad.sum())} index(es) outside [0, {n - 1}] (e.g. {int(owner[bad][0])}); "
                    f"owner[j] must index one of the {n} images"
                )
            # CSR layout: pairs sorted by owner (stable), offsets[i]:offsets[i+1] are image i's.
            pair_ids = torch.argsort(owner, stable=True)
            offsets = torch.zeros(n + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(torch.bincount(owner, minlength=n), 0)

        self._init(images, labels, None, perturbed, pair_ids, offsets, perturbation, value_range)

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
        images_t = _as_images(images, "images")
        perturbed_t = _as_tensor(perturbed, "perturbed")
        n = images_t.shape[0]
        if perturbed_t.dim() not in (4, 5):
            raise ValueError(
                f"perturbed must have shape (N, C, H, W) or (N, K, C, H, W), got {tuple(perturbed_t.shape)}"
            )
        if perturbed_t.shape[0] != n or perturbed_t.shape[-3:] != images_t.shape[1:]:
            expected = f"({n}, C, H, W) or ({n}, K, C, H, W) with (C, H, W) = {tuple(images_t.shape[1:])}"
            raise ValueError(f"images have shape {tuple(images_t.shape)} so perturbed must be {expected}, "
                             f"got {tuple(perturbed_t.shape)}")
        k = 1 if perturbed_t.dim() == 4 else perturbed_t.shape[1]
        if k == 0:
            raise ValueError("perturbed has K = 0 perturbations per image; pass at least one")
        owner = torch.arange(n).repeat_interleave(k)
        return cls(
            images_t,
            labels,
            perturbed=perturbed_t.reshape(n * k, *perturbed_t.shape[-3:]),
            owner=owner,
            value_range=value_range,
        )

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
        k = _positive_int(k, "k")
        seed = _non_negative_int(seed, "seed")
        batch_size = _positive_int(batch_size, "batch_size")
        if not callable(perturbation):
            raise ValueError(f"perturbation must be callable as perturbation(x, generator), got {perturbation!r}")
        images_t = _as_images(images, "images")
        n = images_t.shape[0]
        if n == 0:
            raise ValueError("images is empty (N = 0); a PairedData needs at least one image")
        device = torch.device(device)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        out = torch.empty((n, k, *images_t.shape[1:]), dtype=images_t.dtype)
        for start in range(0, n, batch_size):
            x = _decode(images_t[start : start + batch_size].to(device))
            for r in range(k):
                x_tilde = perturbation(x, gen)
                if x_tilde.shape != x.shape:
                    raise ValueError(
                        f"perturbation returned shape {tuple(x_tilde.shape)} for a batch of shape {tuple(x.shape)}"
                    )
                if images_t.dtype == torch.uint8:
                    # Check before quantising: rounding would otherwise hide bad values.
                    _check_values(x_tilde, "perturbation output", value_range)
                    x_tilde = x_tilde.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
                out[start : start + batch_size, r] = x_tilde.cpu()
        return cls.from_tensors(images_t, out, labels, value_range=value_range)

    # ----------------------------------------------------------------- properties

    def __len__(self) -> int:
        """Number N of clean images."""
        return self._images.shape[0] if self._image_ids is None else self._image_ids.shape[0]

    def __repr__(self) -> str:
        kind = f"stored, {self.num_pairs} pairs" if self.is_stored else f"on the fly: {self._perturbation!r}"
        return (
            f"PairedData({len(self)} images of shape {self.image_shape}, {self._images.dtype}, "
            f"labels={'yes' if self._labels is not None else 'no'}, {kind}, value_range={self._value_range})"
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

    # ----------------------------------------------------------------- subsets / splits

    def subset(self, image_indices: Tensor | np.ndarray | Sequence[int]) -> PairedData:
        """The images at ``image_indices`` (in that order) with all of their perturbations.

        Shares storage with ``self``. An empty index list gives an empty PairedData.
        """
        idx = _as_index(image_indices, "image_indices")
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bool(bad.any()):
            raise ValueError(
                f"image_indices has values outside [-{n}, {n - 1}] (e.g. {int(idx[bad][0])}) for {n} images"
            )
        idx = torch.where(idx < 0, idx + n, idx)
        image_ids = idx if self._image_ids is None else self._image_ids[idx]
        pair_ids = offsets = None
        if self._pair_ids is not None:
            counts = self.counts[idx]
            groups, within = _repeat_arange(counts)
            pair_ids = self._pair_ids[self._offsets[idx][groups] + within]
            offsets = torch.zeros(idx.numel() + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(counts, 0)
        out = PairedData.__new__(PairedData)
        out._init(self._images, self._labels, image_ids, self._perturbed, pair_ids, offsets,
                  self._perturbation, self._value_range)
        return out

    def split(self, sizes: Mapping[str, int | float] | Sequence[int | float], seed: int) -> DataSplits:
        """Split by image into train / val / test (no image or its perturbations leak).

        Args:
            sizes: ``{"train": a, "val": b, "test": c}`` (missing keys = 0) or ``(a, b, c)``.
                Each entry is an int count or a float fraction of N in [0, 1]. Fractions are
                rounded; when all entries are fractions summing to 1, train takes the
                rounding remainder so the split covers every image.
            seed: non-negative int; the assignment is ``numpy.random.default_rng(seed)
                .permutation(N)``, independent of torch's RNG. Indices inside each part
                are sorted.

        Raises:
            ValueError: malformed sizes, or a requested non-zero part that would be empty
                or that does not fit in N images.
        """
        seed = _non_negative_int(seed, "seed")
        if isinstance(sizes, Mapping):
            unknown = sorted(set(sizes) - set(_SPLIT_NAMES))
            if unknown:
                raise ValueError(f"split sizes has unknown key(s) {unknown}; use {list(_SPLIT_NAMES)}")
            requested = [sizes.get(name, 0) for name in _SPLIT_NAMES]
        else:
            requested = list(sizes)
            if len(requested) != 3:
                raise ValueError(f"split sizes must have 3 entries (train, val, test), got {len(requested)}")
        n = len(self)
        counts = []
        for name, size in zip(_SPLIT_NAMES, requested):
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
                        f"split {dict(zip(_SPLIT_NAMES, requested))} of N={n} images leaves no image for 'train' "
                        "after rounding val and test up; use a larger dataset or smaller val/test fractions"
                    )
        total = 0
        for name, size, count in zip(_SPLIT_NAMES, requested, counts):
            total += count
            if total > n:
                raise ValueError(
                    f"split {name!r} requested {size} ({count} images) but only {n - total + count} of N={n} "
                    f"images remain after the earlier splits; reduce the sizes {dict(zip(_SPLIT_NAMES, requested))}"
                )
        perm = np.random.default_rng(seed).permutation(n)
        bounds = np.cumsum([0, *counts])
        parts = [np.sort(perm[bounds[i] : bounds[i + 1]]) for i in range(3)]
        return DataSplits(*(self.subset(torch.from_numpy(p)) for p in parts))

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
        # Split from batches() so argument errors raise at the call, not at first next().
        cpu = torch.device("cpu")
        if mode == "all":
            items = torch.arange(self.num_pairs)  # positions in the image-major pair list
        elif self.is_stored:
            items = torch.nonzero(self.counts > 0).flatten()  # image indices
        else:
            items = torch.arange(len(self))
        if shuffle:
            items = items[torch.randperm(items.numel(), generator=_generator(seed, epoch, _STREAM_ORDER, cpu))]

        if mode == "all":
            owner = self.owner
            images_of_items, pair_pos = owner[items], items
        elif self.is_stored:
            counts = self.counts[items]
            # One uniform draw per image for the whole epoch; float64 keeps floor(u * count)
            # exact for any realistic count, the clamp guards u * count rounding up to count.
            u = torch.rand(items.numel(), generator=_generator(seed, epoch, _STREAM_CHOICE, cpu), dtype=torch.float64)
            choice = torch.minimum((u * counts).long(), counts - 1)
            images_of_items, pair_pos = items, self._offsets[items] + choice
        else:
            images_of_items, pair_pos = items, None
            perturb_gen = _generator(seed, epoch, _STREAM_PERTURB, device)

        total = items.numel()
        stop = total - total % batch_size if drop_last else total
        for start in range(0, stop, batch_size):
            idx = images_of_items[start : start + batch_size]
            x = _decode(self._gather_images(idx).to(device))
            if pair_pos is None:
                x_tilde = self._perturbation(x, perturb_gen)
                if x_tilde.shape != x.shape:
                    raise ValueError(
                        f"perturbation returned shape {tuple(x_tilde.shape)} for a batch of shape {tuple(x.shape)}"
                    )
                x_tilde = x_tilde.float()
            else:
                rows = self._pair_ids[pair_pos[start : start + batch_size]]
                x_tilde = _decode(self._perturbed[rows.to(self._perturbed.device)].to(device))
            yield PairBatch(x=x, x_tilde=x_tilde, y=self._gather_labels(idx, device), index=idx)


# --------------------------------------------------------------------------- folder loader


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
            a perturbed file with no clean image, mismatched sizes or unsupported modes.
    """
    from PIL import Image

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
        with Image.open(path) as img:
            if img.mode not in _GREY_MODES | _COLOUR_MODES:
                raise ValueError(
                    f"{path} has image mode {img.mode!r} (16-bit, 32-bit or float pixels), which is not supported; "
                    "save it as 8-bit greyscale or RGB"
                )
            modes.append(img.mode)
            sizes.append(img.size)
    expected = sizes[0]
    for path, size in zip(all_files, sizes):
        if size != expected:
            raise ValueError(
                f"{path} has size {size[0]}x{size[1]} (WxH) but expected {expected[0]}x{expected[1]} "
                f"(the size of {all_files[0]}); all images must have the same size"
            )
    target = "RGB" if any(m in _COLOUR_MODES for m in modes) else "L"

    def read(paths: list[Path]) -> Tensor:
        arrays = []
        for path in paths:
            with Image.open(path) as img:
                arrays.append(np.asarray(img.convert(target), dtype=np.uint8))
        stacked = np.stack(arrays)
        stacked = stacked[:, None] if target == "L" else stacked.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(stacked))

    return PairedData(
        read(clean_files),
        perturbed=read(perturbed_files),
        owner=torch.tensor(owner_of, dtype=torch.int64),
        value_range=value_range,
    )


# --------------------------------------------------------------------------- embedded digits


def load_digits(canvas: int = 42) -> tuple[Tensor, Tensor]:
    """The embedded default data: scikit-learn's 1,797 real 8×8 handwritten digits, MNIST-style.

    MNIST is not shipped (no network access is assumed), so the MNIST experiments of paper
    Appendix D run on these digits by default. Each 8×8 digit (values 0..16) is scaled to
    [0, 1], resized bilinearly (antialiased) to a 20×20 box and centred in 28×28 with a
    4-pixel zero border, as MNIST normalises digits to a 20×20 box in a 28×28 field (MNIST
    centres by centre of mass; here the box is centred geometrically). Values are clipped
    to [0, 1], then zero-padded to ``canvas`` (42 -> 7 pixels per side, the MNIST-RTS
    canvas; 28 -> no extra padding).

    Args:
        canvas: output side length; >= 28 and ``canvas - 28`` even.

    Returns:
        images (1797, 1, canvas, canvas) float32 in [0, 1]; labels (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    canvas = _non_negative_int(canvas, "canvas")
    if canvas < 28 or (canvas - 28) % 2:
        raise ValueError(
            f"canvas must be >= 28 with canvas - 28 even (equal padding on both sides), got {canvas}; "
            "use 28 for plain MNIST size or 42 for the MNIST-RTS canvas"
        )
    bunch = _sk_load_digits()
    digits = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    box = F.interpolate(digits, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    pad = 4 + (canvas - 28) // 2
    images = F.pad(box.clamp_(0.0, 1.0), (pad, pad, pad, pad))
    return images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64))
