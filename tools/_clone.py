"""Puts the clone's root on ``sys.path``, so ``python tools/<script>.py`` imports ``tools`` and the package from
the clone it sits in (as ``python -m tools.<module>`` from the root does)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
