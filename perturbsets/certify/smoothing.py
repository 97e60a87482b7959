"""Randomized smoothing in the latent space of a learned perturbation set (Appendix C.2, E.6, F.3).

The smoothed classifier of Cohen et al. (2019), with the Gaussian noise moved into the
generator's latent space (paper Algorithm 2): for an input x, draw u ~ N(0, σ² I) in prior
coordinates, decode x' = g(μ(x) + u·σ(x), x) and let the base model vote argmax h(x'). The
smoothed prediction is the most voted class; with probability ≥ 1 − α it is constant on the
latent ℓ2 ball of radius σ·Φ⁻¹(p̲) around u = 0, where p̲ lower-bounds the top class's vote
probability. "Certified" is thus relative to the learned set: it is as meaningful as the
generator is accurate (Appendix C.2).

Classification models map (N, C, H, W) → logits (N, K); segmentation models → (N, K, H', W'),
and everything is then done per pixel (Appendix F.3). Abstentions are :data:`ABSTAIN` (−1)
with radius 0 — never a real class or a negative radius (unlike the authors' segmentation
code). Counting is vectorised and streamed in chunks on the model's device; the binomial
test and confidence bounds are computed with scipy on whole arrays.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from perturbsets._util.checks import positive_int
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.classifiers.scoring import eval_mode

ABSTAIN = -1
CORRECTIONS: tuple[str, ...] = ("none", "bonferroni", "holm")


class SmoothingWarning(UserWarning):
    """The requested budget (n, α, σ) cannot deliver what was asked for."""


@dataclass(frozen=True)
class Prediction:
    """What :meth:`SmoothedClassifier.predict` returns (CPU tensors).

    prediction: (N,) or (N, H', W') int64, the smoothed class or :data:`ABSTAIN`.
    counts: (N, K) or (N, K, H', W') int64 votes.
    p_value: same shape as ``prediction``, float64, two-sided binomial p-value of the top
        two counts (the prediction is returned when it is ≤ α).
    """

    prediction: Tensor
    counts: Tensor
    p_value: Tensor


@dataclass(frozen=True)
class Certificate:
    """What :meth:`SmoothedClassifier.certify` returns (CPU tensors).

    prediction: (N,) or (N, H', W') int64, the certified class or :data:`ABSTAIN`.
    radius: same shape, float64, certified latent ℓ2 radius σ·Φ⁻¹(p_lower); 0.0 where
        abstaining.
    p_lower: same shape, float64, the lower bound on the top class's vote probability the
        radius rests on. With ``correction="none"`` the per-pixel one-sided Clopper–Pearson
        bound at level 1 − α (reported also where abstaining, where it is ≤ 0.5); with
        ``"bonferroni"``/``"holm"`` the threshold τ on certified pixels (valid simultaneously
        for all of them) and 0.0 on the others, where nothing is claimed.
    p_value: with ``"bonferroni"``/``"holm"``, the unadjusted one-sided binomial p-values of
        H0: p_ĉ ≤ τ; ``None`` with ``"none"``.
    correction: the multiple-testing correction used.
    """

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor
    p_value: Tensor | None
    correction: str


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
    alpha = _check_alpha(alpha)
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
    alpha = _check_alpha(alpha)
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
    return _check_sigma(sigma) * _unanimous_quantile(positive_int(n, "n"), _check_alpha(alpha))


def sigma_for_radius(radius: float, n: int, alpha: float) -> float:
    """The noise level whose maximum certifiable radius is ``radius``: σ = r / Φ⁻¹(α^{1/n}).

    Appendix E.6 picks σ this way so that a certificate can just reach the set's ε: with
    n = 10,000 and α = 0.001, ε ∈ {2.7, 3.9, 10.2} gives σ ∈ {0.84, 1.22, 3.19}; with
    n = 1,000, ε = 17 gives 6.90 (Appendix F.3).
    """
    radius = float(radius)
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite number > 0, got {radius}")
    n, alpha = positive_int(n, "n"), _check_alpha(alpha)
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
    sigma, alpha = _check_sigma(sigma), _check_alpha(alpha)
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


def _check_threshold_budget(sigma: float, n: int, alpha: float, tau: float, m: int, radius: float | None) -> None:
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


# ---------------------------------------------------------------------------- evaluation
def certified_accuracy(radii, correct, thresholds) -> np.ndarray:
    """Fraction of examples (or pixels) certified correct at radius ≥ r, for each r in thresholds.

    ``radii`` and ``correct`` have the same shape (any; they are flattened): the certified
    radii and whether the certified prediction equals the label and is not an abstention
    (``(prediction == label) & (prediction != ABSTAIN)``). Returns an array shaped like
    ``thresholds`` with values in [0, 1] — the certified-accuracy curve of Figures 11 and 17.
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


