"""Small objects many tests need, built one way: a tiny learned set, an analytic linear set, labelled pairs.

Import them in test modules (``from builders import tiny_set``); ``conftest.py`` wraps the
common ones as fixtures.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from perturbsets.config.io import from_dict
from perturbsets.config.robust import RobustConfig
from perturbsets.core.perturbation_set import PerturbationSet
from perturbsets.core.radius import LatentNormStats
from perturbsets.cvae.model import CVAE
from perturbsets.cvae.registry import build_cvae
from perturbsets.pairs.paired import PairedData

TINY_SHAPE = (1, 8, 8)
TINY_OPTIONS = {"input_shape": [1, 8, 8], "hidden": 16, "latent_dim": 4}


def tiny_set(radius: float = 1.5, *, seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> PerturbationSet:
    """An untrained ``mnist_fc`` set on 1×8×8 inputs with a 4-dimensional latent (a real architecture)."""
    torch.manual_seed(seed)
    cvae = build_cvae("mnist_fc", **TINY_OPTIONS, **kwargs.pop("cvae_options", {})).to(dtype)
    return PerturbationSet(cvae, radius, architecture="mnist_fc", options=dict(TINY_OPTIONS), **kwargs)


class StandardPrior(nn.Module):
    """p(z | x) = N(0, I): z = u, so the latent ball is the plain ball."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x):
        zeros = x.new_zeros(x.shape[0], self.dim)
        return zeros, zeros


class ShiftRecognition(nn.Module):
    """q(z | x, x̃) = N(W⁺(x̃ − x), I): the exact encoding of a shift generator."""

    def __init__(self, generator: "ShiftGenerator") -> None:
        super().__init__()
        self.register_buffer("pinv", torch.linalg.pinv(generator.w))

    def forward(self, x, x_tilde):
        mean = (x_tilde - x).flatten(1) @ self.pinv.T.to(x.dtype)
        return mean, torch.zeros_like(mean)


class ShiftGenerator(nn.Module):
    """g(z, x) = x + W z, as the output of an identity-output Gaussian generator."""

    def __init__(self, dim: int, pixels: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(pixels, dim, generator=g) * 0.5)

    def forward(self, z, x):
        return x + (z @ self.w.T.to(z.dtype)).view_as(x)


def linear_set(dim: int = 2, shape: tuple[int, int, int] = (1, 2, 2), radius: float = 1.5) -> PerturbationSet:
    """S(x) = {x + W u : ‖u‖₂ ≤ ε}: every quantity of the set has a closed form (tests' analytic reference)."""
    generator = ShiftGenerator(dim, math.prod(shape))
    cvae = CVAE(
        StandardPrior(dim), ShiftRecognition(generator), generator,
        input_shape=shape, latent_shape=(dim,), distribution="gaussian", output="identity",
    )
    return PerturbationSet(cvae, radius)


def labelled_images(n: int = 96, seed: int = 0, size: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, x̃, y): class-dependent brightness (learnable), x̃ = x plus small clipped noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    images = (0.2 + 0.3 * y.view(-1, 1, 1, 1).float() + 0.1 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    perturbed = (images + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return images, perturbed, y


def labelled_pairs(n: int = 96, seed: int = 0) -> PairedData:
    """Labelled pairs (x, x̃, y) of 1×8×8 images in [0, 1], three learnable classes."""
    images, perturbed, y = labelled_images(n, seed)
    return PairedData.from_tensors(images, perturbed, y)


def robust_config(set_dir, mode: str = "standard", **evaluation) -> RobustConfig:
    """A two-epoch robust run of a small digits CNN on :func:`labelled_pairs` inside the set at ``set_dir``."""
    return from_dict(
        RobustConfig,
        {
            "name": mode,
            "seed": 5,
            "perturbation_set": str(set_dir),
            "data": {"source": "npz", "path": "unused", "perturbation": None, "split": {"train": 64, "val": 16, "test": 16}},
            "model": {"architecture": "digits_cnn", "options": {"image_size": 8, "width": 16, "num_classes": 3}},
            "training": {
                "mode": mode,
                "epochs": 2,
                "batch_size": 16,
                "lr": {"epochs": [0, 2], "values": [3e-3, 0.0]},
                "device": "cpu",
                "attack": {"steps": 2},
                "sigma": 0.5,
            },
            "evaluation": {"radii": ["p50", "max"], "attack": {"steps": 3, "step_divisor": 3}, **evaluation},
        },
    )


def save_robust_set(directory: Path) -> Path:
    """A saved 1×8×8 ``mnist_fc`` set of radius 2 with stored percentiles p50 = 1 and p75 = 1.5."""
    torch.manual_seed(0)
    pset = PerturbationSet(
        build_cvae("mnist_fc", input_shape=(1, 8, 8), hidden=16, latent_dim=4),
        2.0,
        architecture="mnist_fc",
        options={"input_shape": [1, 8, 8], "hidden": 16, "latent_dim": 4},
        latent_norms=LatentNormStats(count=4, mean=1.0, std=0.5, min=0.1, max=2.0, percentiles={"p50": 1.0, "p75": 1.5}),
    )
    return pset.save(directory)


def free_port() -> int:
    """A TCP port free on this machine now, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, world: int, port: int, run: Callable[[], None]) -> None:
    """Run ``run()`` as rank ``rank`` of a torchrun-like launch (the environment torchrun sets), in a spawned process."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    try:
        run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


_HOLD_LOCKS = """
import contextlib, sys
from perturbsets._util.locking import folder_lock
with contextlib.ExitStack() as held:
    for line in sys.stdin:
        held.enter_context(folder_lock(line.strip(), blocking=False))
        print("held", flush=True)
"""


class LockHolder:
    """Another process that holds folder locks, as a second run writing those folders would.

    ``hold(folder)`` returns once the other process holds ``folder``'s lock; ``close()`` ends it.
    """

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def hold(self, folder: Path) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{folder}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "held", "the lock-holding process failed"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
