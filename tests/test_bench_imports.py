"""overhaul_det.bench has no import cycle: its import graph (every import statement, lazy ones
included) is acyclic, and each module imports on its own in a fresh interpreter.

The graph counts import statements only: ``from .config import X`` is an edge to
``bench.config``, ``from . import x`` an edge to the package itself (its ``__init__``).
"""
import ast
import graphlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = "overhaul_det.bench"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "overhaul_det" / "bench"


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.glob("*.py"))}


def _imported(path: Path) -> Set[str]:
    """Absolute names of every module ``path`` imports anywhere in its body, and of the names it imports from them."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = PACKAGE.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> Dict[str, Set[str]]:
    return {name: _imported(path) & set(MODULES) for name, path in MODULES.items()}


def test_the_walk_sees_top_level_and_lazy_imports():
    graph = _graph()
    assert {"overhaul_det.bench.config", "overhaul_det.bench.runtime"} <= graph["overhaul_det.bench.workload"]
    assert "overhaul_det.bench.tasks" in graph["overhaul_det.bench.workload"]  # imported inside functions
    assert "overhaul_det.bench.cli" in graph[PACKAGE]


def test_bench_import_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle in {PACKAGE}: {' -> '.join(reversed(error.args[1]))}")
    assert set(order) == set(MODULES)


def test_no_module_imports_the_package_back():
    importers = [name for name, imports in _graph().items() if name != PACKAGE and PACKAGE in imports]
    assert not importers, f"{importers} import {PACKAGE} itself, whose __init__ imports them"


@pytest.mark.parametrize("module", sorted(set(MODULES) - {f"{PACKAGE}.__main__"}))
def test_module_imports_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import importlib; importlib.import_module({module!r})"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_python_dash_m_runs_the_bench_command():
    proc = subprocess.run([sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("usage: overhaul-det bench") and "--loss-shape" in proc.stdout
