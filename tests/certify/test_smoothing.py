"""Tests for perturbsets.smoothing: latent randomized smoothing (paper Algorithm 2, E.6, F.3)."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from perturbsets.cvae.registry import build_cvae
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.certify.smoothed import ABSTAIN, NOISE_BLOCK, SmoothedClassifier
from perturbsets.certify.statistics import (
    SmoothingWarning,
    certified_accuracy,
    certified_accuracy_curve,
    check_budget,
    clopper_pearson_lower,
    family_wise_reject,
    max_certifiable_radius,
    sigma_for_radius,
    two_sided_binomial_pvalue,
)




SHAPE = (1, 6, 6)


@pytest.fixture
def pset() -> PerturbationSet:
    torch.manual_seed(0)
    return PerturbationSet(build_cvae("mnist_fc", input_shape=SHAPE, hidden=8, latent_dim=3), radius=3.0)


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _one_hot_logits(classes: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (B, K, ...) whose argmax over dim 1 is ``classes`` (B, ...)."""
    return nn.functional.one_hot(classes, k).movedim(-1, 1).float()


class Constant(nn.Module):
    """Always votes ``label``; records its mode and the largest batch it was called with."""

    def __init__(self, label: int = 2, k: int = 4) -> None:
        super().__init__()
        self.label, self.k = label, k
        self.modes: list[bool] = []
        self.largest = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        self.largest = max(self.largest, x.shape[0])
        return _one_hot_logits(torch.full((x.shape[0],), self.label), self.k)


