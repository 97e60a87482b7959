"""The package's layers import one way down, and no module imports another's private names.

The order below is the README's layout table; a module may import from its own subpackage
and from any layer listed before its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import perturbsets

PACKAGE = Path(perturbsets.__file__).parent

LAYERS = (
    "_util",
    "unet geometry",
    "cvae classifiers",
    "core",
    "perturbations",
    "pairs",
    "datasets",
    "config",
    "attacks certify",
    "training",
    "evaluation interop",
    "reports",
    "workflows",
    "cli",
    "__main__",
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names.split()}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out.append((".".join(("perturbsets",) + parts), path))
    return out


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import of a perturbsets module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno} uses a relative import; the package imports absolutely")
            if node.module and node.module.split(".")[0] == "perturbsets":
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "perturbsets":
                    found.append((node.lineno, alias.name, []))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    unknown = {_layer(m) for m, p in _modules() if _layer(m) not in RANK and m != "perturbsets.__init__"}
    assert not unknown, f"modules outside the declared layers: {sorted(unknown)}; add them to LAYERS and the README"


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_go_one_way_down(module, path):
    if module == "perturbsets.__init__":
        return  # the public API re-exports from every layer, lazily
    own = _layer(module)
    for line, target, names in _imports(path):
        if target == "perturbsets":
            assert names == ["__version__"], f"{path}:{line} imports {names} from the package root"
            continue
        layer = _layer(target)
        assert layer == own or RANK[layer] < RANK[own], (
            f"{path}:{line} imports {target}: layer {own!r} may not import the higher layer {layer!r}"
        )


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_no_private_names_cross_modules(module, path):
    for line, target, names in _imports(path):
        if target == module.removesuffix(".__init__"):
            continue
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        last = target.split(".")[-1]
        assert not private, f"{path}:{line} imports private {private} from {target}"
        assert not (last.startswith("_") and last != "_util" and _layer(target) != _layer(module)), (
            f"{path}:{line} imports the private module {target} from another layer"
        )


def test_no_import_cycle_between_modules():
    # The root package imports lazily (inside __getattr__), so its edges cannot form a cycle at import time.
    graph = {m.removesuffix(".__init__"): {t for _, t, _ in _imports(p)} for m, p in _modules() if m != "perturbsets.__init__"}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


# A module or class past these sizes holds more than one job; split it along its sections.
MAX_MODULE_LINES = 460
MAX_CLASS_LINES = 320


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_modules_and_classes_stay_small(module, path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{path}: class {node.name} has {size} lines"
