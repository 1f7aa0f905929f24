"""Compose real Fashion-MNIST items onto textured canvases and write COCO and VOC datasets to disk.

Items are tinted, scaled and placed at random; later items occlude earlier ones, and every
annotation (box, RLE mask, class map) describes only the pixels left visible.
"""
from __future__ import annotations

import io
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .fashion_mnist import CLASSES, load_fashion_mnist_arrays
from .voc import voc_palette

__all__ = ["SCENE_CLASSES", "make_scenes"]

logger = logging.getLogger(__name__)

SCENE_CLASSES = ("background",) + CLASSES
FORMATS = ("coco", "voc")
CLI_SPLITS = ("train", "val", "test")
_ITEM_SIZE = 28


@dataclass
class _Scene:
    image: np.ndarray
    class_map: np.ndarray
    instances: List[Tuple[int, np.ndarray]]


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(2, 7))
    coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _ramp(rng: np.random.Generator, size: int) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return cols * np.cos(angle) + rows * np.sin(angle)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) canvas: smooth colour noise, a two-colour gradient, or stripes, plus grain."""
    kind = int(rng.integers(3))
    low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    if kind == 0:
        canvas = _smooth_noise(rng, size)
    else:
        ramp = _ramp(rng, size)
        if kind == 1:
            weight = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        else:
            weight = 0.5 + 0.5 * np.sin(2 * np.pi * ramp / rng.uniform(6, 24))
        canvas = low + (high - low) * weight[..., None]
    return canvas + rng.normal(0, 6, canvas.shape).astype(np.float32)


def _compose(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, size: int, min_objects: int,
             max_objects: int, scale_range: Tuple[float, float], threshold: int, min_visible: float) -> _Scene:
    """Paste items in order onto one canvas; keep those with at least ``min_visible`` of their mask visible."""
    canvas = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int64)
    placed = []
    for index in range(int(rng.integers(min_objects, max_objects + 1))):
        pick = int(rng.integers(len(images)))
        side = min(size, max(8, round(_ITEM_SIZE * rng.uniform(*scale_range))))
        item = Image.fromarray(images[pick])
        if rng.random() < 0.5:
            item = item.transpose(Image.FLIP_LEFT_RIGHT)
        glyph = np.asarray(item.resize((side, side), Image.BILINEAR), dtype=np.float32)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        mask = np.zeros((size, size), dtype=bool)
        mask[top:top + side, left:left + side] = glyph > threshold
        tint = rng.uniform(30, 255, 3).astype(np.float32)
        shaded = tint * (0.3 + 0.7 * glyph[..., None] / 255.0)
        region = canvas[top:top + side, left:left + side]
        inside = mask[top:top + side, left:left + side]
        region[inside] = shaded[inside]
        owner[mask] = index
        placed.append((int(labels[pick]) + 1, int(mask.sum())))
    class_map = np.zeros((size, size), dtype=np.uint8)
    instances = []
    for index, (category_id, full_area) in enumerate(placed):
        visible = owner == index
        class_map[visible] = category_id
        if full_area and visible.sum() >= min_visible * full_area:
            instances.append((category_id, visible))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return _Scene(image=image, class_map=class_map, instances=instances)


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary sibling and rename, so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _coco_annotations(scene: _Scene, image_id: int, next_id: int) -> List[dict]:
    annotations = []
    for offset, (category_id, visible) in enumerate(scene.instances):
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        rows, cols = np.nonzero(visible)
        x0, y0 = int(cols.min()), int(rows.min())
        annotations.append(dict(
            id=next_id + offset, image_id=image_id, category_id=category_id,
            bbox=[x0, y0, int(cols.max()) + 1 - x0, int(rows.max()) + 1 - y0],
            area=int(visible.sum()), iscrowd=0, segmentation=rle,
        ))
    return annotations


def _check_args(split: str, num_images: int, image_size: int, min_objects: int, max_objects: int,
                scale_range: Sequence[float], fmt: Sequence[str]) -> None:
    if not split or os.sep in split or split.startswith("."):
        raise ValueError(f"split={split!r}; give a plain name such as 'train' or 'test'")
    if num_images < 1 or image_size < 8:
        raise ValueError(f"num_images={num_images}, image_size={image_size}; need num_images >= 1 and image_size >= 8")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"min_objects={min_objects}, max_objects={max_objects}; need 0 <= min_objects <= max_objects")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range={scale_range!r}; give (low, high) with 0 < low <= high (1.0 = 28 px items)")
    unknown = sorted(set(fmt) - set(FORMATS))
    if unknown or not fmt:
        raise ValueError(f"fmt={tuple(fmt)!r}; choose one or more of {FORMATS}")


def make_scenes(
    out_dir: os.PathLike,
    split: str = "train",
    num_images: int = 200,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    scale_range: Sequence[float] = (0.8, 2.0),
    seed: int = 0,
    fmt: Sequence[str] = FORMATS,
    min_visible: float = 0.4,
    mask_threshold: int = 40,
    fashion_root: Optional[os.PathLike] = None,
) -> Dict[str, Path]:
    """Write ``num_images`` scenes of one split as COCO and/or VOC; return {format: annotation or split file}.

    Scenes of ``split='train'`` use Fashion-MNIST training items, any other split its test items. Image i
    depends only on (seed, split, i), so the same arguments give byte-identical files.
    """
    _check_args(split, num_images, image_size, min_objects, max_objects, scale_range, fmt)
    out_dir = Path(out_dir)
    images, labels = (array.numpy() for array in load_fashion_mnist_arrays(split == "train", fashion_root))
    split_key = zlib.crc32(split.encode())
    palette = voc_palette()
    coco_images, coco_annotations, voc_ids = [], [], []
    num_objects = 0
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, index)))
        scene = _compose(rng, images, labels, image_size, min_objects, max_objects,
                         (float(scale_range[0]), float(scale_range[1])), mask_threshold, min_visible)
        num_objects += len(scene.instances)
        picture = Image.fromarray(scene.image)
        if "coco" in fmt:
            file_name = f"{index:06d}.png"
            _write_bytes(out_dir / "images" / split / file_name, _encode(picture, "PNG"))
            coco_images.append(dict(id=index + 1, file_name=file_name, width=image_size, height=image_size))
            coco_annotations += _coco_annotations(scene, index + 1, len(coco_annotations) + 1)
        if "voc" in fmt:
            stem = f"{split}_{index:06d}"
            label = Image.frombytes("P", (image_size, image_size), scene.class_map.tobytes())
            label.putpalette(palette)
            _write_bytes(out_dir / "JPEGImages" / f"{stem}.jpg", _encode(picture, "JPEG", quality=95))
            _write_bytes(out_dir / "SegmentationClass" / f"{stem}.png", _encode(label, "PNG"))
            voc_ids.append(stem)
        if (index + 1) % max(1, num_images // 10) == 0 or index + 1 == num_images:
            logger.info("scenes %s: %d/%d images", split, index + 1, num_images)
    written = {}
    if "coco" in fmt:
        categories = [dict(id=i + 1, name=name, supercategory="fashion") for i, name in enumerate(CLASSES)]
        dataset = dict(info=dict(description=f"Fashion-MNIST scenes, split {split}, seed {seed}"),
                       images=coco_images, annotations=coco_annotations, categories=categories)
        written["coco"] = out_dir / "annotations" / f"instances_{split}.json"
        _write_bytes(written["coco"], json.dumps(dataset).encode())
    if "voc" in fmt:
        written["voc"] = out_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        _write_bytes(written["voc"], ("\n".join(voc_ids) + "\n").encode())
    logger.info("scenes %s: %d images, %d objects -> %s", split, num_images, num_objects, out_dir)
    return written
