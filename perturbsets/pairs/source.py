"""The interface every pair source offers the training and evaluation loops, and its batch iteration.

:class:`PairSource` checks the arguments of :meth:`~PairSource.batches`, applies the
source's joint augmentation to training batches (the one augmentation path of the
package) and builds :meth:`~PairSource.evaluation_batches` on top; subclasses only
enumerate their pairs.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping, Sequence

import torch

from perturbsets._util.checks import non_negative_int, positive_int
from perturbsets.pairs.augment import JointAugmentation, augmented_batches, check_augment
from perturbsets.pairs.batch import DataSplits, PairBatch
from perturbsets.pairs.splits import split_indices

__all__ = ["PairSource"]


class PairSource:
    """What the training and evaluation loops need from pair data; subclasses supply
    ``__len__``, ``num_pairs``, ``is_stored``, ``subset``, ``_num_items(mode)`` and
    ``_iterate(...)``.

    A source may carry a joint augmentation (:meth:`with_augment`), applied to
    ``batches(mode="sample")`` only, with draws from the (seed, epoch) ``AUGMENT`` stream, so
    adding it never changes which pairs are drawn. Enumeration (``mode="all"``,
    ``"versions"``) and :meth:`evaluation_batches` are never augmented. Subclasses keep the
    augmentation on subsets; :meth:`split` keeps it on the training part only.
    """

    is_stored: bool
    _augment: JointAugmentation | None = None

    @property
    def augment(self) -> JointAugmentation | None:
        """The joint augmentation of training batches, or None."""
        return self._augment

    def with_augment(self, augment: JointAugmentation | None) -> PairSource:
        """The same examples (shared storage) with another (or, with None, no) training augmentation.

        ``augment(x, x_tilde, generator)`` takes and returns (B, C, H, W) batches, e.g.
        :class:`~perturbsets.pairs.augment.JointCropFlip`; with (B, H, W) label maps it is
        called as ``augment(x, x_tilde, generator, labels=y)`` and returns the three.
        """
        augment = check_augment(augment)
        # A shallow copy shares the storage; only the augmentation differs.
        out = copy.copy(self)
        out._augment = augment
        return out

    def subset(self, indices: Any) -> PairSource:
        raise NotImplementedError

    def split(self, sizes: Mapping[str, int | float] | Sequence[int | float], seed: int) -> DataSplits:
        """Split by example into train / val / test: an example and all of its pairs go to one part.

        Args:
            sizes: ``{"train": a, "val": b, "test": c}`` (missing keys = 0) or ``(a, b, c)``.
                Each entry is an int count or a float fraction of N in [0, 1]. Fractions are
                rounded; when all entries are fractions summing to 1, train takes the
                rounding remainder so the split covers every example.
            seed: non-negative int; the assignment is ``numpy.random.default_rng(seed)
                .permutation(N)``, independent of torch's RNG. Indices inside each part
                are sorted.

        The training part keeps :attr:`augment`; val and test get none, so validation never
        sees training augmentation (the authors' CIFAR-10 split did, defect 15).

        Raises:
            ValueError: malformed sizes, or a requested non-zero part that would be empty
                or that does not fit in N examples.
        """
        train, val, test = split_indices(len(self), sizes, seed)
        return DataSplits(self.subset(train), self.subset(val).with_augment(None), self.subset(test).with_augment(None))

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
        batch_size = positive_int(batch_size, "batch_size")
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
            ``"versions"`` (:class:`~perturbsets.pairs.versioned.VersionedData` only): every
            stored version of every example once as x (and x̃ = x), e.g. every lighting
            of every test scene; never augmented.

        Every random draw (order, choice of stored perturbation, on-the-fly perturbation,
        augmentation) comes from generators seeded by ``(seed, epoch)`` only: the same
        arguments always give identical batches, including after resuming at ``epoch``.
        On-the-fly and augmentation draws also depend on ``batch_size`` and the device
        type, since they follow the batches.

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
        return self._batches(batch_size, shuffle, seed, epoch, mode, device, drop_last, augment=True)

    def _batches(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: int,
        mode: str,
        device: torch.device | str,
        drop_last: bool,
        augment: bool,
    ) -> Iterator[PairBatch]:
        # Checks run here, at the call, not at the first next() of a generator.
        batch_size = positive_int(batch_size, "batch_size")
        seed = non_negative_int(seed, "seed")
        epoch = non_negative_int(epoch, "epoch")
        self._check_mode(mode)
        device = torch.device(device)
        batches = self._iterate(batch_size, bool(shuffle), seed, epoch, mode, device, bool(drop_last))
        if augment and mode == "sample" and self._augment is not None:
            return augmented_batches(batches, self._augment, seed, epoch, device)
        return batches

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
        Never augmented.
        """
        if max_pairs is not None:
            limit = positive_int(max_pairs, "max_pairs")
            if self.is_stored and limit < self._num_items("all"):
                inner = self._batches(batch_size, True, seed, 0, "all", device, False, augment=False)
            else:
                inner = self.evaluation_batches(batch_size, seed=seed, passes=passes, device=device)
            yield from _first_pairs(inner, limit)
            return
        if self.is_stored:
            yield from self._batches(batch_size, False, seed, 0, "all", device, False, augment=False)
            return
        for p in range(positive_int(passes, "passes")):
            yield from self._batches(batch_size, False, seed, p, "sample", device, False, augment=False)


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
