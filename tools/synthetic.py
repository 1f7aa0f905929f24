"""A synthetic Fashion-MNIST in the original idx files: small, fixed by its seed, no download.

The tests train on it, and the training fingerprint (``tools/fingerprints``) writes it for its runs: class c is a
bright box of its own size, hollow for c >= 5, so a few iterations already learn something.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Mapping, Tuple

import numpy as np

__all__ = ["synthetic_fashion_mnist", "idx_bytes", "write_fashion_mnist"]


def synthetic_fashion_mnist(per_class: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Shuffled (N, 28, 28) uint8 images and labels: class c is a bright box of its own size,
    hollow for c >= 5 (mirror-symmetric, so flips keep the class), placed and shaded at random.

    Args:
        per_class: images of each of the 10 classes.
        seed: the generator's seed; the same seed gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
    rows, cols = np.mgrid[:28, :28]
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        half_w, half_h = 3 + 2 * (label % 5), 11 - 2 * (label % 5)
        y, x = rng.integers(12, 16, 2)
        box = (abs(rows - y) <= half_h) & (abs(cols - x) <= half_w)
        if label >= 5:
            box &= (abs(rows - y) > half_h - 2) | (abs(cols - x) > half_w - 2)
        image[box] = rng.integers(120, 256, int(box.sum()))
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The original files' idx format: magic 0x800 + ndim (2049 labels, 2051 images), big-endian sizes, uint8 data."""
    return struct.pack(f">{1 + array.ndim}I", 0x800 + array.ndim, *array.shape) + array.tobytes()


def write_fashion_mnist(root: Path, per_class: Mapping[str, int]) -> Path:
    """Write a synthetic Fashion-MNIST ROOT: unpacked under ROOT/FashionMNIST/raw, and gzip'd in ROOT/debian as
    Debian's ``dataset-fashion-mnist`` ships it; point ``OVERHAUL_DET_DATA`` at ROOT to train on it.

    Args:
        root: the folder to write (created if missing).
        per_class: images per class of each split, ``{"train": N, "t10k": M}``; split i is drawn with seed i.
    """
    raw, debian = root / "FashionMNIST" / "raw", root / "debian"
    raw.mkdir(parents=True, exist_ok=True)
    debian.mkdir(exist_ok=True)
    for seed, (split, count) in enumerate(per_class.items()):
        images, labels = synthetic_fashion_mnist(count, seed)
        for name, array in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            (raw / name).write_bytes(idx_bytes(array))
            (debian / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return root
