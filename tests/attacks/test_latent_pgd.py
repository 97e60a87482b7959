"""Latent PGD (Algorithm 1): ball constraint, optimality against brute force, modes, errors."""

from __future__ import annotations

import math

import pytest
from builders import linear_set
import torch
from torch import nn

from perturbsets import PerturbationSet
from perturbsets.attacks.base import GradientMaskingWarning
from perturbsets.attacks.latent_pgd import LatentPGD
from perturbsets.core.latent import latent_norm
from perturbsets.cvae.registry import build_cvae
from perturbsets.classifiers.scoring import per_example_loss

from oracles import algorithm_1_loop




class TanhClassifier(nn.Module):
    """A small non-linear classifier, so the loss over the disk has curvature of both signs."""

    def __init__(self, pixels: int, classes: int = 3, seed: int = 1) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 8), nn.Tanh(), nn.Linear(8, classes))

    def forward(self, x):
        return self.net(x)


def brute_force_max(pset, model, x, y, steps=400):
    """Max of the loss over a polar grid of the disk ‖u‖ ≤ ε (obviously correct, slow)."""
    r = torch.linspace(0, pset.radius, steps // 4)
    t = torch.linspace(0, 2 * math.pi, steps)
    rr, tt = torch.meshgrid(r, t, indexing="ij")
    u = torch.stack([rr.flatten() * torch.cos(tt.flatten()), rr.flatten() * torch.sin(tt.flatten())], 1)
    best = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            xs = x[i : i + 1].expand(u.shape[0], *x.shape[1:])
            loss = per_example_loss(model(pset.perturb(xs, u)), y[i].expand(u.shape[0]))
            best.append(loss.max())
    return torch.stack(best)


def test_pgd_finds_the_brute_force_maximum():
    pset = linear_set()
    model = TanhClassifier(4)
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    attack = LatentPGD(model, pset, steps=100, step_size=pset.radius / 20, random_start=True, restarts=4, select="best",
                       generator=torch.Generator().manual_seed(0))
    x_adv, u = attack(x, y)
    with torch.no_grad():
        found = per_example_loss(model(x_adv), y)
    reference = brute_force_max(pset, model, x, y)
    # The grid is a discretisation: PGD may beat it slightly, never fall clearly short.
    assert torch.all(found >= reference - 1e-3), (found, reference)
    assert torch.all(latent_norm(u) <= pset.radius * (1 + 1e-6))
    torch.testing.assert_close(x_adv, pset.perturb(x, u))


@pytest.mark.parametrize("random_start", [True, False])
def test_never_leaves_the_ball(random_start):
    pset = PerturbationSet(build_cvae("mnist_fc", input_shape=(1, 6, 6), hidden=16, latent_dim=5), radius=2.0)
    model = TanhClassifier(36, classes=4)
    x = torch.rand(16, 1, 6, 6)
    y = torch.randint(0, 4, (16,))
    for eps, step in [(2.0, 5.0), (0.5, 0.05), (1.0, 1.0)]:
        _, u = LatentPGD(model, pset, eps, steps=20, step_size=step, random_start=random_start, early_stop=False)(x, y)
        assert torch.all(latent_norm(u) <= eps * (1 + 1e-6))


def test_early_stop_freezes_misclassified_examples():
    pset = linear_set()
    model = TanhClassifier(4)
    x = torch.rand(8, 1, 2, 2)
    with torch.no_grad():
        wrong = model(x).argmax(1).add(1).remainder(3)  # labels that are already misclassified
    _, u = LatentPGD(model, pset, steps=10, early_stop=True)(x, wrong)
    assert torch.all(u == 0)
    _, u = LatentPGD(model, pset, steps=10, early_stop=True, select="best")(x, wrong)
    assert torch.all(u == 0)


def test_defaults_are_algorithm_1_all_steps_and_the_final_point():
    pset = PerturbationSet(build_cvae("mnist_fc", input_shape=(1, 6, 6), hidden=16, latent_dim=5), radius=2.0)
    model = TanhClassifier(36, classes=4).double()
    pset.cvae.double()
    x = torch.rand(12, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y[:6] = model(x[:6]).argmax(1).add(1).remainder(4)  # already misclassified: Algorithm 1 still takes every step
    x_adv, u = LatentPGD(model, pset, eps=1.5, steps=7, step_size=1.5 / 5)(x, y)
    expected = algorithm_1_loop(model, pset, x, y, 1.5, 7, 1.5 / 5)
    torch.testing.assert_close(u, expected)
    torch.testing.assert_close(x_adv, pset.perturb(x, expected))
    assert (latent_norm(u[:6]) > 0).all()


def test_attack_uses_eval_mode_and_restores_training_mode():
    pset = linear_set()
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).train()
    before = model[2].running_mean.clone()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    LatentPGD(model, pset, steps=3)(torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1]))
    assert seen and not any(seen)
    assert model.training
    assert torch.equal(model[2].running_mean, before)


