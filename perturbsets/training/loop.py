"""The resumable training loop shared by CVAE training and robust training.

One job: run epochs of a given step function with a per-batch learning-rate schedule,
validate after each epoch, keep ``checkpoints/latest`` and ``checkpoints/best`` written
atomically, and resume exactly. What a step computes (a CVAE loss, an adversarial loss…)
belongs to the caller.

Exact resume rests on two rules: every random draw comes from generators seeded by
(seed, epoch) alone, and the checkpoint holds the model and optimizer state.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from perturbsets._util.checkpoint import load_checkpoint, save_checkpoint
from perturbsets._util.io import remove_temp_files
from perturbsets._util.locking import folder_lock
from perturbsets._util.seeding import Stream, seeded_generator
from perturbsets.config.io import save_config, to_dict
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.source import PairSource
from perturbsets.training.distributed import (
    StepDraws,
    average_gradients,
    init_distributed,
    is_main_process,
    local_rows,
    prepare_model,
    sum_over_ranks,
)
from perturbsets.training.logs import SAMPLES, RunLog
from perturbsets.training.samples import sample_due

LATEST = "latest.safetensors"
BEST = "best.safetensors"
# Per-epoch figures that depend on the machine's load, not on the seed.
TIMING_KEYS = ("seconds", "pairs_per_second")
# Where a run's writers put files atomically: the run folder, its checkpoints, the sample
# grids, the report's figures and the certificates of an evaluation.
WRITTEN_FOLDERS = (".", "checkpoints", SAMPLES, "figures", "certify")
# Training settings of what is logged, not of what is trained: a resume may change them, and
# a run checkpointed before one of them existed still resumes.
LOGGING_KEYS = ("sample_every",)


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


def prefetch(iterable: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Reading batches (memory-mapped uint8 rows, decoding, the copy to the device) then
    overlaps with the training step. Items come out in order, the producer's exceptions
    are re-raised here, and the thread stops when the consumer stops early.
    """
    if depth <= 0:
        yield from iterable
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as err:  # re-raised in the consumer
            items.put((done, err))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, err = items.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


@dataclass
class StepOutput:
    """What a step function returns: the scalar loss to minimise, logs, and the batch size."""

    loss: Tensor
    logs: dict[str, float]
    size: int
    # "mean" over the batch's rows or "sum" (the CVAE's batch-summed ELBO): how a rank's
    # loss is weighted so the gradients summed over ranks are the single-process gradient.
    reduction: str = "mean"


