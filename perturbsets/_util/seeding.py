"""Every random stream of the library, named, and the one place seeds are derived.

A run has one integer seed. Each consumer of randomness draws from its own stream, keyed by
(seed, [epoch or example index,] stream), so that changing one consumer (the batch size, an
augmentation, the number of examples certified) never changes the draws of another, and a
resumed run reproduces its epochs exactly. Keys are mixed by NumPy's ``SeedSequence``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

__all__ = ["DataStream", "Stream", "derive_seed", "epoch_generator", "seeded_generator"]


class DataStream(IntEnum):
    """A pair source's streams, keyed (seed, epoch, stream) by :func:`epoch_generator`.

    The shuffle, the stored perturbation chosen for each pair, on-the-fly perturbations and
    joint augmentation are independent, so e.g. adding an augmentation never changes which
    pairs are drawn. The numbers are part of the reproducibility contract: never reuse one.
    """

    ORDER = 0
    CHOICE = 1
    PERTURB = 2
    AUGMENT = 3


class Stream(IntEnum):
    """A run's streams, keyed by :func:`derive_seed` after ``(seed, epoch or 0)`` or ``(seed,)``.

    The numbers are part of the reproducibility contract (saved runs replay their draws),
    so they never change; a new consumer takes a new number.
    """

    # Training, keyed (seed, epoch or 0, stream).
    CVAE_INIT = 1
    TRAIN_NOISE = 2
    CVAE_VALIDATION = 3
    CLASSIFIER_INIT = 5
    ROBUST_TRAIN = 6
    # Evaluation, keyed (seed, stream[, example index]).
    RADIUS_BATCHES = 7
    QUALITY_BATCHES = 11
    ROBUST_EVAL_BATCHES = 13
    CERTIFY_EXAMPLE = 17
    PGD_STARTS = 19
    ADVERSARIAL_MAPS = 23
    SMOOTHED_PERTURBED = 29
    SMOOTHED_OOD = 31
    # The fixed draws of the sample grids logged during training, keyed (seed, 0, stream).
    SAMPLE_GRID = 37


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key, e.g. ``derive_seed(seed, epoch, Stream.TRAIN_NOISE)``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seeded_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`derive_seed` of the keys."""
    return torch.Generator(device=device).manual_seed(derive_seed(*keys))


def epoch_generator(seed: int, epoch: int, stream: DataStream, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a pair source's ``stream`` in ``epoch``: depends on (seed, epoch, stream) only.

    Its two 32-bit state words are combined differently from :func:`derive_seed`; both
    derivations are kept because saved runs and the published figures depend on them.
    """
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed((int(state[0]) << 31) ^ int(state[1]))
