"""Latent PGD: projected gradient ascent on a model's loss inside a learned set (Algorithm 1)."""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from perturbsets._util.checks import positive_finite
from perturbsets.attacks.base import Attack, AttackOutput, GradientMaskingWarning
from perturbsets.classifiers.scoring import IGNORE_INDEX, check_labels, per_example_error, per_example_loss
from perturbsets.core.latent import sample_uniform_ball
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.core.pgd import SELECTIONS, AscentResult, projected_ascent


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
        draw_rows: how the random starts of a batch of n examples are drawn: called as
            ``draw_rows(draw, n)``, where ``draw(m)`` returns m starts (m, latent_dim), it
            returns the batch's n rows. ``None``: ``draw(n)``. Data-parallel training passes
            :meth:`perturbsets.training.distributed.StepDraws.per_example`, which draws the
            starts of the whole global batch and keeps this process's rows, so the starts
            do not depend on the number of processes.

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
        draw_rows: Callable[[Callable[[int], Tensor], int], Tensor] | None = None,
    ) -> None:
        super().__init__(model, perturbation_set, ignore_index=ignore_index)
        eps = perturbation_set.radius if eps is None else positive_finite(eps, "eps")
        if eps > perturbation_set.radius * (1 + 1e-9) and not allow_larger_radius:
            raise ValueError(
                f"eps = {eps:.4g} exceeds the perturbation set's radius {perturbation_set.radius:.4g}: points beyond it "
                "are outside the learned set; pass allow_larger_radius=True to attack there anyway"
            )
        if steps < 1 or restarts < 1:
            raise ValueError(
                f"need steps >= 1 and restarts >= 1, got steps={steps}, restarts={restarts} "
                "(with no step the attack would return the unperturbed reconstruction)"
            )
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if restarts > 1 and not random_start:
            raise ValueError(f"restarts={restarts} would repeat the same attack from u = 0; pass random_start=True")
        if not 0 < pixel_fraction <= 1:
            raise ValueError(f"pixel_fraction must lie in (0, 1], got {pixel_fraction}")
        self.eps = eps
        self.steps = int(steps)
        self.step_size = eps / 20 if step_size is None else positive_finite(step_size, "step_size")
        self.random_start = random_start
        self.restarts = int(restarts)
        self.early_stop = early_stop
        self.select = select
        self.pixel_fraction = pixel_fraction
        self.generator = generator
        self.draw_rows = draw_rows

    def _success(self, logits: Tensor, y: Tensor) -> Tensor:
        err = per_example_error(logits, y, self.ignore_index)
        return err >= self.pixel_fraction - 1e-12 if logits.dim() == 4 else err > 0

    def perturb(self, x: Tensor, y: Tensor) -> AttackOutput:
        pset, model = self.perturbation_set, self.model
        n, dim = x.shape[0], pset.latent_dim
        with torch.no_grad():
            cond = pset.condition(x)
        checked = False

        def objective(u: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            """Per-example loss and success at u for the examples ``idx`` still being attacked."""
            nonlocal checked
            part = cond if idx.numel() == n else cond.select(idx)
            logits = model(part.decode(u))
            if not checked:
                check_labels(logits, y[idx], self.ignore_index)
                checked = True
            with torch.no_grad():
                success = self._success(logits, y[idx])
            return per_example_loss(logits, y[idx], self.ignore_index), success

        best: AscentResult | None = None
        warned = False
        draw = lambda m: sample_uniform_ball(m, dim, self.eps, self.generator, device=x.device, dtype=x.dtype)  # noqa: E731
        for _ in range(self.restarts):
            if not self.random_start:
                start = torch.zeros(n, dim, device=x.device, dtype=x.dtype)
            else:
                start = draw(n) if self.draw_rows is None else self.draw_rows(draw, n)
            result = projected_ascent(
                objective, start, self.eps, self.steps, self.step_size,
                select=self.select, early_stop=self.early_stop,
                # Algorithm 1 with one start needs no forward pass at its final iterate.
                evaluate_final=self.restarts > 1,
            )
            if result.zero_gradient and not warned:
                warnings.warn(
                    "the gradient of the loss through the generator is exactly zero for every example: the model "
                    "may mask gradients (non-differentiable layers, saturated outputs), so this attack finds nothing",
                    GradientMaskingWarning,
                    stacklevel=3,
                )
                warned = True
            best = result if best is None else _worse_case(best, result)
        assert best is not None  # restarts >= 1
        with torch.no_grad():
            x_adv = cond.decode(best.u)
        return AttackOutput(x_adv.detach(), best.u)


def _worse_case(a: AscentResult, b: AscentResult) -> AscentResult:
    """Per example, the restart that succeeded, or else the one with the higher loss (ties keep ``a``)."""
    better = (b.success & ~a.success) | ((b.success == a.success) & (b.value > a.value))
    pick = lambda p, q: torch.where(better.view(-1, *([1] * (p.dim() - 1))), q, p)  # noqa: E731
    return AscentResult(pick(a.u, b.u), pick(a.value, b.value), a.success | b.success, a.zero_gradient)
