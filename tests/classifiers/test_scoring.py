"""Segmentation scoring: confusion matrix, mean IoU and pixel accuracy against slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from perturbsets.classifiers.scoring import IGNORE_INDEX, Scorer, confusion_matrix, mean_iou


def _maps(seed: int, k: int = 5, shape=(3, 7, 9)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g)
    y = torch.randint(0, k, shape, generator=g)
    y[torch.rand(shape, generator=g) < 0.2] = IGNORE_INDEX
    return logits, y


def test_confusion_matrix_against_a_pixel_loop():
    logits, y = _maps(0)
    pred = logits.argmax(1)
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in zip(y.flatten().tolist(), pred.flatten().tolist()):
        if t != IGNORE_INDEX:
            expected[t, p] += 1
    assert torch.equal(confusion_matrix(pred, y, 5), expected)


def test_mean_iou_against_a_loop_and_sklearn():
    logits, y = _maps(1, k=6)
    pred = logits.argmax(1)
    scored = y != IGNORE_INDEX
    t, p = y[scored].numpy(), pred[scored].numpy()
    ious = []
    for k in range(6):
        inter = np.sum((t == k) & (p == k))
        union = np.sum((t == k) | (p == k))
        if union:
            ious.append(inter / union)
    ours = mean_iou(confusion_matrix(pred, y, 6))
    assert ours == pytest.approx(np.mean(ious))
    present = sorted(set(t) | set(p))
    assert ours == pytest.approx(jaccard_score(t, p, labels=present, average="macro"))


def test_mean_iou_is_not_the_bitwise_version():
    """The authors' "mIoU" used bitwise AND/OR of class indices (defect 12): 2 & 1 == 0 would count as no overlap."""
    y = torch.tensor([[2, 2, 1, 1]])
    pred = torch.tensor([[2, 2, 1, 3]])
    assert mean_iou(confusion_matrix(pred, y, 4)) == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_scorer_accumulates_pixels_over_batches():
    scorer = Scorer()
    all_logits, all_y = [], []
    for seed in range(3):
        logits, y = _maps(seed + 10)
        scorer.update(logits, y)
        all_logits.append(logits)
        all_y.append(y)
    logits, y = torch.cat(all_logits), torch.cat(all_y)
    scored = y != IGNORE_INDEX
    assert scorer.accuracy == pytest.approx(float((logits.argmax(1) == y)[scored].float().mean()))
    assert scorer.miou == pytest.approx(mean_iou(confusion_matrix(logits.argmax(1), y, 5)))
    assert scorer.examples == 9


def test_scorer_classification_has_no_miou():
    scorer = Scorer()
    scorer.update(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    assert scorer.accuracy == 0.5 and scorer.miou is None


def test_scorer_refuses_everything_ignored_and_bad_labels():
    scorer = Scorer()
    scorer.update(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), IGNORE_INDEX))
    with pytest.raises(ValueError, match="nothing was scored"):
        scorer.accuracy
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        scorer.update(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 7))
    assert np.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.int64)))
