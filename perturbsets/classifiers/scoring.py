"""The downstream task a model solves: classification or per-pixel segmentation.

A classifier returns logits (N, K) and takes labels (N,); a segmentation model returns
logits (N, K, H, W) and takes label maps (N, H, W), where pixels equal to ``ignore_index``
are not scored (e.g. padding, or unlabelled pixels).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Literal

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


def confusion_matrix(prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(K, K) int64 counts: entry [t, p] = number of pixels (or examples) of class t predicted p.

    ``prediction`` and ``target`` have the same shape (any); target pixels equal to
    ``ignore_index`` are left out. One ``bincount``, no loop over classes or pixels.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have the same shape")
    scored = target != ignore_index
    t, p = target[scored].long(), prediction[scored].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}) (ignore_index {ignore_index} aside)")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def mean_iou(confusion: Tensor) -> float:
    """Mean intersection over union of a (K, K) confusion matrix.

    IoU_k = TP_k / (TP_k + FP_k + FN_k) for each class k; the mean is over the classes that
    occur in the target or the prediction (a class absent from both has no defined IoU and
    is left out, as in the PASCAL VOC and Cityscapes evaluations). NaN if nothing is scored.
    """
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    present = union > 0
    if not bool(present.any()):
        return float("nan")
    return float((tp[present] / union[present]).mean())


class Scorer:
    """Accuracy of a stream of (logits, labels) batches; for segmentation also mean IoU.

    Classification: the fraction of correct examples. Segmentation: pixel accuracy over
    all scored pixels of all images (not a mean of per-image accuracies, which would weigh
    the pixels of sparsely labelled images more) and :func:`mean_iou` of the accumulated
    confusion matrix.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.correct = 0
        self.total = 0
        self.examples = 0
        self.confusion: Tensor | None = None

    def update(self, logits: Tensor, y: Tensor) -> None:
        task = check_labels(logits, y, self.ignore_index)
        prediction = logits.argmax(1)
        if task == "classification":
            self.add_predictions(prediction, y)
            return
        self.examples += y.shape[0]
        batch = confusion_matrix(prediction, y, logits.shape[1], self.ignore_index).cpu()
        self.confusion = batch if self.confusion is None else self.confusion + batch
        self.correct += int(batch.diagonal().sum())
        self.total += int(batch.sum())

    @classmethod
    def combined(cls, scorers: Iterable["Scorer"], ignore_index: int = IGNORE_INDEX) -> "Scorer":
        """One Scorer holding the counts and confusion matrices of ``scorers`` (e.g. per batch), added in order."""
        out = cls(ignore_index)
        for part in scorers:
            out.examples += part.examples
            out.correct += part.correct
            out.total += part.total
            if part.confusion is not None:
                out.confusion = part.confusion.clone() if out.confusion is None else out.confusion + part.confusion
        return out

    def add_predictions(self, prediction: Tensor, y: Tensor) -> None:
        """Hard predictions (N,) or (N, H, W), as a smoothed classifier returns them: any value
        that is not a label (the abstention -1) counts as wrong. No mIoU is kept for them."""
        if prediction.shape != y.shape:
            raise ValueError(f"predictions {tuple(prediction.shape)} and labels {tuple(y.shape)} must have the same shape")
        scored = y != self.ignore_index
        self.examples += y.shape[0]
        self.correct += int(((prediction == y) & scored).sum())
        self.total += int(scored.sum())

    @property
    def accuracy(self) -> float:
        if self.total == 0:
            raise ValueError("nothing was scored: no examples, or every pixel carries the ignore index")
        return self.correct / self.total

    @property
    def miou(self) -> float | None:
        return None if self.confusion is None else mean_iou(self.confusion)
