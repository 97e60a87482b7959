"""CVAE architectures for MNIST-scale images (paper Appendix D.1).

* ``mnist_fc``: fully connected, for ℓ∞ noise on 28×28 digits.
* ``mnist_conv``: convolutional, for ℓ∞ noise; its latent is a 128×7×7 feature map.
* ``mnist_stn``: the rotation–translation–scale (RTS) model on the 42×42 canvas, whose
  generator warps the conditioning image with five parallel spatial transformers.

Module and parameter names follow the authors' state dicts exactly (see
``shared/reference/state_dicts/mnist_*.txt``), as do the conventions that change outputs:
conditioning image first in every concatenation, border padding and
``align_corners=False`` in the spatial transformers. The log-variance head is the bounded
scaled tanh of Appendix E.1 by default; ``logvar="linear"`` gives the authors' unbounded
MNIST heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbsets.cvae.model import CVAE, Distribution, logvar_head
from perturbsets.cvae.registry import register_cvae
from perturbsets.geometry import affine_warp


def _flat_cat(*tensors: Tensor) -> Tensor:
    return torch.cat([t.flatten(1) for t in tensors], dim=1)


class FCEncoder(nn.Module):
    """Prior (one input) or recognition (two inputs) network of ``mnist_fc``.

    Inputs (N, C, H, W) each, flattened and concatenated → Linear → ReLU → two Linear heads.
    Returns (mean, logvar), each (N, latent_dim).
    """

    def __init__(self, in_features: int, hidden: int, latent_dim: int, logvar: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.logvar_act = logvar_head(logvar)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(_flat_cat(*inputs)))
        return self.fc21(h), self.logvar_act(self.fc22(h))


class FCGenerator(nn.Module):
    """Generator of ``mnist_fc``: cat[x, z] → Linear → ReLU → Linear → logits (N, C, H, W)."""

    def __init__(self, input_shape: tuple[int, int, int], hidden: int, latent_dim: int) -> None:
        super().__init__()
        pixels = input_shape[0] * input_shape[1] * input_shape[2]
        self.input_shape = input_shape
        self.fc3 = nn.Linear(pixels + latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, pixels)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        h = F.relu(self.fc3(_flat_cat(x, z)))
        return self.fc4(h).view(-1, *self.input_shape)


class ConvEncoder(nn.Module):
    """Prior / recognition network of ``mnist_conv``.

    conv3×3 (→32) → ReLU → maxpool → conv3×3 (→64) → ReLU → maxpool → two conv3×3 heads
    (→128). Inputs are concatenated on channels. Returns (mean, logvar), each
    (N, 128, H/4, W/4).
    """

    def __init__(self, in_channels: int, logvar: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv31 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv32 = nn.Conv2d(64, 128, 3, padding=1)
        self.logvar_act = logvar_head(logvar)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        h = F.max_pool2d(F.relu(self.conv1(torch.cat(inputs, dim=1))), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.conv31(h), self.logvar_act(self.conv32(h))


class ConvGenerator(nn.Module):
    """Generator of ``mnist_conv``.

    x is downsampled by strided 1×1 convolutions to 1/4 and 1/2 size and concatenated
    (first) with the feature map before each 3×3 convolution; nearest-neighbour ×2
    upsampling between them. z: (N, 128, H/4, W/4); returns logits (N, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.downsample3 = nn.Conv2d(channels, channels, 1, stride=4)
        self.downsample4 = nn.Conv2d(channels, channels, 1, stride=2)
        self.conv3 = nn.Conv2d(channels + 128, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(channels + 64, 32, 3, padding=1)
        self.conv5 = nn.Conv2d(channels + 32, channels, 3, padding=1)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        h = F.relu(self.conv3(torch.cat([self.downsample3(x), z], dim=1)))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.relu(self.conv4(torch.cat([self.downsample4(x), h], dim=1)))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv5(torch.cat([x, h], dim=1))


class Block(nn.Module):
    """Pre-activation block: (BN → ReLU → reflection pad 2 → conv5×5) twice, no residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Registration order follows the authors' state dict (convolutions first).
        self.conv1 = nn.Conv2d(channels, channels, 5)
        self.conv2 = nn.Conv2d(channels, channels, 5)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.pad(torch.relu_(self.bn1(x)), (2, 2, 2, 2), mode="reflect"))
        return self.conv2(F.pad(torch.relu_(self.bn2(h)), (2, 2, 2, 2), mode="reflect"))


class STNEncoder(nn.Module):
    """Prior / recognition network of ``mnist_stn``: Block → flatten → two Linear heads.

    Inputs (N, C, H, W) concatenated on channels; returns (mean, logvar), each (N, latent_dim).
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], latent_dim: int, logvar: str) -> None:
        super().__init__()
        self.block = Block(in_channels)
        features = in_channels * image_size[0] * image_size[1]
        self.fc31 = nn.Linear(features, latent_dim)
        self.fc32 = nn.Linear(features, latent_dim)
        self.logvar_act = logvar_head(logvar)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        h = self.block(torch.cat(inputs, dim=1)).flatten(1)
        return self.fc31(h), self.logvar_act(self.fc32(h))


