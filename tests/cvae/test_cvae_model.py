"""Tests for perturbsets.cvae: KL, reconstruction likelihoods, ScaledTanh, Gaussian, CVAE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from perturbsets.cvae.model import (
    CVAE,
    CVAELoss,
    CVAEOutput,
    Gaussian,
    ScaledTanh,
    kl_divergence,
    logvar_head,
    output_activation,
    reconstruction_nll,
)
from perturbsets.cvae.registry import build_cvae




def _gaussian(shape, gen, dtype=torch.float64) -> Gaussian:
    mean = torch.randn(shape, generator=gen, dtype=dtype) * 2
    logvar = torch.randn(shape, generator=gen, dtype=dtype) * 1.5
    return Gaussian(mean, logvar)


def _tiny_cvae(**kw) -> CVAE:
    torch.manual_seed(0)
    return build_cvae("mnist_fc", input_shape=(1, 8, 8), hidden=16, latent_dim=4, **kw)


# ---------------------------------------------------------------------------- KL


@pytest.mark.parametrize("shape", [(5, 3), (4, 7), (3, 6, 2, 2), (2, 1)])
def test_kl_matches_torch_distributions(shape):
    gen = torch.Generator().manual_seed(1)
    q, p = _gaussian(shape, gen), _gaussian(shape, gen)
    ours = kl_divergence(q, p)
    ref = D.kl_divergence(D.Normal(q.mean, q.logvar.mul(0.5).exp()), D.Normal(p.mean, p.logvar.mul(0.5).exp()))
    ref = ref.reshape(shape[0], -1).sum(1)
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    gen = torch.Generator().manual_seed(2)
    q = _gaussian((6, 5), gen)
    torch.testing.assert_close(kl_divergence(q, q), torch.zeros(6, dtype=torch.float64))
    p = _gaussian((6, 5), gen)
    assert (kl_divergence(q, p) > 0).all()


def test_kl_analytic_scalar():
    # KL(N(1, 4) || N(0, 1)) = 0.5 * (4 + 1 - 1 - ln 4)
    q = Gaussian(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[math.log(4.0)]], dtype=torch.float64))
    p = Gaussian(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    assert kl_divergence(q, p).item() == pytest.approx(0.5 * (4 + 1 - 1 - math.log(4)), rel=1e-12)


def test_kl_gradcheck():
    gen = torch.Generator().manual_seed(3)
    q, p = _gaussian((2, 3), gen), _gaussian((2, 3), gen)
    params = [t.clone().requires_grad_(True) for t in (q.mean, q.logvar, p.mean, p.logvar)]
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: kl_divergence(Gaussian(a, b), Gaussian(c, d)), params, eps=1e-6, atol=1e-5
    )


# ---------------------------------------------------------------------------- reconstruction


def test_bernoulli_nll_binary_targets_matches_torch_bernoulli():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 1, 5, 5, generator=gen, dtype=torch.float64) * 3
    target = (torch.rand(4, 1, 5, 5, generator=gen, dtype=torch.float64) > 0.5).double()
    ours = reconstruction_nll(logits, target, "bernoulli")
    ref = -D.Bernoulli(probs=torch.sigmoid(logits)).log_prob(target).reshape(4, -1).sum(1)
    assert ours.shape == (4,)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_bernoulli_nll_fractional_targets_matches_hand_bce():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) * 2
    target = torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    p = 1 / (1 + torch.exp(-logits))
    hand = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    ours = reconstruction_nll(logits, target, "bernoulli")
    torch.testing.assert_close(ours, hand.reshape(3, -1).sum(1), rtol=1e-9, atol=1e-9)


def test_bernoulli_nll_is_stable_for_extreme_logits():
    logits = torch.tensor([[[[60.0, -60.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    out = reconstruction_nll(logits, target, "bernoulli")
    assert torch.isfinite(out).all() and out.item() < 1e-20


@pytest.mark.parametrize("variance", [1.0, 0.5, 3.0])
def test_gaussian_nll_is_the_normal_log_density_without_its_constant(variance):
    """Equation 5: p(x̃ | z, x) = N(g, variance·I); variance 1 by default (the paper)."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    target = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    m = 16
    constant = 0.5 * m * math.log(2 * math.pi * variance)
    for activation, mean in (("sigmoid", torch.sigmoid(logits)), ("identity", logits)):
        density = torch.distributions.Normal(mean, math.sqrt(variance))
        expected = -density.log_prob(target).reshape(3, -1).sum(1) - constant
        ours = reconstruction_nll(logits, target, "gaussian", activation=activation, variance=variance)
        torch.testing.assert_close(ours, expected)
        if variance == 1.0 and activation == "sigmoid":
            torch.testing.assert_close(reconstruction_nll(logits, target, "gaussian"), expected)


