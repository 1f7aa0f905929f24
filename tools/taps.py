"""OpenMMLab-style script: same as `overhaul-det taps ...`."""
import sys

from overhaul_det.cli import main

if __name__ == "__main__":
    sys.exit(main(["taps", *sys.argv[1:]]))
