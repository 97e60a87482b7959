"""The glibc malloc tuning: applied on Linux, skipped when switched off, and harmless to allocations."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys, torch
from perturbsets._util.allocator import keep_freed_memory
applied = keep_freed_memory()
# Activations of the sizes a training step frees and reallocates still hold what is written.
for mib in (1, 8, 31, 64):
    t = torch.full((mib * 262144,), 3.0)
    assert float(t.sum()) == 3.0 * t.numel()
print(applied)
"""


def _run(env_value: str | None) -> str:
    env = None if env_value is None else {**__import__("os").environ, "PERTURBSETS_KEEP_FREED_MEMORY": env_value}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applied_on_linux_and_allocations_still_work():
    assert _run(None) == "True"


def test_switched_off_by_the_environment():
    assert _run("0") == "False"