# ---------------------------------------------------------------------------- the classifier
class SmoothedClassifier:
    """A base model smoothed over the latent noise of a learned perturbation set (Algorithm 2).

    Args:
        model: base model h, (N, C, H, W) → logits (N, K) (classification) or
            (N, K, H', W') (segmentation, handled per pixel). The task is read from the rank
            of its output. An ``nn.Module`` is put in eval mode during calls and restored.
        perturbation_set: the learned set whose generator g and prior μ(x), σ(x) are used.
        sigma: noise level σ > 0 of u ~ N(0, σ² I) in prior coordinates, the same units as
            the set's radius ε (choose it with :func:`sigma_for_radius`).
        num_classes: K ≥ 2.
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        perturbation_set: PerturbationSet,
        sigma: float,
        num_classes: int,
    ) -> None:
        if not isinstance(perturbation_set, PerturbationSet):
            raise TypeError(f"perturbation_set must be a PerturbationSet, got {type(perturbation_set).__name__}")
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.model = model
        self.perturbation_set = perturbation_set
        self.sigma = _check_sigma(sigma)
        self.num_classes = int(num_classes)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma:g}, num_classes={self.num_classes}, {self.perturbation_set!r})"

    # ------------------------------------------------------------------ sampling
    def sample_counts(self, x: Tensor, n: int, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """SAMPLEUNDERNOISE of Algorithm 2 for every input of x: vote counts, int64.

        x: (N, C, H, W). Returns (N, K) or (N, K, H', W') on the perturbation set's device;
        each input's counts sum to n (per pixel). The N·n (input, draw) pairs are processed
        ``batch_size`` at a time, so memory does not grow with n.

        Noise is drawn as u = Φ⁻¹(U) from float64 uniforms, which torch's CPU generator
        produces one after another whatever the chunk size: on CPU, for a given generator
        state, the counts do not depend on ``batch_size``.
        """
        return self._counts(x, positive_int(n, "n"), positive_int(batch_size, "batch_size"), generator)

    def _counts(self, x: Tensor, n: int, batch_size: int, generator: torch.Generator | None) -> Tensor:
        pset = self.perturbation_set
        pset.check_input(x)
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch; pass at least one input")
        device = pset.device
        x = x.to(device)
        total = x.shape[0] * n
        counts: Tensor | None = None
        with torch.no_grad(), eval_mode(self.model):
            # The prior depends only on x: compute it once, not once per draw.
            prior = pset.cvae.prior_params(x)
            for start in range(0, total, batch_size):
                pair = torch.arange(start, min(start + batch_size, total), device=device)
                owner = torch.div(pair, n, rounding_mode="floor")
                u = self._noise(pair.numel(), generator, device).to(prior.mean.dtype)
                z = prior.mean[owner] + u.view(-1, *pset.latent_shape) * prior.std[owner]
                votes = self._votes(self.model(pset.cvae.generate(z, x[owner])), pair.numel())
                spatial = tuple(votes.shape[1:])
                if counts is None:
                    counts = torch.zeros((x.shape[0], self.num_classes, *spatial), dtype=torch.int64, device=device)
                elif tuple(counts.shape[2:]) != spatial:
                    raise ValueError(f"the model's output size changed between chunks: {spatial} vs {tuple(counts.shape[2:])}")
                # Flat index of (input, class, pixel) in the contiguous counts tensor.
                size = math.prod(spatial)
                pixel = torch.arange(size, device=device).view(spatial)
                flat = (owner.view(-1, *([1] * len(spatial))) * self.num_classes + votes) * size + pixel
                counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.int64, device=device))
        assert counts is not None  # n >= 1 and a non-empty batch give at least one chunk
        return counts

    def _noise(self, count: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        uniform = torch.rand(count, self.perturbation_set.latent_dim, generator=generator, device=device, dtype=torch.float64)
        # U = 0 has probability 2⁻⁵³ per coordinate; clamping keeps Φ⁻¹ finite.
        return self.sigma * torch.special.ndtri(uniform.clamp_min(torch.finfo(torch.float64).tiny))

    def _votes(self, logits: Tensor, batch: int) -> Tensor:
        if not isinstance(logits, Tensor):
            raise TypeError(f"the model must return a tensor of logits, got {type(logits).__name__}")
        if logits.dim() not in (2, 4):
            raise ValueError(
                f"the model returned logits of rank {logits.dim()} (shape {tuple(logits.shape)}); expected rank 2 "
                "(N, K) for classification or rank 4 (N, K, H', W') for segmentation"
            )
        if logits.shape[0] != batch or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the model returned logits of shape {tuple(logits.shape)} for {batch} inputs; expected "
                f"({batch}, {self.num_classes}, ...) with num_classes={self.num_classes} on dimension 1"
            )
        return logits.argmax(dim=1)

    # ------------------------------------------------------------------ Algorithm 2
    def predict(
        self, x: Tensor, n: int, alpha: float, batch_size: int, generator: torch.Generator | None = None
    ) -> Prediction:
        """PREDICT of Algorithm 2: the smoothed class, or :data:`ABSTAIN`, per input (per pixel).

        With top-two counts c1 ≥ c2 the top class is returned when the two-sided binomial
        p-value of c1 vs c2 (:func:`two_sided_binomial_pvalue`) is ≤ α; then, with
        probability ≥ 1 − α, it is the smoothed classifier's prediction. Shapes: see
        :class:`Prediction`. Warns when n is too small to ever reach p ≤ α.
        """
        n, batch_size, alpha = positive_int(n, "n"), positive_int(batch_size, "batch_size"), _check_alpha(alpha)
        check_budget(self.sigma, None, alpha, predict_n=n)
        counts = self._counts(x, n, batch_size, generator).cpu()
        # On a tie the order of the two indices is arbitrary, but the p-value is then 1.
        top = counts.topk(2, dim=1)
        p_value = two_sided_binomial_pvalue(top.values[:, 0].numpy(), top.values[:, 1].numpy())
        prediction = torch.where(torch.from_numpy(p_value <= alpha), top.indices[:, 0], ABSTAIN)
        return Prediction(prediction=prediction, counts=counts, p_value=torch.from_numpy(p_value))

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: torch.Generator | None = None,
        *,
        correction: str = "none",
        tau: float = 0.75,
        target_radius: float | None = None,
    ) -> Certificate:
        """CERTIFY of Algorithm 2: a class and a latent ℓ2 radius per input (per pixel).

        ĉ is the most voted class over n0 draws; n fresh draws give n_A votes for ĉ, whose
        vote probability is lower-bounded by the one-sided Clopper–Pearson bound p̲ at level
        1 − α. ``correction`` decides what is certified:

        * ``"none"`` (default): certify radius σ·Φ⁻¹(p̲) where p̲ > ½, else abstain. Each
          input (and, for segmentation, each pixel separately) is wrong with probability
          ≤ α. This per-pixel procedure is what the paper (Appendix F.3) and the authors'
          code used; over the m = H'·W' pixels of an image up to α·m false certificates
          are then expected.
        * ``"bonferroni"`` / ``"holm"``: the fixed-threshold test of Fischer et al.
          ("Scalable certified segmentation via randomized smoothing", ICML 2021). For a
          threshold τ ∈ [½, 1), each pixel tests H0: p_ĉ ≤ τ with the one-sided p-value
          P(Binomial(n, τ) ≥ n_A); Bonferroni or Holm over the m pixels of each image
          controls the family-wise error, so with probability ≥ 1 − α *all* certified
          pixels of an image are correct. Certified pixels get radius σ·Φ⁻¹(τ). For
          classification m = 1 and both reduce to a single test at τ.

        The top class is chosen on draws independent of those that test it, as in Cohen et
        al.; ``generator`` advances across both. ``target_radius`` (e.g. the set's ε) only
        triggers a :class:`SmoothingWarning` if no input could be certified that far with
        this σ, n, α. Shapes and abstentions: see :class:`Certificate`.
        """
        n0, n = positive_int(n0, "n0"), positive_int(n, "n")
        batch_size, alpha = positive_int(batch_size, "batch_size"), _check_alpha(alpha)
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {correction!r}; use one of {CORRECTIONS}")
        tau = float(tau)
        if correction != "none" and not 0.5 <= tau < 1:
            raise ValueError(f"tau must lie in [0.5, 1), got {tau}")
        if correction == "none":
            check_budget(self.sigma, n, alpha, radius=target_radius)

        guess = self._counts(x, n0, batch_size, generator).argmax(dim=1)
        counts = self._counts(x, n, batch_size, generator)
        n_a = counts.gather(1, guess.unsqueeze(1)).squeeze(1).cpu().numpy()
        guess = guess.cpu()

        if correction == "none":
            p_lower = clopper_pearson_lower(n_a, n, alpha)
            # Algorithm 2: certify only if p̲ > ½ (at p̲ = ½ the radius σ·Φ⁻¹(p̲) would be 0).
            certified = p_lower > 0.5
            p_value = None
        else:
            family = math.prod(n_a.shape[1:])
            _check_threshold_budget(self.sigma, n, alpha, tau, family, target_radius)
            p_value = stats.binom.sf(n_a - 1, n, tau)
            certified = family_wise_reject(p_value.reshape(len(n_a), family), alpha, correction).reshape(n_a.shape)
            p_lower = np.where(certified, tau, 0.0)
            p_value = torch.from_numpy(p_value)
        radius = np.zeros(n_a.shape)
        radius[certified] = self.sigma * stats.norm.ppf(p_lower[certified])
        certified_t = torch.from_numpy(certified)
        return Certificate(
            prediction=torch.where(certified_t, guess, ABSTAIN),
            radius=torch.from_numpy(radius),
            p_lower=torch.from_numpy(np.asarray(p_lower, dtype=np.float64)),
            p_value=p_value,
            correction=correction,
        )


# ---------------------------------------------------------------------------- helpers
def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return alpha


def _check_sigma(sigma) -> float:
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return sigma
