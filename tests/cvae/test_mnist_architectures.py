"""Tests for perturbsets.nets: the MNIST architectures against the authors' state dicts, registry."""

from __future__ import annotations


import pytest
from conftest import reference_listing
import torch
import torch.nn.functional as F

from perturbsets.cvae import mnist
from perturbsets.cvae.model import CVAE, ScaledTanh
from perturbsets.cvae.registry import CVAE_ARCHITECTURES, build_cvae, register_cvae
from perturbsets.cvae.mnist import SpatialTransformer



@pytest.mark.parametrize("name,count", [("mnist_fc", 16), ("mnist_conv", 26), ("mnist_stn", 84)])
def test_state_dict_matches_authors(name, count):
    reference = reference_listing(name)[1]
    assert len(reference) == count
    torch.manual_seed(0)
    cvae = build_cvae(name)
    ours = [(k, tuple(v.shape)) for k, v in cvae.state_dict().items()]
    assert dict(ours) == dict(reference)
    assert sorted(ours) == sorted(reference)


@pytest.mark.parametrize(
    "name,params",
    [("mnist_fc", 6_152_832), ("mnist_conv", 426_766), ("mnist_stn", 6_435_084)],
)
def test_parameter_counts_match_reference_header(name, params):
    torch.manual_seed(0)
    cvae = build_cvae(name)
    assert sum(p.numel() for p in cvae.parameters()) == params


@pytest.mark.parametrize(
    "name,input_shape,latent_shape",
    [("mnist_fc", (1, 28, 28), (784,)), ("mnist_conv", (1, 28, 28), (128, 7, 7)), ("mnist_stn", (1, 42, 42), (128,))],
)
def test_default_shapes(name, input_shape, latent_shape):
    torch.manual_seed(0)
    cvae = build_cvae(name).eval()
    assert isinstance(cvae, CVAE)
    assert cvae.input_shape == input_shape and cvae.latent_shape == latent_shape
    x = torch.rand(2, *input_shape)
    with torch.no_grad():
        out = cvae(x, torch.rand(2, *input_shape))
    assert out.reconstruction.shape == (2, *input_shape)
    assert out.prior.mean.shape == (2, *latent_shape) and out.posterior.logvar.shape == (2, *latent_shape)
    assert out.z.shape == (2, *latent_shape)


@pytest.mark.parametrize(
    "name,kwargs,latent_shape",
    [
        ("mnist_fc", dict(input_shape=(1, 8, 8), hidden=16, latent_dim=4), (4,)),
        ("mnist_fc", dict(input_shape=(3, 5, 6), hidden=8, latent_dim=3), (3,)),
        ("mnist_conv", dict(input_shape=(1, 8, 8)), (128, 2, 2)),
        ("mnist_conv", dict(input_shape=(2, 12, 16)), (128, 3, 4)),
        ("mnist_stn", dict(input_shape=(1, 12, 12), latent_dim=8), (8,)),
        ("mnist_stn", dict(input_shape=(2, 10, 11), latent_dim=3, n_transformers=2), (3,)),
    ],
)
def test_small_forward_shapes(name, kwargs, latent_shape):
    torch.manual_seed(0)
    cvae = build_cvae(name, **kwargs)
    shape = kwargs["input_shape"]
    x, xt = torch.rand(3, *shape), torch.rand(3, *shape)
    out = cvae(x, xt)
    assert out.reconstruction.shape == (3, *shape) and out.z.shape == (3, *latent_shape)
    assert cvae.generate(torch.randn(3, *latent_shape), x).shape == (3, *shape)
    assert torch.isfinite(out.reconstruction).all()


def test_logvar_head_options():
    torch.manual_seed(0)
    bounded = build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=8, latent_dim=3)
    assert isinstance(bounded.prior.logvar_act, ScaledTanh)
    linear = build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=8, latent_dim=3, logvar="linear")
    x = torch.rand(2, 1, 4, 4)
    h = F.relu(linear.prior.fc1(x.flatten(1)))
    torch.testing.assert_close(linear.prior(x)[1], linear.prior.fc22(h))
    # the bounded head keeps the log-variance in (ln 1e-3, ln 10) even for huge inputs
    _, logvar = bounded.prior(torch.full((2, 1, 4, 4), 1e4))
    assert (logvar > -6.91).all() and (logvar < 2.31).all()


