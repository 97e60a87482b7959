"""The containers pair sources hand out: one batch of pairs, and a train / val / test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["PairBatch", "DataSplits"]


@dataclass
class PairBatch:
    """One batch of pairs, all on the requested device.

    Attributes:
        x: (B, C, H, W) float32 clean images.
        x_tilde: (B, C, H, W) float32 perturbed images; ``x_tilde[i]`` perturbs ``x[i]``.
        y: (B,) int64 labels, (B, H, W) label maps, or ``None`` when the data has no labels.
        index: (B,) int64 CPU indices of the examples in the pair source the batch came
            from (useful for per-example bookkeeping).
    """

    x: Tensor
    x_tilde: Tensor
    y: Tensor | None
    index: Tensor | None = None


@dataclass
class DataSplits:
    """Train / validation / test parts of a pair source, split by example."""

    # Any pair source (PairedData, VersionedData); typed loosely because this module sits
    # below the sources that build it.
    train: Any
    val: Any
    test: Any
