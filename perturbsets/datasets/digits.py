"""The embedded default data: scikit-learn's 8×8 handwritten digits, laid out like MNIST."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perturbsets._util.checks import non_negative_int

__all__ = ["load_digits"]


def load_digits(canvas: int = 42) -> tuple[Tensor, Tensor]:
    """The embedded default data: scikit-learn's 1,797 real 8×8 handwritten digits, MNIST-style.

    MNIST is not shipped (no network access is assumed), so the MNIST experiments of paper
    Appendix D run on these digits by default. Each 8×8 digit (values 0..16) is scaled to
    [0, 1], resized bilinearly (antialiased) to a 20×20 box and centred in 28×28 with a
    4-pixel zero border, as MNIST normalises digits to a 20×20 box in a 28×28 field (MNIST
    centres by centre of mass; here the box is centred geometrically). Values are clipped
    to [0, 1], then zero-padded to ``canvas`` (42 -> 7 pixels per side, the MNIST-RTS
    canvas; 28 -> no extra padding).

    Args:
        canvas: output side length; >= 28 and ``canvas - 28`` even.

    Returns:
        images (1797, 1, canvas, canvas) float32 in [0, 1]; labels (1797,) int64 in 0..9.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    canvas = non_negative_int(canvas, "canvas")
    if canvas < 28 or (canvas - 28) % 2:
        raise ValueError(
            f"canvas must be >= 28 with canvas - 28 even (equal padding on both sides), got {canvas}; "
            "use 28 for plain MNIST size or 42 for the MNIST-RTS canvas"
        )
    bunch = _sk_load_digits()
    digits = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    box = F.interpolate(digits, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    pad = 4 + (canvas - 28) // 2
    images = F.pad(box.clamp_(0.0, 1.0), (pad, pad, pad, pad))
    return images.contiguous(), torch.from_numpy(bunch.target.astype(np.int64))
