"""Tests for perturbsets.radius: validation latent norms, their statistics and the radius rule."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from perturbsets.cvae.registry import build_cvae
from perturbsets.core.radius import LatentNormStats, RadiusSpec, latent_norms, norm_statistics, select_radius




def _cvae(name: str = "mnist_fc"):
    torch.manual_seed(0)
    if name == "mnist_fc":
        return build_cvae("mnist_fc", input_shape=(1, 8, 8), hidden=16, latent_dim=4)
    return build_cvae("mnist_conv", input_shape=(1, 8, 8))


def _batches(sizes, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [SimpleNamespace(x=torch.rand(n, 1, 8, 8, generator=gen), x_tilde=torch.rand(n, 1, 8, 8, generator=gen)) for n in sizes]


def _slow_norms(cvae, batches) -> list[float]:
    out = []
    with torch.no_grad():
        for b in batches:
            for i in range(b.x.shape[0]):
                x, xt = b.x[i : i + 1], b.x_tilde[i : i + 1]
                mu_p, logvar_p = cvae.prior(x)
                mu_q, _ = cvae.recognition(x, xt)
                u = ((mu_q - mu_p) / torch.exp(0.5 * logvar_p)).flatten().tolist()
                out.append(math.sqrt(sum(v * v for v in u)))
    return out


@pytest.mark.parametrize("name", ["mnist_fc", "mnist_conv"])
def test_latent_norms_match_per_example_loop(name):
    cvae = _cvae(name).eval()
    batches = _batches([3, 1, 4])
    norms = latent_norms(cvae, batches)
    assert isinstance(norms, np.ndarray) and norms.shape == (8,) and norms.dtype == np.float64
    np.testing.assert_allclose(norms, _slow_norms(cvae, batches), rtol=1e-5)


def test_latent_norms_eval_mode_and_restores_training_flag():
    torch.manual_seed(0)
    cvae = build_cvae("mnist_stn", input_shape=(1, 8, 8), latent_dim=3)  # has BatchNorm
    batches = _batches([4])
    cvae.eval()
    ref = latent_norms(cvae, batches)
    assert not cvae.training
    cvae.train()
    got = latent_norms(cvae, batches)
    assert cvae.training  # restored
    np.testing.assert_array_equal(got, ref)  # computed in eval mode, running stats untouched
    assert cvae.prior.block.bn1.num_batches_tracked.item() == 0


def test_latent_norms_empty():
    with pytest.raises(ValueError, match="empty"):
        latent_norms(_cvae(), [])


def test_norm_statistics_against_python_statistics():
    rng = np.random.default_rng(0)
    norms = rng.gamma(3.0, 1.0, size=101)
    s = norm_statistics(norms)
    assert isinstance(s, LatentNormStats)
    values = sorted(norms.tolist())
    assert s.count == 101
    assert s.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert s.std == pytest.approx(statistics.pstdev(values), rel=1e-10)
    assert s.min == values[0] and s.max == values[-1]

    def percentile(q):  # linear interpolation between order statistics
        pos = q / 100 * (len(values) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (pos - lo) * (values[hi] - values[lo])

    assert set(s.percentiles) == {"p25", "p50", "p75", "p99.9"}
    for key, q in [("p25", 25), ("p50", 50), ("p75", 75), ("p99.9", 99.9)]:
        assert s.percentiles[key] == pytest.approx(percentile(q), rel=1e-12)
    d = s.to_dict()
    assert d["count"] == 101 and d["percentiles"]["p50"] == s.percentiles["p50"]
    custom = norm_statistics(norms, percentiles=[10, 90])
    assert set(custom.percentiles) == {"p10", "p90"}


def test_norm_statistics_bad_input():
    with pytest.raises(ValueError, match="no latent norms"):
        norm_statistics(np.array([]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        norm_statistics(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        norm_statistics(np.array([1.0, np.inf]))


def test_select_radius_rules():
    norms = np.array([0.5, 2.0, 1.0, 4.0, 3.0])
    assert select_radius(norms) == 4.0
    assert select_radius(norms, "max") == 4.0
    # p75 of [0.5, 1, 2, 3, 4]: position 3 → 3.0; p50 → 2.0; p10: 0.5 + 0.4·0.5 = 0.7
    assert select_radius(norms, "p75") == pytest.approx(3.0)
    assert select_radius(norms, "p50") == pytest.approx(2.0)
    assert select_radius(norms, "p10") == pytest.approx(0.7)
    assert select_radius(norms, "p100") == 4.0
    assert select_radius(norms, 2.5) == 2.5
    assert select_radius(norms, 3) == 3.0 and isinstance(select_radius(norms, 3), float)


@pytest.mark.parametrize("rule,match", [
    ("median", "unknown radius rule"),
    ("p0", "percentile rule"),
    ("p101", "percentile rule"),
    ("pfoo", "percentile rule"),
    ("p", "percentile rule"),
    (0, "must be a finite number > 0"),
    (-1.5, "must be a finite number > 0"),
    (float("nan"), "must be a finite number > 0"),
    (float("inf"), "must be a finite number > 0"),
    (True, "unknown radius rule"),
])
def test_select_radius_bad_rules(rule, match):
    with pytest.raises(ValueError, match=match):
        select_radius(np.array([1.0, 2.0]), rule)


def test_select_radius_degenerate_norms():
    with pytest.raises(ValueError, match="prior mean"):
        select_radius(np.zeros(4), "max")
    with pytest.raises(ValueError, match="no latent norms"):
        select_radius(np.array([]), "max")


def test_max_radius_covers_every_validation_encoding():
    cvae = _cvae().eval()
    batches = _batches([5, 6], seed=3)
    radius = select_radius(latent_norms(cvae, batches), "max")
    slow = _slow_norms(cvae, batches)
    assert max(slow) == pytest.approx(radius, rel=1e-5)
    assert all(n <= radius * (1 + 1e-5) for n in slow)
    p50 = select_radius(latent_norms(cvae, batches), "p50")
    inside = sum(n <= p50 for n in slow)
    assert 5 <= inside <= 6


# ---------------------------------------------------------------------------- RadiusSpec


@pytest.mark.parametrize("spec,kind,text", [(2.5, "value", "2.5"), (3, "value", "3"), ("max", "max", "max"), ("p75", "percentile", "p75"), ("p99.9", "percentile", "p99.9")])
def test_radius_spec_parses_and_prints_back(spec, kind, text):
    parsed = RadiusSpec.parse(spec)
    assert parsed.kind == kind and str(parsed) == text
    assert kind == "value" or RadiusSpec.parse(str(parsed)) == parsed
    assert RadiusSpec.parse(parsed) is parsed


def test_radius_spec_select_matches_numpy_and_resolve_reads_the_stored_statistics():
    norms = np.array([0.5, 1.0, 2.0, 4.0])
    assert RadiusSpec.parse("max").select(norms) == 4.0
    assert RadiusSpec.parse("p50").select(norms) == pytest.approx(np.percentile(norms, 50))
    stats = norm_statistics(norms)
    assert RadiusSpec.parse("p75").resolve(9.0, stats) == pytest.approx(np.percentile(norms, 75))
    assert RadiusSpec.parse("max").resolve(9.0, stats) == 9.0
    assert RadiusSpec.parse(1.5).resolve(9.0, None) == 1.5
    with pytest.raises(ValueError, match="stores no such percentile"):
        RadiusSpec.parse("p10").resolve(9.0, stats)
    with pytest.raises(ValueError, match="stores no such percentile.*none"):
        RadiusSpec.parse("p50").resolve(9.0, None)


@pytest.mark.parametrize("spec,match", [(None, "unknown radius rule"), ("huge", "unknown radius rule"), (-1, "finite number > 0"), ([1], "unknown radius rule"), ("p0", "percentile rule")])
def test_radius_spec_bad_input(spec, match):
    with pytest.raises(ValueError, match=match):
        RadiusSpec.parse(spec)