class Coin(nn.Module):
    """Ignores x: votes class 0 with probability p, else class 1, from its own seeded generator."""

    def __init__(self, p: float, k: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.p, self.k, self.seed = p, k, seed
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vote = (torch.rand(x.shape[0], generator=self.gen) >= self.p).long()
        return _one_hot_logits(vote, self.k)


class PixelCoin(nn.Module):
    """Segmentation toy (B, 3, H', W'): class 1 at pixel (h, w) with probability P[h, w],
    otherwise a fair coin between classes 0 and 2. Ignores x; own seeded generator."""

    def __init__(self, prob: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        self.prob = prob
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator().manual_seed(self.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One draw per sample holds both uniforms, so the stream does not depend on the batching.
        u, coin = torch.rand(x.shape[0], 2, *self.prob.shape, generator=self.gen).unbind(1)
        coin = coin < 0.5
        vote = torch.where(u < self.prob, 1, torch.where(coin, 0, 2))
        return _one_hot_logits(vote, 3)


class HashHead(nn.Module):
    """A fixed classifier that is very sensitive to the noise: class ⌊50·⟨w, x⟩⌋ mod K."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.k = k
        self.w = torch.randn(math.prod(SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = x.flatten(1).double() @ self.w
        return _one_hot_logits(torch.floor(50 * proj).long() % self.k, self.k)


@contextmanager
def _quiet():
    """Turn every warning into an error: well-budgeted calls must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------- statistics
def test_clopper_pearson_matches_scipy_exact_interval():
    for alpha in (0.001, 0.05):
        for n in (1, 2, 5, 10, 37, 100):
            k = np.arange(n + 1)
            ours = clopper_pearson_lower(k, n, alpha)
            ref = [stats.binomtest(int(kk), n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low for kk in k]
            np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)
    # Unanimous votes give the E.6 bound α^(1/n).
    assert clopper_pearson_lower(10000, 10000, 0.001) == pytest.approx(0.001 ** (1 / 10000), rel=1e-12)


def test_two_sided_pvalue_matches_binomtest_including_ties_and_empty():
    pairs = [(a, b) for total in range(1, 61) for a in range(total + 1) for b in [total - a]]
    pairs += [(5000, 4900), (4900, 5000), (10000, 0), (0, 10000), (5000, 5000), (51, 49), (1, 0), (7, 7)]
    c1 = np.array([p[0] for p in pairs])
    c2 = np.array([p[1] for p in pairs])
    ours = two_sided_binomial_pvalue(c1, c2)
    ref = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue for a, b in pairs])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert np.all(ours[c1 == c2] == 1.0)
    # binomtest rejects n = 0; no votes at all means no evidence: p = 1, so predict abstains.
    assert two_sided_binomial_pvalue(0, 0) == 1.0


def test_family_wise_reject_bonferroni_and_holm():
    p = np.array([[0.01, 0.5, 0.015, 0.02], [0.2, 0.3, 0.001, 0.9]])
    bonf = family_wise_reject(p, 0.05, "bonferroni")
    holm = family_wise_reject(p, 0.05, "holm")
    np.testing.assert_array_equal(bonf, [[True, False, False, False], [False, False, True, False]])
    # Holm: 0.01 <= .05/4, 0.015 <= .05/3, 0.02 <= .05/2, 0.5 > .05 → three rejections.
    np.testing.assert_array_equal(holm, [[True, False, True, True], [False, False, True, False]])
    with pytest.raises(ValueError, match="method"):
        family_wise_reject(p, 0.05, "bh")


def test_sigma_for_radius_reproduces_the_paper():
    for eps, n, sigma in [(2.7, 10000, 0.84), (3.9, 10000, 1.22), (10.2, 10000, 3.19), (17, 1000, 6.90)]:
        s = sigma_for_radius(eps, n, 0.001)
        assert round(s, 2) == sigma
        assert max_certifiable_radius(s, n, 0.001) == pytest.approx(eps, rel=1e-12)
    assert max_certifiable_radius(1.0, 10000, 0.001) == pytest.approx(stats.norm.ppf(0.001 ** (1 / 10000)), rel=1e-9)
    with pytest.raises(ValueError, match="unanimous"):
        sigma_for_radius(1.0, 5, 0.001)
    with pytest.raises(ValueError):
        sigma_for_radius(0.0, 100, 0.001)


def test_certified_accuracy_against_a_loop():
    rng = np.random.default_rng(0)
    radii = np.round(rng.exponential(1.0, size=300), 1)
    radii[rng.random(300) < 0.2] = 0.0
    correct = rng.random(300) < 0.7
    thresholds = np.array([0.0, 0.1, 0.5, 1.0, 1.3, 2.0, 10.0])
    slow = [sum(1 for r, c in zip(radii, correct) if c and r >= t) / len(radii) for t in thresholds]
    np.testing.assert_allclose(certified_accuracy(radii, correct, thresholds), slow)
    # Per-pixel maps are flattened (Figure 17 counts pixels).
    np.testing.assert_allclose(certified_accuracy(radii.reshape(3, 10, 10), correct.reshape(3, 10, 10), thresholds), slow)
    grid, acc = certified_accuracy_curve(radii, correct, num=50, max_radius=5.0)
    assert grid[0] == 0.0 and grid[-1] == 5.0 and grid.shape == acc.shape == (50,)
    assert np.all(np.diff(acc) <= 0) and acc[0] == pytest.approx(correct.mean())
    with pytest.raises(ValueError, match="same shape"):
        certified_accuracy(radii, correct[:-1], thresholds)


# ---------------------------------------------------------------------------- counting
def test_counts_match_a_one_draw_at_a_time_loop_and_do_not_depend_on_batch_size(pset):
    model = HashHead()
    sigma, n, seed = 2.0, 40, 11
    clf = SmoothedClassifier(model, pset, sigma, 4)
    x = _inputs(3)
    chunked = clf.sample_counts(x, n, 7, torch.Generator().manual_seed(seed))
    whole = clf.sample_counts(x, n, 1000, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)

    # Same noise, drawn as documented (u = σ·ε, ε float32 N(0, I) in blocks of NOISE_BLOCK
    # input-major pairs), one draw at a time through PerturbationSet.perturb.
    gen = torch.Generator().manual_seed(seed)
    u = torch.cat([
        sigma * torch.randn(min(NOISE_BLOCK, 3 * n - s), pset.latent_dim, generator=gen)
        for s in range(0, 3 * n, NOISE_BLOCK)
    ])
    slow = torch.zeros(3, 4, dtype=torch.int64)
    with torch.no_grad():
        for i in range(3):
            for t in range(n):
                label = model(pset.perturb(x[i : i + 1], u[i * n + t : i * n + t + 1])).argmax(1).item()
                slow[i, label] += 1
    torch.testing.assert_close(chunked, slow, rtol=0, atol=0)
    assert (slow > 0).sum(1).min() >= 2  # the noise really changes the votes


def test_noise_is_standard_normal_and_independent_of_chunking(pset, monkeypatch):
    import perturbsets.certify.smoothed as smoothed

    monkeypatch.setattr(smoothed, "NOISE_BLOCK", 64)  # several blocks, chunks straddling them
    stream = smoothed._NoiseStream(1000, 5, 2.0, torch.Generator().manual_seed(4), torch.device("cpu"))
    parts = [stream.take(k) for k in (1, 63, 100, 7, 829)]
    whole = smoothed._NoiseStream(1000, 5, 2.0, torch.Generator().manual_seed(4), torch.device("cpu")).take(1000)
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert whole.dtype == torch.float32
    # KS test of ε = u / σ against the standard normal.
    assert stats.kstest((whole / 2.0).double().flatten().numpy(), "norm").pvalue > 1e-3
    model = HashHead()
    clf = SmoothedClassifier(model, pset, 2.0, 4)
    x = _inputs(3)
    a = clf.sample_counts(x, 50, 7, torch.Generator().manual_seed(2))
    b = clf.sample_counts(x, 50, 120, torch.Generator().manual_seed(2))
    c = clf.sample_counts(x, 50, 1000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_streaming_chunks_never_exceed_batch_size(pset):
    model = Constant()
    clf = SmoothedClassifier(model, pset, 1.0, 4)
    counts = clf.sample_counts(_inputs(3), 23, 5)
    assert counts.dtype == torch.int64 and counts.shape == (3, 4)
    assert counts.sum(1).tolist() == [23, 23, 23]
    assert model.largest == 5


def test_segmentation_counts_match_a_per_pixel_loop(pset):
    prob = torch.tensor([[1.0, 0.9, 0.5, 0.0]]).expand(3, 4)
    model = PixelCoin(prob, seed=5)
    clf = SmoothedClassifier(model, pset, 1.0, 3)
    counts = clf.sample_counts(_inputs(2), 17, 6)
    assert counts.shape == (2, 3, 3, 4)
    assert (counts.sum(1) == 17).all()

    model.reset()
    slow = np.zeros((2, 3, 3, 4), dtype=np.int64)
    for i in range(2):
        for _ in range(17):
            vote = model(torch.zeros(1, *SHAPE)).argmax(1)[0]
            for h in range(3):
                for w in range(4):
                    slow[i, vote[h, w], h, w] += 1
    np.testing.assert_array_equal(counts.numpy(), slow)


def test_model_mode_is_restored_even_on_error(pset):
    model = Constant()
    model.extra = nn.Linear(1, 1)
    model.train()
    model.extra.eval()
    clf = SmoothedClassifier(model, pset, 1.0, 4)
    clf.predict(_inputs(2), 20, 0.01, 8)
    assert model.modes and not any(model.modes)
    assert model.training and not model.extra.training

    wrong = SmoothedClassifier(model, pset, 1.0, 5)  # the model has 4 classes
    with pytest.raises(ValueError, match="num_classes=5"):
        wrong.sample_counts(_inputs(1), 3, 2)
    assert model.training and not model.extra.training


def test_output_rank_is_checked(pset):
    clf = SmoothedClassifier(lambda x: torch.zeros(x.shape[0], 4, 5), pset, 1.0, 4)
    with pytest.raises(ValueError, match="rank 3"):
        clf.sample_counts(_inputs(1), 3, 2)


# ---------------------------------------------------------------------------- predict / certify
def test_constant_classifier_certifies_the_maximum_radius(pset):
    sigma, n, alpha = 0.7, 500, 0.001
    clf = SmoothedClassifier(Constant(label=2), pset, sigma, 4)
    x = _inputs(4)
    with _quiet():
        cert = clf.certify(x, 10, n, alpha, 128, torch.Generator().manual_seed(0))
        pred = clf.predict(x, 100, alpha, 64)
    assert cert.prediction.tolist() == [2] * 4
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))
    np.testing.assert_allclose(cert.radius.numpy(), expected, rtol=1e-9)
    assert expected == pytest.approx(max_certifiable_radius(sigma, n, alpha), rel=1e-9)
    assert pred.prediction.tolist() == [2] * 4
    assert pred.counts[:, 2].tolist() == [100] * 4


