"""Training a CVAE on pairs (x, x̃) and turning it into a :class:`PerturbationSet`.

Adam with piecewise-linear learning-rate and β schedules evaluated at the fractional epoch
of every batch (paper Appendix D.1). Every epoch ends with a validation pass (β at its
final value, so losses are comparable across epochs) and two atomic checkpoints,
``checkpoints/latest.safetensors`` and ``checkpoints/best.safetensors``.

Randomness is drawn from generators seeded by (seed, epoch) alone, and the checkpoint holds
the model and optimizer state, so a run resumed from ``latest`` reaches exactly the same
weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._io import write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, save_config, to_dict
from .cvae import CVAE
from .data import DataSplits, PairedData, load_pairs
from .nets import build_cvae

LATEST = "latest.safetensors"
BEST = "best.safetensors"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return device


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (seed, epoch, stream…), via NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


@dataclass
class EpochStats:
    epoch: int
    lr: float
    beta: float
    loss: float
    reconstruction: float
    kl: float
    val_loss: float
    val_reconstruction: float
    val_kl: float
    seconds: float


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


def build_model(config: Config) -> CVAE:
    torch.manual_seed(derive_seed(config.seed, 0, 1))
    return build_cvae(config.model.architecture, distribution=config.model.distribution, **config.model.options)


def _check_shapes(cvae: CVAE, data: PairedData) -> None:
    if tuple(data.image_shape) != tuple(cvae.input_shape):
        raise ValueError(
            f"the data's images are {tuple(data.image_shape)} but the {type(cvae.generator).__name__} model takes "
            f"{tuple(cvae.input_shape)}; set model.options.input_shape to match the data"
        )


@torch.no_grad()
def validation_loss(cvae: CVAE, data: PairedData, config: Config, device: torch.device) -> tuple[float, float, float]:
    """Mean per-example (loss, reconstruction, KL) on ``data`` with β at its final value.

    The pairs, and the posterior noise, are drawn from the same seed at every epoch so the
    losses of different epochs are comparable.
    """
    cvae.eval()
    beta = config.training.beta(math.inf)
    gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, 0, 3))
    totals = np.zeros(3)
    count = 0
    for batch in data.batches(config.training.batch_size, shuffle=False, seed=config.seed, epoch=0, device=device):
        out = cvae(batch.x, batch.x_tilde, noise=_noise(cvae, batch.x.shape[0], gen, device))
        loss = cvae.loss(out, batch.x_tilde, beta)
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
    out_dir: str | Path,
    *,
    resume: bool = False,
    data: PairedData | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the CVAE described by ``config`` and write the run into ``out_dir``.

    ``out_dir`` receives ``config.yaml`` (the resolved config), ``history.json`` and
    ``checkpoints/``. ``data`` overrides ``config.data`` (pairs already in memory).
    With ``resume`` the run continues from ``checkpoints/latest.safetensors``.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    latest_path = ckpt_dir / LATEST
    if not resume and latest_path.exists():
        raise FileExistsError(
            f"{out_dir} already holds a training run; pass resume=True (--resume) to continue it, or choose another --out"
        )
    if resume and not latest_path.exists():
        raise FileNotFoundError(f"cannot resume: {latest_path} does not exist")
    device = resolve_device(config.training.device)
    data = load_pairs(config.data, config.seed) if data is None else data
    splits = data.split(config.data.split, seed=config.seed)
    cvae = build_model(config).to(device)
    _check_shapes(cvae, data)
    optimizer = torch.optim.Adam(cvae.parameters(), lr=0.0, weight_decay=config.training.weight_decay)

    start_epoch, best_val, best_epoch, history = 0, math.inf, -1, []
    if resume:
        state = load_checkpoint(latest_path, cvae, optimizer, device=device)
        if state.get("config") != json.loads(json.dumps(to_dict(config))):
            raise ValueError(
                f"the config differs from the one {out_dir} was trained with; resume with the saved {out_dir / 'config.yaml'}"
            )
        start_epoch, best_val, best_epoch, history = state["epoch"] + 1, state["best_val_loss"], state["best_epoch"], state["history"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    tc = config.training
    n_batches = splits.train.num_batches(tc.batch_size)
    if n_batches == 0:
        raise ValueError("the training split is empty; give data.split.train a positive size")
    for epoch in range(start_epoch, tc.epochs):
        began = time.perf_counter()
        cvae.train()
        gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, 2))
        sums = np.zeros(3)
        seen = 0
        bar = tqdm(
            splits.train.batches(tc.batch_size, shuffle=True, seed=config.seed, epoch=epoch, device=device),
            total=n_batches,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            disable=not progress,
            leave=False,
        )
        for i, batch in enumerate(bar):
            t = epoch + (i + 1) / n_batches
            lr, beta = tc.lr(t), tc.beta(t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = cvae(batch.x, batch.x_tilde, noise=_noise(cvae, batch.x.shape[0], gen, device))
            loss = cvae.loss(out, batch.x_tilde, beta)
            if not torch.isfinite(loss.total):
                raise TrainingDivergedError(
                    f"the loss became {loss.total.item()} at epoch {epoch + 1}, batch {i + 1}; training stopped. "
                    f"The last good checkpoint ({latest_path if latest_path.exists() else 'none yet'}) is kept. "
                    "Lower training.lr, or check the data for extreme values."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            n = batch.x.shape[0]
            sums += n * np.array([loss.total.item(), loss.reconstruction.mean().item(), loss.kl.mean().item()])
            seen += n
            bar.set_postfix(loss=f"{sums[0] / seen:.2f}", recon=f"{sums[1] / seen:.2f}", kl=f"{sums[2] / seen:.2f}")
        val = validation_loss(cvae, splits.val, config, device)
        if not np.isfinite(val[0]):
            raise TrainingDivergedError(
                f"the validation loss became {val[0]} at epoch {epoch + 1}; the last good checkpoint is kept. Lower training.lr."
            )
        stats = EpochStats(epoch, lr, beta, *(sums / seen), *val, time.perf_counter() - began)
        history.append(vars(stats))
        improved = val[0] < best_val
        if improved:
            best_val, best_epoch = val[0], epoch
        state = {
            "epoch": epoch,
            "best_val_loss": best_val,
            "best_epoch": best_epoch,
            "history": history,
            "config": to_dict(config),
        }
        if improved:
            save_checkpoint(ckpt_dir / BEST, cvae, None, state)
        save_checkpoint(latest_path, cvae, optimizer, state)
        write_json(out_dir / "history.json", history)
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{tc.epochs}: loss {stats.loss:.3f} (recon {stats.reconstruction:.3f}, kl {stats.kl:.3f}) "
                f"val {stats.val_loss:.3f}{' *' if improved else ''}"
            )

    selected = ckpt_dir / (BEST if tc.select == "best" else LATEST)
    load_checkpoint(selected, cvae, device=device)
    cvae.eval()
    return TrainResult(cvae, splits, history, best_epoch, best_val, out_dir, device)

