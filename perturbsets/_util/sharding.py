"""Evaluation split over processes by batch: which batches this process computes, and the results of all in order.

Every process reads every evaluation batch (loading is cheap next to 50-step attacks) and
computes the batches it owns; the per-batch results are then gathered and put back in
batch order (:meth:`BatchShard.gather`; integer counts may simply be summed over the
processes, :meth:`BatchShard.everyone`), so the metrics are those of one process
computing every batch. Randomness
shared across batches stays exact because a process *replays* the draws of the batches it
skips (the evaluation functions know how). Without ``torch.distributed`` the split is one
process owning everything, and gathering is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch.distributed as dist

T = TypeVar("T")

__all__ = ["BatchShard", "in_batch_order"]


@dataclass(frozen=True)
class BatchShard:
    """Process ``rank`` of ``size``: it computes the batches i with i mod size = rank.

    ``split=False`` is the share of an evaluation whose batches cannot be divided (its
    draws depend on earlier batches' results): rank 0 computes every batch.
    """

    rank: int = 0
    size: int = 1
    split: bool = True

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, reports and figures."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether this process computes batch ``index`` (0-based, in the order the batches are read)."""
        return index % self.size == self.rank if self.split else self.is_main

    def unsplit(self) -> "BatchShard":
        """The same process's share when every batch must be computed by rank 0."""
        return BatchShard(self.rank, self.size, split=False)

    def compute(self, batches: Iterable, work: Callable[[Any], T], skip: Callable[[Any], None] | None = None) -> dict[int, T]:
        """``{i: work(batch i)}`` for the batches this process owns; ``skip(batch)`` replays the draws of the others."""
        out = {}
        for i, batch in enumerate(batches):
            if self.owns(i):
                out[i] = work(batch)
            elif skip is not None:
                skip(batch)
        return out

    def wait(self) -> None:
        """Return once every process has reached this point (nothing for one process)."""
        if self.size > 1:
            dist.barrier()

    def everyone(self, value: T) -> list[T]:
        """Every process's ``value`` (picklable), in rank order, on every process (a collective)."""
        if self.size == 1:
            return [value]
        out: list = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def gather(self, parts: dict[int, T]) -> list[T]:
        """Every process's ``{batch index: result}`` as one list in batch order, on every process (a collective)."""
        return in_batch_order(self.everyone(parts))


def in_batch_order(parts: Iterable[dict[int, T]]) -> list[T]:
    """The union of the processes' ``{batch index: result}``, as a list ordered by batch index.

    The indices must be 0 … n−1, each owned by exactly one process.
    """
    merged: dict[int, T] = {}
    for part in parts:
        repeated = merged.keys() & part.keys()
        if repeated:
            raise ValueError(f"batches {sorted(repeated)} were computed by two processes")
        merged.update(part)
    if sorted(merged) != list(range(len(merged))):
        raise ValueError(f"batches {sorted(set(range(max(merged, default=-1) + 1)) - set(merged))} were computed by no process")
    return [merged[i] for i in range(len(merged))]
