"""The U-Net CVAE for Multi-Illumination lighting (paper Appendix F.1).

``mi_unet``: a U-Net turned into a CVAE by putting a latent code at each of its five skip
connections (128 + 64 + 32 + 16 + 16 = 256 dimensions).

* prior ``x`` / recognition ``cat[x, x̃]``: the U-Net's downsampling half (channels
  64, 128, 256, 512, 512). Each level's feature map goes through a 1×1 convolution to 16
  channels (``conv.i``), a ReLU and an adaptive average pool to a fixed size (``pool[i]``),
  then two linear heads: ``fc1.i`` the mean and ``fc2.i`` the raw log-variance of that
  level's latent block. The log-variances of all blocks pass through the bounded scaled
  tanh (Appendix E.1).
* generator ``(z, x)``: a full U-Net on x with its own encoder. Latent block i goes through
  ``fc.i`` to a one-channel ``pool[i]`` map, is resized bilinearly to the size of the
  U-Net's level-i features and concatenated to them before the decoder uses them.

The pools make the parameter shapes independent of the image size: at MIP5 (125×187,
the default pool sizes) they are identities, and the same weights run at MIP4 and MIP3,
which is how the paper fine-tunes to larger images. The paper lists (127, 187) for the
first pool; the authors' weights (16·125·187 = 374,000 inputs per head) and the MIP5
image height both say 125, which is used here.

Module names, order and shapes equal the authors' state dict
(``shared/reference/state_dicts/mi_unet.txt``, 258,066,597 parameters), so their released
MIP5/4/3 checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from perturbsets.cvae.model import CVAE, DISTRIBUTIONS, Distribution, logvar_head
from perturbsets.cvae.registry import register_cvae
from perturbsets.unet import DoubleConv, Down, OutConv, Up

MIP5_POOL = ((125, 187), (62, 93), (31, 46), (15, 23), (7, 11))
SKIP_CHANNELS = 16


@contextmanager
def _frozen_norms(block: nn.Module) -> Iterator[None]:
    """Recomputation under gradient checkpointing must not update BatchNorm running
    statistics a second time: momentum 0 keeps them, the batch statistics are still used."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class _Contracting(nn.Module):
    """inc + down1..down4: (N, C, H, W) → the five feature maps of the U-Net's left half.

    With ``checkpoint`` the blocks' activations are recomputed in the backward pass instead
    of stored (less memory for MIP3 training, about one more forward pass of compute).
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, channels[0])
        self.down1 = Down(channels[0], channels[1])
        self.down2 = Down(channels[1], channels[2])
        self.down3 = Down(channels[2], channels[3])
        self.down4 = Down(channels[3], channels[4])
        self.checkpoint = False

    def _run(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(block, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _frozen_norms(block)))
        return block(x)

    def features(self, x: Tensor) -> list[Tensor]:
        feats = [self._run(self.inc, x)]
        for block in (self.down1, self.down2, self.down3, self.down4):
            feats.append(self._run(block, feats[-1]))
        return feats


class UNetEncoder(_Contracting):
    """Prior (one input) or recognition (two inputs, concatenated x first) network.

    Inputs (N, C, H, W) each, any H, W ≥ 16; returns (mean, logvar), each (N, Σ latent_dims).
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], latent_dims: Sequence[int], pool: Sequence[Sequence[int]], logvar: str
    ) -> None:
        super().__init__(in_channels, channels)
        self.conv = nn.ModuleList(nn.Conv2d(c, SKIP_CHANNELS, 1) for c in channels)
        self.fc1 = nn.ModuleList(nn.Linear(SKIP_CHANNELS * h * w, d) for (h, w), d in zip(pool, latent_dims))
        self.fc2 = nn.ModuleList(nn.Linear(SKIP_CHANNELS * h * w, d) for (h, w), d in zip(pool, latent_dims))
        self.pool = [tuple(p) for p in pool]
        self.logvar = logvar_head(logvar)

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
        means, raw = [], []
        for i, feat in enumerate(self.features(x)):
            h = F.adaptive_avg_pool2d(F.relu(self.conv[i](feat)), self.pool[i]).flatten(1)
            means.append(self.fc1[i](h))
            raw.append(self.fc2[i](h))
        return torch.cat(means, 1), self.logvar(torch.cat(raw, 1))


