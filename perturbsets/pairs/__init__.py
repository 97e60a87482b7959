"""Pairs (x, x̃) for learning perturbation sets, from in-memory or lazy storage; no file formats.

:class:`PairedData` holds clean images with stored or on-the-fly perturbations,
:class:`VersionedData` examples in several versions paired by a strategy of paper
Appendix E.2. Both are :class:`PairSource` s: seeded, resumable batches of
:class:`PairBatch`, splits into :class:`DataSplits`, and one joint augmentation path
(:meth:`PairSource.with_augment`, e.g. with :class:`JointCropFlip`).
"""

from perturbsets.pairs.augment import JointAugmentation, JointCropFlip, augmented_batches
from perturbsets.pairs.batch import DataSplits, PairBatch
from perturbsets.pairs.lazy import LazyStack
from perturbsets.pairs.paired import PairedData
from perturbsets.pairs.source import PairSource
from perturbsets.pairs.splits import split_indices
from perturbsets.pairs.versioned import PAIRINGS, VersionedData

__all__ = [
    "PairBatch",
    "DataSplits",
    "PairSource",
    "PairedData",
    "VersionedData",
    "PAIRINGS",
    "LazyStack",
    "JointAugmentation",
    "JointCropFlip",
    "augmented_batches",
    "split_indices",
]