class Quantised(nn.Module):
    """Logits from rounded inputs: zero gradient everywhere (gradient masking)."""

    def forward(self, x):
        return torch.round(x.flatten(1)[:, :3] * 0) + torch.tensor([1.0, 0.0, 0.0])


def test_zero_gradient_warns_of_gradient_masking():
    pset = linear_set()
    with pytest.warns(GradientMaskingWarning, match="zero"):
        LatentPGD(Quantised(), pset, steps=2)(torch.rand(2, 1, 2, 2), torch.tensor([0, 0]))


def test_larger_radius_than_the_set_needs_an_explicit_override():
    pset = linear_set(radius=1.0)
    model = TanhClassifier(4)
    with pytest.raises(ValueError, match="exceeds the perturbation set's radius"):
        LatentPGD(model, pset, eps=2.0)
    _, u = LatentPGD(model, pset, eps=2.0, allow_larger_radius=True, steps=5, early_stop=False)(
        torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    )
    assert torch.all(latent_norm(u) <= 2.0 * (1 + 1e-6))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"eps": 0.0}, "eps must be a finite number > 0"), ({"steps": 0}, "steps >= 1"), ({"restarts": 0}, "restarts >= 1"),
     ({"pixel_fraction": 0.0}, "pixel_fraction"), ({"step_size": -1.0}, "step_size must be a finite number > 0"),
     ({"select": "worst"}, "select must be one of"), ({"restarts": 2}, "pass random_start=True")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentPGD(TanhClassifier(4), linear_set(), **kwargs)


def test_bad_labels_and_outputs():
    pset = linear_set()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        LatentPGD(TanhClassifier(4), pset, steps=1)(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="rank 3"):
        LatentPGD(lambda t: t.flatten(1).unsqueeze(-1), pset, steps=1)(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        LatentPGD(TanhClassifier(4), pset, steps=1)(torch.rand(2, 1, 3, 3), torch.tensor([0, 1]))


class PixelModel(nn.Module):
    """Segmentation toy: per-pixel logits (class 0 vs 1) from the pixel value."""

    def forward(self, x):
        return torch.cat([x, 1 - x], dim=1) * 4


def test_segmentation_pixel_fraction_controls_success():
    pset = linear_set(dim=2, shape=(1, 2, 2), radius=1.5)
    x = torch.full((4, 1, 2, 2), 0.9)
    y = torch.zeros(4, 2, 2, dtype=torch.long)
    x_adv_any, _ = LatentPGD(PixelModel(), pset, steps=40, pixel_fraction=0.25, random_start=False)(x, y)
    x_adv_all, _ = LatentPGD(PixelModel(), pset, steps=40, pixel_fraction=1.0, random_start=False, early_stop=False)(x, y)
    with torch.no_grad():
        wrong_any = (PixelModel()(x_adv_any).argmax(1) != y).flatten(1).float().mean(1)
        loss_all = per_example_loss(PixelModel()(x_adv_all), y)
        loss_any = per_example_loss(PixelModel()(x_adv_any), y)
    assert torch.all(wrong_any >= 0.25)
    # Without early stopping the attack keeps climbing the per-pixel loss.
    assert torch.all(loss_all >= loss_any - 1e-6)
    with pytest.raises(ValueError, match="labels of shape"):
        LatentPGD(PixelModel(), pset, steps=1)(x, torch.zeros(4, dtype=torch.long))


def test_an_empty_batch_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="empty batch"):
        LatentPGD(TanhClassifier(4), linear_set(), steps=2)(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))


def test_attack_runs_on_the_chosen_device(device):
    pset = linear_set().to(device)
    model = TanhClassifier(4).to(device)
    x = torch.rand(4, 1, 2, 2).to(device)
    y = torch.tensor([0, 1, 2, 0], device=device)
    x_adv, u = LatentPGD(model, pset, steps=5)(x, y)
    assert x_adv.device.type == device.type and bool((latent_norm(u) <= pset.radius * (1 + 1e-6)).all())
    torch.testing.assert_close(x_adv, pset.perturb(x, u))
