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
