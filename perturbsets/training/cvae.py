"""Training the CVAE of a perturbation set on given train / validation pairs (x, x̃).

Adam with piecewise-linear learning-rate and β schedules evaluated at the fractional epoch
of every batch (paper Appendix D.1). The objective is the negative ELBO summed over the
batch, as in the paper and the authors' code, so a config's ``weight_decay`` (Adam's
coupled L2) is the paper's: e.g. 5·10⁻⁷ for Multi-Illumination (Appendix F.1). Every epoch ends with a validation pass (β at its
final value, so losses are comparable across epochs) and two atomic checkpoints,
``checkpoints/latest.safetensors`` and ``checkpoints/best.safetensors``.

Randomness is drawn from generators seeded by (seed, epoch) alone, and the checkpoint holds
the model and optimizer state, so a run resumed from ``latest`` reaches exactly the same
weights as one that was never interrupted — bit for bit on the CPU; on CUDA only with
``torch.use_deterministic_algorithms(True)``, since some CUDA kernels (``grid_sample``'s
backward among them) are not deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perturbsets._util.seeding import Stream, derive_seed, seeded_generator
from perturbsets.config.learn import Config
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.cvae.model import CVAE
from perturbsets.cvae.registry import build_cvae
from perturbsets.pairs.batch import DataSplits, PairBatch
from perturbsets.pairs.paired import PairedData
from perturbsets.training.loop import StepOutput, fit, prepare_run, resolve_device
from perturbsets.training.distributed import StepDraws
from perturbsets.training.samples import CVAESampleGrid


@dataclass
class TrainResult:
    """What :func:`train_cvae` returns: the selected model and the run's record."""

    cvae: CVAE
    splits: DataSplits
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    out_dir: Path
    device: torch.device


def make_adam(params, weight_decay: float) -> torch.optim.Adam:
    """Adam (coupled L2 ``weight_decay``, lr set per batch by the loop) with its fused kernel.

    The fused implementation updates all parameters in one kernel per dtype/device instead
    of a Python loop over tensors: on the CPU that makes the step of the 34M-parameter
    CIFAR CVAE several times cheaper. Same update rule; float rounding may differ from the
    default implementation in the last bits. Falls back to ``foreach`` where fused is not
    supported (e.g. non-float parameters or an unsupported device).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=0.0, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=0.0, weight_decay=weight_decay, foreach=True)


def build_model(config: Config) -> CVAE:
    torch.manual_seed(derive_seed(config.seed, 0, Stream.CVAE_INIT))
    return build_cvae(config.model.architecture, distribution=config.model.distribution, **config.model.options)


def check_data_fits(cvae: CVAE, data: PairedData) -> None:
    """The data's image shape and value range must suit the model and its likelihood."""
    if tuple(data.image_shape) != tuple(cvae.input_shape):
        raise ValueError(
            f"the data's images are {tuple(data.image_shape)} but the {type(cvae.generator).__name__} model takes "
            f"{tuple(cvae.input_shape)}; set model.options.input_shape to match the data"
        )
    low, high = data.value_range
    if cvae.output == "sigmoid" and (low < 0 or high > 1):
        raise ValueError(
            f"the data's value range is [{low}, {high}] but a sigmoid generator (and a Bernoulli likelihood) only "
            "produces values in [0, 1]; rescale the data to [0, 1]"
        )


def initialise_from(cvae: CVAE, config: Config) -> None:
    """Copy the weights of the saved set ``training.init_from`` into ``cvae`` (fine-tuning)."""
    source = PerturbationSet.load(Path(config.training.init_from).expanduser())
    if source.architecture != config.model.architecture:
        raise ValueError(
            f"training.init_from {config.training.init_from} holds a {source.architecture!r} set but model.architecture is "
            f"{config.model.architecture!r}; fine-tuning needs the same architecture"
        )
    try:
        cvae.load_state_dict(source.cvae.state_dict())
    except RuntimeError as err:
        raise ValueError(
            f"training.init_from {config.training.init_from}: its weights do not fit this model's options ({err}); "
            "keep every model option except input_shape equal to the source set's"
        ) from None


@torch.no_grad()
def validation_loss(cvae: CVAE, data: PairedData, config: Config, device: torch.device) -> tuple[float, float, float]:
    """Mean per-example (loss, reconstruction, KL) on ``data`` with β at its final value.

    The pairs, and the posterior noise, are drawn from the same seed at every epoch so the
    losses of different epochs are comparable.
    """
    cvae.eval()
    beta = config.training.beta(math.inf)
    gen = seeded_generator(config.seed, 0, Stream.CVAE_VALIDATION, device=device)
    totals = np.zeros(3)
    count = 0
    for batch in data.batches(config.training.batch_size, shuffle=False, seed=config.seed, epoch=0, device=device):
        out = cvae(batch.x, batch.x_tilde, noise=_noise(cvae, batch.x.shape[0], gen, device))
        loss = cvae.loss(out, batch.x_tilde, beta, variance=config.model.variance)
        n = batch.x.shape[0]
        totals += n * np.array([loss.total.item(), loss.reconstruction.mean().item(), loss.kl.mean().item()])
        count += n
    if count == 0:
        raise ValueError("the validation split is empty; give data.split.val a positive size")
    return tuple(totals / count)  # type: ignore[return-value]


def _noise(cvae: CVAE, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn((n, *cvae.latent_shape), generator=gen, device=device)


def train_cvae(
    config: Config,
    splits: DataSplits,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train the CVAE described by ``config`` on ``splits`` (train, and val for selection) into ``out_dir``.

    ``out_dir`` receives ``config.yaml`` (the resolved config), ``history.json``,
    ``checkpoints/`` and the sample grids ``samples/`` (``training.sample_every``). With
    ``resume`` the run continues from ``checkpoints/latest.safetensors``.
    """
    out_dir = Path(out_dir)
    prepare_run(out_dir, resume)
    device = resolve_device(config.training.device)
    cvae = build_model(config).to(device)
    if config.training.init_from is not None and not resume:
        initialise_from(cvae, config)
    if config.training.channels_last:
        cvae.to(memory_format=torch.channels_last)
    check_data_fits(cvae, splits.train)
    tc = config.training
    optimizer = make_adam(cvae.parameters(), tc.weight_decay)

    def step(batch: PairBatch, t: float, draws: StepDraws) -> StepOutput:
        beta = tc.beta(t)
        noise = draws.per_example(lambda n: _noise(cvae, n, draws.generator, device), batch.x.shape[0])
        out = cvae(batch.x, batch.x_tilde, noise=noise)
        loss = cvae.loss(out, batch.x_tilde, beta, variance=config.model.variance)
        logs = {"loss": loss.total.item(), "reconstruction": loss.reconstruction.mean().item(), "kl": loss.kl.mean().item(), "beta": beta}
        return StepOutput(loss.objective, logs, batch.x.shape[0], reduction="sum")

    def validate() -> dict[str, float]:
        loss, recon, kl = validation_loss(cvae, splits.val, config, device)
        return {"val_loss": loss, "val_reconstruction": recon, "val_kl": kl}

    result = fit(
        cvae,
        optimizer,
        config=config,
        out_dir=out_dir,
        train=splits.train,
        step=step,
        validate=validate,
        monitor="val_loss",
        device=device,
        resume=resume,
        progress=progress,
        sample_grid=CVAESampleGrid(cvae, splits.val, config.seed, device) if tc.sample_every else None,
    )
    return TrainResult(cvae, splits, result.history, result.best_epoch, result.best_value, out_dir, device)
