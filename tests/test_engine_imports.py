"""``engine/`` is mmengine glue: importing every module of it loads no task, dataset or metric."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import overhaul_det.engine

ENGINE_MODULES = sorted(f"overhaul_det.engine.{info.name}" for info in pkgutil.iter_modules(overhaul_det.engine.__path__))
PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(*sorted(m for m in sys.modules if m.startswith(("overhaul_det.tasks", "overhaul_det.datasets",
                                                      "overhaul_det.evaluation", "overhaul_det.training"))))
"""


def test_engine_imports_no_task_dataset_or_metric():
    root = Path(overhaul_det.engine.__file__).parents[2]
    done = subprocess.run([sys.executable, "-c", PROBE, *ENGINE_MODULES], capture_output=True, text=True,
                          cwd=root, check=True)
    assert len(ENGINE_MODULES) > 5
    assert done.stdout.split() == []


def test_the_runner_assembly_lives_outside_engine():
    assert "overhaul_det.engine.runner" not in ENGINE_MODULES
    from overhaul_det.training import build_runner, build_test_runner, load_config  # noqa: F401
