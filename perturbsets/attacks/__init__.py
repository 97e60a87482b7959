"""Attacks inside a learned perturbation set (paper Section 5, Algorithm 1): small callable objects."""

from perturbsets.attacks.base import Attack, AttackOutput, GradientMaskingWarning
from perturbsets.attacks.latent_pgd import LatentPGD

__all__ = ["Attack", "AttackOutput", "GradientMaskingWarning", "LatentPGD"]
