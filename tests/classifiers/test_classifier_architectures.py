"""Tests for perturbsets.nets.classifiers: downstream models against the authors' state dicts,
block numerics against explicit re-computations, shapes, gradients and the registry."""

from __future__ import annotations

import math
import re

import pytest
from conftest import reference_listing
import torch
import torch.nn.functional as F
from torch import nn

from perturbsets.classifiers import architectures as classifiers
from perturbsets.classifiers.architectures import (
    CLASSIFIERS,
    BasicBlock,
    Normalize,
    PreActBlock,
    Up,
    build_classifier,
    register_classifier,
)






def _header_numbers(header: list[str]) -> tuple[int, int, int]:
    """(entries, trainable parameters, buffer elements) from the second header line."""
    match = re.fullmatch(r"# (\d+) state_dict entries; (\d+) trainable parameters; (\d+) buffer elements", header[1])
    assert match, header[1]
    return int(match[1]), int(match[2]), int(match[3])


REFERENCE_MODELS = {"wideresnet_28_10": "wideresnet_28_10_cifar10", "unet": "unet_mi_segmentation"}


@pytest.fixture(scope="module")
def wrn_28_10():
    torch.manual_seed(0)
    return build_classifier("wideresnet_28_10")


@pytest.fixture(scope="module")
def unet_model():
    torch.manual_seed(0)
    return build_classifier("unet")


def _model(name, request):
    return request.getfixturevalue({"wideresnet_28_10": "wrn_28_10", "unet": "unet_model"}[name])


# --------------------------------------------------------------------------- authors' state dicts


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_state_dict_matches_authors(name, request):
    header, reference = reference_listing(REFERENCE_MODELS[name])
    entries, _, _ = _header_numbers(header)
    assert len(reference) == entries
    ours = [(k, tuple(v.shape)) for k, v in _model(name, request).state_dict().items()]
    assert ours == reference  # same keys, shapes and order


@pytest.mark.parametrize("name,params", [("wideresnet_28_10", 36_479_194), ("unet", 17_269_668)])
def test_parameter_and_buffer_counts(name, params, request):
    header, _ = reference_listing(REFERENCE_MODELS[name])
    _, header_params, header_buffers = _header_numbers(header)
    model = _model(name, request)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params == header_params
    assert sum(b.numel() for b in model.buffers()) == header_buffers


def test_authors_checkpoint_layout_loads_strictly(unet_model):
    """A state dict built purely from the listing loads with strict=True."""
    _, reference = reference_listing("unet_mi_segmentation")
    fake = {k: torch.full(shape, 0.5) if shape else torch.tensor(3) for k, shape in reference}
    model = build_classifier("unet")
    model.load_state_dict(fake, strict=True)
    assert torch.equal(model.outc.conv.bias, torch.full((36,), 0.5))


def test_wideresnet_without_normalization_drops_wrapper():
    _, reference = reference_listing("wideresnet_28_10_cifar10")
    expected = [(k[2:], s) for k, s in reference if k.startswith("1.")]
    torch.manual_seed(0)
    bare = build_classifier("wideresnet_28_10", normalize=False)
    assert isinstance(bare, classifiers.WideResNet)
    assert [(k, tuple(v.shape)) for k, v in bare.state_dict().items()] == expected


def test_wideresnet_normalization_buffers(wrn_28_10):
    norm = wrn_28_10[0]
    assert isinstance(norm, Normalize)
    assert norm.mu.shape == norm.std.shape == (3, 1, 1)
    assert torch.allclose(norm.mu.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert torch.allclose(norm.std.flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))
    assert [name for name, _ in wrn_28_10.named_buffers()][:2] == ["0.mu", "0.std"]
    x = torch.rand(2, 3, 4, 4)
    stats = zip(classifiers.CIFAR10_MEAN, classifiers.CIFAR10_STD)
    expected = torch.stack([(x[:, c] - m) / s for c, (m, s) in enumerate(stats)], 1)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_wideresnet_initialisation(wrn_28_10):
    net = wrn_28_10[1]
    conv = net.block3.layer[1].conv2  # 640 → 640, 3×3: fan_out = 9 · 640
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 640)), rel=0.01)
    assert abs(conv.weight.mean().item()) < 1e-4
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    assert torch.all(net.fc.bias == 0)


