"""Fashion-MNIST through torchvision's loader, fed from Debian's ``dataset-fashion-mnist`` files.

Debian ships the original idx ``.gz`` files; torchvision reads the unpacked ones from
``ROOT/FashionMNIST/raw``. They are unpacked once into the cache; on a machine without the
Debian package, torchvision's own download is used.

Two environment variables, read at each call, say where to look:

* ``OVERHAUL_DET_DATA``: the cache ROOT (default ``~/.cache/overhaul_det``);
* ``OVERHAUL_DET_DEBIAN_DATA``: the folder holding Debian's ``*-ubyte.gz`` files
  (default ``/usr/share/datasets/fashion-mnist``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

__all__ = ["DEBIAN_DIR", "debian_dir", "default_root", "fashion_mnist", "load_fashion_mnist_arrays", "CLASSES"]

logger = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = tuple(FashionMNIST.classes)
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_root() -> Path:
    """Where unpacked Fashion-MNIST lives: $OVERHAUL_DET_DATA or ~/.cache/overhaul_det."""
    return Path(os.environ.get("OVERHAUL_DET_DATA", Path.home() / ".cache" / "overhaul_det"))


def debian_dir() -> Path:
    """Where Debian's idx ``.gz`` files live: $OVERHAUL_DET_DEBIAN_DATA or DEBIAN_DIR."""
    return Path(os.environ.get("OVERHAUL_DET_DEBIAN_DATA", DEBIAN_DIR))


def _unpack_debian(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in _FILES):
        return True
    debian = debian_dir()
    if not all((debian / f"{name}.gz").exists() for name in _FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    # A folder of this process's own: trainings started together unpack side by side, each file lands whole.
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=raw))
    for name in _FILES:
        if not (raw / name).exists():
            extract_archive(str(debian / f"{name}.gz"), str(partial))
            os.replace(partial / name, raw / name)
    partial.rmdir()
    logger.info("unpacked Fashion-MNIST from %s into %s", debian, raw)
    return True


def fashion_mnist(train: bool, root: Optional[os.PathLike] = None, transform=None) -> FashionMNIST:
    """torchvision's FashionMNIST, from the Debian files when present, else downloaded."""
    root = Path(root) if root is not None else default_root()
    local = _unpack_debian(root)
    try:
        return FashionMNIST(str(root), train=train, transform=transform, download=not local)
    except RuntimeError as error:
        raise RuntimeError(
            f"Fashion-MNIST not found under {root} and could not be downloaded ({error}); "
            "install it with `apt-get install dataset-fashion-mnist`, set OVERHAUL_DET_DEBIAN_DATA to a folder "
            "holding its *-ubyte.gz files or OVERHAUL_DET_DATA to one holding FashionMNIST/raw/*-ubyte"
        ) from error


def load_fashion_mnist_arrays(train: bool, root: Optional[os.PathLike] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """All images (N, 28, 28) uint8 and labels (N,) int64 of one split."""
    dataset = fashion_mnist(train, root)
    return dataset.data, dataset.targets
