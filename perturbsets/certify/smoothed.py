"""The smoothed classifier in the latent space of a learned perturbation set (Algorithm 2).

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
test and confidence bounds (:mod:`perturbsets.certify.statistics`) run on whole arrays.

Noise draws (since 0.x, issue 12): u = σ·ε with ε float32 standard normals from
``torch.randn``, drawn in fixed blocks of :data:`NOISE_BLOCK` input-major (input, draw)
pairs, so chunking never changes them. Earlier versions drew u = σ·Φ⁻¹(U) from float64
uniforms (three times slower); the same seed therefore gives different draws, and certified
figures differ from those versions' within the Monte-Carlo error (the statistical guarantee
is unchanged). The prior p(z | x) and σ(x) are computed once per call and broadcast over
each input's draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from perturbsets.certify.statistics import (
    check_alpha,
    check_budget,
    check_sigma,
    check_threshold_budget,
    clopper_pearson_lower,
    family_wise_reject,
    two_sided_binomial_pvalue,
)
from perturbsets.classifiers.scoring import eval_mode
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets._util.checks import positive_int

ABSTAIN = -1
NOISE_BLOCK = 1024
CORRECTIONS: tuple[str, ...] = ("none", "bonferroni", "holm")


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

    Example::

        smoothed = SmoothedClassifier(model, pset, sigma=sigma_for_radius(pset.radius, 10_000, 0.001), num_classes=10)
        cert = smoothed.certify(x, n0=100, n=10_000, alpha=0.001, batch_size=1_000)  # cert.prediction, cert.radius
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
        self.sigma = check_sigma(sigma)
        self.num_classes = int(num_classes)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma:g}, num_classes={self.num_classes}, {self.perturbation_set!r})"

    # ------------------------------------------------------------------ sampling
    def sample_counts(self, x: Tensor, n: int, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """SAMPLEUNDERNOISE of Algorithm 2 for every input of x: vote counts, int64.

        x: (N, C, H, W). Returns (N, K) or (N, K, H', W') on the perturbation set's device;
        each input's counts sum to n (per pixel). At most ``batch_size`` draws are decoded
        and classified at a time, so memory does not grow with n.

        Noise: the N·n (input, draw) pairs are ordered input-major and their latent noise
        u = σ·ε, ε ~ N(0, I) float32, is drawn in consecutive blocks of :data:`NOISE_BLOCK`
        pairs (``torch.randn(rows, latent_dim)``, the last block shorter), whatever the
        chunking. So for a given generator state the counts do not depend on
        ``batch_size`` (on the CPU; on CUDA up to non-deterministic kernels).
        """
        return self._counts(x, positive_int(n, "n"), positive_int(batch_size, "batch_size"), generator)

    def skip_counts(self, count: int, n: int, generator: torch.Generator | None) -> None:
        """Advance ``generator`` as :meth:`sample_counts` (and PREDICT) of ``count`` inputs with n draws each would, classifying nothing.

        The noise depends on the number of (input, draw) pairs alone, so a process that
        leaves a batch to another replays its draws this way (a fraction of the cost).
        """
        pset = self.perturbation_set
        _NoiseStream(count * positive_int(n, "n"), pset.latent_dim, self.sigma, generator, pset.device).skip()

    def _counts(self, x: Tensor, n: int, batch_size: int, generator: torch.Generator | None) -> Tensor:
        pset = self.perturbation_set
        pset.check_input(x)
        device = pset.device
        x = x.to(device)
        count = x.shape[0]
        counts: Tensor | None = None
        noise = _NoiseStream(count * n, pset.latent_dim, self.sigma, generator, device)
        with torch.no_grad(), eval_mode(self.model):
            # The prior depends only on x: computed once, then broadcast over each chunk's draws.
            cond = pset.condition(x)
            for first, inputs, draws in _chunks(count, n, batch_size):
                rows = inputs * draws
                span = slice(first, first + inputs)
                u = noise.take(rows).to(cond.prior.mean.dtype).view(inputs, draws, -1)
                logits = self.model(cond.select(span).decode_draws(u))
                votes = self._votes(logits, rows)
                spatial = tuple(votes.shape[1:])
                if counts is None:
                    counts = torch.zeros((count, self.num_classes, *spatial), dtype=torch.int64, device=device)
                elif tuple(counts.shape[2:]) != spatial:
                    raise ValueError(f"the model's output size changed between chunks: {spatial} vs {tuple(counts.shape[2:])}")
                counts[span] += _tally(votes.view(inputs, draws, -1), self.num_classes).view(inputs, self.num_classes, *spatial)
        assert counts is not None  # n >= 1 and a non-empty batch give at least one chunk
        return counts

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
        # max(dim).indices is argmax (the first maximal index on a tie) at about half argmax's cost
        # for (N, K, H', W') maps, whose class dimension is strided.
        return logits.max(dim=1).indices

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
        n, batch_size, alpha = positive_int(n, "n"), positive_int(batch_size, "batch_size"), check_alpha(alpha)
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
        batch_size, alpha = positive_int(batch_size, "batch_size"), check_alpha(alpha)
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
            check_threshold_budget(self.sigma, n, alpha, tau, family, target_radius)
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


def _chunks(count: int, n: int, batch_size: int):
    """(first input, number of inputs, draws per input) of each chunk, in input-major order.

    A chunk holds whole inputs (all n draws of ⌊batch_size / n⌋ inputs) when n ≤
    batch_size, else up to batch_size draws of a single input: either way the prior is
    broadcast over the draws rather than gathered per row.
    """
    if n <= batch_size:
        per = batch_size // n
        for first in range(0, count, per):
            yield first, min(per, count - first), n
    else:
        for first in range(count):
            for start in range(0, n, batch_size):
                yield first, 1, min(batch_size, n - start)


def _tally(votes: Tensor, num_classes: int) -> Tensor:
    """Votes (M, D, P) of D draws at P pixels for M inputs → counts (M, K, P) by one ``bincount``."""
    inputs, _, pixels = votes.shape
    offset = torch.arange(inputs, device=votes.device).view(-1, 1, 1) * (num_classes * pixels)
    flat = votes * pixels + torch.arange(pixels, device=votes.device) + offset
    return torch.bincount(flat.view(-1), minlength=inputs * num_classes * pixels).view(inputs, num_classes, pixels)


class _NoiseStream:
    """σ·N(0, I) float32 rows for the input-major pairs, drawn :data:`NOISE_BLOCK` pairs at a time.

    Fixed-size blocks make the draws independent of how the caller slices them.
    """

    def __init__(self, total: int, dim: int, sigma: float, generator: torch.Generator | None, device: torch.device) -> None:
        self.total, self.dim, self.sigma = total, dim, sigma
        self.generator, self.device = generator, device
        self.drawn = self.pos = 0
        self.block = torch.empty(0, dim, device=device)

    def _next_block(self) -> Tensor:
        size = min(NOISE_BLOCK, self.total - self.drawn)
        self.drawn += size
        return torch.randn(size, self.dim, generator=self.generator, device=self.device)

    def take(self, rows: int) -> Tensor:
        parts = []
        while rows > 0:
            if self.pos == self.block.shape[0]:
                self.block = self._next_block().mul_(self.sigma)
                self.pos = 0
            k = min(rows, self.block.shape[0] - self.pos)
            parts.append(self.block[self.pos : self.pos + k])
            self.pos += k
            rows -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def skip(self) -> None:
        """Draw the blocks not yet drawn and discard them: the generator then stands where taking every row leaves it."""
        while self.drawn < self.total:
            self._next_block()
