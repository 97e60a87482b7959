"""Tests for perturbsets.quality: latent PGD, the six Appendix-B metrics and the report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from builders import labelled_pairs, linear_set, tiny_set
import torch
import torch.distributions as D
import torch.nn.functional as F

from perturbsets.core.latent import project, sample_truncated_normal
from perturbsets.cvae.registry import build_cvae
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.core.quality import (
    LABELS,
    METRICS,
    QualityReport,
    QualityDraws,
    approximation_errors,
    evaluate_quality,
    pixel_error,
    quality_batches,
    quality_report,
)
from perturbsets._util.sharding import BatchShard, in_batch_order
from perturbsets.core.radius import norm_statistics
from perturbsets.reports.tables import quality_table



SHAPE = (1, 8, 8)


def _pset(radius: float = 1.0, distribution: str = "bernoulli") -> PerturbationSet:
    torch.manual_seed(0)
    cvae = build_cvae("mnist_fc", input_shape=SHAPE, hidden=16, latent_dim=4, distribution=distribution)
    return PerturbationSet(cvae, radius, architecture="mnist_fc")


def _pairs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen), torch.rand(n, *SHAPE, generator=gen)


def _encoding_by_hand(cvae, x, xt, radius):
    mu_p, logvar_p = cvae.prior(x)
    mu_q, logvar_q = cvae.recognition(x, xt)
    u = (mu_q - mu_p) / torch.exp(0.5 * logvar_p)
    norms = u.norm(dim=1, keepdim=True)
    return u * torch.clamp(radius / norms, max=1.0), (mu_p, logvar_p, mu_q, logvar_q)


def _probs_at(cvae, x, u):
    mu_p, logvar_p = cvae.prior(x)
    return torch.sigmoid(cvae.generator(mu_p + u * torch.exp(0.5 * logvar_p), x))


# ---------------------------------------------------------------------------- pixel error


def test_pixel_error_bernoulli_matches_torch_bce():
    pset = _pset()
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, *SHAPE, generator=gen) * 2
    target = torch.rand(3, *SHAPE, generator=gen)
    err = pixel_error(pset, logits, target)
    ref = torch.stack([F.binary_cross_entropy(torch.sigmoid(logits[i]), target[i]) for i in range(3)])
    torch.testing.assert_close(err, ref, rtol=1e-5, atol=1e-6)
    mse = pixel_error(pset, logits, target, metric="mse")
    torch.testing.assert_close(mse, torch.stack([F.mse_loss(torch.sigmoid(logits[i]), target[i]) for i in range(3)]))
    with pytest.raises(ValueError, match="unknown metric"):
        pixel_error(pset, logits, target, metric="l1")


def test_pixel_error_gaussian_nll_is_squared_error():
    pset = _pset(distribution="gaussian")
    logits, target = torch.randn(2, *SHAPE), torch.rand(2, *SHAPE)
    expected = ((torch.sigmoid(logits) - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(pixel_error(pset, logits, target, "nll"), expected)


# ---------------------------------------------------------------------------- approximation errors


def test_approximation_errors_shapes_and_relations():
    pset = _pset(radius=1.0)
    x, xt = _pairs(6)
    errs = approximation_errors(pset, x, xt, steps=10, eae_samples=3, generator=torch.Generator().manual_seed(0))
    assert set(errs) == set(METRICS)
    for k in METRICS:
        assert errs[k].shape == (6,), k
        assert torch.isfinite(errs[k]).all() and (errs[k] >= 0).all(), k
    assert (errs["pgd_ae"] <= errs["enc_ae"]).all()
    assert (errs["oae"] >= errs["pgd_ae"]).all()


def test_enc_ae_and_kl_by_hand():
    pset = _pset(radius=0.7)
    x, xt = _pairs(5, seed=1)
    errs = approximation_errors(pset, x, xt, steps=0, eae_samples=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        u, (mu_p, logvar_p, mu_q, logvar_q) = _encoding_by_hand(pset.cvae, x, xt, 0.7)
        probs = _probs_at(pset.cvae, x, u)
    enc = torch.stack([F.binary_cross_entropy(probs[i], xt[i]) for i in range(5)])
    torch.testing.assert_close(errs["enc_ae"], enc, rtol=1e-5, atol=1e-6)
    # with no PGD steps the PGD AE is the Enc AE
    torch.testing.assert_close(errs["pgd_ae"], errs["enc_ae"])
    kl = D.kl_divergence(D.Normal(mu_q, torch.exp(0.5 * logvar_q)), D.Normal(mu_p, torch.exp(0.5 * logvar_p))).sum(1)
    torch.testing.assert_close(errs["kl"], kl, rtol=1e-5, atol=1e-5)


def test_mse_metric_by_hand():
    pset = _pset(radius=0.7)
    x, xt = _pairs(3, seed=4)
    errs = approximation_errors(pset, x, xt, steps=0, eae_samples=1, metric="mse")
    with torch.no_grad():
        u, _ = _encoding_by_hand(pset.cvae, x, xt, 0.7)
        expected = ((_probs_at(pset.cvae, x, u) - xt) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(errs["enc_ae"], expected)


def test_eae_is_expected_error_under_truncated_prior():
    pset = _pset(radius=1.2)
    x, xt = _pairs(1, seed=5)
    n = 1500
    errs = approximation_errors(pset, x, xt, steps=0, eae_samples=n, generator=torch.Generator().manual_seed(3))
    u = sample_truncated_normal(n, 4, 1.2, torch.Generator().manual_seed(99))
    with torch.no_grad():
        probs = _probs_at(pset.cvae, x.expand(n, -1, -1, -1), u)
        per = F.binary_cross_entropy(probs, xt.expand(n, -1, -1, -1), reduction="none").mean(dim=(1, 2, 3))
    se = per.std().item() / math.sqrt(n) * math.sqrt(2)
    assert errs["eae"].item() == pytest.approx(per.mean().item(), abs=5 * se + 1e-7)


def test_pgd_improves_on_encoding_for_small_radius_projection():
    # with the encodings projected onto a small ball, PGD should find strictly lower errors somewhere
    pset = _pset(radius=0.3)
    x, xt = _pairs(8, seed=6)
    errs = approximation_errors(pset, x, xt, steps=20, eae_samples=1)
    assert (errs["pgd_ae"] <= errs["enc_ae"]).all()
    assert (errs["pgd_ae"] < errs["enc_ae"]).any()


def test_approximation_errors_seeded_and_bad_input():
    pset = _pset()
    x, xt = _pairs(3)
    a = approximation_errors(pset, x, xt, steps=3, eae_samples=2, generator=torch.Generator().manual_seed(1))
    b = approximation_errors(pset, x, xt, steps=3, eae_samples=2, generator=torch.Generator().manual_seed(1))
    for k in METRICS:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match=r"takes \(N, 1, 8, 8\)"):
        approximation_errors(pset, x, torch.rand(3, 1, 7, 7))
    with pytest.raises(ValueError, match="unknown metric"):
        approximation_errors(pset, x, xt, metric="huber", steps=0, eae_samples=1)


def test_approximation_errors_conv_latent():
    torch.manual_seed(0)
    pset = PerturbationSet(build_cvae("mnist_conv", input_shape=SHAPE), 2.0)
    x, xt = _pairs(2)
    errs = approximation_errors(pset, x, xt, steps=2, eae_samples=2)
    assert all(errs[k].shape == (2,) for k in METRICS)
    assert (errs["pgd_ae"] <= errs["enc_ae"]).all()


# ---------------------------------------------------------------------------- report


def test_evaluate_quality_concatenates_in_order():
    pset = _pset()
    sizes = [2, 3, 1]
    batches = [SimpleNamespace(x=x, x_tilde=xt) for x, xt in (_pairs(n, seed=10 + i) for i, n in enumerate(sizes))]
    stats = norm_statistics(np.array([0.5, 1.0, 1.5]))
    report = evaluate_quality(pset, batches, steps=0, eae_samples=1, seed=0, latent_norms=stats)
    assert isinstance(report, QualityReport)
    assert set(report.per_example) == set(METRICS)
    assert all(v.shape == (6,) for v in report.per_example.values())
    expected_enc, expected_kl = [], []
    with torch.no_grad():
        for b in batches:
            u, (mu_p, logvar_p, mu_q, logvar_q) = _encoding_by_hand(pset.cvae, b.x, b.x_tilde, pset.radius)
            probs = _probs_at(pset.cvae, b.x, u)
            expected_enc += [F.binary_cross_entropy(probs[i], b.x_tilde[i]).item() for i in range(b.x.shape[0])]
            kl = D.kl_divergence(D.Normal(mu_q, torch.exp(0.5 * logvar_q)), D.Normal(mu_p, torch.exp(0.5 * logvar_p))).sum(1)
            expected_kl += kl.tolist()
    np.testing.assert_allclose(report.per_example["enc_ae"], expected_enc, rtol=1e-5)
    np.testing.assert_allclose(report.per_example["kl"], expected_kl, rtol=1e-5, atol=1e-6)
    assert report.latent_norms is stats and report.radius == pset.radius and report.metric == "nll"
    again = evaluate_quality(pset, batches, steps=0, eae_samples=1, seed=0)
    for k in METRICS:
        np.testing.assert_array_equal(again.per_example[k], report.per_example[k])


def _four_batches() -> list:
    """Four test batches of 8, 8, 8 and 6 pairs."""
    return list(labelled_pairs(n=30, seed=4).evaluation_batches(8, seed=1, passes=1))


QUALITY = {"steps": 3, "eae_samples": 2, "seed": 5}


def test_a_shard_that_replays_the_skipped_batches_draws_gets_the_single_process_rows():
    pset, batches = tiny_set(), _four_batches()
    whole = quality_batches(pset, batches, **QUALITY)
    ours = quality_batches(pset, batches, **QUALITY, shard=BatchShard(1, 2))
    assert sorted(whole) == [0, 1, 2, 3] and sorted(ours) == [1, 3]
    for i in ours:
        for k in METRICS:
            np.testing.assert_array_equal(ours[i][k], whole[i][k], err_msg=f"batch {i}, {k}")
    # Without the replay batch 1 would take batch 0's draws: the draws do matter here.
    alone = quality_batches(pset, batches[1:2], **QUALITY)
    assert not np.array_equal(alone[0]["eae"], whole[1]["eae"])


def test_two_shards_gather_the_unsharded_report_bitwise():
    pset, batches = tiny_set(), _four_batches()
    single = evaluate_quality(pset, batches, **QUALITY)
    parts = [quality_batches(pset, batches, **QUALITY, shard=BatchShard(r, 2)) for r in (1, 0)]
    sharded = quality_report(pset, in_batch_order(parts), "nll")
    for k in METRICS:
        np.testing.assert_array_equal(sharded.per_example[k], single.per_example[k], err_msg=k)


def test_draws_made_beforehand_are_the_draws_made_inside():
    pset = tiny_set()
    x, xt = _pairs(5)
    inside = approximation_errors(pset, x, xt, steps=2, eae_samples=3, generator=torch.Generator().manual_seed(9))
    draws = QualityDraws.draw(pset, 5, 3, torch.Generator().manual_seed(9), device=x.device, dtype=x.dtype)
    assert len(draws.eae) == 3 and draws.oae_start.shape == (5, 4) and draws.recon_noise.shape == (5, 4)
    before = approximation_errors(pset, x, xt, steps=2, draws=draws)
    for k in METRICS:
        assert torch.equal(inside[k], before[k]), k


def test_evaluate_quality_empty():
    with pytest.raises(ValueError, match="no pairs"):
        evaluate_quality(_pset(), [])


def _report() -> QualityReport:
    per = {k: np.array([1.0, 2.0, 3.0]) * (i + 1) for i, k in enumerate(METRICS)}
    return QualityReport(radius=1.5, metric="nll", per_example=per, latent_norms=norm_statistics(np.array([1.0, 2.0])))


def test_report_to_dict():
    d = _report().to_dict()
    assert set(d) == {"radius", "metric", "latent_norms", *METRICS}
    assert d["radius"] == 1.5 and d["metric"] == "nll"
    assert d["enc_ae"] == {"mean": 2.0, "std": pytest.approx(np.std([1.0, 2.0, 3.0])), "count": 3}
    assert d["kl"]["mean"] == pytest.approx(12.0)
    assert d["latent_norms"]["max"] == 2.0
    no_norms = QualityReport(1.0, "mse", {k: np.zeros(2) for k in METRICS}).to_dict()
    assert no_norms["latent_norms"] is None
    import json

    json.dumps(d)  # JSON-ready


def test_report_to_markdown_has_table4_headers():
    md = quality_table(_report().to_dict(), "RTS")
    header = md.splitlines()[0]
    for label in ("Enc. AE", "PGD AE", "EAE", "OAE", "Recon. err", "KL"):
        assert label in header
    assert header.index("Enc. AE") < header.index("PGD AE") < header.index("EAE") < header.index("OAE")
    assert "ε" in header and "| RTS | 1.5 |" in md
    assert set(LABELS) == set(METRICS)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 3 and all(r.count("|") == len(METRICS) + 3 for r in rows)


def test_quality_metrics_on_the_analytic_linear_set(device):
    """S(x) = {x + W u}: a pair inside the set has Enc AE = PGD AE = 0; OAE is the brute-force maximum."""
    pset = linear_set(dim=2, shape=(1, 2, 2), radius=1.0).to(device)
    w = pset.cvae.generator.w
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4, 1, 2, 2, generator=gen).to(device)
    u = project(torch.randn(4, 2, generator=gen), 0.9).to(device)
    x_tilde = x + (u @ w.T).view_as(x)
    errs = approximation_errors(pset, x, x_tilde, steps=200, metric="mse", generator=torch.Generator(device=device).manual_seed(0))
    assert errs["enc_ae"].abs().max() < 1e-10 and errs["pgd_ae"].abs().max() < 1e-10
    # OAE: max over the disk of mean((W v − W u)²), on a fine polar grid.
    r = torch.linspace(0, 1, 200)
    t = torch.linspace(0, 2 * math.pi, 720)
    grid = torch.stack([(r[:, None] * torch.cos(t)).flatten(), (r[:, None] * torch.sin(t)).flatten()], 1).to(device)
    brute = torch.stack([(((grid - u[i]) @ w.T) ** 2).mean(1).max() for i in range(4)])
    torch.testing.assert_close(errs["oae"], brute, atol=1e-4, rtol=1e-3)
