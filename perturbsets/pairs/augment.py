"""Joint augmentation of pairs: the same random transform on both images of every pair.

A joint augmentation is a callable ``augment(x, x_tilde, generator[, labels=y])`` on
batches; :func:`augmented_batches` applies one to a stream of batches, which is how every
pair source augments its training batches (``PairSource.with_augment``).

:class:`JointCropFlip` is the pad / random-crop / horizontal-flip augmentation of paper
Appendices E.1 and F.1, applied identically to both images of a pair. The authors' version
silently returned its inputs unchanged (defect 13); this one is tested to move pixels.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from perturbsets._util.checks import int_or_none, non_negative_int, positive_int
from perturbsets._util.seeding import DataStream, epoch_generator
from perturbsets.classifiers.scoring import IGNORE_INDEX
from perturbsets.pairs.batch import PairBatch

__all__ = ["JointAugmentation", "augmented_batches", "check_augment", "JointCropFlip"]

# (x, x_tilde, generator[, labels=y]) -> (x_aug, x_tilde_aug[, y_aug]), all batched (B, ...).
JointAugmentation = Callable[..., "tuple[Tensor, ...]"]


def check_augment(augment: Any) -> JointAugmentation | None:
    """``augment`` if it is None or callable, else a ValueError."""
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be callable as augment(x, x_tilde, generator), got {augment!r}")
    return augment


def augmented_batches(
    batches: Iterator[PairBatch], augment: JointAugmentation, seed: int, epoch: int, device: torch.device
) -> Iterator[PairBatch]:
    """Apply a joint augmentation to every batch, with draws seeded by (seed, epoch).

    Label maps (y of shape (B, H, W)) go through the augmentation with the images
    (``augment(x, x_tilde, generator, labels=y)`` returns the three); one label per example
    is left as it is.
    """
    gen = epoch_generator(seed, epoch, DataStream.AUGMENT, device)
    for batch in batches:
        y = batch.y
        if y is not None and y.dim() == 3:
            x, x_tilde, y = augment(batch.x, batch.x_tilde, gen, labels=y)
        else:
            x, x_tilde = augment(batch.x, batch.x_tilde, gen)
        if x.shape != x_tilde.shape:
            raise ValueError(f"augment returned shapes {tuple(x.shape)} and {tuple(x_tilde.shape)}; both halves must match")
        yield PairBatch(x=x, x_tilde=x_tilde, y=y, index=batch.index)


def _pair_of_ints(value: Any, name: str) -> tuple[int, int]:
    if int_or_none(value) is not None:
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}") from None
    return positive_int(a, name), positive_int(b, name)


class JointCropFlip:
    """Zero-pad, random crop and random horizontal flip, shared by x and x̃ of each pair.

    The standard CIFAR-10 augmentation (paper Appendix E.1: ``pad=4, crop=(32, 32)``;
    Multi-Illumination, Appendix F.1: pad 10/20/40 at MIP5/4/3). Each pair gets its own
    crop offset and flip, and both of its images get exactly the same ones, so the pair
    stays pixel-aligned. The whole batch is cropped by one ``torch.gather``.

    Args:
        pad: zero padding added on every side (>= 0).
        crop: output (height, width) (an int for a square); ``None`` keeps the input size.
            Must fit in the padded image.
        flip: flip each pair horizontally with probability ½.
        fill: value of the padding (0 = black, as torchvision's zero padding).

    Call ``aug(x, x_tilde, generator)`` with (B, C, H, W) tensors (x_tilde may have a
    different C) -> the augmented pair; ``aug(x, x_tilde, generator, labels=y)`` with
    (B, H, W) label maps also crops and flips them (padding -> ``IGNORE_INDEX``).
    :meth:`draw` and :meth:`apply` split the random draw from its application (e.g. to
    apply the same crop to a label map).
    """

    def __init__(self, pad: int = 4, crop: int | tuple[int, int] | None = (32, 32), flip: bool = True, fill: float = 0.0) -> None:
        self.pad = non_negative_int(pad, "pad")
        self.crop = None if crop is None else _pair_of_ints(crop, "crop")
        self.flip = bool(flip)
        self.fill = float(fill)

    def __repr__(self) -> str:
        return f"JointCropFlip(pad={self.pad}, crop={self.crop}, flip={self.flip})"

    def _crop_size(self, height: int, width: int) -> tuple[int, int]:
        ch, cw = (height, width) if self.crop is None else self.crop
        if ch > height + 2 * self.pad or cw > width + 2 * self.pad:
            raise ValueError(
                f"crop {ch}x{cw} does not fit in {height}x{width} images padded by {self.pad} "
                f"({height + 2 * self.pad}x{width + 2 * self.pad})"
            )
        return ch, cw

    def draw(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Random (top, left, flip), each (batch,): crop offsets in the padded image and flags."""
        ch, cw = self._crop_size(height, width)
        top = torch.randint(height + 2 * self.pad - ch + 1, (batch,), generator=generator, device=device)
        left = torch.randint(width + 2 * self.pad - cw + 1, (batch,), generator=generator, device=device)
        if self.flip:
            flip = torch.rand(batch, generator=generator, device=device) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=device)
        return top, left, flip

    def _source_index(self, b: int, h: int, w: int, top: Tensor, left: Tensor, flip: Tensor, device) -> tuple[Tensor, Tensor]:
        """(B, ch·cw) flat source pixel of every output pixel, and (B, ch, cw) whether it lies in the image."""
        ch, cw = self._crop_size(h, w)
        top, left, flip = top.to(device), left.to(device), flip.to(device)
        # Source row/column of every output pixel in the *unpadded* image; the padding is
        # never materialised: out-of-image positions are filled afterwards.
        rows = top[:, None] + torch.arange(ch, device=device) - self.pad  # (B, ch)
        base = torch.arange(cw, device=device)
        cols = torch.where(flip[:, None], cw - 1 - base, base) + left[:, None] - self.pad  # (B, cw)
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
        return flat.reshape(b, ch * cw), inside

    def apply(
        self, x: Tensor, x_tilde: Tensor, top: Tensor, left: Tensor, flip: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """Crop ``[top, top+h) × [left, left+w)`` of each zero-padded pair, then flip where ``flip``.

        ``labels`` (B, H, W) label maps, if given, get the same crop and flip, with
        :data:`~perturbsets.classifiers.scoring.IGNORE_INDEX` in the padding: padded pixels are never
        scored (the authors padded material maps with 0, the real class "Brick", defect 19).
        Returns ``(x, x_tilde)``, or ``(x, x_tilde, labels)`` when labels are given.
        """
        if x.dim() != 4 or x_tilde.dim() != 4:
            raise ValueError(f"JointCropFlip takes (B, C, H, W) batches, got {tuple(x.shape)} and {tuple(x_tilde.shape)}")
        b, c1, h, w = x.shape
        if (x_tilde.shape[0], *x_tilde.shape[2:]) != (b, h, w):
            raise ValueError(f"x {tuple(x.shape)} and x_tilde {tuple(x_tilde.shape)} must share batch size, height and width")
        if labels is not None and tuple(labels.shape) != (b, h, w):
            raise ValueError(f"labels {tuple(labels.shape)} must be (B, H, W) = ({b}, {h}, {w}) to match the images")
        ch, cw = self._crop_size(h, w)
        flat, inside = self._source_index(b, h, w, top, left, flip, x.device)
        both = torch.cat([x, x_tilde.to(x.dtype)], 1).reshape(b, c1 + x_tilde.shape[1], h * w)
        out = torch.gather(both, 2, flat[:, None].expand(-1, both.shape[1], -1))
        out = out.view(b, -1, ch, cw).masked_fill(~inside[:, None], self.fill)
        if labels is None:
            return out[:, :c1], out[:, c1:].to(x_tilde.dtype)
        inside_l = inside.to(labels.device)
        labels = labels.long()  # IGNORE_INDEX (-100) must fit the padding
        cropped = torch.gather(labels.reshape(b, h * w), 1, flat.to(labels.device)).view(b, ch, cw)
        return out[:, :c1], out[:, c1:].to(x_tilde.dtype), cropped.masked_fill(~inside_l, IGNORE_INDEX)

    def __call__(
        self, x: Tensor, x_tilde: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f"JointCropFlip takes (B, C, H, W) batches, got {tuple(x.shape)}")
        top, left, flip = self.draw(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
        return self.apply(x, x_tilde, top, left, flip, labels)
