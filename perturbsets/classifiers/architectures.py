"""Downstream models trained robustly against a learned perturbation set, built by name.

``build_classifier("wideresnet_28_10")`` returns an ``nn.Module``; :func:`register_classifier`
adds a builder of your own. Every model takes images in [0, 1] of shape (N, C, H, W).

* ``digits_cnn`` (alias ``mnist_cnn``): the authors' small MNIST CNN, any square or
  rectangular image size (28×28 digits, the 42×42 RTS canvas). Returns (N, num_classes).
* ``preact_resnet18``: PreAct ResNet-18 (He et al., 2016). Returns (N, num_classes).
* ``wideresnet_28_10`` and ``wideresnet``: WRN (Zagoruyko & Komodakis, 2016), the CIFAR-10
  classifier of the paper. Returns (N, num_classes).
* ``unet``: the milesial U-Net used for Multi-Illumination material segmentation.
  Returns logits (N, n_classes, H, W).

Parameter names and shapes of ``wideresnet_28_10`` and ``unet`` equal the authors' state
dicts (``shared/reference/state_dicts/wideresnet_28_10_cifar10.txt`` and
``unet_mi_segmentation.txt``), so their released checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perturbsets._util.registry import Registry
from perturbsets.unet import DoubleConv, Down, OutConv, Up

CLASSIFIERS = Registry("classifier")
register_classifier = CLASSIFIERS.register

# CIFAR-10 channel statistics used by the authors' normalisation wrapper (the std values are
# the widely copied 0.2023/0.1994/0.2010, not the exact per-pixel std; kept for checkpoints).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)



def build_classifier(name: str, **options) -> nn.Module:
    """Build the registered downstream model ``name`` with its keyword options (paper Appendices D–F).

    Names: ``digits_cnn``, ``canvas_cnn``, ``preact_resnet18``, ``wideresnet_28_10``,
    ``unet``. Models map (N, C, H, W) in [0, 1] to logits (N, K) or, for the U-Net,
    (N, K, H, W).

    Example::

        model = build_classifier("wideresnet_28_10", num_classes=10)
        logits = model(torch.rand(2, 3, 32, 32))  # (2, 10)
    """
    return CLASSIFIERS.build(name, **options)


class Normalize(nn.Module):
    """Per-channel ``(x - mu) / std`` with ``mu`` and ``std`` stored as (C, 1, 1) buffers.

    Buffers rather than constants so that they sit in the state dict as the authors'
    ``0.mu`` / ``0.std`` entries and move with ``.to(device)``.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mu) / self.std


def _check_normalizable(name: str, normalize: bool, in_channels: int) -> None:
    """Called before building, so that a bad option fails before allocating a large model."""
    if normalize and in_channels != 3:
        raise ValueError(
            f"{name}: normalize=True uses the 3-channel CIFAR-10 statistics, got in_channels={in_channels}"
        )


def _with_cifar10_normalization(model: nn.Module, normalize: bool) -> nn.Module:
    """``nn.Sequential(Normalize, model)`` (keys ``0.mu``, ``0.std``, ``1.*``), or ``model``."""
    return nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), model) if normalize else model


def _check_positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------- digits CNN


