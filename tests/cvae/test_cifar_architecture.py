"""The CIFAR-10 residual CVAE ``cifar10_rectangle`` (Appendix E.1, Tables 5–6)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import reference_listing
from torch import nn

from perturbsets.cvae.model import CVAE, LOGVAR_MAX, LOGVAR_MIN, ScaledTanh
from perturbsets.cvae.registry import build_cvae
from perturbsets.cvae.cifar import ResidualBlock


@pytest.fixture(scope="module")
def cvae() -> CVAE:
    torch.manual_seed(0)
    return build_cvae("cifar10_rectangle").eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_state_dict_equals_reference_listing(cvae):
    header, entries = reference_listing("cifar10_rectangle")
    ours = [(k, tuple(v.shape)) for k, v in cvae.state_dict().items()]
    assert ours == entries  # same keys, shapes and order
    assert f"{len(entries)} state_dict entries" in header[1]
    assert f"{_count(cvae)} trainable parameters" in header[1]


def test_parameter_counts(cvae):
    assert _count(cvae) == 34_332_992
    assert round(_count(cvae.prior) / 1e6, 2) == 16.86
    assert round(_count(cvae.recognition) / 1e6, 2) == 16.87
    assert round(_count(cvae.generator) / 1e6, 2) == 0.60
    assert all(p.requires_grad for p in cvae.parameters())


def test_defaults_and_layout(cvae):
    assert cvae.input_shape == (3, 32, 32)
    assert cvae.latent_shape == (512,) and cvae.latent_dim == 512
    assert cvae.distribution == "gaussian" and cvae.output == "sigmoid"
    enc = cvae.prior.encoder
    assert isinstance(enc[0], nn.Conv2d) and enc[0].bias is None
    assert all(isinstance(enc[i], ResidualBlock) for i in range(1, 5))
    assert [type(enc[i]) for i in range(5, 10)] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    dec = cvae.generator.decoder
    assert len(dec) == 8 and isinstance(dec[6], nn.ReLU) and dec[7].bias is None
    for bn in (m for m in cvae.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.eps == 1e-5 and bn.momentum == 0.1
    assert isinstance(cvae.prior.logvar_act, ScaledTanh)
    assert isinstance(cvae.recognition.logvar_act, ScaledTanh)


def test_forward_shapes_and_ranges(cvae, batch):
    x, x_tilde = batch
    with torch.no_grad():
        out = cvae(x, x_tilde)
    assert out.reconstruction.shape == out.logits.shape == (2, 3, 32, 32)
    assert ((out.reconstruction > 0) & (out.reconstruction < 1)).all()
    assert torch.allclose(out.reconstruction, torch.sigmoid(out.logits))
    for gauss in (out.prior, out.posterior):
        assert gauss.mean.shape == gauss.logvar.shape == (2, 512)
        assert (gauss.logvar > LOGVAR_MIN).all() and (gauss.logvar < LOGVAR_MAX).all()
    assert out.z.shape == (2, 512)
    loss = cvae.loss(out, x_tilde, beta=0.01)
    assert loss.reconstruction.shape == loss.kl.shape == (2,) and torch.isfinite(loss.total)


def test_logvar_is_scaled_tanh_of_fc2_with_negative_scale(cvae, batch):
    x, _ = batch
    with torch.no_grad():
        h = cvae.prior.encoder(x).flatten(1)
        mean, logvar = cvae.prior(x)
        assert torch.allclose(mean, cvae.prior.fc1(h))
        raw = cvae.prior.fc2(h)
        expected = (LOGVAR_MIN + LOGVAR_MAX) / 2 + (LOGVAR_MIN - LOGVAR_MAX) / 2 * torch.tanh(raw)
        assert torch.allclose(logvar, expected, atol=1e-6)
        act = cvae.prior.logvar_act
        assert act(torch.tensor(50.0)).item() == pytest.approx(math.log(1e-3))  # decreasing map
        assert act(torch.tensor(-50.0)).item() == pytest.approx(math.log(10.0))


def test_concatenation_orders_put_x_first(cvae, batch):
    x, x_tilde = batch
    seen = {}

    def grab(name):
        def hook(module, inputs):
            seen[name] = inputs[0].detach()

        return hook

    handles = [
        cvae.recognition.encoder.register_forward_pre_hook(grab("recognition")),
        cvae.generator.decoder.register_forward_pre_hook(grab("generator")),
    ]
    try:
        z = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            cvae.posterior_params(x, x_tilde)
            logits = cvae.generator(z, x)
            assert torch.allclose(cvae.generate(z, x), torch.sigmoid(logits))
            z_map = cvae.generator.fc(z).view(2, 1, 32, 32)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(seen["recognition"], torch.cat([x, x_tilde], dim=1))
    assert seen["generator"].shape == (2, 4, 32, 32)
    assert torch.equal(seen["generator"][:, :3], x)
    assert torch.allclose(seen["generator"][:, 3:], z_map)


def test_residual_block_is_preactivation_bottleneck():
    torch.manual_seed(3)
    block = ResidualBlock(8, 4, 3, 1).eval()
    for bn in (block.bn1, block.bn2):
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.normal_(bn.bias)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        h = block.conv1(torch.relu(block.bn1(x)))
        expected = x + block.conv2(torch.relu(block.bn2(h)))
        assert torch.allclose(block(x), expected)
    assert block.conv1.bias is None and block.conv2.bias is None
    assert block.conv1.weight.shape == (4, 8, 3, 3) and block.conv2.weight.shape == (8, 4, 3, 3)


def test_small_configuration_trains_one_step():
    torch.manual_seed(4)
    model = build_cvae(
        "cifar10_rectangle", latent_dim=6, nblocks=1, big_ch=8, small_ch=4, input_shape=(3, 8, 12)
    )
    assert model.latent_shape == (6,)
    x, x_tilde = torch.rand(2, 3, 8, 12), torch.rand(2, 3, 8, 12)
    out = model(x, x_tilde)
    assert out.reconstruction.shape == (2, 3, 8, 12)
    loss = model.loss(out, x_tilde, beta=1.0).total
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    linear = build_cvae("cifar10_rectangle", latent_dim=6, nblocks=0, big_ch=4, small_ch=2, input_shape=(1, 4, 4), logvar="linear")
    assert isinstance(linear.prior.logvar_act, nn.Identity)
    assert [k for k in linear.state_dict() if k.startswith("prior.encoder.") and k.endswith("weight")] == [
        "prior.encoder.0.weight", "prior.encoder.1.weight", "prior.encoder.3.weight", "prior.encoder.4.weight"
    ]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"kernel": 5, "padding": 1}, "kernel == 2 \\* padding \\+ 1"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"nblocks": -1}, "nblocks"),
        ({"input_shape": (3, 32)}, "input_shape"),
        ({"logvar": "softplus"}, "logvar"),
        ({"distribution": "laplace"}, "distribution"),
        ({"latent_size": 4}, "latent_dim"),  # unknown option: the registry suggests the nearest
    ],
)
def test_bad_options_fail_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        build_cvae("cifar10_rectangle", **options)
