#!/usr/bin/env python
"""Benchmark what OFD adds to a training step (see tools/bench): ``python tools/benchmark.py --help``."""
import sys

import _clone  # noqa: F401  (the clone's root on sys.path)

from tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