def test_gaussian_variance_one_half_is_the_authors_sum_of_squared_errors():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    target = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    expected = torch.tensor([float(((logits[i] - target[i]) ** 2).sum()) for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(reconstruction_nll(logits, target, "gaussian", "identity", variance=0.5), expected)


def test_reconstruction_bad_args():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown distribution"):
        reconstruction_nll(x, x, "poisson")
    with pytest.raises(ValueError, match="unknown output activation"):
        reconstruction_nll(x, x, "gaussian", activation="relu")
    with pytest.raises(ValueError, match="variance must be > 0"):
        reconstruction_nll(x, x, "gaussian", variance=0.0)
    with pytest.raises(ValueError, match="unknown output activation"):
        output_activation(x, "softmax")


# ---------------------------------------------------------------------------- ScaledTanh


def test_scaled_tanh_range_and_value_at_zero():
    act = ScaledTanh()
    a = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    out = act(a)
    lo, hi = math.log(1e-3), math.log(10.0)
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()
    assert out.min().item() == pytest.approx(lo, abs=1e-9)
    assert out.max().item() == pytest.approx(hi, abs=1e-9)
    assert act(torch.tensor(0.0, dtype=torch.float64)).item() == pytest.approx(math.log(0.1), abs=1e-12)
    # decreasing: a → +∞ gives ln 1e-3, a → −∞ gives ln 10
    assert (out[1:] <= out[:-1]).all()
    assert act(torch.tensor(1.0)).item() < act(torch.tensor(-1.0)).item()
    assert act(torch.tensor(50.0)).item() == pytest.approx(lo, abs=1e-6)
    assert act(torch.tensor(-50.0)).item() == pytest.approx(hi, abs=1e-6)


def test_scaled_tanh_custom_bounds_and_bad_bounds():
    act = ScaledTanh(-1.0, 3.0)
    assert act(torch.tensor(0.0)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lower < upper"):
        ScaledTanh(2.0, 1.0)


def test_scaled_tanh_gradcheck():
    a = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    assert torch.autograd.gradcheck(ScaledTanh(), (a,))


def test_logvar_head():
    assert isinstance(logvar_head("scaled_tanh"), ScaledTanh)
    x = torch.randn(3)
    assert torch.equal(logvar_head("linear")(x), x)
    with pytest.raises(ValueError, match="unknown logvar head"):
        logvar_head("softplus")


# ---------------------------------------------------------------------------- Gaussian


def test_gaussian_rsample_with_noise_and_std():
    gen = torch.Generator().manual_seed(8)
    g = _gaussian((3, 4), gen)
    noise = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(g.std, torch.sqrt(torch.exp(g.logvar)))
    torch.testing.assert_close(g.rsample(noise), g.mean + noise * torch.sqrt(torch.exp(g.logvar)))
    torch.manual_seed(0)
    s = g.rsample()
    assert s.shape == g.mean.shape and not torch.equal(s, g.mean)


def test_gaussian_rsample_statistics():
    g = Gaussian(torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(9.0)))
    torch.manual_seed(0)
    s = g.rsample()
    assert s.mean().item() == pytest.approx(2.0, abs=0.1)
    assert s.std().item() == pytest.approx(3.0, abs=0.1)


def test_cvae_forward_shapes():
    cvae = _tiny_cvae()
    x, xt = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    out = cvae(x, xt)
    assert isinstance(out, CVAEOutput)
    assert out.reconstruction.shape == (5, 1, 8, 8)
    assert out.logits.shape == (5, 1, 8, 8)
    assert out.prior.mean.shape == out.prior.logvar.shape == (5, 4)
    assert out.posterior.mean.shape == out.posterior.logvar.shape == (5, 4)
    assert out.z.shape == (5, 4)
    assert ((out.reconstruction >= 0) & (out.reconstruction <= 1)).all()
    torch.testing.assert_close(out.reconstruction, torch.sigmoid(out.logits))
    assert cvae.latent_dim == 4 and cvae.latent_shape == (4,) and cvae.input_shape == (1, 8, 8)


def test_cvae_forward_with_noise_uses_posterior_reparameterisation():
    cvae = _tiny_cvae()
    x, xt = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    noise = torch.randn(3, 4)
    out = cvae(x, xt, noise)
    mu_q, logvar_q = cvae.recognition(x, xt)
    torch.testing.assert_close(out.z, mu_q + noise * torch.exp(0.5 * logvar_q))
    torch.testing.assert_close(out.logits, cvae.generator(out.z, x))
    mu_p, logvar_p = cvae.prior(x)
    torch.testing.assert_close(out.prior.mean, mu_p)
    torch.testing.assert_close(out.prior.logvar, logvar_p)


def test_cvae_conv_latent_is_4d():
    torch.manual_seed(0)
    cvae = build_cvae("mnist_conv", input_shape=(1, 8, 8))
    out = cvae(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))
    assert out.z.shape == (2, 128, 2, 2) and out.reconstruction.shape == (2, 1, 8, 8)
    assert cvae.latent_dim == 128 * 4


@pytest.mark.parametrize("distribution", ["bernoulli", "gaussian"])
def test_cvae_loss_total_is_mean_of_recon_plus_beta_kl(distribution):
    cvae = _tiny_cvae(distribution=distribution)
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(6, 1, 8, 8, generator=gen)
    xt = (torch.rand(6, 1, 8, 8, generator=gen) > 0.5).float()
    with torch.no_grad():
        out = cvae(x, xt, torch.randn(6, 4, generator=gen))
    beta = 0.37
    loss = cvae.loss(out, xt, beta)
    assert isinstance(loss, CVAELoss)
    assert loss.reconstruction.shape == (6,) and loss.kl.shape == (6,) and loss.total.dim() == 0
    prob = torch.sigmoid(out.logits)
    if distribution == "bernoulli":
        recon = -D.Bernoulli(probs=prob.double()).log_prob(xt.double()).reshape(6, -1).sum(1)
    else:
        # N(g, I) of Equation 5, without its constant.
        recon = 0.5 * ((prob.double() - xt.double()) ** 2).reshape(6, -1).sum(1)
    q, p = out.posterior, out.prior
    kl = D.kl_divergence(
        D.Normal(q.mean.double(), q.logvar.double().mul(0.5).exp()), D.Normal(p.mean.double(), p.logvar.double().mul(0.5).exp())
    ).sum(1)
    torch.testing.assert_close(loss.reconstruction.double(), recon, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.kl.double(), kl, rtol=1e-4, atol=1e-4)
    assert loss.total.item() == pytest.approx(float((recon + beta * kl).mean()), rel=1e-4)
    assert loss.objective.item() == pytest.approx(float((recon + beta * kl).sum()), rel=1e-4)


def test_cvae_loss_backprop_reaches_all_subnetworks():
    cvae = _tiny_cvae()
    x, xt = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    cvae.loss(cvae(x, xt), xt, 1.0).total.backward()
    for name in ("prior", "recognition", "generator"):
        grads = [p.grad for p in getattr(cvae, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name


def test_cvae_bad_construction_args():
    parts = _tiny_cvae()
    kw = dict(input_shape=(1, 8, 8), latent_shape=(4,))
    with pytest.raises(ValueError, match="unknown distribution"):
        CVAE(parts.prior, parts.recognition, parts.generator, distribution="laplace", **kw)
    with pytest.raises(ValueError, match="unknown output activation"):
        CVAE(parts.prior, parts.recognition, parts.generator, output="tanh", **kw)
    with pytest.raises(ValueError, match="Bernoulli"):
        CVAE(parts.prior, parts.recognition, parts.generator, distribution="bernoulli", output="identity", **kw)
    ok = CVAE(parts.prior, parts.recognition, parts.generator, distribution="gaussian", output="identity", **kw)
    z = torch.randn(2, 4)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(ok.generate(z, x), parts.generator(z, x))
