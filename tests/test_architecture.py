"""The layering rules of docs/architecture (README "Architecture"), checked on the source itself.

Every import in kdrun/ (module level and inside functions) is read with `ast`, so a rule broken by a
lazy import fails here too. Layers, bottom up: the ground floor (kdrun/*.py helpers), the lower
layers (data, models, methods, report, tracking), the training core (training, compression, export, diffusion),
the CLI and the Python API (commands, cli, display, bench, api). A module may import its own layer and the ones below, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "kdrun"
GROUND_FLOOR = {"kdrun", "kdrun.errors", "kdrun.registry", "kdrun.files", "kdrun.parallel", "kdrun.results",
                "kdrun.config", "kdrun.run_dir", "kdrun.model_cache", "kdrun.sweep_files", "kdrun.download",
                "kdrun.diffusion_results"}
LOWER = ("kdrun.data", "kdrun.models", "kdrun.methods", "kdrun.report", "kdrun.tracking")
CORE = ("kdrun.training", "kdrun.compression", "kdrun.export", "kdrun.diffusion")
TOP = ("kdrun.commands", "kdrun.cli", "kdrun.display", "kdrun.bench", "kdrun.__main__", "kdrun.api")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The kdrun modules `name` imports anywhere in its source (`from a import b` counts a.b when it is a module)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    if name in GROUND_FLOOR:
        return 0
    for level, prefixes in ((1, LOWER), (2, CORE), (3, TOP)):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return level
    raise AssertionError(f"{name} belongs to no layer: add it to tests/test_architecture.py and the README's Architecture section")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(name):
    above = sorted(target for target in GRAPH[name] if layer(target) > layer(name))
    assert not above, f"{name} (layer {layer(name)}) imports {above}"


def test_the_ground_floor_distributed_module_imports_nothing_of_kdrun():
    assert GRAPH["kdrun.parallel"] == set()


def test_lower_layers_never_import_the_training_core():
    offenders = {name: sorted(target for target in GRAPH[name] if target.startswith("kdrun.training"))
                 for name in MODULES if layer(name) <= 1}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_no_import_cycles():
    """Depth-first search over the import graph (lazy imports included: they are still a cycle of concerns)."""
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [name, target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert cycles == []
