"""Tests for perturbsets.core.pgd: the projected ℓ2 ascent behind PGD AE, OAE and LatentPGD."""

from __future__ import annotations

import pytest
import torch

from perturbsets.core.pgd import projected_ascent

from oracles import projected_ascent_loop


def latent_pgd(fn, u, radius, steps, step_size, maximize):
    """The quality metrics' use: best value over the iterates, minimising by negation."""
    sign = 1.0 if maximize else -1.0
    result = projected_ascent(
        lambda v, idx: (sign * fn(v), torch.zeros(v.shape[0], dtype=torch.bool)), u, radius, steps, step_size
    )
    return sign * result.value, result.u


def _quadratic(c):
    return lambda u: ((u - c) ** 2).sum(1)


def test_latent_pgd_minimize_converges_to_constrained_minimiser():
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 3
    c = c * (2.0 / c.norm(dim=1, keepdim=True)) * torch.linspace(1.5, 4, 6, dtype=torch.float64).view(6, 1)
    radius = 1.3
    start = torch.randn(6, 5, generator=gen, dtype=torch.float64) * 0.2
    best, best_u = latent_pgd(_quadratic(c), start, radius, steps=300, step_size=0.05, maximize=False)
    cn = c.norm(dim=1, keepdim=True)
    expected_u = c * radius / cn
    torch.testing.assert_close(best_u, expected_u, atol=2e-3, rtol=0)
    torch.testing.assert_close(best, ((cn.squeeze(1) - radius) ** 2), atol=1e-4, rtol=1e-4)
    assert (best_u.norm(dim=1) <= radius * (1 + 1e-9)).all()
    assert best.shape == (6,) and best_u.shape == (6, 5)


def test_latent_pgd_maximize_converges_to_antipode():
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    c = c / c.norm(dim=1, keepdim=True) * 2.5
    radius = 1.0
    start = torch.randn(4, 3, generator=gen, dtype=torch.float64) * 0.3
    best, best_u = latent_pgd(_quadratic(c), start, radius, steps=300, step_size=0.05, maximize=True)
    cn = c.norm(dim=1, keepdim=True)
    torch.testing.assert_close(best_u, -c * radius / cn, atol=2e-3, rtol=0)
    torch.testing.assert_close(best, (cn.squeeze(1) + radius) ** 2, atol=1e-4, rtol=1e-4)


def test_latent_pgd_keeps_best_iterate_and_start():
    c = torch.tensor([[0.3, 0.0]], dtype=torch.float64)  # minimiser inside the ball
    start = torch.tensor([[-0.5, 0.0]], dtype=torch.float64)
    # fixed steps of 0.3 overshoot c; the best iterate is kept
    best, best_u = latent_pgd(_quadratic(c), start, 1.0, steps=20, step_size=0.3, maximize=False)
    assert best.item() <= 0.3**2 + 1e-12
    assert _quadratic(c)(best_u).item() == pytest.approx(best.item())
    # steps=0: the start is returned
    best0, u0 = latent_pgd(_quadratic(c), start, 1.0, steps=0, step_size=0.3, maximize=False)
    assert best0.item() == pytest.approx(0.64) and torch.equal(u0, start)
    # a start that is already optimal is never replaced by a worse iterate
    best1, u1 = latent_pgd(_quadratic(c), c.clone(), 1.0, steps=5, step_size=0.3, maximize=False)
    assert best1.item() == 0.0 and torch.equal(u1, c)


def test_latent_pgd_does_not_modify_input():
    u = torch.zeros(2, 3)
    c = torch.ones(2, 3)
    latent_pgd(_quadratic(c), u, 1.0, steps=3, step_size=0.1, maximize=False)
    assert torch.equal(u, torch.zeros(2, 3))




def _linear_objective(c, threshold):
    """value = ⟨u, c_i⟩; success once the value passes the example's threshold."""
    def objective(u, idx):
        value = (u * c[idx]).sum(1)
        return value, value.detach() > threshold[idx]
    return objective


@pytest.mark.parametrize("early_stop", [False, True])
def test_final_selection_matches_a_per_example_loop(early_stop):
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    threshold = torch.tensor([-1.0, 0.05, 0.2, 0.4, 10.0, 0.1, 0.3], dtype=torch.float64)
    start = torch.zeros(7, 4, dtype=torch.float64)
    objective = _linear_objective(c, threshold)
    result = projected_ascent(objective, start, 1.0, 6, 0.15, select="final", early_stop=early_stop, evaluate_final=False)
    expected = projected_ascent_loop(objective, start, 1.0, 6, 0.15, early_stop)
    torch.testing.assert_close(result.u, expected)
    if early_stop:
        assert torch.equal(result.u[0], torch.zeros(4, dtype=torch.float64))  # succeeded at the start: never moved


def test_early_stop_evaluates_only_the_examples_still_moving():
    c = torch.eye(3, dtype=torch.float64)
    threshold = torch.tensor([-1.0, 0.25, 10.0], dtype=torch.float64)
    seen = []

    def objective(u, idx):
        seen.append(idx.tolist())
        return _linear_objective(c, threshold)(u, idx)

    result = projected_ascent(objective, torch.zeros(3, 3, dtype=torch.float64), 1.0, 4, 0.2, early_stop=True)
    assert seen[0] == [0, 1, 2] and seen[1] == [1, 2] and all(s == [2] for s in seen[3:])
    assert result.success.tolist() == [True, True, False]


def test_best_selection_prefers_success_over_a_higher_value():
    # Example 0 succeeds only at its first step (value 0.3) and later reaches 1.0 without success.
    c = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

    def objective(u, idx):
        value = (u * c[idx]).sum(1)
        return value, (value > 0.25) & (value < 0.35)

    result = projected_ascent(objective, torch.zeros(1, 2, dtype=torch.float64), 2.0, 5, 0.3)
    assert bool(result.success[0]) and result.value.item() == pytest.approx(0.3)


def test_zero_gradient_is_reported():
    result = projected_ascent(
        lambda u, idx: (u.sum(1) * 0, torch.zeros(u.shape[0], dtype=torch.bool)), torch.zeros(2, 3), 1.0, 2, 0.1
    )
    assert result.zero_gradient


@pytest.mark.parametrize("kwargs,match", [({"select": "worst"}, "select must be one of"), ({"steps": -1}, "steps must be >= 0")])
def test_bad_arguments(kwargs, match):
    args = {"steps": 2, **kwargs}
    steps = args.pop("steps")
    with pytest.raises(ValueError, match=match):
        projected_ascent(lambda u, idx: (u.sum(1), torch.zeros(u.shape[0], dtype=torch.bool)), torch.zeros(1, 2), 1.0, steps, 0.1, **args)


def test_an_empty_batch_returns_empty_results(device):
    result = projected_ascent(
        lambda u, idx: (u.sum(1), torch.zeros(u.shape[0], dtype=torch.bool, device=device)),
        torch.zeros(0, 3, device=device), 1.0, 5, 0.1,
    )
    assert result.u.shape == (0, 3) and result.value.shape == (0,) and result.success.shape == (0,)
