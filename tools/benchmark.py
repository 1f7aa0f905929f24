#!/usr/bin/env python
"""Benchmark what OFD adds to a training step; same as `overhaul-det bench` (see overhaul_det.bench)."""
import sys

from overhaul_det.bench import main

if __name__ == "__main__":
    sys.exit(main())