def test_fair_coin_classifier_abstains(pset):
    clf = SmoothedClassifier(Coin(0.5, seed=1), pset, 1.0, 3)
    x = _inputs(4)
    pred = clf.predict(x, 200, 0.001, 64)
    assert pred.prediction.tolist() == [ABSTAIN] * 4
    assert (pred.p_value > 0.001).all()
    assert (pred.counts.sum(1) == 200).all()
    cert = clf.certify(x, 10, 200, 0.001, 64)
    assert cert.prediction.tolist() == [ABSTAIN] * 4 and (cert.radius == 0).all()
    assert (cert.p_lower < 0.5).all()


def test_false_certification_rate_is_at_most_alpha(pset):
    """P(p̲ > true vote probability of ĉ) ≤ α: the Clopper–Pearson guarantee, checked by Monte Carlo."""
    p_true, alpha, trials = 0.7, 0.05, 2000
    model = Coin(p_true, seed=2)
    clf = SmoothedClassifier(model, pset, 1.0, 3)
    x = torch.rand(1, *SHAPE).expand(trials, *SHAPE)
    cert = clf.certify(x, 5, 60, alpha, 8192, torch.Generator().manual_seed(4))
    assert (cert.prediction != ABSTAIN).float().mean() > 0.5  # the test has power: most trials certify
    # Replay the n0 selection draws to learn which class each bound is about (also where abstaining).
    model.reset()
    guess = clf.sample_counts(x, 5, 8192, torch.Generator().manual_seed(4)).argmax(1).numpy()
    truth = np.where(guess == 0, p_true, 1 - p_true)
    false_rate = np.mean(cert.p_lower.numpy() > truth)
    assert false_rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_holm_controls_the_family_wise_error(pset):
    """Every pixel has p_ĉ ≤ τ, so any certified pixel is false: per image this happens ≤ α."""
    tau, alpha, images = 0.75, 0.05, 400
    model = PixelCoin(torch.full((4, 4), tau), seed=6)
    clf = SmoothedClassifier(model, pset, 1.0, 3)
    cert = clf.certify(torch.rand(1, *SHAPE).expand(images, *SHAPE), 1, 40, alpha, 4096, correction="holm", tau=tau)
    any_false = (cert.prediction != ABSTAIN).flatten(1).any(1).float().mean().item()
    assert any_false <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / images)


