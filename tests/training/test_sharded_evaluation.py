"""Quality evaluation split over two gloo processes gathers exactly the single-process report.

Kept apart from ``test_distributed.py`` so the spawned processes import only what they run.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.multiprocessing as mp

from perturbsets.core.quality import METRICS, QualityReport, evaluate_quality
from perturbsets.training.distributed import World, init_distributed

from builders import as_rank, free_port, labelled_pairs, tiny_set


def _quality(world: World = World()) -> QualityReport:
    """The quality report of a tiny set on 5 batches of 8, 8, 8, 8 and 4 pairs."""
    batches = labelled_pairs(n=36, seed=6).evaluation_batches(8, seed=2, passes=1)
    return evaluate_quality(tiny_set(), batches, steps=3, eae_samples=2, seed=4, shard=world)


def _quality_rank(rank: int, world: int, port: int, out: str) -> None:
    def run() -> None:
        report = _quality(init_distributed(torch.device("cpu")))
        np.savez(os.path.join(out, f"rank{rank}.npz"), **report.per_example)

    as_rank(rank, world, port, run)


def test_two_gloo_processes_gather_the_single_process_quality_report(tmp_path):
    """Each rank evaluates alternate batches, replaying the others' draws; every rank gathers the same report."""
    single = _quality()
    mp.spawn(_quality_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        gathered = np.load(tmp_path / f"rank{rank}.npz")
        for k in METRICS:
            np.testing.assert_array_equal(gathered[k], single.per_example[k], err_msg=f"rank {rank}, {k}")
