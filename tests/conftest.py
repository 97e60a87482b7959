"""Shared test fixtures and helpers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from builders import LockHolder

# The authors' state-dict listings live in shared/ beside the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "state_dicts"


def pytest_addoption(parser):
    parser.addoption(
        "--device", default="cpu", choices=("cpu", "cuda"),
        help="device for the tests that take the `device` fixture (cuda needs a GPU; CI runs cpu)",
    )


@pytest.fixture
def device(request) -> torch.device:
    """The device chosen with ``--device``; tests using it run their numerics there."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda was given but no CUDA device is available")
    return torch.device(name)


@pytest.fixture
def lock_holder():
    """A second process that takes folder locks on request (:class:`builders.LockHolder`)."""
    holder = LockHolder()
    yield holder
    holder.close()


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors: one intra-op thread is faster and immune to CPU oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_listing(name: str) -> tuple[list[str], list[tuple[str, tuple[int, ...]]]]:
    """(header lines, [(key, shape)]) of ``state_dicts/NAME.txt``: two ``#`` lines, then ``key (d0, ...)``."""
    path = REFERENCE / f"{name}.txt"
    if not path.is_file():
        pytest.skip(f"reference listing {path} not available")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and lines[1].startswith("#")
    entries = []
    for line in lines[2:]:
        if line.strip():
            key, shape = line.split(" ", 1)
            entries.append((key, tuple(ast.literal_eval(shape.strip()))))
    return lines[:2], entries
