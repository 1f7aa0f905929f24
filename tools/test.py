"""OpenMMLab-style script: same as `overhaul-det test ...`."""
import sys

from overhaul_det.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
