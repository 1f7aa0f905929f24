#!/usr/bin/env python
"""Fingerprint a checkout's training, or compare two fingerprints (see tools/fingerprints, docs/fingerprints.md):
``python tools/fingerprint.py [--code-root PATH] [--out FILE] [--against FILE]``, ``--compare A B``."""
import sys

import _clone  # noqa: F401  (the clone's root on sys.path)

from tools.fingerprints import main

if __name__ == "__main__":
    sys.exit(main())