def test_concatenation_order_conditioning_image_first():
    torch.manual_seed(0)
    cvae = build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=8, latent_dim=3)
    x, xt = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    h = F.relu(cvae.recognition.fc1(torch.cat([x.flatten(1), xt.flatten(1)], 1)))
    torch.testing.assert_close(cvae.recognition(x, xt)[0], cvae.recognition.fc21(h))
    z = torch.randn(2, 3)
    h = F.relu(cvae.generator.fc3(torch.cat([x.flatten(1), z], 1)))
    torch.testing.assert_close(cvae.generator(z, x), cvae.generator.fc4(h).view(2, 1, 4, 4))


def test_spatial_transformer_starts_at_identity():
    torch.manual_seed(0)
    stn = SpatialTransformer((12, 12))
    theta = stn(torch.randn(3, 1, 12, 12))
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(3, 2, 3), atol=0, rtol=0)


def test_stn_generator_transformers_start_at_identity():
    torch.manual_seed(0)
    cvae = build_cvae("mnist_stn", input_shape=(1, 12, 12), latent_dim=8).eval()
    x = torch.rand(2, 1, 12, 12)
    gen = cvae.generator
    gen.block, gen.conv = torch.nn.Identity(), _tap(5, 1, channel=3)
    torch.testing.assert_close(gen(torch.randn(2, 8), x), x, atol=1e-5, rtol=0)


def _tap(in_channels: int, out_channels: int, channel: int) -> torch.nn.Conv2d:
    """A 5×5 convolution that copies input channel ``channel`` (its centre tap), for reading a generator's warps."""
    conv = torch.nn.Conv2d(in_channels, out_channels, 5)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:, channel, 2, 2] = 1
    return conv


def test_stn_generator_translation_uses_border_padding():
    cvae = build_cvae("mnist_stn", input_shape=(1, 4, 4), latent_dim=2, n_transformers=2)
    gen = cvae.generator
    gen.block, gen.conv = torch.nn.Identity(), _tap(2, 1, channel=1)
    with torch.no_grad():
        # shift transformer 1's sampling grid one pixel right (x' = x + 2/W in normalised coords)
        gen.stns[1].fc.bias.copy_(torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.0]))
    img = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # each output pixel reads the input one column to the right; the last column is clamped
    expected = torch.cat([img[..., 1:], img[..., -1:]], dim=-1)
    for frozen in (False, True):
        cvae.requires_grad_(not frozen)
        torch.testing.assert_close(gen(torch.randn(1, 2), img), expected, atol=1e-5, rtol=0)


def _trained_like_stn(seed: int = 0):
    torch.manual_seed(seed)
    cvae = build_cvae("mnist_stn", input_shape=(1, 14, 14), latent_dim=6, n_transformers=3).eval()
    with torch.no_grad():
        for p in cvae.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a fresh STN's last layer is zero: make the warps depend on z
    return cvae


def test_stn_generator_frozen_fold_equals_layer_by_layer():
    cvae = _trained_like_stn()
    gen = cvae.generator
    z, x = torch.randn(5, 6, dtype=torch.float64), torch.rand(5, 1, 14, 14, dtype=torch.float64)
    cvae.double()
    # Reference: the layers one by one, as written in the paper's architecture.
    loc = gen.fc(z).view(5, 1, 14, 14)
    theta = torch.stack([stn.fc(stn.localization(loc)).view(5, 2, 3) for stn in gen.stns], 1)
    warped = torch.cat(
        [F.grid_sample(x, F.affine_grid(theta[:, t], [5, 1, 14, 14], align_corners=False), padding_mode="border", align_corners=False) for t in range(3)],
        dim=1,
    )
    expected = gen.conv(F.pad(gen.block(warped), (2, 2, 2, 2), mode="reflect"))
    torch.testing.assert_close(gen(z, x), expected, rtol=0, atol=1e-10)  # trainable: layer by layer
    cvae.requires_grad_(False)
    torch.testing.assert_close(gen(z, x), expected, rtol=0, atol=1e-10)  # frozen: the folded product
    with torch.no_grad():
        torch.testing.assert_close(gen(z, x), expected, rtol=0, atol=1e-10)


