"""``python -m overhaul_det.bench``: the same as ``overhaul-det bench``."""
import sys

from .cli import main

sys.exit(main())
