"""The tensors a :class:`~perturbsets.pairs.paired.PairedData` is built from: checked, laid out, decoded.

Images are (N, C, H, W) float32 in the declared value range or uint8 (0..255, decoded to
[0, 1] one batch at a time). Stored perturbations get the image-major layout of
:func:`~perturbsets.pairs.splits.pair_layout`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perturbsets._util.checks import as_index, as_tensor, check_tensor_values, non_negative_int, positive_int
from perturbsets.pairs.splits import pair_layout
from perturbsets.perturbations import Perturbation

__all__ = [
    "as_images",
    "decode",
    "check_labels",
    "check_class_indices",
    "check_perturbation",
    "stored_pairs",
    "stack_perturbed",
    "fixed_perturbations",
]


def as_images(value: Any, name: str) -> Tensor:
    """Validate an (N, C, H, W) image tensor; floats become float32, uint8 is kept."""
    t = as_tensor(value, name)
    if t.dim() != 4:
        raise ValueError(
            f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}; "
            "for single-channel (N, H, W) data add the channel axis with [:, None]"
        )
    if t.dtype == torch.uint8:
        return t
    if t.dtype.is_floating_point:
        return t.float()
    raise ValueError(f"{name} must be float (values in value_range) or uint8 (0..255), got dtype {t.dtype}")


def decode(t: Tensor) -> Tensor:
    """Stored images -> float32; uint8 maps 0..255 onto [0, 1]."""
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def check_labels(labels: Any, n: int) -> Tensor | None:
    """Optional (N,) integer labels (class indices >= 0) as int64."""
    if labels is None:
        return None
    labels = as_tensor(labels, "labels")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match {n} images, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return check_class_indices(labels.long())


def check_class_indices(labels: Tensor, ignore_index: int | None = None) -> Tensor:
    """``labels`` after checking that they are class indices >= 0 (or ``ignore_index``, for label maps).

    A negative class would otherwise pass until the loss, where torch rejects it with an
    index error (or, on CUDA, a device-side assert).
    """
    bad = labels < 0
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        allowed = "" if ignore_index is None else f" (or {ignore_index}, the ignore index of unlabelled pixels)"
        raise ValueError(
            f"labels must be class indices 0..K-1{allowed}, found {int(bad.sum())} negative value(s) "
            f"(e.g. {int(labels[bad][0])}); map the classes onto 0..K-1, or leave out the unlabelled examples"
        )
    return labels


def check_perturbation(perturbation: Any) -> None:
    if not callable(perturbation):
        raise ValueError(f"perturbation must be callable as perturbation(x, generator), got {perturbation!r}")


def stored_pairs(
    images: Tensor, perturbed: Any, owner: Any, value_range: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    """(perturbed, pair_ids, offsets) of M stored perturbations of the N ``images``.

    ``owner`` (M,) maps each perturbed image to its clean image; None means one
    perturbation per image, in order.
    """
    n = images.shape[0]
    perturbed = as_images(perturbed, "perturbed")
    if perturbed.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"images have shape (C, H, W) = {tuple(images.shape[1:])} but perturbed have "
            f"{tuple(perturbed.shape[1:])}; each perturbed image must match its clean image"
        )
    m = perturbed.shape[0]
    if m == 0:
        raise ValueError("perturbed is empty (M = 0); pass at least one perturbed image")
    check_tensor_values(perturbed, "perturbed", value_range)
    if owner is None:
        if m != n:
            raise ValueError(
                f"got {m} perturbed images for {n} images; pass owner= (M,) mapping each perturbed image "
                "to its clean image, or use PairedData.from_tensors with shape (N, K, C, H, W)"
            )
        owner = torch.arange(n)
    owner = as_index(owner, "owner")
    if owner.shape[0] != m:
        raise ValueError(f"owner must have shape ({m},) to match {m} perturbed images, got {tuple(owner.shape)}")
    bad = (owner < 0) | (owner >= n)
    if bool(bad.any()):
        raise ValueError(
            f"owner has {int(bad.sum())} index(es) outside [0, {n - 1}] (e.g. {int(owner[bad][0])}); "
            f"owner[j] must index one of the {n} images"
        )
    pair_ids, offsets = pair_layout(owner, n)
    return perturbed, pair_ids, offsets


def stack_perturbed(images: Tensor, perturbed: Any) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) or (N, K, C, H, W) perturbations of ``images`` as (N·K, C, H, W) and their (N·K,) owners."""
    perturbed_t = as_tensor(perturbed, "perturbed")
    n = images.shape[0]
    if perturbed_t.dim() not in (4, 5):
        raise ValueError(f"perturbed must have shape (N, C, H, W) or (N, K, C, H, W), got {tuple(perturbed_t.shape)}")
    if perturbed_t.shape[0] != n or perturbed_t.shape[-3:] != images.shape[1:]:
        expected = f"({n}, C, H, W) or ({n}, K, C, H, W) with (C, H, W) = {tuple(images.shape[1:])}"
        raise ValueError(f"images have shape {tuple(images.shape)} so perturbed must be {expected}, "
                         f"got {tuple(perturbed_t.shape)}")
    k = 1 if perturbed_t.dim() == 4 else perturbed_t.shape[1]
    if k == 0:
        raise ValueError("perturbed has K = 0 perturbations per image; pass at least one")
    owner = torch.arange(n).repeat_interleave(k)
    return perturbed_t.reshape(n * k, *perturbed_t.shape[-3:]), owner


def fixed_perturbations(
    images: Any,
    perturbation: Perturbation,
    k: int,
    seed: int,
    batch_size: int,
    value_range: tuple[float, float],
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """(images, (N, k, C, H, W) perturbations) drawn once, as ``PairedData.with_fixed_perturbations`` documents."""
    k = positive_int(k, "k")
    seed = non_negative_int(seed, "seed")
    batch_size = positive_int(batch_size, "batch_size")
    check_perturbation(perturbation)
    images_t = as_images(images, "images")
    n = images_t.shape[0]
    if n == 0:
        raise ValueError("images is empty (N = 0); a PairedData needs at least one image")
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out = torch.empty((n, k, *images_t.shape[1:]), dtype=images_t.dtype)
    for start in range(0, n, batch_size):
        x = decode(images_t[start : start + batch_size].to(device))
        for r in range(k):
            x_tilde = perturbation(x, gen)
            if x_tilde.shape != x.shape:
                raise ValueError(
                    f"perturbation returned shape {tuple(x_tilde.shape)} for a batch of shape {tuple(x.shape)}"
                )
            if images_t.dtype == torch.uint8:
                # Check before quantising: rounding would otherwise hide bad values.
                check_tensor_values(x_tilde, "perturbation output", value_range)
                x_tilde = x_tilde.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
            out[start : start + batch_size, r] = x_tilde.cpu()
    return images_t, out