class UNetGenerator(_Contracting):
    """g(z, x): a U-Net on x whose skip connections each get one extra channel from z.

    z (N, Σ latent_dims), x (N, C, H, W) → logits (N, C, H, W); the CVAE applies the sigmoid.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], latent_dims: Sequence[int], pool: Sequence[Sequence[int]]) -> None:
        super().__init__(in_channels, channels)
        d = channels
        # Each decoder block halves the channels of the encoder level it merges (bilinear U-Net).
        outs = (d[3] // 2, d[2] // 2, d[1] // 2, d[0])
        self.up1 = Up((d[4] + 1) + (d[3] + 1), outs[0])
        self.up2 = Up(outs[0] + d[2] + 1, outs[1])
        self.up3 = Up(outs[1] + d[1] + 1, outs[2])
        self.up4 = Up(outs[2] + d[0] + 1, outs[3])
        self.outc = OutConv(outs[3], in_channels)
        self.fc = nn.ModuleList(nn.Linear(dim, h * w) for (h, w), dim in zip(pool, latent_dims))
        self.pool = [tuple(p) for p in pool]
        self.latent_dims = [int(v) for v in latent_dims]

    def condition(self, x: Tensor) -> tuple[Tensor, ...]:
        """The encoder half's five feature maps of x, which every z reuses."""
        return tuple(self.features(x))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        return self.decode(z, *self.condition(x))

    def decode(self, z: Tensor, *feats: Tensor) -> Tensor:
        """Logits (N, C, H, W) for z (N, Σ latent_dims) and the :meth:`condition` features of N inputs."""
        joined = []
        for i, (block, feat) in enumerate(zip(z.split(self.latent_dims, 1), feats)):
            zmap = self.fc[i](block).view(-1, 1, *self.pool[i])
            # align_corners=False resizing to the same size is the identity (MIP5).
            zmap = F.interpolate(zmap, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            joined.append(torch.cat([feat, zmap.to(feat.dtype)], 1))
        out = self.up1(joined[4], joined[3])
        out = self.up2(out, joined[2])
        out = self.up3(out, joined[1])
        return self.outc(self.up4(out, joined[0]))


def _pairs(value: Sequence[Sequence[int]], name: str) -> list[tuple[int, int]]:
    try:
        pairs = [(int(h), int(w)) for h, w in value]
    except (TypeError, ValueError):
        raise ValueError(f"mi_unet: {name} must be five [height, width] pairs, got {value!r}") from None
    if len(pairs) != 5 or any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"mi_unet: {name} must be five positive [height, width] pairs, got {value!r}")
    return pairs


@register_cvae("mi_unet")
def mi_unet(
    *,
    input_shape: Sequence[int] = (3, 125, 187),
    chs: Sequence[int] = (64, 128, 256, 512, 1024),
    latent_dim: Sequence[int] = (128, 64, 32, 16, 16),
    pool: Sequence[Sequence[int]] = MIP5_POOL,
    logvar: str = "scaled_tanh",
    checkpoint: bool = False,
    distribution: Distribution = "gaussian",
) -> CVAE:
    """The paper's Multi-Illumination CVAE (Appendix F.1); option names as the authors' config.

    Args:
        input_shape: (C, H, W) of the images the set is learned on (MIP5: (3, 125, 187);
            MIP4 (3, 250, 375) and MIP3 (3, 500, 750) reuse the same weights).
        chs: U-Net channels; with bilinear upsampling the last level uses ``chs[4] // 2``.
        latent_dim: latent dimensions of the five skip levels (total 256).
        pool: the fixed (height, width) each level is pooled to (the MIP5 feature sizes).
        checkpoint: recompute the U-Net blocks' activations in the backward pass
            (gradient checkpointing) to train at MIP3 in less memory.
        distribution: output likelihood (the paper: ``gaussian``).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; use one of {DISTRIBUTIONS}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 16:
        raise ValueError(f"mi_unet: input_shape must be (C, H, W) with H, W >= 16 (four 2x2 pools), got {tuple(input_shape)}")
    channels = [int(c) for c in chs]
    dims = [int(d) for d in latent_dim]
    if len(channels) != 5 or min(channels) < 2 or len(dims) != 5 or min(dims) < 1:
        raise ValueError(f"mi_unet: chs and latent_dim need five positive entries each, got {list(chs)} and {list(latent_dim)}")
    pools = _pairs(pool, "pool")
    down = channels[:4] + [channels[4] // 2]  # bilinear U-Net: the bottleneck is halved
    c = shape[0]
    prior = UNetEncoder(c, down, dims, pools, logvar)
    recognition = UNetEncoder(2 * c, down, dims, pools, logvar)
    generator = UNetGenerator(c, down, dims, pools)
    for net in (prior, recognition, generator):
        net.checkpoint = bool(checkpoint)
    return CVAE(prior, recognition, generator, input_shape=shape, latent_shape=(sum(dims),), distribution=distribution)
