"""The noise family of CIFAR-10-C: gaussian, shot, impulse and speckle noise.

Each function takes a uint8 batch (N, 32, 32, 3), one severity's parameter and the random
generator, and returns the float result on the 0..255 scale;
:func:`~perturbsets.datasets.cifar10c.registry.corrupt` checks the input and casts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NOISE_PARAMETERS", "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]


# Per-severity parameters (severity 1..5), cifar10c.md Section 3 (= make_cifar_c.py).
NOISE_PARAMETERS: dict[str, tuple] = {
    # sigma of the additive N(0, sigma) noise on x in [0, 1]
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # Poisson rate lambda: Poisson(x * lambda) / lambda
    "shot_noise": (500, 250, 100, 75, 50),
    # salt-and-pepper amount (fraction of pixel-channels hit)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # sigma of the multiplicative N(0, sigma) noise
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
}


def gaussian_noise(x8, sigma, rng):
    """x = img / 255 (float64); clip(x + N(0, sigma), 0, 1) * 255, iid per pixel and channel.
    (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(x + rng.normal(0.0, sigma, size=x.shape), 0, 1) * 255


def shot_noise(x8, lam, rng):
    """clip(Poisson(x lam) / lam, 0, 1) * 255 (float64). (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(rng.poisson(x * lam) / lam, 0, 1) * 255


def impulse_noise(x8, amount, rng):
    """skimage ``random_noise(mode="s&p", amount)``: each pixel *and channel* is hit with
    probability ``amount``; a hit becomes 1 or 0 with probability 1/2 each. (``cifar10c.md``
    Section 3.)
    """
    x = x8 / 255.0
    n = x.shape[0]
    u = rng.random((n, 2) + x.shape[1:])  # per image: hit mask, then salt mask
    hit = u[:, 0] <= amount
    salt = u[:, 1] <= 0.5
    out = x.copy()
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return np.clip(out, 0, 1) * 255


def speckle_noise(x8, sigma, rng):
    """clip(x + x N(0, sigma), 0, 1) * 255 (float64). (``cifar10c.md`` Section 3.)
    """
    x = x8 / 255.0
    return np.clip(x + x * rng.normal(0.0, sigma, size=x.shape), 0, 1) * 255
