#!/usr/bin/env python
"""Baseline/KD/OFD/OFD+KD over seeds for a task (see tools/reproduce): ``python tools/reproduce.py TASK ...``."""
import sys

import _clone  # noqa: F401  (the clone's root on sys.path)

from tools.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
