"""Same as `overhaul-det reproduce TASK ...`: baseline/KD/OFD/OFD+KD over seeds."""
import sys

from overhaul_det.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
