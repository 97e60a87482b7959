"""Pairs → trained CVAE → radius → quality report → saved :class:`PerturbationSet`.

:func:`learn_perturbation_set` is what ``perturbsets train`` and ``perturbsets demo`` run;
:func:`evaluate_saved_set` is ``perturbsets evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perturbsets._util.io import atomic_path, write_json
from perturbsets._util.seeding import Stream, derive_seed
from perturbsets.config.io import load_config
from perturbsets.config.learn import Config
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.core.quality import QualityReport, evaluate_quality
from perturbsets.core.radius import LatentNormStats, latent_norms, norm_statistics, select_radius
from perturbsets.cvae.model import CVAE
from perturbsets.pairs.paired import PairedData
from perturbsets.reports.quality_report import write_report
from perturbsets.reports.tables import quality_table
from perturbsets.training.cvae import TrainResult, train_cvae
from perturbsets.training.distributed import World, from_main, init_distributed, is_main_process, share_weights
from perturbsets.training.loop import resolve_device, run_folder
from perturbsets.workflows.sources import load_splits

SET_DIR = "perturbation_set"


@dataclass
class RadiusChoice:
    radius: float
    norms: np.ndarray
    stats: LatentNormStats


def choose_radius(cvae: CVAE, val: PairedData, config: Config, device: torch.device | str) -> RadiusChoice:
    """ε from the validation encodings by ``config.evaluation.radius`` (Appendix B)."""
    ev = config.evaluation
    batches = val.evaluation_batches(ev.batch_size, seed=derive_seed(config.seed, Stream.RADIUS_BATCHES), passes=ev.radius_passes, device=device)
    norms = latent_norms(cvae, batches)
    return RadiusChoice(select_radius(norms, ev.radius), norms, norm_statistics(norms))


def assess(
    pset: PerturbationSet, test: PairedData, config: Config, stats: LatentNormStats | None, progress: bool, world: World
) -> QualityReport:
    """The quality report of ``pset`` on the test pairs, each process of ``world`` evaluating its share of the batches."""
    ev = config.evaluation
    return evaluate_quality(
        pset,
        test.evaluation_batches(
            ev.batch_size, seed=derive_seed(config.seed, Stream.QUALITY_BATCHES), passes=ev.passes, device=pset.device, max_pairs=ev.max_pairs
        ),
        steps=ev.pgd_steps,
        step_size=ev.pgd_step_size,
        eae_samples=ev.eae_samples,
        metric=ev.metric,
        seed=config.seed,
        latent_norms=stats,
        progress=progress and world.is_main,
        shard=world,
    )


@dataclass
class LearnResult:
    """A learned set with its quality report, training record and output folder."""

    perturbation_set: PerturbationSet
    report: QualityReport
    training: TrainResult
    radius: RadiusChoice
    out_dir: Path


def learn_perturbation_set(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data: PairedData | None = None,
    progress: bool = True,
) -> LearnResult | None:
    """Train, pick ε on the validation split, evaluate on the test split, save everything.

    ``out_dir`` receives the training run (config, history, checkpoints), the saved set in
    ``perturbation_set/``, ``metrics.json``, figures and ``report.md``; it stays locked
    against other processes until the run ends (see :func:`~perturbsets.training.loop.run_folder`).
    Under ``torchrun`` every rank trains and evaluates its share of the test batches; rank 0
    alone picks ε, saves and writes (the others return ``None``).

    Example::

        result = learn_perturbation_set(load_config("perturbsets/configs/demo/mnist_rts.yaml", Config), "runs/rts")
        result.pset.radius, result.report.summary()["pgd_ae"].mean
    """
    out_dir = Path(out_dir)
    # Locked and checked before reading the data, which can take minutes.
    with run_folder(out_dir, resume):
        result = train_cvae(config, load_splits(config.data, config.seed, data), out_dir, resume=resume, progress=progress)
        world = init_distributed(result.device)
        # Under torchrun every rank evaluates rank 0's weights (its BatchNorm statistics too) in rank 0's set.
        share_weights(result.cvae, world)
        choice = from_main(choose_radius(result.cvae, result.splits.val, config, result.device) if world.is_main else None, world)
        pset = PerturbationSet(
            result.cvae,
            choice.radius,
            architecture=config.model.architecture,
            options=config.model.options,
            value_range=tuple(config.data.value_range),
            latent_norms=choice.stats,
        )
        report = assess(pset, result.splits.test, config, choice.stats, progress, world)
        if not world.is_main:
            return None
        pset.metrics = report.to_dict()
        pset.save(out_dir / SET_DIR)
        write_json(out_dir / "metrics.json", pset.metrics)
        with atomic_path(out_dir / "latent_norms.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, choice.norms)
        write_report(out_dir, pset, pset.metrics, result.splits.test, config, choice.norms, result.history)
        return LearnResult(pset, report, result, choice, out_dir)


def evaluate_saved_set(set_dir: str | Path, config: Config, out_dir: str | Path, *, progress: bool = True) -> QualityReport:
    """Evaluate a saved set on the test split of ``config.data`` and write metrics and report.

    Under ``torchrun`` each rank evaluates its share of the test batches and rank 0 writes.
    """
    device = resolve_device(config.training.device)
    world = init_distributed(device)
    pset = PerturbationSet.load(set_dir, device=device)
    out_dir = Path(out_dir)
    with run_folder(out_dir):
        splits = load_splits(config.data, config.seed)
        report = assess(pset, splits.test, config, None, progress, world)
        if world.is_main:
            write_json(out_dir / "metrics.json", report.to_dict())
            write_report(out_dir, pset, report.to_dict(), splits.test, config, None, None)
    return report


def learn_from_file(config_path: str | Path, out_dir: str | Path, *, resume: bool, progress: bool) -> LearnResult | None:
    """``perturbsets train``: learn the set of a YAML config and print its quality table."""
    config = load_config(config_path, Config)
    result = learn_perturbation_set(config, out_dir, resume=resume, progress=progress)
    if result is None:
        return None
    print(quality_table(result.report.to_dict(), config.model.architecture))
    print(f"perturbation set saved to {result.out_dir / SET_DIR}; report: {result.out_dir / 'report.md'}")
    return result


def evaluate_from_file(set_dir: str | Path, config_path: str | Path, out_dir: str | Path, *, progress: bool) -> QualityReport:
    """``perturbsets evaluate``: measure a saved set on the test split of a YAML config's data and print the table."""
    config = load_config(config_path, Config)
    report = evaluate_saved_set(set_dir, config, out_dir, progress=progress)
    if not is_main_process():
        return report
    print(quality_table(report.to_dict(), config.model.architecture))
    print(f"metrics and report written to {out_dir}")
    return report