@register_classifier("digits_cnn")
@register_classifier("mnist_cnn")
def digits_cnn(
    *,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    num_classes: int = 10,
    width: int = 1024,
) -> nn.Module:
    """The authors' ``MNISTConv`` for digits, with the flatten size derived from ``image_size``.

    conv4×4 s2 p1 (in→32) → ReLU → conv4×4 s2 p1 (32→64) → ReLU → flatten →
    Linear(64·⌊H/4⌋·⌊W/4⌋ → width) → ReLU → Linear(width → num_classes). At 28×28 this is
    exactly ``MNISTConv`` (Linear 3136 → 1024); at the 42×42 RTS canvas the maps are 10×10.
    Input (N, in_channels, H, W) in [0, 1], no normalisation; returns logits (N, num_classes).
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    _check_positive("digits_cnn", in_channels=in_channels, num_classes=num_classes, width=width)
    # Each 4×4 stride-2 pad-1 convolution maps a side s to ⌊s/2⌋, so both together give ⌊s/4⌋.
    if h < 4 or w < 4:
        raise ValueError(f"digits_cnn: image_size must be at least 4×4, got {(h, w)}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


@register_classifier("canvas_cnn")
def canvas_cnn(*, in_channels: int = 1, num_classes: int = 10, channels: int = 16) -> nn.Module:
    """A small all-convolutional CNN for objects placed anywhere on a canvas (the RTS canvas).

    Three stages of two 3×3 convolutions (``channels``, 2×, 4×), each followed by a
    per-example layer norm (GroupNorm with one group) and ReLU — the very first of stride 2 —
    with 2×2 max pooling between stages, then global max pooling and a linear layer
    (42×42 → 21 → 10 → 5 → 1; 72k parameters). The pooling makes it invariant to where the
    digit sits, which ``digits_cnn``'s flatten is not; the normalisation makes it learn
    rotated, scaled and translated digits in a fraction of the steps. It normalises each
    example by itself, not by running batch statistics: a model trained only on a
    generator's (blurrier) images then still reads real ones (4 epochs of CVAE adversarial
    training on RTS digits: 48% clean accuracy with it, 10% with BatchNorm). Any input size
    ≥ 4×4.
    Input (N, in_channels, H, W) in [0, 1]; returns logits (N, num_classes).
    """
    _check_positive("canvas_cnn", in_channels=in_channels, num_classes=num_classes, channels=channels)
    layers: list[nn.Module] = []
    width_in = in_channels
    for stage in range(3):
        width = channels * 2**stage
        if stage:
            layers.append(nn.MaxPool2d(2))
        for j in range(2):
            conv = nn.Conv2d(width_in if j == 0 else width, width, 3, padding=1, stride=2 if stage == j == 0 else 1, bias=False)
            layers += [conv, nn.GroupNorm(1, width), nn.ReLU()]
        width_in = width
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width_in, num_classes))


# --------------------------------------------------------------------------- PreAct ResNet


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al., 2016, "Identity Mappings").

    h = ReLU(BN₁(x)); out = conv₂(ReLU(BN₂(conv₁(h)))) + s, where s = x when the shape is
    kept and s = shortcut(h) (1×1 conv, stride) otherwise. (N, C_in, H, W) →
    (N, C_out, H/stride, W/stride). Convolutions have no bias (BN follows or precedes).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        out = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return out + skip


class PreActResNet(nn.Module):
    """PreAct ResNet: conv3×3 (→64) → four stages of PreActBlocks (64, 128, 256, 512 channels;
    strides 1, 2, 2, 2) → BN → ReLU → global average pool → Linear.

    (N, in_channels, H, W) → (N, num_classes). Unlike the kuangliu ``preactresnet.py`` in
    the authors' repository, we apply the final BN-ReLU that the pre-activation design calls
    for (the last block's output is otherwise never normalised), and pool globally instead of
    with a fixed 4×4 window so that any input size works (at 32×32 both pool the 4×4 map).
    """

    def __init__(self, num_blocks: tuple[int, ...], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 64
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


@register_classifier("preact_resnet18")
def preact_resnet18(*, num_classes: int = 10, in_channels: int = 3, normalize: bool = True) -> nn.Module:
    """PreAct ResNet-18 (two blocks per stage), 11.2M parameters at 10 classes.

    Input (N, in_channels, H, W) in [0, 1]; returns logits (N, num_classes). With
    ``normalize=True`` (needs 3 channels) the model is ``nn.Sequential(Normalize, resnet)``
    with the CIFAR-10 statistics, as the authors wrap their CIFAR classifiers.
    """
    _check_positive("preact_resnet18", num_classes=num_classes, in_channels=in_channels)
    _check_normalizable("preact_resnet18", normalize, in_channels)
    return _with_cifar10_normalization(PreActResNet((2, 2, 2, 2), in_channels, num_classes), normalize)


# --------------------------------------------------------------------------- WideResNet


class BasicBlock(nn.Module):
    """WRN basic block (Zagoruyko & Komodakis, 2016, as in the widely used xternalz code).

    Shape kept (in == out): out = conv₂(ReLU(BN₂(conv₁(ReLU(BN₁(x)))))) + x.
    Shape changed: x' = ReLU(BN₁(x)); out = conv₂(ReLU(BN₂(conv₁(x')))) + convShortcut(x')
    (1×1, stride). Only the identity case adds the *raw* input, which is what the
    authors' checkpoints were trained with. (N, C_in, H, W) → (N, C_out, H/stride, W/stride).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.convShortcut = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(h)
        return self.conv2(F.relu(self.bn2(self.conv1(h)))) + skip


class NetworkBlock(nn.Module):
    """A group of ``n`` BasicBlocks (the first one strided) under the key ``layer``."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3×3 (→16) → three groups of (depth−4)/6 BasicBlocks with 16k, 32k,
    64k channels (strides 1, 2, 2) → BN → ReLU → global average pool → Linear(64k → classes).

    (N, in_channels, H, W) → (N, num_classes). The reference pools with a fixed 8×8 window,
    which for 32×32 inputs covers the whole 8×8 map and so equals the global average used
    here; other input sizes only work with the global pool. Dropout is not implemented (the
    authors use dropRate 0). Initialisation as the reference: Kaiming-normal (fan_out, ReLU)
    convolutions, BN weight 1 / bias 0, Linear bias 0 with PyTorch's default Linear weights.
    """

    def __init__(self, depth: int, widen_factor: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1).flatten(1)
        return self.fc(out)


@register_classifier("wideresnet")
def wideresnet(
    *,
    depth: int = 28,
    widen_factor: int = 10,
    num_classes: int = 10,
    in_channels: int = 3,
    normalize: bool = True,
) -> nn.Module:
    """WideResNet-``depth``-``widen_factor`` (depth = 6n + 4).

    Input (N, in_channels, H, W) in [0, 1]; returns logits (N, num_classes). With
    ``normalize=True`` (needs 3 channels) the model is ``nn.Sequential(Normalize, WRN)`` with
    the CIFAR-10 statistics, keys ``0.mu``, ``0.std``, ``1.*`` exactly as the authors'
    checkpoints; ``normalize=False`` gives the bare WRN (keys without the ``1.`` prefix).
    """
    _check_positive(
        "wideresnet", depth=depth, widen_factor=widen_factor, num_classes=num_classes, in_channels=in_channels
    )
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wideresnet: depth must be 6n + 4 with n >= 1 (e.g. 16, 22, 28), got {depth}")
    _check_normalizable("wideresnet", normalize, in_channels)
    return _with_cifar10_normalization(WideResNet(depth, widen_factor, in_channels, num_classes), normalize)


@register_classifier("wideresnet_28_10")
def wideresnet_28_10(*, num_classes: int = 10, normalize: bool = True) -> nn.Module:
    """WRN-28-10, the paper's CIFAR-10 classifier (36,479,194 parameters at 10 classes).

    Input (N, 3, H, W) in [0, 1] (32×32 for CIFAR-10); returns logits (N, num_classes).
    See :func:`wideresnet` for ``normalize``.
    """
    return wideresnet(depth=28, widen_factor=10, num_classes=num_classes, normalize=normalize)


# --------------------------------------------------------------------------- U-Net


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015) in the milesial/Pytorch-UNet layout.

    inc (→b), down1..down4 (→2b, 4b, 8b, 16b/f), up1..up4 (→8b/f, 4b/f, 2b/f, b), outc,
    with b = ``base_channels`` (64 in the paper) and f = 2 for bilinear upsampling (whose
    Up blocks cannot halve channels themselves), 1 otherwise. (N, n_channels, H, W) →
    logits (N, n_classes, H, W) for any H, W ≥ 16 (four 2×2 max pools must leave a pixel).
    """

    def __init__(self, n_channels: int, n_classes: int, bilinear: bool, base_channels: int = 64) -> None:
        super().__init__()
        f = 2 if bilinear else 1
        b = base_channels
        self.inc = DoubleConv(n_channels, b)
        self.down1 = Down(b, 2 * b)
        self.down2 = Down(2 * b, 4 * b)
        self.down3 = Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 16 * b // f)
        self.up1 = Up(16 * b, 8 * b // f, bilinear)
        self.up2 = Up(8 * b, 4 * b // f, bilinear)
        self.up3 = Up(4 * b, 2 * b // f, bilinear)
        self.up4 = Up(2 * b, b, bilinear)
        self.outc = OutConv(b, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        out = self.up1(self.down4(x4), x4)
        out = self.up2(out, x3)
        out = self.up3(out, x2)
        return self.outc(self.up4(out, x1))


@register_classifier("unet")
def unet(*, n_channels: int = 3, n_classes: int = 36, bilinear: bool = True, base_channels: int = 64) -> nn.Module:
    """U-Net for Multi-Illumination material segmentation (the paper's §6 downstream model).

    Input (N, n_channels, H, W) in [0, 1], no normalisation (as the authors); returns
    per-pixel logits (N, n_classes, H, W). The defaults are the authors' configuration
    (36 material classes, bilinear upsampling; 17,269,668 parameters, keys as their
    checkpoints). ``bilinear=False`` uses transposed convolutions instead (31.0M parameters,
    no released checkpoint). ``base_channels`` scales every width (64: the authors').
    """
    _check_positive("unet", n_channels=n_channels, n_classes=n_classes, base_channels=base_channels)
    return UNet(n_channels, n_classes, bilinear, base_channels)
