"""Sample grids that show how a run's model is doing, logged every ``training.sample_every`` epochs.

A CVAE run shows the first :data:`GRID_PAIRS` validation pairs, one column each, in the rows
x, x̃, the reconstruction g(z, x) with z ~ q(z | x, x̃), and :data:`GRID_SAMPLES` samples
g(μ(x) + u·σ(x), x) of the set with u ~ N(0, I) (the prior; the radius that truncates it is
only chosen after training). The pairs and every draw are fixed for the whole run —
drawn once from (seed, :attr:`~perturbsets._util.seeding.Stream.SAMPLE_GRID`) — so the
grids of successive epochs differ only by what the model learned, and a resumed run
writes the grids an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from perturbsets._util.images import tile_images
from perturbsets._util.seeding import Stream, seeded_generator
from perturbsets.core.latent import to_latent
from perturbsets.cvae.model import CVAE
from perturbsets.pairs.batch import PairBatch
from perturbsets.pairs.source import PairSource

__all__ = ["GRID_PAIRS", "GRID_SAMPLES", "CVAESampleGrid", "first_pairs", "grid_image", "sample_due", "sample_rows"]

GRID_PAIRS = 8
GRID_SAMPLES = 4
# Pixels of background between the images of a grid.
GRID_PAD = 2


def sample_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether the grid is logged after ``epoch`` (0-based) of ``epochs``: every ``every`` epochs and after the last; never for 0."""
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == epochs)


def first_pairs(data: PairSource, seed: int, device: torch.device) -> PairBatch:
    """The first :data:`GRID_PAIRS` pairs of ``data`` in order (epoch 0's draws; fewer if ``data`` holds fewer)."""
    batch = next(iter(data.batches(GRID_PAIRS, shuffle=False, seed=seed, epoch=0, device=device)), None)
    if batch is None:
        raise ValueError("the validation split is empty; give data.split.val a positive size")
    return batch


@torch.no_grad()
def sample_rows(cvae: CVAE, x: Tensor, x_tilde: Tensor, noise: Tensor, u: Tensor) -> Tensor:
    """The CVAE grid's rows: (3 + S, N, C, H, W) in the data range.

    Rows: x, x̃ (N, C, H, W); g(μ_q + noise·σ_q, x), the reconstruction at the posterior
    sample of ``noise`` (N, *latent_shape); then for each of the S draws ``u`` (S, N,
    *latent_shape) of the prior coordinates, g(μ(x) + u_s·σ(x), x).
    """
    prior = cvae.prior_params(x)
    reconstruction = cvae.generate(cvae.posterior_params(x, x_tilde).rsample(noise), x)
    samples = [cvae.generate(to_latent(u_s, prior), x) for u_s in u]
    return torch.stack([x, x_tilde, reconstruction, *samples])


def grid_image(rows: Tensor, value_range: tuple[float, float]) -> np.ndarray:
    """Rows of images (R, K, C, H, W), C in {1, 3}, values in ``value_range`` → one RGB grid (H', W', 3) in [0, 1].

    Values are rescaled from ``value_range`` to [0, 1] and clamped (a Gaussian generator's
    mean may leave the data range); image (r, k) is at row r, column k.
    """
    low, high = value_range
    scaled = ((rows.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    return tile_images(scaled.numpy(), GRID_PAD, 1.0)


class CVAESampleGrid:
    """The sample grid of one CVAE run, ``grid()`` → (H', W', 3) in [0, 1] (see :func:`sample_rows`).

    Args:
        cvae: the model being trained; ``grid()`` uses it as it is at the call (in eval mode).
        data: the validation pairs; the grid shows :func:`first_pairs` of them, read at the
            first call (a run that logs no grid reads nothing).
        seed: the run's seed; the pairs, the posterior noise and the prior draws depend on it alone.
        device: where the pairs and draws are put.
    """

    def __init__(self, cvae: CVAE, data: PairSource, seed: int, device: torch.device) -> None:
        self.cvae, self.data, self.seed, self.device = cvae, data, seed, device
        self.fixed: tuple[PairBatch, Tensor, Tensor] | None = None

    def __call__(self) -> np.ndarray:
        if self.fixed is None:
            pairs = first_pairs(self.data, self.seed, self.device)
            shape, gen = self.cvae.latent_shape, seeded_generator(self.seed, 0, Stream.SAMPLE_GRID, device=self.device)
            noise = torch.randn((pairs.x.shape[0], *shape), generator=gen, device=self.device)
            self.fixed = pairs, noise, torch.randn((GRID_SAMPLES, *noise.shape), generator=gen, device=self.device)
        pairs, noise, u = self.fixed
        return grid_image(sample_rows(self.cvae, pairs.x, pairs.x_tilde, noise, u), self.data.value_range)
