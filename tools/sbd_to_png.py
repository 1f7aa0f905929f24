"""Convert SBD's class labels (``dataset/cls/<id>.mat``) into index PNGs beside them (``dataset/cls/<id>.png``).

``VOCSegmentation(split='trainaug', sbd_root=...)`` reads the PNGs: the library reads no MATLAB files, so scipy is
needed here only, once (``pip install scipy``)::

    python tools/sbd_to_png.py data/SBD/benchmark_RELEASE
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image


def convert(sbd_root: Path) -> int:
    """Write ``cls/<id>.png`` for every ``cls/<id>.mat`` under ``sbd_root/dataset``; returns how many were written."""
    from scipy.io import loadmat

    labels = sorted((sbd_root / "dataset" / "cls").glob("*.mat"))
    if not labels:
        raise FileNotFoundError(f"no SBD labels at {sbd_root / 'dataset' / 'cls'}/*.mat; give the folder that holds "
                                "dataset/ (benchmark_RELEASE)")
    for path in labels:
        segmentation = loadmat(str(path))["GTcls"][0]["Segmentation"][0]
        Image.fromarray(np.asarray(segmentation, dtype=np.uint8), mode="L").save(path.with_suffix(".png"))
    return len(labels)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sbd_root", type=Path, help="SBD's benchmark_RELEASE folder (it holds dataset/cls/*.mat)")
    args = parser.parse_args(argv)
    sys.stdout.write(f"wrote {convert(args.sbd_root)} PNG labels\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
