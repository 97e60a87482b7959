"""The residual CVAE for CIFAR-10 common corruptions (paper Appendix E.1, Tables 5–6).

``cifar10_rectangle``: every network keeps the full 32×32 resolution ("rectangle": a
channel bottleneck instead of spatial downsampling, since corruptions are local).

* prior ``x`` / recognition ``cat[x, x̃]``: conv3×3 (→64) → 4 × pre-activation residual
  block 64→16→64 → BN → ReLU → conv3×3 (64→16) → BN → ReLU → flatten (16·32·32) → two
  Linear heads to the latent (512): ``fc1`` the mean, ``fc2`` the log-variance (through the
  bounded scaled tanh of Appendix E.1, with the authors' negative scale).
* generator: ``fc`` Linear(512 → 32·32) reshaped to one 32×32 channel, ``cat[x, z-map]``
  (x first) → conv3×3 (4→64) → 4 × residual block → BN → ReLU → conv3×3 (64→3) → logits;
  :class:`~perturbsets.cvae.CVAE` applies the sigmoid.

Module and parameter names, the ``nn.Sequential`` indices (``encoder.0/1..4/5/7/8``,
``decoder.0/1..4/5/7``; ReLUs occupy indices without keys), convolutions without bias and
BatchNorm defaults follow the authors' state dict
(``shared/reference/state_dicts/cifar10_rectangle.txt``), so their released weights load
with ``load_state_dict`` and give the same outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perturbsets.cvae.model import CVAE, DISTRIBUTIONS, Distribution, logvar_head
from perturbsets.cvae.registry import register_cvae


class ResidualBlock(nn.Module):
    """Pre-activation bottleneck block (He et al., 2016) that keeps the spatial size.

    ``x + conv2(ReLU(BN2(conv1(ReLU(BN1(x))))))`` with conv1 ``channels → mid`` and conv2
    ``mid → channels``, both without bias. Input and output (N, channels, H, W).
    """

    def __init__(self, channels: int, mid: int, kernel: int, padding: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, mid, kernel, padding=padding, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, channels, kernel, padding=padding, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # In place where autograd allows it (BatchNorm's backward needs its input, not its
        # output; a convolution's needs its input, not its output): fewer fresh activations
        # per step, which on the CPU are page faults.
        h = self.conv1(torch.relu_(self.bn1(x)))
        h = self.conv2(torch.relu_(self.bn2(h)))
        return h.add_(x)


def _trunk(in_channels: int, out_channels: int, nblocks: int, big_ch: int, small_ch: int, kernel: int, padding: int, *, final_bn: bool) -> nn.Sequential:
    """conv (in → big) → nblocks residual blocks → BN → ReLU → conv (big → out) [→ BN → ReLU].

    The encoders end with BN → ReLU after the last convolution; the decoder does not.
    """
    layers: list[nn.Module] = [nn.Conv2d(in_channels, big_ch, kernel, padding=padding, bias=False)]
    layers += [ResidualBlock(big_ch, small_ch, kernel, padding) for _ in range(nblocks)]
    layers += [nn.BatchNorm2d(big_ch), nn.ReLU(inplace=True), nn.Conv2d(big_ch, out_channels, kernel, padding=padding, bias=False)]
    if final_bn:
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RectangleEncoder(nn.Module):
    """Prior (one input) or recognition (two inputs) network of ``cifar10_rectangle``.

    Inputs (N, C, H, W) each, concatenated on channels in the order given (x first);
    returns (mean, logvar), each (N, latent_dim).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int,
        nblocks: int,
        big_ch: int,
        small_ch: int,
        kernel: int,
        padding: int,
        logvar: str,
    ) -> None:
        super().__init__()
        self.encoder = _trunk(in_channels, small_ch, nblocks, big_ch, small_ch, kernel, padding, final_bn=True)
        features = small_ch * image_size[0] * image_size[1]
        self.fc1 = nn.Linear(features, latent_dim)
        self.fc2 = nn.Linear(features, latent_dim)
        self.logvar_act = logvar_head(logvar)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(torch.cat(inputs, dim=1)).flatten(1)
        return self.fc1(h), self.logvar_act(self.fc2(h))


class RectangleGenerator(nn.Module):
    """Generator of ``cifar10_rectangle``: z (N, latent_dim), x (N, C, H, W) → logits (N, C, H, W).

    z is mapped by ``fc`` to a one-channel H×W map, concatenated after x, and decoded.
    """

    def __init__(
        self,
        channels: int,
        image_size: tuple[int, int],
        latent_dim: int,
        nblocks: int,
        big_ch: int,
        small_ch: int,
        kernel: int,
        padding: int,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.fc = nn.Linear(latent_dim, image_size[0] * image_size[1])
        self.decoder = _trunk(channels + 1, channels, nblocks, big_ch, small_ch, kernel, padding, final_bn=False)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        z_map = self.fc(z.flatten(1)).view(-1, 1, *self.image_size)
        return self.decoder(torch.cat([x, z_map], dim=1))


def _positive(**values: int) -> None:
    for key, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"cifar10_rectangle: {key} must be a positive integer, got {value!r}")


@register_cvae("cifar10_rectangle")
def cifar10_rectangle(
    *,
    latent_dim: int = 512,
    nblocks: int = 4,
    big_ch: int = 64,
    small_ch: int = 16,
    kernel: int = 3,
    padding: int = 1,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    distribution: Distribution = "gaussian",
    logvar: str = "scaled_tanh",
) -> CVAE:
    """Residual CVAE for CIFAR-10 common corruptions (Appendix E.1; 34,332,992 parameters).

    The defaults are the authors' configuration (``configs/cifar10_c_rectangle.json``:
    latent 512 — Table 6 says 500 —, 4 blocks, 64/16 channels, 3×3 convolutions with
    padding 1, Gaussian output, scaled-tanh log-variance). Every convolution must keep the
    spatial size (``kernel == 2 * padding + 1``), because the heads flatten the full map.
    """
    # Validate everything before allocating the 34M parameters.
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"cifar10_rectangle: unknown distribution {distribution!r}; use one of {DISTRIBUTIONS}")
    logvar_head(logvar)
    _positive(latent_dim=latent_dim, big_ch=big_ch, small_ch=small_ch, kernel=kernel)
    if int(nblocks) != nblocks or nblocks < 0:
        raise ValueError(f"cifar10_rectangle: nblocks must be a non-negative integer, got {nblocks!r}")
    if int(padding) != padding or padding < 0 or kernel != 2 * padding + 1:
        raise ValueError(
            f"cifar10_rectangle: the convolutions must keep the spatial size, i.e. kernel == 2 * padding + 1 "
            f"(e.g. kernel=3, padding=1), got kernel={kernel}, padding={padding}"
        )
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"cifar10_rectangle: input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    c, h, w = shape
    arch = {"nblocks": int(nblocks), "big_ch": int(big_ch), "small_ch": int(small_ch), "kernel": int(kernel), "padding": int(padding)}
    return CVAE(
        RectangleEncoder(c, (h, w), int(latent_dim), logvar=logvar, **arch),
        RectangleEncoder(2 * c, (h, w), int(latent_dim), logvar=logvar, **arch),
        RectangleGenerator(c, (h, w), int(latent_dim), **arch),
        input_shape=shape,
        latent_shape=(int(latent_dim),),
        distribution=distribution,
    )
