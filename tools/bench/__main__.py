"""``python -m tools.bench``: the same as ``python tools/benchmark.py``."""
import sys

from .cli import main

sys.exit(main())
