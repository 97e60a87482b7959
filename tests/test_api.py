"""The public API: the names importable from `perturbsets`, lazily, each documented with an example."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import perturbsets

PUBLIC = {
    "Config",
    "RobustConfig",
    "load_config",
    "learn_perturbation_set",
    "ConditionedSet",
    "LatentPGD",
    "LinfNoise",
    "PairedData",
    "PerturbationSet",
    "QualityReport",
    "RTS",
    "RadiusSpec",
    "SmoothedClassifier",
    "VersionedData",
    "approximation_errors",
    "build_classifier",
    "build_cvae",
    "certified_accuracy",
    "evaluate_quality",
    "sigma_for_radius",
}
PACKAGE = Path(perturbsets.__file__).parent


def test_the_public_api_is_pinned():
    assert set(perturbsets.__all__) == PUBLIC | {"__version__"}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_each_public_name_resolves_and_has_an_example(name):
    obj = getattr(perturbsets, name)
    doc = inspect.getdoc(obj) or ""
    assert doc, f"perturbsets.{name} has no docstring"
    assert "Example" in doc, f"perturbsets.{name}'s docstring has no example"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'PerturbationSett'"):
        perturbsets.PerturbationSett  # noqa: B018


def test_type_checking_imports_match_the_lazy_table():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    guarded = {
        alias.asname or alias.name: node.module
        for block in tree.body
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert guarded == perturbsets._API


def test_import_is_light():
    code = (
        "import sys, perturbsets\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'sklearn', 'scipy') if m in sys.modules]\n"
        "perturbsets.PerturbationSet, perturbsets.LatentPGD, perturbsets.SmoothedClassifier\n"
        "late = [m for m in ('matplotlib', 'sklearn') if m in sys.modules]\n"
        "print(heavy, late)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] []", out


def _subpackages() -> list[str]:
    return sorted(
        "perturbsets." + ".".join(p.parent.relative_to(PACKAGE).parts)
        for p in PACKAGE.rglob("__init__.py")
        if p.parent != PACKAGE
    )


@pytest.mark.parametrize("name", _subpackages())
def test_every_subpackage_declares_its_api(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring"
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.__all__ names {item}, which it does not define"


def test_the_package_ships_its_type_marker():
    assert (PACKAGE / "py.typed").is_file()