class SpatialTransformer(nn.Module):
    """The localisation network of one spatial transformer: a (N, 1, H, W) map → affine maps (N, 2, 3).

    The last layer starts at zero weights and the identity bias, so training starts from
    the identity warp (Jaderberg et al., 2015).
    """

    def __init__(self, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.localization = nn.Sequential(
            nn.Flatten(), nn.Linear(image_size[0] * image_size[1], 512), nn.ReLU(), nn.Linear(512, 128), nn.ReLU()
        )
        self.fc = nn.Linear(128, 6)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, loc_input: Tensor) -> Tensor:
        return self.fc(self.localization(loc_input)).view(-1, 2, 3)


class STNGenerator(nn.Module):
    """Generator of ``mnist_stn`` (Appendix D.1).

    z (N, latent_dim) → Linear → a 1×H×W map that each of the parallel spatial transformers
    reads to warp x; their outputs are concatenated on channels → Block → reflection pad →
    conv5×5 → logits (N, C, H, W).

    With frozen weights (a learned set: no parameter requires a gradient, or gradients are
    off) the two linear maps z → map → first localisation layer are one: their product
    (T·512 × latent_dim) is computed once per weight version and the T transformers' layers
    run as batched matmuls. At 42×42 this replaces T·1764·512 multiply-adds per example by
    T·latent_dim·512 (14× fewer), which is most of the cost of a PGD step or a smoothing
    draw; outputs equal the layer-by-layer ones up to float rounding.
    """

    def __init__(self, channels: int, image_size: tuple[int, int], latent_dim: int, n_transformers: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.fc = nn.Linear(latent_dim, image_size[0] * image_size[1])
        self.stns = nn.ModuleList(SpatialTransformer(image_size) for _ in range(n_transformers))
        self.block = Block(channels * n_transformers)
        self.conv = nn.Conv2d(channels * n_transformers, channels, 5)
        self._folded: tuple[tuple, tuple[Tensor, ...]] | None = None

    def thetas(self, z: Tensor) -> Tensor:
        """The affine maps of the T transformers for latent codes z (N, latent_dim): (N, T, 2, 3)."""
        weights = [self.fc.weight, self.fc.bias]
        for stn in self.stns:
            weights += [p for layer in (stn.localization[1], stn.localization[3], stn.fc) for p in (layer.weight, layer.bias)]
        if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
            loc = self.fc(z).view(-1, 1, *self.image_size)
            return torch.stack([stn(loc) for stn in self.stns], dim=1)
        first_w, first_b, mid_w, mid_b, last_w, last_b = self._fold(weights)
        n, t = z.shape[0], len(self.stns)
        h = F.relu(F.linear(z, first_w, first_b)).view(n, t, -1).transpose(0, 1)  # (T, N, 512)
        h = F.relu(torch.baddbmm(mid_b, h, mid_w))  # (T, N, 128)
        return torch.baddbmm(last_b, h, last_w).transpose(0, 1).reshape(n, t, 2, 3)

    def _fold(self, weights: list[Tensor]) -> tuple[Tensor, ...]:
        # Keyed by storage and in-place version: an optimizer step or load_state_dict
        # changes a version, .to() a storage, and either recomputes the product. Weights
        # made under inference_mode have no version counter: then nothing is cached.
        key = None if any(w.is_inference() for w in weights) else tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights)
        if key is None or self._folded is None or self._folded[0] != key:
            # Normal tensors even when first called under inference_mode, so a later
            # attack (gradients to z) can save them for its backward pass.
            with torch.inference_mode(False), torch.no_grad():
                fc_w, fc_b = weights[0], weights[1]
                w1, b1, w2, b2, w3, b3 = zip(*(weights[2 + 6 * i : 8 + 6 * i] for i in range(len(self.stns))))
                folded = (
                    torch.cat([w @ fc_w for w in w1]),
                    torch.cat([w @ fc_b + b for w, b in zip(w1, b1)]),
                    torch.stack([w.t() for w in w2]),
                    torch.stack(b2).unsqueeze(1),
                    torch.stack([w.t() for w in w3]),
                    torch.stack(b3).unsqueeze(1),
                )
            self._folded = (key, folded)
        return self._folded[1]

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        h = self.block(affine_warp(x, self.thetas(z), padding_mode="border"))
        return self.conv(F.pad(h, (2, 2, 2, 2), mode="reflect"))


