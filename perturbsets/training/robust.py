"""Robust training of downstream models with a learned perturbation set (paper Section 5, Appendix C).

One loop, five modes:

* ``standard``: clean x;
* ``perturbed``: the dataset's own x̃ (e.g. "CIFAR10-C data augmentation" of Table 2);
* ``cvae_augment``: x̃ = g(μ(x) + u·σ(x), x) with u from the truncated prior (Table 2);
* ``cvae_adversarial``: latent PGD at the full radius, training on the adversarial point
  only (Algorithm 1; the authors' code used max(clean, adversarial) and attacked in train
  mode — we follow the paper and attack in eval mode);
* ``smoothing``: u ~ N(0, σ²I) fed through the prior reparameterisation (Appendix C.2).

The best epoch is the one of lowest validation error (``val_error``) on the inputs of the
run's own mode.

What is keyed: every random draw of a training step comes from the step's generator,
seeded by (seed, epoch), and is drawn for the whole global batch before this process keeps
its rows (:class:`~perturbsets.training.distributed.StepDraws`): the latent samples of
``cvae_augment``, the noise of ``smoothing`` and the random starts of the attack
(``attack.random_start``/``restarts``). The pairs themselves — shuffle, on-the-fly
perturbations, joint augmentation — are read as the whole seeded global batch on every
process. So no draw depends on the number of processes, and a resumed run repeats its epochs.
Validation draws from its own generator, seeded by the seed alone, on every process.

Adversarial training logs a grid of clean validation inputs over their adversarial
examples every ``training.sample_every`` epochs (:func:`adversarial_grid`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from perturbsets._util.seeding import Stream, derive_seed, seeded_generator
from perturbsets.attacks.latent_pgd import LatentPGD
from perturbsets.classifiers.architectures import build_classifier
from perturbsets.classifiers.scoring import check_labels, per_example_error, per_example_loss
from perturbsets.config.robust import AttackConfig, RobustConfig
from perturbsets.core.latent import sample_truncated_normal
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.pairs.batch import DataSplits, PairBatch
from perturbsets.training.cvae import make_adam
from perturbsets.training.distributed import StepDraws
from perturbsets.training.loop import StepOutput, fit, prepare_run, resolve_device
from perturbsets.training.samples import first_pairs, grid_image


def make_attack(
    model: nn.Module, pset: PerturbationSet, cfg: AttackConfig, eps: float, generator: torch.Generator | StepDraws | None
) -> LatentPGD:
    """Latent PGD against ``model`` at radius ``eps`` with the settings of ``cfg``.

    ``generator`` draws the random starts (``cfg.random_start``); a training step passes its
    :class:`StepDraws`, so the starts are drawn for the whole global batch and sliced to
    this process's rows, as every other draw of the step.
    """
    step = cfg.step_size if cfg.step_size is not None else eps / cfg.step_divisor
    draws = generator if isinstance(generator, StepDraws) else None
    return LatentPGD(
        model, pset, eps, cfg.steps, step, cfg.random_start,
        restarts=cfg.restarts, early_stop=cfg.early_stop, select=cfg.select,
        generator=draws.generator if draws is not None else generator,
        draw_rows=draws.per_example if draws is not None else None,
    )  # fmt: skip


class InputTransform:
    """The training input of each mode: batch (x, x̃, y) → model input (N, C, H, W)."""

    def __init__(self, config: RobustConfig, model: nn.Module, pset: PerturbationSet | None) -> None:
        self.mode = config.training.mode
        self.config = config
        self.model = model
        self.pset = pset
        self.eps = pset.resolve_radius(config.training.attack.eps) if pset is not None else None

    def __call__(self, batch: PairBatch, draws: StepDraws, epoch: float = math.inf) -> Tensor:
        """``epoch`` (fractional) sets the attack radius during ``attack.warmup_epochs``.

        Every draw — latent samples, smoothing noise, an attack's random starts — is made
        for the whole global batch (``draws``), so data-parallel runs see the single-process draws.
        """
        mode, pset = self.mode, self.pset
        if mode == "standard":
            return batch.x
        if mode == "perturbed":
            return batch.x_tilde
        assert pset is not None
        n = batch.x.shape[0]
        gen, device, dim = draws.generator, batch.x.device, pset.latent_dim
        if mode == "cvae_augment":
            u = draws.per_example(
                lambda m: sample_truncated_normal(m, dim, pset.radius, gen, device=device, dtype=batch.x.dtype), n
            )
            with torch.no_grad():
                return pset.perturb(batch.x, u)
        if mode == "smoothing":
            sigma = self.config.training.sigma
            u = sigma * draws.per_example(lambda m: torch.randn(m, dim, generator=gen, device=device), n)
            with torch.no_grad():
                return pset.perturb(batch.x, u)
        cfg = self.config.training.attack
        # A linear ramp of the radius: training directly at a large radius can fail to
        # learn at all (the robust loss stays at chance), which the ramp avoids.
        eps = self.eps * min(1.0, epoch / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else self.eps
        if eps <= 0:
            return batch.x
        return make_attack(self.model, pset, cfg, eps, draws)(batch.x, batch.y).x_adv


@dataclass
class RobustTrainResult:
    """What :func:`robust_train` returns: the selected model and the run's record."""

    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    out_dir: Path


