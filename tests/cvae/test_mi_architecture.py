"""The Multi-Illumination U-Net CVAE ``mi_unet`` (Appendix F.1)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import reference_listing

from perturbsets.cvae.model import LOGVAR_MAX, LOGVAR_MIN
from perturbsets.cvae.registry import build_cvae

SMALL = dict(chs=[8, 8, 8, 8, 8], latent_dim=[4, 4, 2, 2, 2], pool=[[31, 46], [15, 23], [7, 11], [3, 5], [1, 2]])


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_cvae("mi_unet", input_shape=[3, 31, 46], **SMALL)


def test_state_dict_equals_reference_listing():
    header, entries = reference_listing("mi_unet")
    with torch.device("meta"):  # 258M parameters: shapes only, no memory
        cvae = build_cvae("mi_unet")
    assert [(k, tuple(v.shape)) for k, v in cvae.state_dict().items()] == entries
    assert f"{sum(p.numel() for p in cvae.parameters())} trainable parameters" in header[1]
    assert cvae.latent_dim == 256 and cvae.distribution == "gaussian" and cvae.input_shape == (3, 125, 187)


def test_weights_load_across_resolutions(small):
    big = build_cvae("mi_unet", input_shape=[3, 62, 93], **SMALL)
    big.load_state_dict(small.state_dict(), strict=True)  # fine-tuning MIP5 -> MIP4 reuses every weight


@pytest.mark.parametrize("size", [(31, 46), (62, 93), (40, 57)])
def test_forward_at_any_resolution(small, size):
    g = torch.Generator().manual_seed(1)
    x, xt = torch.rand(2, 3, *size, generator=g), torch.rand(2, 3, *size, generator=g)
    small.eval()
    out = small(x, xt)
    assert out.reconstruction.shape == (2, 3, *size) and out.z.shape == (2, 14)
    assert torch.isfinite(out.reconstruction).all()
    assert ((out.reconstruction >= 0) & (out.reconstruction <= 1)).all()
    for dist in (out.prior, out.posterior):
        assert dist.mean.shape == (2, 14)
        assert (dist.logvar >= LOGVAR_MIN - 1e-5).all() and (dist.logvar <= LOGVAR_MAX + 1e-5).all()


def test_each_latent_block_reaches_its_own_skip_level(small):
    """Block i of z enters only through fc.i: zeroing fc.i's weights removes its effect."""
    small.eval()
    x = torch.rand(1, 3, 31, 46, generator=torch.Generator().manual_seed(2))
    z = torch.zeros(1, 14)
    base = small.generate(z, x)
    starts = [0, 4, 8, 10, 12]
    for level, start in enumerate(starts):
        dz = z.clone()
        dz[0, start] = 5.0
        assert not torch.allclose(small.generate(dz, x), base)
        silenced = copy.deepcopy(small)
        torch.nn.init.zeros_(silenced.generator.fc[level].weight)
        torch.testing.assert_close(silenced.generate(dz, x), silenced.generate(z, x))


def test_encoder_matches_an_explicit_computation():
    """mean_i = fc1_i(flatten(adaptive_pool(relu(conv_i(feature_i))))) at every level, concatenated."""
    pool = [[5, 7], [4, 5], [3, 3], [2, 2], [1, 1]]  # uneven bins at every level
    model = build_cvae("mi_unet", input_shape=[3, 31, 46], **{**SMALL, "pool": pool}).eval()
    x = torch.rand(2, 3, 31, 46, generator=torch.Generator().manual_seed(3))
    prior = model.prior
    feats = [prior.inc(x)]
    for block in (prior.down1, prior.down2, prior.down3, prior.down4):
        feats.append(block(feats[-1]))
    means = []
    for i, (feat, (h, w)) in enumerate(zip(feats, pool)):
        pooled = torch.stack(
            [
                torch.stack([F.relu(prior.conv[i](feat))[:, :, rs, cs].mean((-2, -1)) for cs in _bins(feat.shape[-1], w)], -1)
                for rs in _bins(feat.shape[-2], h)
            ],
            -2,
        )  # slow adaptive average pool: PyTorch's floor/ceil bins
        means.append(prior.fc1[i](pooled.flatten(1)))
    torch.testing.assert_close(model.prior_params(x).mean, torch.cat(means, 1))


def _bins(size: int, out: int) -> list[slice]:
    return [slice((k * size) // out, -(-((k + 1) * size) // out)) for k in range(out)]


def test_gradient_checkpointing_changes_nothing(small):
    a = copy.deepcopy(small).train()
    b = copy.deepcopy(small).train()
    for net in (b.prior, b.recognition, b.generator):
        net.checkpoint = True
    g = torch.Generator().manual_seed(4)
    x, xt, noise = torch.rand(2, 3, 31, 46, generator=g), torch.rand(2, 3, 31, 46, generator=g), torch.randn(2, 14, generator=g)
    for model in (a, b):
        model.loss(model(x, xt, noise), xt, 1.0).total.backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), key  # BatchNorm statistics updated once, not twice


def test_gradcheck_generator_in_z():
    torch.manual_seed(5)
    tiny = build_cvae("mi_unet", input_shape=[1, 16, 16], chs=[2, 2, 2, 2, 2], latent_dim=[1, 1, 1, 1, 1],
                      pool=[[16, 16], [8, 8], [4, 4], [2, 2], [1, 1]]).double().eval()  # fmt: skip
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    z = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: tiny.generate(v, x), (z,))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"chs": [8, 8, 8]}, "five positive entries"),
        ({"pool": [[1, 1]] * 4}, "five positive"),
        ({"input_shape": [3, 8, 8]}, "H, W >= 16"),
        ({"distribution": "poisson"}, "unknown distribution"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        build_cvae("mi_unet", **{**SMALL, "input_shape": [3, 31, 46], **options})