def _segmentation_setup(pset, prob):
    model = PixelCoin(prob, seed=9)
    return model, SmoothedClassifier(model, pset, 0.8, 3)


def test_segmentation_certify_against_a_per_pixel_loop(pset):
    prob = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)  # left half class 1, right half a coin
    model, clf = _segmentation_setup(pset, prob)
    x, n0, n, alpha = _inputs(2), 20, 100, 0.001
    cert = clf.certify(x, n0, n, alpha, 64, torch.Generator().manual_seed(3))
    assert cert.prediction.shape == cert.radius.shape == cert.p_lower.shape == (2, 4, 4)
    assert (cert.prediction[:, :, :2] == 1).all()
    assert (cert.prediction[:, :, 2:] == ABSTAIN).all() and (cert.radius[:, :, 2:] == 0).all()
    assert (cert.radius >= 0).all()

    # Same draws again, then bounds computed pixel by pixel with scipy's scalar interval.
    model.reset()
    g = torch.Generator().manual_seed(3)
    counts0 = clf.sample_counts(x, n0, 64, g).numpy()
    counts = clf.sample_counts(x, n, 64, g).numpy()
    for i in range(2):
        for h in range(4):
            for w in range(4):
                top = int(np.argmax(counts0[i, :, h, w]))
                n_a = int(counts[i, top, h, w])
                low = stats.binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
                assert cert.p_lower[i, h, w].item() == pytest.approx(low, rel=1e-10, abs=1e-14)
                if low < 0.5:
                    assert cert.prediction[i, h, w] == ABSTAIN and cert.radius[i, h, w] == 0.0
                else:
                    assert cert.prediction[i, h, w] == top
                    assert cert.radius[i, h, w].item() == pytest.approx(0.8 * stats.norm.ppf(low), rel=1e-10)


