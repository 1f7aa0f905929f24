"""OpenMMLab-style script: same as `overhaul-det export ...`."""
import sys

from overhaul_det.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