def test_stn_generator_fold_made_under_inference_mode_serves_a_later_attack():
    cvae = _trained_like_stn().requires_grad_(False)
    x = torch.rand(2, 1, 14, 14)
    with torch.inference_mode():
        first = cvae.generator(torch.zeros(2, 6), x)
    z = torch.zeros(2, 6, requires_grad=True)
    out = cvae.generator(z, x)
    out.sum().backward()  # the fold cached under inference mode must be saveable for backward
    torch.testing.assert_close(out.detach(), first)
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


def test_stn_generator_with_weights_made_under_inference_mode():
    with torch.inference_mode():
        cvae = _trained_like_stn().requires_grad_(False)
        x, z = torch.rand(2, 1, 14, 14), torch.randn(2, 6)
        first = cvae.generator(z, x)
        cvae.generator.stns[0].localization[1].weight.mul_(1.5)  # untracked in-place change
        changed = cvae.generator(z, x)
    assert not torch.allclose(first, changed)  # no stale cached product
    loc = cvae.generator.fc(z).view(2, 1, 14, 14)
    theta = torch.stack([stn(loc) for stn in cvae.generator.stns], 1)
    torch.testing.assert_close(cvae.generator.thetas(z), theta, rtol=1e-4, atol=1e-5)


def test_stn_generator_fold_gradient_in_z_and_cache_invalidation():
    cvae = _trained_like_stn().double().requires_grad_(False)
    gen = cvae.generator
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64)
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v: gen(v, x), (z,))
    before = gen(z, x).detach()
    with torch.no_grad():
        gen.stns[0].localization[1].weight.mul_(1.5)  # an in-place update, as an optimizer step makes
    after = gen(z, x).detach()
    cvae.requires_grad_(True)
    torch.testing.assert_close(after, gen(z, x).detach(), rtol=0, atol=1e-10)
    assert not torch.allclose(before, after)
    other = _trained_like_stn(seed=1).double()
    cvae.load_state_dict(other.state_dict())
    cvae.requires_grad_(False)
    torch.testing.assert_close(gen(z, x).detach(), other.generator(z, x).detach(), rtol=0, atol=1e-10)


def test_build_cvae_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match="unknown CVAE architecture 'mnist_stm'.*did you mean 'mnist_stn'"):
        build_cvae("mnist_stm")
    with pytest.raises(ValueError, match="valid: .*mnist_conv"):
        build_cvae("resnet")


def test_build_cvae_unknown_option_named():
    with pytest.raises(ValueError, match="'hiden'.*did you mean 'hidden'"):
        build_cvae("mnist_fc", hiden=16)
    with pytest.raises(ValueError, match="'latent_dim'"):
        build_cvae("mnist_conv", latent_dim=3)


def test_bad_input_shapes():
    with pytest.raises(ValueError, match="multiples of 4"):
        build_cvae("mnist_conv", input_shape=(1, 10, 10))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_cvae("mnist_fc", input_shape=(28, 28))
    with pytest.raises(ValueError, match="at least 3"):
        build_cvae("mnist_stn", input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="n_transformers"):
        build_cvae("mnist_stn", input_shape=(1, 6, 6), n_transformers=0)
    with pytest.raises(ValueError, match="unknown distribution"):
        build_cvae("mnist_fc", input_shape=(1, 4, 4), hidden=4, latent_dim=2, distribution="poisson")


def test_register_cvae_duplicate_and_new():
    with pytest.raises(ValueError, match="already registered"):
        register_cvae("mnist_fc")(lambda **kw: None)
    assert CVAE_ARCHITECTURES["mnist_fc"] is mnist.mnist_fc  # unchanged

    name = "_test_only_tiny"
    try:

        @register_cvae(name)
        def tiny(*, latent_dim: int = 2) -> CVAE:
            return mnist.mnist_fc(input_shape=(1, 4, 4), hidden=4, latent_dim=latent_dim)

        assert build_cvae(name, latent_dim=3).latent_shape == (3,)
        with pytest.raises(ValueError, match="'hidden'"):
            build_cvae(name, hidden=3)
    finally:
        CVAE_ARCHITECTURES.pop(name, None)