def test_segmentation_predict_per_pixel(pset):
    prob = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).expand(4, 4)
    model, clf = _segmentation_setup(pset, prob)
    pred = clf.predict(_inputs(2), 150, 0.001, 64)
    assert pred.prediction.shape == pred.p_value.shape == (2, 4, 4) and pred.counts.shape == (2, 3, 4, 4)
    assert (pred.prediction[:, :, :2] == 1).all() and (pred.prediction[:, :, 2:] == ABSTAIN).all()
    for i, h, w in np.ndindex(2, 4, 4):
        c = sorted(pred.counts[i, :, h, w].tolist(), reverse=True)
        assert pred.p_value[i, h, w].item() == pytest.approx(stats.binomtest(c[0], c[0] + c[1], 0.5).pvalue, rel=1e-12)


def _slow_holm(p: list[float], alpha: float) -> list[bool]:
    reject = [False] * len(p)
    for rank, i in enumerate(sorted(range(len(p)), key=lambda j: p[j])):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


def test_segmentation_corrections(pset):
    prob = torch.tensor([[1.0, 0.97, 0.93, 0.9, 0.85, 0.0]]).expand(4, 6)
    x, n0, n, alpha, tau = _inputs(2), 20, 120, 0.01, 0.75
    certs = {}
    for correction in ("none", "bonferroni", "holm"):
        model, clf = _segmentation_setup(pset, prob)
        certs[correction] = clf.certify(x, n0, n, alpha, 64, torch.Generator().manual_seed(8), correction=correction, tau=tau)
    on = {k: c.prediction != ABSTAIN for k, c in certs.items()}
    assert (on["bonferroni"] <= on["holm"]).all() and (on["holm"] <= on["none"]).all()
    # With these seeds Holm's step-down keeps pixels Bonferroni drops (a fixed, seeded outcome).
    assert 0 < on["bonferroni"].sum() < on["holm"].sum() < on["none"].sum()
    for k in ("bonferroni", "holm"):
        c = certs[k]
        assert (c.radius[on[k]] == pytest.approx(0.8 * stats.norm.ppf(tau))) and (c.radius[~on[k]] == 0).all()
        assert (c.p_lower[on[k]] == tau).all() and (c.p_lower[~on[k]] == 0).all()
        # Same ĉ as without correction (same draws), only fewer pixels kept.
        assert (c.prediction[on[k]] == certs["none"].prediction[on[k]]).all()

    # Against a scalar loop: binomial tail P(Bin(n, τ) ≥ n_A), then Bonferroni / Holm per image.
    model, clf = _segmentation_setup(pset, prob)
    g = torch.Generator().manual_seed(8)
    guess = clf.sample_counts(x, n0, 64, g).argmax(1)
    n_a = clf.sample_counts(x, n, 64, g).gather(1, guess.unsqueeze(1)).squeeze(1).numpy()
    for i in range(2):
        p = [stats.binomtest(int(k), n, tau, alternative="greater").pvalue for k in n_a[i].ravel()]
        np.testing.assert_allclose(certs["holm"].p_value[i].numpy().ravel(), p, rtol=1e-9)
        assert on["bonferroni"][i].numpy().ravel().tolist() == [q <= alpha / len(p) for q in p]
        assert on["holm"][i].numpy().ravel().tolist() == _slow_holm(p, alpha)


def test_classification_with_correction_is_a_single_threshold_test(pset):
    clf = SmoothedClassifier(Constant(label=1), pset, 0.5, 4)
    cert = clf.certify(_inputs(3), 5, 50, 0.01, 64, correction="bonferroni", tau=0.8)
    assert cert.prediction.tolist() == [1] * 3
    np.testing.assert_allclose(cert.radius.numpy(), 0.5 * stats.norm.ppf(0.8))
    np.testing.assert_allclose(cert.p_value.numpy(), 0.8**50)


