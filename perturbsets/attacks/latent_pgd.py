"""Attacks inside a learned perturbation set (paper Section 5, Appendix C, Algorithm 1).

An attack is a small callable object: ``attack(x, y) -> AttackOutput(x_adv, u)``. The base
class owns what every attack needs: eval mode for the attacked model (restored afterwards),
input and label checks, and the device of the perturbation set.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn

from perturbsets.cvae.model import Gaussian
from perturbsets.core.latent import latent_norm, project, sample_uniform_ball, to_latent
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.classifiers.scoring import (
    IGNORE_INDEX,
    check_labels,
    eval_mode,
    per_example_error,
    per_example_loss,
)


SELECTIONS: tuple[str, ...] = ("final", "best")


class GradientMaskingWarning(UserWarning):
    """The attack's gradient through the generator is zero: the model may mask gradients."""


class AttackOutput(NamedTuple):
    """x_adv: (N, C, H, W) perturbed inputs in S(x); u: (N, latent_dim) their latent points."""

    x_adv: Tensor
    u: Tensor


class Attack:
    """Base class: attacks ``model`` within ``perturbation_set``.

    Subclasses implement :meth:`perturb`; calling the attack puts the model in eval mode
    (BatchNorm uses running statistics, nothing is updated) and restores its mode after.
    """

    def __init__(self, model: nn.Module, perturbation_set: PerturbationSet, *, ignore_index: int = IGNORE_INDEX) -> None:
        self.model = model
        self.perturbation_set = perturbation_set
        self.ignore_index = ignore_index

    def __call__(self, x: Tensor, y: Tensor) -> AttackOutput:
        self.perturbation_set.check_input(x)
        with eval_mode(self.model):
            return self.perturb(x, y)

    def perturb(self, x: Tensor, y: Tensor) -> AttackOutput:
        raise NotImplementedError


