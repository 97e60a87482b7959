"""Slow, obviously correct reference implementations that tests compare the library against."""

from __future__ import annotations

import torch
from torch import nn


def algorithm_1_loop(model, pset, x, y, eps, steps, alpha):
    """Algorithm 1's attack written out one example at a time: δ = 0, T normalised steps, project, keep the last."""
    out = []
    for i in range(x.shape[0]):
        delta = torch.zeros(1, pset.latent_dim, dtype=x.dtype)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = nn.functional.cross_entropy(model(pset.perturb(x[i : i + 1], delta)), y[i : i + 1])
            (g,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + alpha * g / g.norm()
                if delta.norm() > eps:
                    delta = eps * delta / delta.norm()
        out.append(delta.detach()[0])
    return torch.stack(out)


def projected_ascent_loop(objective, u, radius, steps, step_size, early_stop):
    """Projected normalised-gradient ascent one example at a time: until the end or the first success, last iterate."""
    out = []
    for i in range(u.shape[0]):
        v = u[i : i + 1].clone()
        for _ in range(steps):
            v.requires_grad_(True)
            value, success = objective(v, torch.tensor([i]))
            if early_stop and bool(success[0]):
                break
            (g,) = torch.autograd.grad(value.sum(), v)
            with torch.no_grad():
                v = v + step_size * g / g.norm()
                if v.norm() > radius:
                    v = v * radius / v.norm()
        out.append(v.detach()[0])
    return torch.stack(out)
