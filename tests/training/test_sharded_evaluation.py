"""Evaluation split over two gloo processes gathers exactly the single-process figures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from perturbsets.core.quality import METRICS, QualityReport, evaluate_quality
from perturbsets.evaluation.certification_store import read_certificates
from perturbsets.training.distributed import World, init_distributed
from perturbsets.workflows.robust import run_robust_evaluation, run_robust_training

from builders import as_rank, free_port, labelled_pairs, robust_config, save_robust_set, tiny_set


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


def _robust_eval_rank(rank: int, world: int, port: int, set_dir: str, mode: str, run: str, out: str) -> None:
    config = _robust_config(set_dir, mode)
    as_rank(rank, world, port, lambda: run_robust_evaluation(config, run, out, data=labelled_pairs(), progress=False))


def _robust_config(set_dir, mode: str):
    certify = {"n0": 20, "n": 40, "alpha": 0.1, "batch_size": 64, "max_examples": 4}
    return robust_config(set_dir, mode, batch_size=4, **({"certify": certify} if mode == "smoothing" else {}))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["standard", "smoothing"])
def test_two_gloo_processes_write_the_single_process_robust_metrics(tmp_path, mode):
    """The workflow under torchrun: both ranks evaluate (PGD, or PREDICT and a shard of the certificates each), rank 0 writes."""
    set_dir = save_robust_set(tmp_path / "set")
    config = _robust_config(set_dir, mode)
    run_robust_training(config, tmp_path / "run", data=labelled_pairs(), progress=False)
    run_robust_evaluation(config, tmp_path / "run", tmp_path / "one", data=labelled_pairs(), progress=False)
    args = (2, free_port(), str(set_dir), mode, str(tmp_path / "run"), str(tmp_path / "two"))
    mp.spawn(_robust_eval_rank, args=args, nprocs=2, join=True)
    one, two = (json.loads((tmp_path / d / "robust_metrics.json").read_text()) for d in ("one", "two"))
    assert two == one and (one["pgd"] if mode == "standard" else one["certified"])
    if mode == "smoothing":
        assert all((tmp_path / "two" / f"certify.shard-{i}-of-2.tsv").is_file() for i in range(2))
        a, b = (read_certificates(tmp_path / d / "certify.tsv") for d in ("one", "two"))
        assert len(a) == 4
        for col in ("idx", "label", "predict", "radius", "correct"):
            np.testing.assert_array_equal(a[col], b[col])
