"""Per-epoch logs a researcher can watch while a run trains: JSON, JSON Lines, CSV, sample grids and TensorBoard.

The checkpoint's history is the source of truth: after every epoch the three text logs are
rewritten from it atomically, so after a kill and ``--resume`` they always agree with the
checkpoint. Sample grids (:mod:`perturbsets.training.samples`) are PNGs in ``samples/``.
TensorBoard (an optional extra, ``pip install -e ".[tensorboard]"``) receives each epoch's
scalars as it ends, and the sample grids; a resumed run purges the events of epochs it repeats.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from perturbsets._util.images import write_png
from perturbsets._util.io import write_json, write_text

__all__ = ["RunLog", "tensorboard_available"]

HISTORY = "history.json"
JSONL = "history.jsonl"
CSV = "history.csv"
TENSORBOARD = "tensorboard"
SAMPLES = "samples"


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can write event files (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


class RunLog:
    """The logs of one run folder.

    Args:
        out_dir: the run folder.
        start_epoch: the first epoch this process trains (0, or the resumed epoch).
        tensorboard: ``"auto"`` (when installed), ``True`` (required) or ``False``.
    """

    def __init__(self, out_dir: Path, start_epoch: int, tensorboard: bool | str = "auto") -> None:
        self.out_dir = Path(out_dir)
        if tensorboard is True and not tensorboard_available():
            raise ValueError("TensorBoard logging was asked for but tensorboard is not installed: pip install -e '.[tensorboard]'")
        self._writer = None
        if tensorboard is True or (tensorboard == "auto" and tensorboard_available()):
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD), purge_step=start_epoch)

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``history.json``, ``history.jsonl`` and ``history.csv`` from ``history`` (one row per epoch)."""
        write_json(self.out_dir / HISTORY, history)
        write_text(self.out_dir / JSONL, "".join(json.dumps(row) + "\n" for row in history))
        write_text(self.out_dir / CSV, _csv(history))

    def epoch(self, history: list[dict[str, Any]]) -> None:
        """Record the epoch that just ended (the last row of ``history``) everywhere."""
        self.rewrite(history)
        if self._writer is not None and history:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def sample_grid(self, grid: np.ndarray, epoch: int) -> Path:
        """Log the sample grid (H, W, 3) in [0, 1] made after ``epoch`` (0-based): ``samples/epoch_NNNN.png``
        with NNNN = ``epoch + 1`` (the epochs done), and the image ``samples`` at step ``epoch`` in TensorBoard."""
        path = self.out_dir / SAMPLES / f"epoch_{epoch + 1:04d}.png"
        write_png(path, grid)
        if self._writer is not None:
            self._writer.add_image(SAMPLES, grid, epoch, dataformats="HWC")
            self._writer.flush()
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _csv(history: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()