@dataclass
class FitResult:
    """The run's history, and the epoch and value of the lowest monitored validation figure."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_value: float


def prepare_run(out_dir: Path, resume: bool) -> Path:
    """Check the run folder for ``resume`` and return the path of the latest checkpoint."""
    latest = out_dir / "checkpoints" / LATEST
    if not resume and latest.exists():
        raise FileExistsError(
            f"{out_dir} already holds a training run; pass resume=True (--resume) to continue it, or choose another --out"
        )
    if resume and not latest.exists():
        raise FileNotFoundError(f"cannot resume: {latest} does not exist")
    return latest


@contextlib.contextmanager
def run_folder(out_dir: str | Path, resume: bool | None = None) -> Iterator[Path]:
    """Hold the lock of the run folder ``out_dir`` (created if missing) for the whole ``with`` block.

    Every command that writes a run folder holds it, so a second process writing the same
    folder fails at once with :class:`~perturbsets._util.locking.FolderLockedError` instead
    of overwriting or mixing the first one's files; the thread holding it may take it again.
    Once the lock is held, the temporary files that writers killed mid-write left in the
    folder are deleted, and with ``resume`` given the folder is checked as by
    :func:`prepare_run`. A resume of a folder that does not exist fails before anything is created.
    """
    out_dir = Path(out_dir)
    if resume and not out_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: the run folder {out_dir} does not exist")
    if not is_main_process():
        # Under torchrun rank 0 holds the lock and writes; the other ranks only read.
        if resume is not None:
            prepare_run(out_dir, resume)
        yield out_dir
        return
    with folder_lock(out_dir, blocking=False, what="run folder"):
        for sub in WRITTEN_FOLDERS:
            remove_temp_files(out_dir / sub)
        if resume is not None:
            prepare_run(out_dir, resume)
        yield out_dir


def _trained(config: Any) -> Any:
    """A saved config without its :data:`LOGGING_KEYS`: the part a resume must match."""
    if not isinstance(config, dict) or not isinstance(config.get("training"), dict):
        return config
    return {**config, "training": {k: v for k, v in config["training"].items() if k not in LOGGING_KEYS}}


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    config: Any,
    out_dir: Path,
    train: PairSource,
    step: Callable[[PairBatch, float, StepDraws], StepOutput],
    validate: Callable[[], dict[str, float]],
    monitor: str,
    device: torch.device,
    resume: bool = False,
    progress: bool = True,
    prefetch_batches: int = 2,
    sample_grid: Callable[[], np.ndarray] | None = None,
) -> FitResult:
    """Train ``model`` for ``config.training.epochs`` epochs and leave the selected checkpoint loaded.

    Args:
        config: the run's config dataclass (``seed`` and a ``training`` section with
            ``epochs``, ``batch_size``, ``lr``, ``select`` and ``amp``); saved as
            ``config.yaml`` and stored in every checkpoint so a resume with a different
            config is refused. ``select`` picks the checkpoint loaded at the end: ``best``
            (lowest ``monitor``) or ``latest``; ``amp`` runs the steps under bfloat16
            autocast on CUDA (no effect on the CPU, where bfloat16 matmuls are rarely faster).
        train: the training pairs, shuffled every epoch from (seed, epoch).
        step: ``(batch, fractional_epoch, draws) -> StepOutput``; ``draws`` holds the
            generator seeded by (seed, epoch) for any randomness of the step, and draws
            per-example randomness for the whole global batch (see
            :class:`~perturbsets.training.distributed.StepDraws`).
        validate: returns the validation figures after each epoch, ``monitor`` among them.
        monitor: the key of ``validate``'s result that selects the best epoch (lower is
            better), e.g. ``val_loss``; the checkpoint state records it as ``best_<monitor>``.
        prefetch_batches: batches read ahead in a background thread (0 = none).
        sample_grid: makes the run's sample grid, (H, W, 3) in [0, 1], from the model as it
            is; logged after the epochs ``training.sample_every`` selects
            (:func:`~perturbsets.training.samples.sample_due`), by rank 0 alone. ``None``: no grids.

    Under ``torchrun`` every process runs this with the same arguments: each trains on its
    rows of every global batch, gradients are summed over the processes, and only rank 0
    writes (see :mod:`perturbsets.training.distributed`).
    """
    with run_folder(out_dir, resume):
        tc, seed = config.training, config.seed
        epochs, lr, batch_size = tc.epochs, tc.lr, tc.batch_size
        world = init_distributed(device)
        world.check_batch_size(batch_size)
        prepare_model(model, world, device)
        autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if tc.amp and device.type == "cuda" else contextlib.nullcontext
        )
        ckpt_dir = out_dir / "checkpoints"
        latest = ckpt_dir / LATEST
        best_key = f"best_{monitor}"
        config_dict = json.loads(json.dumps(to_dict(config)))
        start, best_val, best_epoch, history = 0, math.inf, -1, []
        if resume:
            state = load_checkpoint(latest, model, optimizer)
            if _trained(state.get("config")) != _trained(config_dict):
                raise ValueError(
                    f"the config differs from the one {out_dir} was trained with; resume with the saved {out_dir / 'config.yaml'}"
                )
            start, best_val, best_epoch, history = state["epoch"] + 1, state[best_key], state["best_epoch"], state["history"]
        elif world.is_main:
            save_config(config, out_dir / "config.yaml")
        log = RunLog(out_dir, start) if world.is_main else None
        if log is not None:
            # The checkpoint's history is the record: a kill between the checkpoint write and
            # the log writes leaves the logs an epoch behind.
            log.rewrite(history)
        n_batches = train.num_batches(batch_size)
        if n_batches == 0:
            raise ValueError("the training split is empty; give data.split.train a positive size")

        for epoch in range(start, epochs):
            began = time.perf_counter()
            model.train()
            gen = seeded_generator(seed, epoch, Stream.TRAIN_NOISE, device=device)
            sums: dict[str, float] = {}
            seen = 0
            batches = prefetch(train.batches(batch_size, shuffle=True, seed=seed, epoch=epoch, device=device), prefetch_batches)
            show = progress and world.is_main
            bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
            for i, batch in enumerate(bar):
                total = batch.x.shape[0]
                if world.size > 1:
                    rows = world.rows(total)
                    batch, draws = local_rows(batch, rows), StepDraws(gen, rows, total)
                else:
                    draws = StepDraws(gen)
                t = epoch + (i + 1) / n_batches
                rate = lr(t)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                with autocast():
                    out = step(batch, t, draws)
                if not torch.isfinite(out.loss):
                    raise TrainingDivergedError(
                        f"the loss became {out.loss.item()} at epoch {epoch + 1}, batch {i + 1}; training stopped. "
                        f"The last good checkpoint ({latest if latest.exists() else 'none yet'}) is kept. "
                        "Lower training.lr, or check the data for extreme values."
                    )
                optimizer.zero_grad(set_to_none=True)
                if world.size > 1:
                    (out.loss * (1.0 if out.reduction == "sum" else out.size / total)).backward()
                    average_gradients(model, world)
                else:
                    out.loss.backward()
                optimizer.step()
                for key, value in out.logs.items():
                    sums[key] = sums.get(key, 0.0) + value * out.size
                seen += out.size
                bar.set_postfix({k: f"{v / seen:.3g}" for k, v in sums.items()})
            if world.size > 1:
                totals = sum_over_ranks({**sums, "__seen__": float(seen)}, world)
                seen = int(totals.pop("__seen__"))
                sums = totals
            model.eval()
            val = validate()
            if not np.isfinite(val[monitor]):
                raise TrainingDivergedError(
                    f"the validation {monitor.removeprefix('val_')} became {val[monitor]} at epoch {epoch + 1}; the last good checkpoint is kept. "
                    "Lower training.lr."
                )
            record = {"epoch": epoch, "lr": rate, **{k: v / seen for k, v in sums.items()}, **val}
            record["seconds"] = time.perf_counter() - began
            record["pairs_per_second"] = seen / record["seconds"]
            history.append(record)
            improved = val[monitor] < best_val
            if improved:
                best_val, best_epoch = val[monitor], epoch
            state = {"epoch": epoch, best_key: best_val, "best_epoch": best_epoch, "history": history, "config": config_dict}
            if log is not None and sample_grid is not None and sample_due(epoch, epochs, tc.sample_every):
                # Before the checkpoint: a kill between the two repeats this epoch on resume,
                # which writes the same grid again, so every checkpointed epoch has its grid.
                log.sample_grid(sample_grid(), epoch)
            if log is not None:
                if improved:
                    save_checkpoint(ckpt_dir / BEST, model, None, state)
                save_checkpoint(latest, model, optimizer, state)
                log.epoch(history)
            if show:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", *TIMING_KEYS))
                tqdm.write(f"epoch {epoch + 1}/{epochs}: {shown}{' *' if improved else ''}")

        if log is not None:
            log.close()
        world.wait()  # rank 0's last checkpoint is on disk before anyone reads it
        load_checkpoint(ckpt_dir / (BEST if tc.select == "best" else LATEST), model)
        model.eval()
        return FitResult(history, best_epoch, best_val)