# --------------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize(
    "name,options,input_shape,output_shape",
    [
        ("digits_cnn", {}, (2, 1, 28, 28), (2, 10)),
        ("mnist_cnn", {"image_size": 42}, (2, 1, 42, 42), (2, 10)),
        ("canvas_cnn", {}, (2, 1, 42, 42), (2, 10)),
        ("canvas_cnn", {"in_channels": 3, "num_classes": 4, "channels": 8}, (1, 3, 17, 30), (1, 4)),
        ("digits_cnn", {"image_size": (28, 42), "in_channels": 3, "num_classes": 5, "width": 64}, (2, 3, 28, 42),
         (2, 5)),
        ("preact_resnet18", {}, (2, 3, 32, 32), (2, 10)),
        ("preact_resnet18", {"num_classes": 7, "in_channels": 1, "normalize": False}, (1, 1, 24, 40), (1, 7)),
        ("wideresnet", {"depth": 16, "widen_factor": 2}, (2, 3, 32, 32), (2, 10)),
        ("wideresnet", {"depth": 10, "widen_factor": 1, "num_classes": 4}, (1, 3, 48, 40), (1, 4)),
        ("unet", {}, (1, 3, 125, 187), (1, 36, 125, 187)),
        ("unet", {}, (1, 3, 64, 64), (1, 36, 64, 64)),
        ("unet", {"n_channels": 1, "n_classes": 2, "bilinear": False}, (1, 1, 37, 51), (1, 2, 37, 51)),
    ],
)
def test_output_shapes(name, options, input_shape, output_shape):
    torch.manual_seed(0)
    model = build_classifier(name, **options).eval()
    with torch.no_grad():
        out = model(torch.rand(*input_shape))
    assert out.shape == output_shape
    assert torch.isfinite(out).all()


def test_wideresnet_28_10_forward(wrn_28_10):
    with torch.no_grad():
        out = wrn_28_10.eval()(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_digits_cnn_matches_mnistconv_at_28_and_sizes_flatten_at_42():
    torch.manual_seed(0)
    mnist = build_classifier("digits_cnn")
    assert [tuple(p.shape) for p in mnist.parameters()] == [
        (32, 1, 4, 4), (32,), (64, 32, 4, 4), (64,), (1024, 3136), (1024,), (10, 1024), (10,)
    ]
    rts = build_classifier("digits_cnn", image_size=42)
    assert rts[5].in_features == 64 * 10 * 10  # 42 → 21 → 10
    assert rts(torch.rand(3, 1, 42, 42)).shape == (3, 10)
    with pytest.raises(RuntimeError):  # the flatten size is tied to image_size
        mnist(torch.rand(1, 1, 42, 42))


def test_canvas_cnn_normalises_each_example_by_itself():
    """Unlike BatchNorm, an example's logits do not depend on the rest of the batch, in training
    mode too: what the model computes on generated images is what it computes on real ones."""
    torch.manual_seed(0)
    net = build_classifier("canvas_cnn").train()
    x = torch.rand(1, 1, 42, 42)
    torch.testing.assert_close(net(x), net(torch.cat([x, torch.rand(5, 1, 42, 42)]))[:1])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) < 100_000
    with pytest.raises(ValueError, match="channels"):
        build_classifier("canvas_cnn", channels=0)


def test_global_pool_equals_reference_8x8_pool_at_32x32():
    torch.manual_seed(0)
    net = build_classifier("wideresnet", depth=10, widen_factor=2, normalize=False).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        h = F.relu(net.bn1(net.block3(net.block2(net.block1(net.conv1(x))))))
        assert h.shape[-2:] == (8, 8)
        reference = net.fc(F.avg_pool2d(h, 8).flatten(1))
        assert torch.allclose(net(x), reference, atol=1e-5)


@pytest.mark.parametrize(
    "name,options,input_shape",
    [
        ("digits_cnn", {"image_size": 42}, (2, 1, 42, 42)),
        ("canvas_cnn", {}, (2, 1, 42, 42)),
        ("preact_resnet18", {}, (2, 3, 16, 16)),
        ("wideresnet", {"depth": 16, "widen_factor": 2}, (2, 3, 32, 32)),
        ("unet", {"n_classes": 4}, (2, 3, 33, 35)),
    ],
)
def test_gradients_flow(name, options, input_shape):
    torch.manual_seed(0)
    model = build_classifier(name, **options).train()
    x = torch.rand(*input_shape, requires_grad=True)
    out = model(x)
    target = torch.zeros(out.shape[0], *out.shape[2:], dtype=torch.long)
    F.cross_entropy(out, target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- block numerics


def _randomize_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _bn(x, bn):
    """Eval-mode batch norm written out: (x − running mean) / √(running var + ε) · γ + β."""
    view = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return (x - view(bn.running_mean)) / torch.sqrt(view(bn.running_var) + bn.eps) * view(bn.weight) + view(bn.bias)


@pytest.mark.parametrize("in_planes,out_planes,stride", [(8, 8, 1), (4, 8, 2), (4, 8, 1)])
def test_wrn_basic_block_matches_explicit(in_planes, out_planes, stride):
    torch.manual_seed(0)
    block = BasicBlock(in_planes, out_planes, stride)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, in_planes, 9, 9)
    h = F.relu(_bn(x, block.bn1))
    mid = F.relu(_bn(F.conv2d(h, block.conv1.weight, stride=stride, padding=1), block.bn2))
    out = F.conv2d(mid, block.conv2.weight, padding=1)
    if in_planes == out_planes:
        skip = x  # the raw input, not its activation
        assert block.convShortcut is None
    else:
        skip = F.conv2d(h, block.convShortcut.weight, stride=stride)
    with torch.no_grad():
        assert torch.allclose(block(x), out + skip, atol=1e-5)


