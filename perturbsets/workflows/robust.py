"""Robust-training runs end to end: load the data, train, evaluate, draw the figures, write the table.

What ``perturbsets robust-train`` and ``perturbsets robust-eval`` run, and what the
experiments and the demo call for each robust model. The evaluation itself is
:func:`perturbsets.evaluation.robust.robust_evaluate`; this module supplies its data and
model and turns its results into ``robust_table.md``, ``certified_accuracy.png`` and, for
segmentation, ``adversarial_segmentation.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from perturbsets._util.checkpoint import load_checkpoint
from perturbsets._util.io import write_text
from perturbsets.certify.statistics import certified_accuracy_curve
from perturbsets.config.io import load_config
from perturbsets.config.robust import RobustConfig
from perturbsets.evaluation.certification_store import Shard
from perturbsets.evaluation.robust import (
    RobustReport,
    adversarial_maps,
    certify_shard,
    image_batches,
    merge_certificate_shards,
    robust_evaluate,
)
from perturbsets.pairs.paired import PairedData
from perturbsets.reports.plots import plot_curve, plot_segmentation
from perturbsets.reports.tables import robust_table
from perturbsets.training.distributed import init_distributed, share_weights
from perturbsets.training.loop import BEST, LATEST, resolve_device, run_folder
from perturbsets.training.robust import RobustTrainResult, build_classifier_model, load_set, robust_train
from perturbsets.workflows.sources import load_splits, load_test


def run_robust_training(
    config: RobustConfig, out_dir: str | Path, *, resume: bool = False, data: PairedData | None = None, progress: bool = True
) -> RobustTrainResult:
    """Train the downstream model of ``config`` on its data (``data``: pairs in memory instead)."""
    # Locked and checked before reading the data, which can take minutes.
    with run_folder(out_dir, resume):
        return robust_train(config, load_splits(config.data, config.seed, data), out_dir, resume=resume, progress=progress)


def run_robust_evaluation(
    config: RobustConfig,
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    model: nn.Module | None = None,
    name: str | None = None,
    data: PairedData | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    merge_shards: int | None = None,
) -> RobustReport | None:
    """Evaluate a robust-training run's model (``model``, else the checkpoint ``training.select`` picks) into ``out_dir``.

    The test pairs are ``evaluation.test`` when set, else the test split of the run's data
    (``data``: pairs in memory instead); OOD pairs are ``evaluation.ood``.

    ``shard`` certifies only that shard of the test inputs (nothing else is evaluated and
    ``None`` is returned); ``merge_shards=k`` first merges the stores of shards 0/k … k−1/k
    found in ``out_dir``, then evaluates as usual, reading the merged certificates.

    Under ``torchrun`` every rank evaluates its share of the batches of rank 0's model
    (:func:`robust_evaluate`) and certifies its shard of the inputs; rank 0 merges, writes and returns the report.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    device = resolve_device(config.training.device)
    world = init_distributed(device)
    if model is None:
        model = build_classifier_model(config).to(device)
        load_checkpoint(run_dir / "checkpoints" / (BEST if config.training.select == "best" else LATEST), model)
    model.eval()
    share_weights(model, world)
    pset = load_set(config, device)
    with run_folder(out_dir):
        ev = config.evaluation
        test = load_test(ev.test, config.seed) if ev.test is not None else load_splits(config.data, config.seed, data).test
        if shard is not None:
            if pset is None:
                raise ValueError("--shard splits certification, which needs a perturbation set (standard runs have none)")
            if world.size > 1:
                # Every rank would certify the same shard into the same store.
                raise ValueError(
                    f"--shard {shard} runs one certification shard in one process, but torchrun started {world.size}; "
                    "start one plain process per shard (perturbsets robust-eval … --shard i/k), or leave out --shard"
                )
            certify_shard(config, model, pset, test, out_dir, shard)
            return None
        if merge_shards is not None and world.is_main:
            merge_certificate_shards(out_dir, merge_shards)
        ood = load_test(ev.ood, config.seed) if ev.ood is not None else None
        result = robust_evaluate(config, model, pset, test, out_dir, ood=ood, name=name, shard=world)
        if result is None:
            return None  # a rank other than 0 under torchrun: rank 0 writes
        report = result.report
        if pset is not None and report.radii:
            batch = next(iter(image_batches(test, config, device)))
            eps = max(report.radii.values())
            maps = adversarial_maps(model, pset, batch, ev.attack, eps, config.seed)
            if maps is not None:
                plot_segmentation(
                    maps.x, maps.prediction, maps.x_adv, maps.prediction_adv, maps.labels,
                    out_dir / "adversarial_segmentation.png", maps.num_classes, title=f"latent PGD at ε = {eps:.3g}",
                )  # fmt: skip
        if result.certificates is not None:
            c = result.certificates
            write_certified_curve(c.radius, c.correct, out_dir / "certified_accuracy.png", c.sigma, pset.radius)
        write_text(out_dir / "robust_table.md", robust_table([report.to_dict()]))
    return report


def write_certified_curve(radii: np.ndarray, correct: np.ndarray, path: Path, sigma: float, max_radius: float) -> Path:
    """Certified accuracy against the latent radius, up to the set's radius (Figures 11 and 17)."""
    grid, acc = certified_accuracy_curve(radii, correct, max_radius=max_radius)
    return plot_curve(grid, {f"σ = {sigma:.3g}": acc}, path, "radius ε (latent ℓ2)", "certified accuracy", step=True)


def robust_train_from_file(config_path: str | Path, out_dir: str | Path, *, resume: bool, evaluate: bool, progress: bool) -> None:
    """``perturbsets robust-train``: train the model of a YAML config, then (``evaluate``) evaluate it into ``out/eval``."""
    config = load_config(config_path, RobustConfig)
    with run_folder(out_dir, resume):
        result = run_robust_training(config, out_dir, resume=resume, progress=progress)
        if evaluate:
            eval_dir = Path(out_dir) / "eval"
            report = run_robust_evaluation(config, out_dir, eval_dir, model=result.model, progress=progress)
            if report is None:
                return  # under torchrun rank 0 prints
            print((eval_dir / "robust_table.md").read_text())
            print(f"results in {eval_dir} ({report.counts['test']} test examples)")


def robust_evaluate_from_file(
    config_path: str | Path,
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool,
    shard: str | None = None,
    merge_shards: int | None = None,
) -> None:
    """``perturbsets robust-eval``: evaluate the saved model of a robust-training run (or one certification shard)."""
    config = load_config(config_path, RobustConfig)
    part = Shard.parse(shard) if shard is not None else None
    if part is None and merge_shards is not None and merge_shards < 1:
        raise ValueError(f"--merge-shards takes the number of shards k >= 1, got {merge_shards}")
    report = run_robust_evaluation(config, run_dir, out_dir, progress=progress, shard=part, merge_shards=merge_shards)
    if part is not None:
        print(f"certified shard {part} into {out_dir}; merge with --merge-shards {part.count} once every shard is there")
        return
    if report is None:
        return  # under torchrun rank 0 prints
    print(Path(out_dir, "robust_table.md").read_text())
    print(f"results in {out_dir}")

