"""Building models or exporting changes nothing of mmengine; building a Runner installs the safe pieces."""
from __future__ import annotations

import subprocess
import sys

PROBE = """
import mmengine.fileio.backends.registry_utils as files
from mmengine.runner.checkpoint import CheckpointLoader
def state():
    return files.backends["local"].__name__, CheckpointLoader._schemes[""].__module__
before = state()
import overhaul_det, overhaul_det.models, overhaul_det.export, overhaul_det.distiller
from overhaul_det.models.classifiers import build_classifier
build_classifier("resnet18", num_classes=10)
after_import = state()
from overhaul_det.engine import install
install()
print(before == after_import, after_import, state())
"""


def test_importing_models_leaves_mmengine_alone_until_install():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True", out
    assert "AtomicLocalBackend" in out[-2] and "overhaul_det.engine.checkpoint" in out[-1], out
