"""Ground-truth perturbations applied to image batches (paper Appendix D.1).

The MNIST benchmarks of the paper learn two mathematically defined perturbation sets, so
that the learned set can be compared with the truth:

* **ℓ∞ noise** (:func:`linf_noise`, :class:`LinfNoise`): ``x + U(-ε, ε)`` i.i.d. per
  element, clamped to the value range (MNIST: ε = 0.3, range [0, 1]).
* **RTS** (:func:`rts`, :class:`RTS`): rotation uniform in ±45°, isotropic scale uniform in
  [0.7, 1.3] and a random placement in a 42×42 canvas (Jaderberg et al., 2015).

Every function acts on a whole batch ``x`` of shape (N, C, H, W) at once, on whatever
device ``x`` lives on. Random numbers are drawn on ``x.device``; pass a
:class:`torch.Generator` created on that device to make the result reproducible.

The callable dataclasses :class:`LinfNoise` and :class:`RTS` share the interface
``perturbation(x, generator=None) -> x_tilde`` and can be built by name from a config with
:func:`build_perturbation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from perturbsets._util.checks import check_value_range, positive_finite
from perturbsets._util.registry import Registry
from perturbsets.geometry import affine_warp

__all__ = [
    "Perturbation",
    "linf_noise",
    "RTSParams",
    "sample_rts_params",
    "affine_theta",
    "apply_affine",
    "rts",
    "LinfNoise",
    "RTS",
    "PERTURBATIONS",
    "build_perturbation",
]


class Perturbation(Protocol):
    """A batched, seeded perturbation: ``(x, generator) -> x_tilde``.

    ``x`` is (N, C, H, W) floating point; the result has the same shape, dtype and device.
    ``generator`` is ``None`` (use torch's global RNG) or a generator on ``x.device``.
    Implementations must not modify ``x`` in place: callers keep ``x`` as the clean half
    of the pair.
    """

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


# --------------------------------------------------------------------------- validation


def _check_batch(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} expects a torch.Tensor, got {type(x).__name__}; convert with torch.as_tensor(...)")
    if x.dim() != 4:
        raise ValueError(
            f"{what} expects a batch of shape (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}; "
            "add the missing dimensions, e.g. x[None] for a single image or x[:, None] for (N, H, W)"
        )
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"{what} expects floating-point images, got dtype {x.dtype}; convert first, e.g. x.float() / 255 for uint8"
        )


def _check_generator(generator: torch.Generator | None, device: torch.device, what: str) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"{what}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if torch.device(generator.device).type != torch.device(device).type:
        raise ValueError(
            f"{what}: generator lives on {generator.device} but the data is on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def _check_rts_ranges(angle: float, scale: Any, translate: float) -> tuple[float, tuple[float, float], float]:
    angle, translate = float(angle), float(translate)
    if not (math.isfinite(angle) and angle >= 0):
        raise ValueError(f"rts: angle is the half-width of the rotation range in degrees and must be >= 0, got {angle}")
    try:
        s_lo, s_hi = (float(s) for s in scale)
    except (TypeError, ValueError):
        raise ValueError(f"rts: scale must be a pair (min, max), got {scale!r}") from None
    if not (math.isfinite(s_lo) and math.isfinite(s_hi) and 0 < s_lo <= s_hi):
        raise ValueError(
            f"rts: scale range must satisfy 0 < min <= max, got ({s_lo}, {s_hi}); "
            "pass it as (min, max), e.g. scale=(0.7, 1.3)"
        )
    if not (math.isfinite(translate) and translate >= 0):
        raise ValueError(f"rts: translate is the maximal shift in pixels and must be >= 0, got {translate}")
    return angle, (s_lo, s_hi), translate


# --------------------------------------------------------------------------- ℓ∞ noise


def linf_noise(
    x: Tensor,
    epsilon: float = 0.3,
    generator: torch.Generator | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Uniform ℓ∞ noise (paper Appendix D.1, "ℓ∞ details").

    Args:
        x: (N, C, H, W) floating-point images with values in ``value_range``.
        epsilon: noise radius ε > 0; every element moves by U(-ε, ε) independently.
        generator: optional generator on ``x.device`` for reproducible noise.
        value_range: (low, high) the result is clamped to.

    Returns:
        (N, C, H, W) tensor with the dtype and device of ``x``; ``|x_tilde - x| <= ε``
        element-wise and values in ``value_range``.
    """
    _check_batch(x, "linf_noise")
    _check_generator(generator, x.device, "linf_noise")
    epsilon = positive_finite(epsilon, "linf_noise: epsilon")
    lo, hi = check_value_range(value_range, "linf_noise")
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * epsilon).clamp_(lo, hi)


