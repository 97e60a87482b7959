"""The downstream task a model solves: classification or per-pixel segmentation.

A classifier returns logits (N, K) and takes labels (N,); a segmentation model returns
logits (N, K, H, W) and takes label maps (N, H, W), where pixels equal to ``ignore_index``
are not scored (e.g. padding, or unlabelled pixels).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Task = Literal["classification", "segmentation"]
IGNORE_INDEX = -100


@contextmanager
def eval_mode(model: Callable) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm uses running statistics and updates nothing),
    then every submodule's own previous mode back, even on error. Plain callables pass through.
    """
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def task_of(logits: Tensor) -> Task:
    """``classification`` for (N, K) logits, ``segmentation`` for (N, K, H, W)."""
    if logits.dim() == 2:
        return "classification"
    if logits.dim() == 4:
        return "segmentation"
    raise ValueError(
        f"the model returned logits of shape {tuple(logits.shape)} (rank {logits.dim()}); expected (N, K) for "
        "classification or (N, K, H, W) for segmentation"
    )


def check_labels(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> Task:
    """Check that labels fit the logits: shape, integer dtype and range [0, K)."""
    task = task_of(logits)
    expected = logits.shape[:1] if task == "classification" else logits.shape[:1] + logits.shape[2:]
    if tuple(y.shape) != tuple(expected):
        raise ValueError(
            f"labels of shape {tuple(y.shape)} do not fit {task} logits of shape {tuple(logits.shape)}; "
            f"expected labels of shape {tuple(expected)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    k = logits.shape[1]
    scored = y[y != ignore_index] if task == "segmentation" else y
    if scored.numel() and (scored.min() < 0 or scored.max() >= k):
        raise ValueError(
            f"labels must lie in [0, {k}) for a model with {k} classes; found values in "
            f"[{int(scored.min())}, {int(scored.max())}]"
        )
    return task


def per_example_loss(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy per example: (N,). For segmentation, the mean over scored pixels."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, y, reduction="none")
    per_pixel = F.cross_entropy(logits, y, reduction="none", ignore_index=ignore_index)
    scored = (y != ignore_index).flatten(1).sum(1).clamp_min(1)
    return per_pixel.flatten(1).sum(1) / scored


def per_example_error(logits: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Fraction of wrong predictions per example: (N,), 0/1 for classification."""
    wrong = (logits.argmax(1) != y).to(logits.dtype)
    if logits.dim() == 2:
        return wrong
    scored = y != ignore_index
    return (wrong * scored).flatten(1).sum(1) / scored.flatten(1).sum(1).clamp_min(1)
