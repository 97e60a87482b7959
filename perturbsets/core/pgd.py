"""The projected ℓ2 gradient ascent in the latent ball, used by every latent attack.

PGD AE and OAE (Appendix B) and :class:`perturbsets.attacks.LatentPGD` (Algorithm 1) all
maximise a per-example objective over ‖u‖₂ ≤ ε in prior coordinates with normalised
gradient steps u ← Proj_ε(u + α·∇/‖∇‖₂). They differ only in the objective, where they
start, whether an example stops once it succeeds, and which iterate they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from perturbsets.core.latent import latent_norm, project

SELECTIONS: tuple[str, ...] = ("final", "best")

# objective(u, index) -> (value, success): u (K, latent_dim) for the examples ``index`` (K,)
# still being optimised; value (K,) is maximised, success (K,) bool marks examples whose
# goal is reached (an attack's misclassification; all False for the quality metrics).
Objective = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]


@dataclass(frozen=True)
class AscentResult:
    """The selected iterate per example.

    u: (N, latent_dim). value: (N,) the objective at u, −inf where it was not evaluated
    (``select="final"`` without ``evaluate_final``). success: (N,) bool.
    zero_gradient: the first step's gradient was exactly zero for every example (the
    objective does not depend on u, e.g. a model that masks gradients).
    """

    u: Tensor
    value: Tensor
    success: Tensor
    zero_gradient: bool


def projected_ascent(
    objective: Objective,
    u: Tensor,
    radius: float | Tensor,
    steps: int,
    step_size: float,
    *,
    select: str = "best",
    early_stop: bool = False,
    evaluate_final: bool = True,
) -> AscentResult:
    """Maximise ``objective`` from u (N, latent_dim) by ``steps`` projected normalised-gradient steps.

    * ``select="best"``: per example, the successful iterate with the highest value, or else
      the iterate with the highest value, over all iterates (the start included).
    * ``select="final"``: the last iterate (Algorithm 1). With ``evaluate_final=False`` the
      last iterate is never evaluated, which saves one forward pass.
    * ``early_stop``: an example stops moving at its first successful iterate, and later
      iterations evaluate only the examples still moving.

    ``radius`` is ε (a float or a tensor (N,)); ``objective`` is called as
    ``objective(u_active, index)`` (see :data:`Objective`).

    Example::

        result = projected_ascent(lambda u, i: (loss(u, i), success(u, i)), torch.zeros(n, d), eps, 50, eps / 20)
        u_adv = result.u
    """
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n = u.shape[0]
    u = u.detach().clone()
    best_u = u.clone()
    best_value = torch.full((n,), -torch.inf, device=u.device, dtype=u.dtype)
    best_success = torch.zeros(n, dtype=torch.bool, device=u.device)
    active = torch.ones(n, dtype=torch.bool, device=u.device)
    zero_gradient = False
    last = steps if (select == "best" or evaluate_final) else steps - 1
    for step in range(last + 1):
        idx = active.nonzero().squeeze(1)
        u_a = u[idx].requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps):
            value, success = objective(u_a, idx)
            grad = torch.autograd.grad(value.sum(), u_a)[0] if step < steps else None
        with torch.no_grad():
            u_a, value = u_a.detach(), value.detach()
            if early_stop:
                active[idx[success]] = False
            done = grad is None or not bool(active.any())
            # With select="final" an example is recorded when it freezes (early stop) or at the end.
            record = torch.ones_like(success) if (select == "best" or done) else success & ~active[idx]
            held = best_success[idx]
            # Success beats failure; among equals the higher value wins (ties keep the earlier iterate).
            better = record & ((success & ~held) | ((success == held) & (value > best_value[idx])))
            best_u[idx[better]] = u_a[better]
            best_value[idx[better]] = value[better]
            best_success[idx[record]] |= success[record]
            if done:
                break
            moving = active[idx]
            norms = latent_norm(grad)
            if step == 0 and bool((norms[moving] == 0).all()):
                zero_gradient = True
            stepped = project(u_a + step_size * grad / norms.clamp_min(1e-12).unsqueeze(1), radius)
            u[idx[moving]] = stepped[moving]
    if last < steps:
        best_u = u
    return AscentResult(best_u, best_value, best_success, zero_gradient)