def load_set(config: RobustConfig, device) -> PerturbationSet | None:
    """The run's saved perturbation set on ``device``, or ``None`` for a run that uses none."""
    if config.perturbation_set is None:
        return None
    pset = PerturbationSet.load(Path(config.perturbation_set).expanduser(), device=device)
    if config.training.channels_last:
        pset.to(memory_format=torch.channels_last)
    return pset


def build_classifier_model(config: RobustConfig) -> nn.Module:
    """The downstream model of ``config``, initialised from the run's seed."""
    torch.manual_seed(derive_seed(config.seed, 0, Stream.CLASSIFIER_INIT))
    model = build_classifier(config.model.architecture, **config.model.options)
    return model.to(memory_format=torch.channels_last) if config.training.channels_last else model


def require_labels(batch: PairBatch) -> Tensor:
    """The batch's labels; robust training and evaluation cannot do without them."""
    if batch.y is None:
        raise ValueError("robust training and evaluation need labels; the data has none (give y / a labelled source)")
    return batch.y


def adversarial_grid(config: RobustConfig, transform: InputTransform, splits: DataSplits, device) -> Callable[[], np.ndarray] | None:
    """Adversarial training's sample grid: the first validation inputs (top row) over their
    adversarial examples at the full radius against the model as it is (bottom row), an
    (H, W, 3) image in [0, 1]; ``None`` in the other modes or with ``training.sample_every`` 0."""
    if config.training.mode != "cvae_adversarial" or not config.training.sample_every:
        return None
    pset = transform.pset
    assert pset is not None  # the config requires a set in this mode

    def grid() -> np.ndarray:
        pairs = first_pairs(splits.val, config.seed, device)
        # The random starts come from the same seeded draws at every epoch.
        draws = StepDraws(seeded_generator(config.seed, 0, Stream.SAMPLE_GRID, device=device))
        return grid_image(torch.stack([pairs.x, transform(pairs, draws)]), pset.value_range)

    return grid


def robust_train(
    config: RobustConfig, splits: DataSplits, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> RobustTrainResult:
    """Train the downstream model of ``config`` in its mode on ``splits``; checkpoints and resume as in CVAE training."""
    out_dir = Path(out_dir)
    prepare_run(out_dir, resume)
    tc = config.training
    device = resolve_device(tc.device)
    pset = load_set(config, device)
    if pset is not None and tuple(splits.train.image_shape) != pset.input_shape:
        raise ValueError(
            f"the data's images are {tuple(splits.train.image_shape)} but the perturbation set takes {pset.input_shape}; "
            "use data of the shape the set was learned on"
        )
    if pset is not None:
        # Fail now, not after training, if an evaluation radius cannot be resolved.
        for spec in config.evaluation.radii:
            pset.resolve_radius(spec)
    model = build_classifier_model(config).to(device)
    if tc.optimizer == "adam":
        optimizer: torch.optim.Optimizer = make_adam(model.parameters(), tc.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=tc.momentum, weight_decay=tc.weight_decay)
    transform = InputTransform(config, model, pset)

    def step(batch: PairBatch, t: float, draws: StepDraws) -> StepOutput:
        y = require_labels(batch)
        inputs = transform(batch, draws, t)
        logits = model(inputs)
        check_labels(logits, y)
        loss = per_example_loss(logits, y)
        err = per_example_error(logits.detach(), y)
        return StepOutput(loss.mean(), {"loss": loss.mean().item(), "error": err.mean().item()}, y.shape[0])

    def validate() -> dict[str, float]:
        gen = seeded_generator(config.seed, 0, Stream.ROBUST_TRAIN, device=device)
        errors, losses = [], []
        for batch in splits.val.batches(tc.batch_size, shuffle=False, seed=config.seed, device=device):
            y = require_labels(batch)
            inputs = transform(batch, StepDraws(gen))
            with torch.no_grad():
                logits = model(inputs)
            errors.append(per_example_error(logits, y))
            losses.append(per_example_loss(logits, y))
        if not errors:
            raise ValueError("the validation split is empty; give data.split.val a positive size")
        return {"val_error": torch.cat(errors).mean().item(), "val_ce": torch.cat(losses).mean().item()}

    result = fit(
        model,
        optimizer,
        config=config,
        out_dir=out_dir,
        train=splits.train,
        step=step,
        validate=validate,
        monitor="val_error",
        device=device,
        resume=resume,
        progress=progress,
        sample_grid=adversarial_grid(config, transform, splits, device),
    )
    return RobustTrainResult(model, result.history, result.best_epoch, out_dir)
