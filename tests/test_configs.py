"""Every shipped config builds its Runner and runs one training iteration and one validation, on a few images
in its dataset's real layout, at a small input size; real-data configs with random weights (no download)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from overhaul_det.datasets.scenes import make_scenes
from overhaul_det.datasets.voc import voc_palette
from overhaul_det.training import build_runner, load_config
from overhaul_det.tasks.base import WEIGHT_KEYS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)
REAL_DATA = ("coco", "voc", "imagenet")
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def _is_real_data(path: Path) -> bool:
    return any(name in path.stem for name in REAL_DATA)


def _coco_category_ids() -> list:
    """COCO's 80 category ids (1..90 with gaps), from torchvision's COCO category table."""
    names = torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [index for index, name in enumerate(names) if name not in ("__background__", "N/A")]


def write_coco(root: Path) -> None:
    """COCO's layout: {train,val}2017/ images and annotations/instances_{train,val}2017.json, COCO's category ids."""
    ids = _coco_category_ids()
    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
        images, annotations = [], []
        for index in range(2):
            file_name = f"{index + 1:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / split / file_name)
            images.append(dict(id=index + 1, file_name=file_name, width=64, height=48))
            for box, category in (([4, 6, 30, 20], ids[index]), ([30, 10, 20, 30], ids[-1])):
                annotations.append(dict(id=len(annotations) + 1, image_id=index + 1, category_id=category, bbox=box,
                                        area=box[2] * box[3], iscrowd=0, segmentation=[]))
        data = dict(images=images, annotations=annotations,
                    categories=[dict(id=i, name=f"c{i}", supercategory="x") for i in ids])
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def write_voc(root: Path) -> None:
    """VOCdevkit/VOC2012's layout: JPEGImages, palette PNG labels with a 255 border, ImageSets/Segmentation lists."""
    rng = np.random.default_rng(0)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for split in ("train", "val"):
        stems = [f"2007_{split}_{i}" for i in range(2)]
        for index, stem in enumerate(stems):
            Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
            label = np.zeros((40, 56), np.uint8)
            label[10:30, 12:40] = 1 + index * 14
            label[9, 11:41] = label[30, 11:41] = 255
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(voc_palette())
            mask.save(root / "SegmentationClass" / f"{stem}.png")
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")


def write_image_folder(root: Path) -> None:
    """ImageNet's layout: {train,val}/<class folder>/<image>."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("n01440764", "n01443537"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / split / name / "a.JPEG")


def _data_root(cfg, tmp_path: Path, fashion_root: Path):
    """A few-image dataset in the layout the config reads, and the root to give it (None: the config's own)."""
    dataset = cfg.train_dataloader.dataset
    root = tmp_path / "data"
    if dataset.type == "FashionMNISTDataset":
        return None
    if dataset.type == "ImageFolderDataset":
        write_image_folder(root)
    elif dataset.type == "CocoDetection" and "coco" in cfg.data_root:
        write_coco(root)
    elif dataset.type == "VOCSegmentation" and "VOCdevkit" in cfg.data_root:
        write_voc(root)
    else:
        fmt = ("coco",) if dataset.type == "CocoDetection" else ("voc",)
        for split in ("train", "val"):
            make_scenes(root, split, 2, 64, seed=0, fmt=fmt, fashion_root=fashion_root)
    return str(root)


def _small(cfg, real_data: bool) -> None:
    """One training iteration then one validation, no checkpoint written, small inputs; real data: random weights."""
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1, val_interval=1)
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.default_hooks.checkpoint = None
    for key in LOADERS:
        cfg[key].update(batch_size=2, num_workers=0)
        cfg[key].pop("persistent_workers", None)
        dataset = cfg[key].dataset
        if dataset.type == "VOCSegmentation" and real_data:
            dataset.crop_size = (64, 64)
        if dataset.type == "FashionMNISTDataset":
            dataset.num_samples = 4
        if dataset.type == "ImageFolderDataset":
            dataset.update(resize=72, crop=64)
            cfg.model.ofd.input_size = (3, 64, 64)
    if cfg.model.type == "DetectionDistiller" and real_data:
        cfg.model.update(min_size=64, max_size=64)
    if real_data:
        for role in ("teacher", "student"):
            spec = cfg.model.get(role)
            for key in WEIGHT_KEYS:
                if isinstance(spec, dict):
                    spec.pop(key, None)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_config_trains_one_iteration_and_validates(path, tmp_path, fashion_data, monkeypatch):
    monkeypatch.chdir(REPO)
    data_root = _data_root(load_config(str(path)), tmp_path, fashion_data)
    cfg = load_config(str(path), data_root=data_root)
    _small(cfg, _is_real_data(path))
    runner = build_runner(cfg, str(path), work_dir=str(tmp_path / "work"))
    runner.train()
    assert runner.iter == 1
    scores = runner.message_hub.log_scalars
    assert any(key.startswith("val/") for key in scores), sorted(scores)


@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_real_data(p)], ids=lambda p: p.stem)
def test_real_data_configs_name_weights_by_library_and_declare_their_batch(path, monkeypatch):
    """Weights by torchvision's/timm's names (or a teacher this project trains, with the command that makes it),
    never a torchvision file copied under checkpoints/; the total batch its learning rate was set for."""
    monkeypatch.chdir(REPO)
    cfg = load_config(str(path))
    assert cfg.auto_scale_lr.enable is False and cfg.auto_scale_lr.base_batch_size in (16, 256)
    for role in ("teacher", "student"):
        spec = cfg.model.get(role)
        if isinstance(spec, dict):
            files = [str(spec.get(key)) for key in ("checkpoint", "backbone_checkpoint") if spec.get(key)]
            copied = [f for f in files if re.search(r"-[0-9a-f]{8}\.pth$", f)]
            assert not copied, f"{copied}: a torchvision file name; name the weights with weights=/weights_backbone="
            assert not spec.get("backbone_checkpoint"), spec