@pytest.mark.parametrize("in_planes,planes,stride", [(8, 8, 1), (4, 8, 2)])
def test_preact_block_matches_explicit(in_planes, planes, stride):
    torch.manual_seed(0)
    block = PreActBlock(in_planes, planes, stride)
    _randomize_bn(block)
    block.eval()
    x = torch.randn(2, in_planes, 8, 8)
    h = F.relu(_bn(x, block.bn1))
    mid = F.relu(_bn(F.conv2d(h, block.conv1.weight, stride=stride, padding=1), block.bn2))
    out = F.conv2d(mid, block.conv2.weight, padding=1)
    skip = x if block.shortcut is None else F.conv2d(h, block.shortcut[0].weight, stride=stride)
    with torch.no_grad():
        assert torch.allclose(block(x), out + skip, atol=1e-5)


def _align_corners_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) linear interpolation weights with the end pixels aligned."""
    a = torch.zeros(n_out, n_in)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(math.floor(src)), n_in - 1)
        frac = src - lo
        a[i, lo] += 1 - frac
        if frac > 0:
            a[i, lo + 1] += frac
    return a


@pytest.mark.parametrize("low_size,skip_size", [((3, 5), (7, 11)), ((3, 5), (9, 10)), ((4, 4), (8, 8))])
def test_up_pads_and_concatenates_like_explicit(low_size, skip_size):
    torch.manual_seed(0)
    up = Up(8, 3)
    _randomize_bn(up)
    up.eval()
    x_low = torch.randn(1, 4, *low_size)
    x_skip = torch.randn(1, 4, *skip_size)
    (h, w), (sh, sw) = low_size, skip_size
    upsampled = _align_corners_matrix(h, 2 * h) @ x_low @ _align_corners_matrix(w, 2 * w).T
    padded = torch.zeros(1, 4, sh, sw)
    top, left = (sh - 2 * h) // 2, (sw - 2 * w) // 2  # the smaller half goes before
    padded[..., top : top + 2 * h, left : left + 2 * w] = upsampled
    with torch.no_grad():
        expected = up.conv(torch.cat([x_skip, padded], dim=1))
        assert torch.allclose(up(x_low, x_skip), expected, atol=1e-5)


# --------------------------------------------------------------------------- registry and errors


def test_registry_contents():
    assert {"digits_cnn", "mnist_cnn", "preact_resnet18", "wideresnet", "wideresnet_28_10", "unet"} <= set(CLASSIFIERS)
    assert CLASSIFIERS["digits_cnn"] is CLASSIFIERS["mnist_cnn"]


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown classifier 'wideresnet_28_1'.*did you mean 'wideresnet_28_10'"):
        build_classifier("wideresnet_28_1")


def test_unknown_option_suggests_nearest():
    with pytest.raises(ValueError, match=r"did you mean 'num_classes'"):
        build_classifier("preact_resnet18", num_class=5)
    with pytest.raises(ValueError, match=r"did you mean 'n_classes'"):
        build_classifier("unet", num_classes=5)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("wideresnet", {"depth": 27}, "6n \\+ 4"),
        ("wideresnet", {"in_channels": 1}, "in_channels=1"),
        ("preact_resnet18", {"num_classes": 0}, "num_classes"),
        ("digits_cnn", {"image_size": 3}, "at least 4"),
    ],
)
def test_invalid_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_classifier(name, **options)


def test_register_custom_classifier_and_reject_duplicates():
    @register_classifier("_test_linear")
    def _linear(*, features: int = 4) -> nn.Module:
        return nn.Linear(features, 2)

    try:
        assert build_classifier("_test_linear", features=3).in_features == 3
        with pytest.raises(ValueError, match="already registered"):
            register_classifier("_test_linear")(_linear)
    finally:
        del CLASSIFIERS["_test_linear"]
