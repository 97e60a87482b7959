"""What every attack shares (paper Section 5, Appendix C).

An attack is a small callable object: ``attack(x, y) -> AttackOutput(x_adv, u)``. The base
class owns what every attack needs: eval mode for the attacked model (restored afterwards)
and the input checks of the perturbation set.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from perturbsets.classifiers.scoring import IGNORE_INDEX, eval_mode
from perturbsets.core.perturbation_set import PerturbationSet



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
