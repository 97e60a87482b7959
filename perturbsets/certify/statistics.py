"""The statistics of randomized smoothing (Cohen et al. 2019; paper Algorithm 2, Appendix E.6, F.3).

Binomial tests and Clopper–Pearson bounds on vote counts, family-wise corrections for
per-pixel certificates, the noise level σ that reaches a radius, budget warnings, and
certified-accuracy curves. Everything works element-wise on NumPy arrays via scipy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from perturbsets._util.checks import positive_finite, positive_int


class SmoothingWarning(UserWarning):
    """The requested budget (n, α, σ) cannot deliver what was asked for."""


# ---------------------------------------------------------------------------- statistics
def two_sided_binomial_pvalue(c1, c2) -> np.ndarray:
    """Two-sided p-value of H0: c1 ~ Binomial(c1 + c2, ½), element-wise over arrays.

    Equals ``scipy.stats.binomtest(c1, c1 + c2, 0.5).pvalue`` (BINOMPVALUE of Algorithm 2):
    for p = ½ the outcomes at least as unlikely as the observed split are the two tails
    {X ≤ min(c1, c2)} and {X ≥ max(c1, c2)}, summed as scipy does (cdf + sf, capped at 1).
    Ties, including c1 = c2 = 0, give 1 (where scipy's scalar test rejects n = 0).
    """
    c1 = np.asarray(c1, dtype=np.int64)
    c2 = np.asarray(c2, dtype=np.int64)
    if np.any(c1 < 0) or np.any(c2 < 0):
        raise ValueError("vote counts must be >= 0")
    n = c1 + c2
    low, high = np.minimum(c1, c2), np.maximum(c1, c2)
    p = np.minimum(1.0, stats.binom.cdf(low, n, 0.5) + stats.binom.sf(high - 1, n, 0.5))
    return np.where(c1 == c2, 1.0, p)


def clopper_pearson_lower(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on p from k ~ Binomial(n, p), element-wise.

    p̲ = Beta⁻¹(α; k, n − k + 1), and 0 for k = 0 (LOWERCONFIDENCEBOUND of Algorithm 2). It
    is the lower end of the two-sided exact interval at confidence 1 − 2α. With k = n it is
    α^{1/n}, the largest bound n votes can give (Appendix E.6).
    """
    alpha = check_alpha(alpha)
    k = np.asarray(k, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= k <= n for every count")
    # Beta(0, ·) is undefined; k = 0 carries no evidence, so the bound is 0 there.
    bound = stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
    return np.where(k == 0, 0.0, bound)


def family_wise_reject(p_values, alpha: float, method: str) -> np.ndarray:
    """Which hypotheses to reject among the last axis of ``p_values`` at family-wise level α.

    ``p_values`` has shape (..., m); each row along the last axis is one family (the pixels
    of one image). ``"bonferroni"`` rejects p ≤ α/m; ``"holm"`` is the step-down version:
    sort the row, reject p_(1), …, p_(j) as long as p_(i) ≤ α/(m − i + 1) for all i ≤ j.
    Holm rejects a superset of Bonferroni with the same guarantee. Returns a bool array of
    the same shape.
    """
    alpha = check_alpha(alpha)
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"p_values needs a non-empty last axis (the family), got shape {p.shape}")
    m = p.shape[-1]
    if method == "bonferroni":
        return p <= alpha / m
    if method == "holm":
        order = np.argsort(p, axis=-1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=-1)
        # Step-down: the first failure stops all later (larger) p-values from rejecting.
        accepted = np.logical_and.accumulate(ranked <= alpha / (m - np.arange(m)), axis=-1)
        reject = np.empty_like(accepted)
        np.put_along_axis(reject, order, accepted, axis=-1)
        return reject
    raise ValueError(f"unknown multiple-testing method {method!r}; use 'bonferroni' or 'holm'")


def _unanimous_quantile(n: int, alpha: float) -> float:
    """Φ⁻¹(α^{1/n}), computed as Φ̄⁻¹(1 − α^{1/n}) with expm1 because α^{1/n} → 1 for large n."""
    return float(stats.norm.isf(-math.expm1(math.log(alpha) / n)))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """σ·Φ⁻¹(α^{1/n}): the radius certified by n unanimous votes (Appendix E.6).

    No certificate from n samples at level α can exceed it. It is negative when
    α^{1/n} < ½ (n < log₂(1/α)): then even a unanimous vote abstains.
    """
    return check_sigma(sigma) * _unanimous_quantile(positive_int(n, "n"), check_alpha(alpha))


def sigma_for_radius(radius: float, n: int, alpha: float) -> float:
    """The noise level whose maximum certifiable radius is ``radius``: σ = r / Φ⁻¹(α^{1/n}).

    Appendix E.6 picks σ this way so that a certificate can just reach the set's ε: with
    n = 10,000 and α = 0.001, ε ∈ {2.7, 3.9, 10.2} gives σ ∈ {0.84, 1.22, 3.19}; with
    n = 1,000, ε = 17 gives 6.90 (Appendix F.3).

    Example::

        sigma_for_radius(10.2, n=10_000, alpha=0.001)  # 3.19, the largest CIFAR-10-C σ (Appendix E.6)
    """
    radius = positive_finite(radius, "radius")
    n, alpha = positive_int(n, "n"), check_alpha(alpha)
    quantile = _unanimous_quantile(n, alpha)
    if quantile <= 0:
        raise ValueError(
            f"with n={n} and alpha={alpha} even a unanimous vote cannot certify (α^(1/n) <= 0.5); "
            f"use n >= {math.ceil(math.log2(1 / alpha))}"
        )
    return radius / quantile


def check_budget(
    sigma: float, n: int | None, alpha: float, radius: float | None = None, predict_n: int | None = None
) -> None:
    """Warn (:class:`SmoothingWarning`) when a smoothing budget cannot do what is asked.

    * ``n`` (certification samples): warns when even n unanimous votes abstain
      (α^{1/n} < ½), and when ``radius`` exceeds :func:`max_certifiable_radius` — no
      example could ever be certified that far.
    * ``predict_n`` (prediction samples): warns when a unanimous vote's two-sided p-value
      min(1, 2·½^n) exceeds α, i.e. prediction would always abstain.
    """
    sigma, alpha = check_sigma(sigma), check_alpha(alpha)
    if n is not None:
        reach = max_certifiable_radius(sigma, n, alpha)
        if reach < 0:
            warnings.warn(
                f"certification with n={n} at alpha={alpha} always abstains: a unanimous vote's lower bound "
                f"α^(1/n)={alpha ** (1 / n):.4g} is below 0.5; use n >= {math.ceil(math.log2(1 / alpha))}",
                SmoothingWarning,
                stacklevel=3,
            )
        # The relative slack keeps σ from sigma_for_radius(radius, n, α) from warning on rounding.
        elif radius is not None and radius > reach * (1 + 1e-12):
            warnings.warn(
                f"radius {radius:g} is unreachable: sigma={sigma:g}, n={n}, alpha={alpha} certify at most "
                f"σ·Φ⁻¹(α^(1/n)) = {reach:.4g}; use sigma >= {sigma_for_radius(radius, n, alpha):.4g} or more samples",
                SmoothingWarning,
                stacklevel=3,
            )
    elif radius is not None:
        raise ValueError("checking a radius needs the number of certification samples n")
    if predict_n is not None:
        predict_n = positive_int(predict_n, "predict_n")
        if math.log(2) + predict_n * math.log(0.5) > math.log(alpha):
            warnings.warn(
                f"prediction with n={predict_n} at alpha={alpha} always abstains: even a unanimous vote has "
                f"p-value 2·0.5^n = {min(1.0, 2 * 0.5**predict_n):.4g} > alpha; use n >= "
                f"{math.ceil(math.log2(2 / alpha))}",
                SmoothingWarning,
                stacklevel=3,
            )


def check_threshold_budget(sigma: float, n: int, alpha: float, tau: float, m: int, radius: float | None) -> None:
    """The :func:`check_budget` of the fixed-threshold test: certifying needs τ^n ≤ α/m."""
    if n * math.log(tau) > math.log(alpha / m):
        warnings.warn(
            f"certification with correction over m={m} tests always abstains: even n={n} unanimous votes give "
            f"p-value τ^n = {tau**n:.4g} > alpha/m = {alpha / m:.4g}; use more samples or a smaller tau",
            SmoothingWarning,
            stacklevel=3,
        )
    elif radius is not None and radius > sigma * stats.norm.ppf(tau):
        warnings.warn(
            f"radius {radius:g} is unreachable: with a fixed threshold tau={tau} every certified pixel gets "
            f"σ·Φ⁻¹(τ) = {sigma * stats.norm.ppf(tau):.4g}",
            SmoothingWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- certified accuracy
def certified_accuracy(radii, correct, thresholds) -> np.ndarray:
    """Fraction of examples (or pixels) certified correct at radius ≥ r, for each r in thresholds.

    ``radii`` and ``correct`` have the same shape (any; they are flattened): the certified
    radii and whether the certified prediction equals the label and is not an abstention
    (``(prediction == label) & (prediction != ABSTAIN)``). Returns an array shaped like
    ``thresholds`` with values in [0, 1] — the certified-accuracy curve of Figures 11 and 17.

    Example::

        certified_accuracy(cert.radius, (cert.prediction == y) & (cert.prediction != ABSTAIN), [0.0, 1.0])
    """
    radii = np.asarray(radii, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if radii.shape != correct.shape:
        raise ValueError(f"radii {radii.shape} and correct {correct.shape} must have the same shape")
    if radii.size == 0:
        raise ValueError("certified_accuracy needs at least one example")
    certified = np.sort(radii[correct])
    # searchsorted(left) counts radii < r, so the remainder are the radii >= r.
    at_least = certified.size - np.searchsorted(certified, np.asarray(thresholds, dtype=np.float64), side="left")
    return at_least / radii.size


def certified_accuracy_curve(
    radii, correct, num: int = 200, max_radius: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(grid, accuracy) for plotting: ``num`` radii evenly spaced on [0, max_radius].

    ``max_radius`` defaults to the largest radius in ``radii``; pass the set's ε to show the
    whole perturbation set (as Figure 17 does). See :func:`certified_accuracy`.
    """
    if num < 2:
        raise ValueError(f"num must be >= 2, got {num}")
    top = float(np.max(np.asarray(radii, dtype=np.float64))) if max_radius is None else float(max_radius)
    grid = np.linspace(0.0, max(top, 0.0), num)
    return grid, certified_accuracy(radii, correct, grid)


# ---------------------------------------------------------------------------- argument checks
def check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return alpha


def check_sigma(sigma) -> float:
    return positive_finite(sigma, "sigma")
