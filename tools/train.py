"""OpenMMLab-style script: same as `overhaul-det train ...`."""
import sys

from overhaul_det.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
