"""benchmarks/flops_per_experiment.py counts what a hand count of mnist_fc gives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from perturbsets.workflows.experiments import load_experiment

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flops_per_experiment.py"


@pytest.fixture(scope="module")
def flops():
    spec = importlib.util.spec_from_file_location("flops_per_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def config():
    return load_experiment("mnist-linf-fc").perturbation_set


B, PIXELS, HIDDEN, LATENT = 2, 784, 784, 784  # mnist_fc's defaults, as the paper config uses them


def linear(inputs: int, outputs: int) -> int:
    """One matmul of a Linear layer on the batch: B·in·out multiply-adds, 2 FLOPs each."""
    return 2 * B * inputs * outputs


def test_training_step_matches_the_hand_count(flops, config):
    # A layer fed by the data runs its forward and weight-gradient matmuls; a layer whose
    # input needs a gradient also the input-gradient one: 2 or 3 matmuls of the same size.
    prior = 2 * linear(PIXELS, HIDDEN) + 2 * 3 * linear(HIDDEN, LATENT)  # fc1; heads fc21, fc22
    recognition = 2 * linear(2 * PIXELS, HIDDEN) + 2 * 3 * linear(HIDDEN, LATENT)  # fc1 on [x, x̃]; heads
    generator = 3 * linear(PIXELS + LATENT, HIDDEN) + 3 * linear(HIDDEN, PIXELS)  # fc3 on [x, z] (z needs it); fc4
    work = flops.cvae_train_step(config, B)
    assert work.flops == prior + recognition + generator
    # The Bernoulli loss is not a matmul: named as uncounted, not silently dropped.
    assert "binary_cross_entropy_with_logits" in work.uncounted


def test_generator_backward_to_u_leaves_the_frozen_weights_alone(flops, config):
    s = flops.set_work(config, B)
    forward = (linear(PIXELS + LATENT, HIDDEN) + linear(HIDDEN, PIXELS)) / B
    assert s.decode.flops == forward
    # Backward to u only: input gradients, no weight gradients, so exactly twice the forward.
    assert s.decode_grad.flops == 2 * forward
    assert s.prior.flops == (linear(PIXELS, HIDDEN) + 2 * linear(HIDDEN, LATENT)) / B