def _check_shape(name: str, input_shape, divisor: int = 1) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    if shape[1] % divisor or shape[2] % divisor:
        raise ValueError(f"{name}: height and width must be multiples of {divisor}, got {shape[1:]}")
    return shape


@register_cvae("mnist_fc")
def mnist_fc(
    *,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    hidden: int = 784,
    latent_dim: int = 784,
    distribution: Distribution = "bernoulli",
    logvar: str = "scaled_tanh",
) -> CVAE:
    """Fully connected CVAE for ℓ∞ noise (Appendix D.1): one hidden layer of 784 units."""
    shape = _check_shape("mnist_fc", input_shape)
    pixels = shape[0] * shape[1] * shape[2]
    return CVAE(
        FCEncoder(pixels, hidden, latent_dim, logvar),
        FCEncoder(2 * pixels, hidden, latent_dim, logvar),
        FCGenerator(shape, hidden, latent_dim),
        input_shape=shape,
        latent_shape=(latent_dim,),
        distribution=distribution,
    )


@register_cvae("mnist_conv")
def mnist_conv(
    *,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    distribution: Distribution = "bernoulli",
    logvar: str = "scaled_tanh",
) -> CVAE:
    """Convolutional CVAE for ℓ∞ noise (Appendix D.1); latent 128 × H/4 × W/4."""
    shape = _check_shape("mnist_conv", input_shape, divisor=4)
    c, h, w = shape
    return CVAE(
        ConvEncoder(c, logvar),
        ConvEncoder(2 * c, logvar),
        ConvGenerator(c),
        input_shape=shape,
        latent_shape=(128, h // 4, w // 4),
        distribution=distribution,
    )


@register_cvae("mnist_stn")
def mnist_stn(
    *,
    input_shape: tuple[int, int, int] = (1, 42, 42),
    latent_dim: int = 128,
    n_transformers: int = 5,
    distribution: Distribution = "bernoulli",
    logvar: str = "scaled_tanh",
) -> CVAE:
    """Spatial-transformer CVAE for rotation–translation–scale (Appendix D.1)."""
    shape = _check_shape("mnist_stn", input_shape)
    if shape[1] < 3 or shape[2] < 3:
        raise ValueError(f"mnist_stn: reflection padding needs images of at least 3×3, got {shape[1:]}")
    if n_transformers < 1:
        raise ValueError(f"mnist_stn: n_transformers must be >= 1, got {n_transformers}")
    c, h, w = shape
    return CVAE(
        STNEncoder(c, (h, w), latent_dim, logvar),
        STNEncoder(2 * c, (h, w), latent_dim, logvar),
        STNGenerator(c, (h, w), latent_dim, n_transformers),
        input_shape=shape,
        latent_shape=(latent_dim,),
        distribution=distribution,
    )
