"""The U-Net building blocks of milesial/Pytorch-UNet, shared by the segmentation U-Net
(:mod:`perturbsets.nets.classifiers`) and the Multi-Illumination CVAE (:mod:`perturbsets.nets.mi`).

Module names (``double_conv``, ``maxpool_conv``, ``conv``) are those of the authors' state
dicts, so their checkpoints load into models built from these blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DoubleConv", "Down", "Up", "OutConv"]


class DoubleConv(nn.Module):
    """(conv3×3 pad 1 with bias → BN → ReLU) twice, in → mid → out channels, size kept.

    Keys ``double_conv.0/1/3/4``; the convolutions keep their bias as in the (older) milesial
    version the authors' checkpoints come from.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2×2 max pool then DoubleConv: (N, C_in, H, W) → (N, C_out, ⌊H/2⌋, ⌊W/2⌋)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the coarse map ×2, zero-pad it to the skip's size, cat[skip, up], DoubleConv.

    ``bilinear=True``: bilinear with ``align_corners=True`` (no parameters), then
    DoubleConv(in → in/2 → out), where ``in`` counts the channels of both inputs together.
    ``bilinear=False``: ConvTranspose2d(in → in/2, 2, stride 2) (key ``up``), then
    DoubleConv(in → out). Odd skip sizes (from flooring max pools) leave the upsampled map
    one pixel short; the difference is split floor-half before, ceil-half after.
    forward(x_low (N, C_low, h, w), x_skip (N, C_skip, H, W)) → (N, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x_low: Tensor, x_skip: Tensor) -> Tensor:
        x_up = self.up(x_low)
        dy = x_skip.shape[-2] - x_up.shape[-2]
        dx = x_skip.shape[-1] - x_up.shape[-1]
        x_up = F.pad(x_up, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x_skip, x_up], dim=1))


class OutConv(nn.Module):
    """1×1 convolution with bias to the class logits (key ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