def test_certify_abstains_at_a_lower_bound_of_exactly_one_half(pset):
    """Algorithm 2 certifies only if p̲ > 0.5: one unanimous vote at α = 0.5 gives p̲ = Beta⁻¹(0.5; 1, 1) = 0.5."""
    assert stats.beta.ppf(0.5, 1, 1) == 0.5
    cert = SmoothedClassifier(Constant(label=2), pset, 1.0, 4).certify(_inputs(3), 1, 1, 0.5, 8)
    assert cert.p_lower.tolist() == [0.5] * 3
    assert cert.prediction.tolist() == [ABSTAIN] * 3 and cert.radius.tolist() == [0.0] * 3
    # Just above one half, it certifies (with a tiny positive radius).
    cert = SmoothedClassifier(Constant(label=2), pset, 1.0, 4).certify(_inputs(3), 1, 1, 0.51, 8)
    assert cert.prediction.tolist() == [2] * 3 and (cert.radius > 0).all()


# ---------------------------------------------------------------------------- validation and warnings
def test_bad_arguments_raise_value_error(pset):
    model = Constant()
    for sigma in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            SmoothedClassifier(model, pset, sigma, 4)
    with pytest.raises(ValueError, match="num_classes"):
        SmoothedClassifier(model, pset, 1.0, 1)
    clf = SmoothedClassifier(model, pset, 1.0, 4)
    x = _inputs(2)
    bad_calls = {
        "n0": lambda: clf.certify(x, 0, 100, 0.01, 10),
        "n must": lambda: clf.certify(x, 10, 0, 0.01, 10),
        "alpha": lambda: clf.certify(x, 10, 100, 1.5, 10),
        "batch_size": lambda: clf.certify(x, 10, 100, 0.01, 0),
        "correction": lambda: clf.certify(x, 10, 100, 0.01, 10, correction="bh"),
        "tau": lambda: clf.certify(x, 10, 100, 0.01, 10, correction="holm", tau=1.0),
        "alpha ": lambda: clf.predict(x, 100, 0.0, 10),
        "n must ": lambda: clf.predict(x, 2.5, 0.01, 10),
        "batch_size ": lambda: clf.sample_counts(x, 10, -3),
        "shape": lambda: clf.predict(torch.rand(2, 1, 5, 5), 100, 0.01, 10),
        "empty": lambda: clf.sample_counts(torch.rand(0, *SHAPE), 10, 10),
    }
    for match, call in bad_calls.items():
        with pytest.raises(ValueError, match=match.strip()):
            call()


def test_budget_warnings(pset):
    clf = SmoothedClassifier(Constant(label=0), pset, 0.5, 4)
    x = _inputs(1)
    with pytest.warns(SmoothingWarning, match="always abstains"):
        pred = clf.predict(x, 5, 0.001, 8)  # 2·0.5^5 = 0.0625 > 0.001
    assert pred.prediction.tolist() == [ABSTAIN]
    with pytest.warns(SmoothingWarning, match="unreachable"):
        clf.certify(x, 5, 100, 0.001, 64, target_radius=5.0)
    with pytest.warns(SmoothingWarning, match="always abstains"):
        cert = clf.certify(x, 5, 5, 0.001, 64)  # 0.001^(1/5) ≈ 0.25 < 0.5
    assert cert.prediction.tolist() == [ABSTAIN]
    with pytest.warns(SmoothingWarning, match="always abstains"):
        clf.certify(x, 5, 20, 0.001, 64, correction="holm", tau=0.75)  # 0.75^20 > 0.001
    with pytest.warns(SmoothingWarning, match="unreachable"):
        clf.certify(x, 5, 100, 0.001, 64, correction="bonferroni", tau=0.75, target_radius=1.0)
    with _quiet():
        check_budget(sigma_for_radius(2.7, 10000, 0.001), 10000, 0.001, radius=2.7, predict_n=100)
        clf.certify(x, 5, 100, 0.001, 64, target_radius=0.7)  # reach 0.75
    with pytest.raises(ValueError, match="needs the number"):
        check_budget(1.0, None, 0.001, radius=1.0)