# --------------------------------------------------------------------------- RTS


@dataclass(frozen=True)
class RTSParams:
    """Per-image parameters of a rotation–scale–translation about the image centre.

    The forward map in pixel coordinates (x to the right, y downwards, origin at the
    image centre) is ``p_out = scale * R(angle) p_in + translate`` where a positive angle
    rotates counter-clockwise *as displayed* (the torchvision/PIL convention).

    Attributes:
        angle_deg: (N,) rotation angles in degrees.
        scale: (N,) isotropic scale factors (> 0; > 1 enlarges).
        translate: (N, 2) shifts ``(tx, ty)`` in pixels; positive ``tx`` moves content
            right, positive ``ty`` moves it down.
    """

    angle_deg: Tensor
    scale: Tensor
    translate: Tensor

    def __post_init__(self) -> None:
        n = self.angle_deg.shape[0] if self.angle_deg.dim() == 1 else -1
        if (
            self.angle_deg.dim() != 1
            or self.scale.shape != (n,)
            or self.translate.shape != (n, 2)
        ):
            raise ValueError(
                "RTSParams expects angle_deg (N,), scale (N,) and translate (N, 2), got "
                f"{tuple(self.angle_deg.shape)}, {tuple(self.scale.shape)} and {tuple(self.translate.shape)}"
            )
        if not bool((self.scale > 0).all()):
            raise ValueError("RTSParams: every scale must be > 0 (a zero or negative scale is not invertible)")

    def __len__(self) -> int:
        return self.angle_deg.shape[0]