class LatentPGD(Attack):
    r"""Projected gradient ascent on the model's loss over the latent ball ‖u‖₂ ≤ ε.

    Maximises ℓ(h(g(μ(x) + u·σ(x), x)), y) in the prior coordinates u (before the
    reparameterisation) with normalised ℓ2 gradient steps u ← Proj_ε(u + α·∇/‖∇‖₂), each
    example projected onto its own ball. The defaults are Algorithm 1 exactly: start at
    u = 0, take all T steps, return the final iterate — the point adversarial training
    trains on. There is no clamp in latent space: the generator's output stays in the data
    range by construction.

    For evaluation a stronger variant is usual (the library's robust evaluation uses it):
    ``early_stop=True`` freezes an example at its first misclassifying iterate (for
    segmentation: once at least ``pixel_fraction`` of its scored pixels are wrong),
    ``select="best"`` returns, per example, the misclassifying iterate with the highest
    loss over all iterates, or else the iterate with the highest loss, and
    ``random_start``/``restarts`` add uniform starts in the ball (the worst case over the
    restarts is kept).

    Args:
        model: maps (N, C, H, W) in the data range to logits (N, K) or (N, K, H, W).
        perturbation_set: the learned set S(x).
        eps: radius ε (default: the set's own radius). A larger radius leaves the set and
            is refused unless ``allow_larger_radius``.
        steps: T gradient steps (paper: 50 for evaluation, 7 for training).
        step_size: α (default ε/20; the paper trains with ε/5).
        random_start: start uniformly in the ball instead of at u = 0.
        restarts: independent random starts; the worst case over them is kept.
        early_stop: stop updating an example once it is misclassified.
        select: ``"final"`` (Algorithm 1: the last iterate) or ``"best"`` (the worst case
            over all iterates).
        pixel_fraction: segmentation only, fraction of wrong pixels that counts as success.
        generator: torch generator for the random starts.

    Call: ``attack(x, y) -> AttackOutput(x_adv (N, C, H, W), u (N, latent_dim))``.

    Example::

        attack = LatentPGD(model, pset, eps=pset.radius, steps=7, step_size=pset.radius / 5)  # Algorithm 1
        x_adv, u = attack(x, y)
    """

    def __init__(
        self,
        model: nn.Module,
        perturbation_set: PerturbationSet,
        eps: float | None = None,
        steps: int = 50,
        step_size: float | None = None,
        random_start: bool = False,
        *,
        restarts: int = 1,
        early_stop: bool = False,
        select: str = "final",
        pixel_fraction: float = 1.0,
        allow_larger_radius: bool = False,
        ignore_index: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(model, perturbation_set, ignore_index=ignore_index)
        eps = perturbation_set.radius if eps is None else float(eps)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if eps > perturbation_set.radius * (1 + 1e-9) and not allow_larger_radius:
            raise ValueError(
                f"eps = {eps:.4g} exceeds the perturbation set's radius {perturbation_set.radius:.4g}: points beyond it "
                "are outside the learned set; pass allow_larger_radius=True to attack there anyway"
            )
        if steps < 0 or restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if restarts > 1 and not random_start:
            raise ValueError(f"restarts={restarts} would repeat the same attack from u = 0; pass random_start=True")
        if not 0 < pixel_fraction <= 1:
            raise ValueError(f"pixel_fraction must lie in (0, 1], got {pixel_fraction}")
        self.eps = eps
        self.steps = int(steps)
        self.step_size = eps / 20 if step_size is None else float(step_size)
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size}")
        self.random_start = random_start
        self.restarts = int(restarts)
        self.early_stop = early_stop
        self.select = select
        self.pixel_fraction = pixel_fraction
        self.generator = generator

    def _success(self, logits: Tensor, y: Tensor) -> Tensor:
        err = per_example_error(logits, y, self.ignore_index)
        return err >= self.pixel_fraction - 1e-12 if logits.dim() == 4 else err > 0

    def perturb(self, x: Tensor, y: Tensor) -> AttackOutput:
        pset, model = self.perturbation_set, self.model
        n, dim = x.shape[0], pset.latent_dim
        cvae = pset.cvae
        with torch.no_grad():
            prior = cvae.prior_params(x)

        checked = False

        def evaluate(u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            """Logits and per-example losses at u for the examples ``idx`` (the active ones)."""
            nonlocal checked
            part = Gaussian(prior.mean[idx], prior.logvar[idx])
            logits = model(cvae.generate(to_latent(u.view(-1, *pset.latent_shape), part), x[idx]))
            if not checked:
                check_labels(logits, y[idx], self.ignore_index)
                checked = True
            return logits, per_example_loss(logits, y[idx], self.ignore_index)

        best_u = torch.zeros(n, dim, device=x.device, dtype=x.dtype)
        best_loss = torch.full((n,), -float("inf"), device=x.device, dtype=x.dtype)
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        warned = False
        for _ in range(self.restarts):
            u = (
                sample_uniform_ball(n, dim, self.eps, self.generator, device=x.device, dtype=x.dtype)
                if self.random_start
                else torch.zeros(n, dim, device=x.device, dtype=x.dtype)
            )
            active = torch.ones(n, dtype=torch.bool, device=x.device)
            # Algorithm 1 with one start needs no forward pass at its final iterate.
            last = self.steps if (self.select == "best" or self.restarts > 1) else self.steps - 1
            for step in range(last + 1):
                # Frozen examples (early stop) cost nothing: only the active ones are evaluated.
                idx = active.nonzero().squeeze(1)
                u_a = u[idx].requires_grad_(True)
                with torch.enable_grad():
                    logits, loss = evaluate(u_a, idx)
                    grad = torch.autograd.grad(loss.sum(), u_a)[0] if step < self.steps else None
                with torch.no_grad():
                    u_a, loss = u_a.detach(), loss.detach()
                    success = self._success(logits, y[idx])
                    if self.early_stop:
                        active[idx[success]] = False
                    # Once every example is frozen, u is final.
                    done = grad is None or not bool(active.any())
                    # An example frozen now is at its final iterate: record it for select="final" too.
                    record = torch.ones_like(success) if (self.select == "best" or done) else success & ~active[idx]
                    held = best_success[idx]
                    # Success beats failure; among equals the higher loss wins.
                    better = record & ((success & ~held) | ((success == held) & (loss > best_loss[idx])))
                    best_u[idx[better]] = u_a[better]
                    best_loss[idx[better]] = loss[better]
                    best_success[idx[record]] |= success[record]
                    if done:
                        break
                    moving = active[idx]
                    norms = latent_norm(grad)
                    if not warned and step == 0 and bool((norms[moving] == 0).all()):
                        warnings.warn(
                            "the gradient of the loss through the generator is exactly zero for every example: the model "
                            "may mask gradients (non-differentiable layers, saturated outputs), so this attack finds nothing",
                            GradientMaskingWarning,
                            stacklevel=3,
                        )
                        warned = True
                    stepped = project(u_a + self.step_size * grad / norms.clamp_min(1e-12).unsqueeze(1), self.eps)
                    u[idx[moving]] = stepped[moving]
            if last < self.steps:
                best_u = u
        with torch.no_grad():
            x_adv = cvae.generate(to_latent(best_u.view(n, *pset.latent_shape), prior), x)
        return AttackOutput(x_adv.detach(), best_u)
