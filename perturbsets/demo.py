"""``perturbsets demo``: learn, evaluate, save and show an RTS set on the embedded digits."""

from __future__ import annotations

import dataclasses
import time
from importlib import resources
from pathlib import Path

from .config import Config, Schedule, load_config
from .pipeline import LearnResult, learn_perturbation_set

DEMO_CONFIG = "digits_rts.yaml"


def demo_config(*, quick: bool = False, seed: int = 0, device: str = "auto") -> Config:
    """The demo's config (``perturbsets/configs/digits_rts.yaml``); ``quick`` shrinks every budget."""
    with resources.as_file(resources.files("perturbsets") / "configs" / DEMO_CONFIG) as path:
        config = load_config(path)
    config.seed = seed
    config.training.device = device
    if quick:
        config.name += "-quick"
        config.data.split = {"train": 256, "val": 64, "test": 32}
        config.training = dataclasses.replace(
            config.training,
            epochs=2,
            lr=Schedule([0, 1, 2], [1e-3, 1e-3, 0.0]),
            beta=Schedule([0, 2], [0.01, 0.1]),
        )
        config.evaluation = dataclasses.replace(config.evaluation, radius_passes=1, pgd_steps=5, eae_samples=2)
    return config


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, device: str = "auto", progress: bool = True) -> LearnResult:
    """Run the whole pipeline on the embedded digits and write everything into ``out``."""
    config = demo_config(quick=quick, seed=seed, device=device)
    began = time.perf_counter()
    result = learn_perturbation_set(config, out, progress=progress)
    print(result.report.to_markdown(config.model.architecture))
    print(
        f"demo finished in {time.perf_counter() - began:.0f} s: radius ε = {result.perturbation_set.radius:.3g}; "
        f"report {out / 'report.md'}, perturbation set {out / 'perturbation_set'}"
    )
    return result