def sample_rts_params(
    n: int,
    angle: float = 45.0,
    scale: tuple[float, float] = (0.7, 1.3),
    translate: float = 7.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> RTSParams:
    """Draw ``n`` independent RTS parameter sets (float32, on ``device``).

    Angle ~ U[-angle, angle] degrees, scale ~ U[scale[0], scale[1]], and each of ``tx``,
    ``ty`` ~ U[-translate, translate] pixels (continuous).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"sample_rts_params: n must be a non-negative int, got {n!r}")
    angle, (s_lo, s_hi), translate = _check_rts_ranges(angle, scale, translate)
    device = torch.device(device)
    _check_generator(generator, device, "sample_rts_params")
    # One draw of 4 numbers per image keeps each image's parameters independent of n.
    u = torch.rand((n, 4), generator=generator, device=device, dtype=torch.float32)
    return RTSParams(
        angle_deg=(2 * u[:, 0] - 1) * angle,
        scale=s_lo + (s_hi - s_lo) * u[:, 1],
        translate=(2 * u[:, 2:] - 1) * translate,
    )


def affine_theta(params: RTSParams, height: int, width: int) -> Tensor:
    """(N, 2, 3) ``affine_grid`` matrices for ``params`` on an H×W image.

    ``affine_grid`` needs the *inverse* map (output location -> input location) in
    normalised coordinates, where ``align_corners=False`` places pixel centre ``j`` at
    ``(2j + 1) / W - 1``. Relative to the image centre this is ``p = D u`` with
    ``D = diag(W/2, H/2)``, so the pixel-space inverse ``p_in = R^T (p_out - t) / s``
    becomes ``u_in = D^-1 R^T D u_out / s - D^-1 R^T t / s``. Conjugating by ``D`` keeps the
    rotation a true rotation in pixel space when H != W.
    """
    rad = torch.deg2rad(params.angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    inv_s = 1.0 / params.scale
    tx, ty = params.translate[:, 0], params.translate[:, 1]
    # R = [[cos, sin], [-sin, cos]] is counter-clockwise on screen because y points down.
    row_x = [cos * inv_s, -sin * inv_s * (height / width), -(cos * tx - sin * ty) * inv_s * (2 / width)]
    row_y = [sin * inv_s * (width / height), cos * inv_s, -(sin * tx + cos * ty) * inv_s * (2 / height)]
    return torch.stack([torch.stack(row_x, -1), torch.stack(row_y, -1)], dim=1)


def apply_affine(x: Tensor, params: RTSParams) -> Tensor:
    """Apply known RTS parameters to a batch.

    Args:
        x: (N, C, H, W) floating-point images (any value range).
        params: N parameter sets, one per image.

    Returns:
        (N, C, H, W) tensor (same dtype/device): bilinear resampling, content moved out of
        the frame is lost and uncovered pixels are 0 (``padding_mode="zeros"``).
    """
    _check_batch(x, "apply_affine")
    if len(params) != x.shape[0]:
        raise ValueError(f"apply_affine: got {len(params)} parameter sets for a batch of {x.shape[0]} images")
    if x.shape[0] == 0:
        return x.clone()
    theta = affine_theta(params, x.shape[-2], x.shape[-1]).to(device=x.device, dtype=x.dtype)
    return affine_warp(x, theta.unsqueeze(1))


def rts(
    x: Tensor,
    angle: float = 45.0,
    scale: tuple[float, float] = (0.7, 1.3),
    translate: float = 7.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random rotation–scale–translation (paper Appendix D.1, "RTS details").

    Each image gets its own rotation ~ U[-angle, angle] degrees about the image centre,
    scale ~ U[scale], and shift (tx, ty) ~ U[-translate, translate]² pixels, applied with a
    single bilinear ``grid_sample`` over the whole batch (zeros outside the frame).

    ``x`` must already sit on its canvas: for MNIST-RTS that is 42×42 (a 28×28 digit padded
    by 7), so a shift of up to 7 pixels never pushes the unscaled digit out of frame.

    Differences from the authors' pipeline (PIL ``RandomAffine`` with nearest
    interpolation, then ``RandomCrop(42, padding=7)``, output quantised to 1/255): the
    shift here is continuous instead of an integer in {-7..7}, interpolation is bilinear,
    and the output is not quantised. The distribution of poses is otherwise the same.

    Args:
        x: (N, C, H, W) floating-point images (any H, W; any value range).
        angle: rotation half-range in degrees (>= 0).
        scale: (min, max) with 0 < min <= max.
        translate: maximal shift per axis in pixels (>= 0).
        generator: optional generator on ``x.device``.

    Returns:
        (N, C, H, W) tensor with the dtype and device of ``x``.
    """
    _check_batch(x, "rts")
    params = sample_rts_params(x.shape[0], angle, scale, translate, generator=generator, device=x.device)
    return apply_affine(x, params)


# --------------------------------------------------------------------------- config objects


@dataclass
class LinfNoise:
    """Callable config for :func:`linf_noise` (MNIST setting of Appendix D.1: ε = 0.3 on [0, 1]).

    ``noise(x, generator) -> x̃``: x (N, C, H, W) in ``value_range``; x̃ the same shape, with
    ‖x̃ − x‖∞ ≤ ε and clipped to the range.

    Example::

        noise = LinfNoise(epsilon=0.3)
        x_tilde = noise(x, torch.Generator().manual_seed(0))
    """

    epsilon: float = 0.3
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        # Validate at construction so a bad config fails before any training starts;
        # YAML gives lists, which are normalised to tuples.
        self.epsilon = positive_finite(self.epsilon, "LinfNoise: epsilon")
        self.value_range = check_value_range(self.value_range, "LinfNoise")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W); see :func:`linf_noise`."""
        return linf_noise(x, self.epsilon, generator=generator, value_range=self.value_range)


@dataclass
class RTS:
    """Callable config for :func:`rts` (MNIST-RTS of Appendix D.2: ±45°, scale [0.7, 1.3], ±7 px on 42×42).

    ``transform(x, generator) -> x̃``: a random rotation, scaling and translation per image
    of x (N, C, H, W), bilinear, zero padding.

    Example::

        x_tilde = RTS()(x, torch.Generator().manual_seed(0))   # x (N, 1, 42, 42)
        data = PairedData(x, labels, perturbation=RTS())         # fresh RTS pairs every epoch
    """

    angle: float = 45.0
    scale: tuple[float, float] = (0.7, 1.3)
    translate: float = 7.0

    def __post_init__(self) -> None:
        self.angle, self.scale, self.translate = _check_rts_ranges(self.angle, self.scale, self.translate)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W); see :func:`rts`."""
        return rts(x, self.angle, self.scale, self.translate, generator=generator)


PERTURBATIONS = Registry("perturbation")
PERTURBATIONS.update({"linf": LinfNoise, "rts": RTS})


def build_perturbation(name: str, **kwargs: Any) -> Perturbation:
    """Build a registered perturbation from its config name and keyword arguments.

    Example: ``build_perturbation("rts", angle=30, scale=[0.8, 1.2])``.

    Raises:
        ValueError: unknown ``name`` (with the nearest valid name suggested), unknown
            keyword arguments (with the valid ones listed), or invalid values.
    """
    return PERTURBATIONS.build(str(name), **kwargs)
