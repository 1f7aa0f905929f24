"""overhaul_det and the lab under tools/ have no import cycle: the graph of their import statements (lazy ones
inside functions included) is acyclic; every one of those statements that names the package or the lab resolves;
the package imports nothing of the lab, nor mpmath or scipy, and matplotlib only inside functions; the benchmark's
modules also import on their own in a fresh interpreter, and ``python -m tools.bench`` runs.

The graph counts import statements only: ``from .config import X`` is an edge to
``bench.config``, ``from . import x`` an edge to the package itself (its ``__init__``).
"""
import ast
import graphlib
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tools.bench"
LAB_ONLY = ("tools", "mpmath", "scipy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


LIBRARY = {_module_name(path): path for path in sorted((ROOT / "overhaul_det").rglob("*.py"))}
MODULES = {**LIBRARY, **{_module_name(path): path for path in sorted((ROOT / "tools").rglob("*.py"))}}
CLONE_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
BENCH = {name for name in MODULES if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _imported(name: str, path: Path) -> Set[str]:
    """Absolute names of every module ``path`` imports anywhere in its body, and of the names it imports from them."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _package_imports(name: str, path: Path) -> Set[tuple]:
    """``(module, imported name)`` of every ``from ... import`` in ``path`` that names the package."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            if base.split(".")[0] in ("overhaul_det", "tools"):
                found.update((base, alias.name) for alias in node.names)
    return found


def _graph() -> Dict[str, Set[str]]:
    return {name: (_imported(name, path) & set(MODULES)) - {name} for name, path in MODULES.items()}


def test_the_walk_sees_top_level_and_lazy_imports():
    graph = _graph()
    assert {"tools.bench.config", "tools.bench.runtime"} <= graph["tools.bench.workload"]
    assert "tools.bench.tasks" in graph["tools.bench.workload"]  # imported inside functions
    assert "tools.bench.cli" in graph[PACKAGE]


def test_import_graph_has_no_cycle():
    try:
        order = list(graphlib.TopologicalSorter(_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(reversed(error.args[1]))}")
    assert set(order) == set(MODULES) and len(MODULES) > 50


def test_every_import_of_the_package_resolves_lazy_ones_too():
    """A lazy ``from .engine import x`` in a subpackage names a module that does not exist; only running that
    function would tell, so each statement is resolved here."""
    broken = []
    for name, path in MODULES.items():
        for module, imported in sorted(_package_imports(name, path)):
            if module not in MODULES:
                broken.append(f"{name}: no module {module}")
            elif f"{module}.{imported}" not in MODULES and not hasattr(importlib.import_module(module), imported):
                broken.append(f"{name}: {module} has no {imported}")
    assert not broken
    assert ("overhaul_det.engine.checkpoint", "load_checkpoint_file") in _package_imports(
        "tools.reproduce.runs", MODULES["tools.reproduce.runs"])


def test_a_planted_lazy_cycle_is_seen():
    graph = _graph()
    graph["overhaul_det.ofd"] = graph["overhaul_det.ofd"] | {"overhaul_det.distiller"}  # distiller imports ofd
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_no_bench_module_imports_the_package_back():
    importers = [name for name, imports in _graph().items() if name in BENCH - {PACKAGE} and PACKAGE in imports]
    assert not importers, f"{importers} import {PACKAGE} itself, whose __init__ imports them"


@pytest.mark.parametrize("module", sorted(BENCH - {f"{PACKAGE}.__main__"}))
def test_module_imports_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import importlib; importlib.import_module({module!r})"],
                          capture_output=True, text=True, cwd=ROOT, env=CLONE_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_python_dash_m_runs_the_bench_command():
    proc = subprocess.run([sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True, cwd=ROOT,
                          env=CLONE_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("usage: python tools/benchmark.py") and "--loss-shape" in proc.stdout


@pytest.mark.parametrize("script", ["benchmark.py", "reproduce.py", "fingerprint.py"])
def test_lab_scripts_run_from_anywhere(script, tmp_path):
    """``python tools/<script>.py`` finds the clone's ``tools`` and package from any working directory."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / script), "--help"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("usage: ")


def _top_level_imports(path: Path) -> Set[str]:
    """The modules ``path`` imports at module level (not inside a function)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names


def test_the_library_imports_nothing_of_the_lab():
    """The installed package holds no lab code and needs none of the lab's extras: no import of ``tools``,
    mpmath or scipy anywhere in it, and matplotlib only inside the functions that draw."""
    lab = [f"{name}: {imported}" for name, path in LIBRARY.items() for imported in _imported(name, path)
           if imported.split(".")[0] in LAB_ONLY]
    eager_plots = [name for name, path in LIBRARY.items()
                   if any(m.split(".")[0] == "matplotlib" for m in _top_level_imports(path))]
    assert not lab and not eager_plots
    assert not any(name.split(".")[1] in ("bench", "reproduce", "provenance") for name in LIBRARY if "." in name)


def test_the_lab_check_sees_a_planted_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import matplotlib.pyplot as plt\n\ndef f():\n    from tools.bench import main\n")
    assert "tools.bench" in _imported("overhaul_det.planted", planted)
    assert "matplotlib.pyplot" in _top_level_imports(planted)
