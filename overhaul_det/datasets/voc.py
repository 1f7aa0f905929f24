"""VOC-layout semantic segmentation: JPEGImages + palette PNG labels + ImageSets split lists.

Labels are read as class indices (palette or greyscale PNG); every item is checked against its
image size and the class range, so a bad label names its file instead of corrupting the loss.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dataset import BaseDataset
from PIL import Image

from ..registry import DATASETS

__all__ = ["VOCSegmentation", "VOC_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "check_normalised_once", "trainaug_ids",
           "voc_palette"]

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LABEL_MODES = ("P", "L")


def voc_palette(num_colors: int = 256) -> List[int]:
    """The PASCAL VOC colour map as a flat [r, g, b, ...] list for ``Image.putpalette``.

    Class ``i`` spreads the bits of ``i`` over the high bits of r, g and b (index 255 is cream).
    """
    palette = []
    for index in range(num_colors):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= (code & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return palette


def _resolve_classes(classes: Optional[Sequence[str]], num_classes: Optional[int]) -> Tuple[str, ...]:
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(
                f"num_classes={num_classes} but classes has {len(classes)} names; pass one of them or make them agree"
            )
        return tuple(classes)
    if num_classes is None or num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(str(index) for index in range(num_classes))


def _read_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise OSError(f"cannot read image {path} ({error}); replace it or drop its id from the split list") from error


def _read_label(path: str) -> Image.Image:
    if path.endswith(".mat"):
        raise ValueError(f"{path} is one of SBD's MATLAB labels; convert them to index PNGs once with `python "
                         "tools/sbd_to_png.py SBD_ROOT` (from a clone, needs scipy) and keep sbd_label_suffix='.png'")
    try:
        with Image.open(path) as label:
            label.load()
    except OSError as error:
        raise OSError(f"cannot read label {path} ({error}); replace it or drop its id from the split list") from error
    if label.mode not in _LABEL_MODES:
        raise ValueError(
            f"label {path} is a {label.mode!r} image; segmentation labels must be palette ('P') or greyscale ('L') "
            "PNGs whose pixel values are class indices (convert colour-coded labels to indices first)"
        )
    return label


def _check_label(label: np.ndarray, image_size: Tuple[int, int], seg_path: str, num_classes: int,
                 ignore_index: int) -> None:
    """Raise ValueError naming ``seg_path`` if the label's (H, W) differs from the image or holds unknown classes.

    Allowed values are 0..num_classes-1 and ``ignore_index``.
    """
    if label.shape != tuple(image_size):
        raise ValueError(
            f"label {seg_path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image is "
            f"{image_size[1]}x{image_size[0]}; labels must have their image's size"
        )
    bad = (label >= num_classes) & (label != ignore_index)
    if bad.any():
        raise ValueError(
            f"label {seg_path} holds class ids {np.unique(label[bad]).tolist()} outside [0, {num_classes}) "
            f"and not the ignore index {ignore_index}; fix the label or set num_classes"
        )


def _read_ids(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found; create it with one image id per line")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def trainaug_ids(voc_sets: Path, sbd_dataset: Path) -> List[Tuple[str, str]]:
    """The SBD-augmented training ids, as the official OFD code combines them: VOC ``train`` first, then SBD's
    ``train`` and ``val`` ids not yet listed, minus VOC ``val`` (10,582 ids on the full sets); each with its
    source, ``'voc'`` or ``'sbd'``.

    Args:
        voc_sets: VOC's ``ImageSets/Segmentation`` folder (``train.txt``, ``val.txt``).
        sbd_dataset: SBD's ``dataset`` folder (``train.txt``, ``val.txt``, ``img/``, ``cls/``).
    """
    excluded = set(_read_ids(voc_sets / "val.txt"))
    combined: Dict[str, str] = {}
    for source, path in (("voc", voc_sets / "train.txt"), ("sbd", sbd_dataset / "train.txt"),
                         ("sbd", sbd_dataset / "val.txt")):
        for stem in _read_ids(path):
            if stem not in excluded:
                combined.setdefault(stem, source)
    return list(combined.items())


@DATASETS.register_module()
class VOCSegmentation(BaseDataset):
    """Images and class-index labels listed in ``ImageSets/Segmentation/<split>.txt`` under ``data_root``.

    ``split='trainaug'`` with ``sbd_root`` (SBD's ``benchmark_RELEASE``, holding ``dataset/{img,cls}`` and
    ``dataset/{train,val}.txt``) trains on VOC train plus SBD train and val, minus VOC val, as the official OFD
    code does (see ``trainaug_ids``); without ``sbd_root`` it reads ``ImageSets/Segmentation/trainaug.txt``.
    Training items are randomly scaled, flipped and cropped to ``crop_size``; evaluation items are only
    padded up to it (never cropped, so every labelled pixel is scored). Padding is 0 in the normalised
    image (the mean colour) and ``ignore_index`` in the label.
    """

    def __init__(
        self,
        data_root: str,
        split: str = "train",
        img_dir: str = "JPEGImages",
        ann_dir: str = "SegmentationClass",
        train: bool = True,
        crop_size: Optional[Sequence[int]] = None,
        scale_range: Sequence[float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: Optional[int] = None,
        classes: Optional[Sequence[str]] = None,
        ignore_index: int = 255,
        img_suffix: str = ".jpg",
        seg_suffix: str = ".png",
        validate: bool = False,
        sbd_root: Optional[str] = None,
        sbd_label_suffix: str = ".png",
        indices: Optional[Sequence[int]] = None,
        serialize_data: bool = True,
    ) -> None:
        """``crop_size`` is (H, W); ``mean``/``std`` are in [0, 1] units; ``classes`` defaults to VOC's 21 names.

        ``validate=True`` decodes every label at construction; otherwise each label is checked when loaded.
        ``sbd_label_suffix``: of SBD's index-PNG labels, which ``tools/sbd_to_png.py`` writes from its ``.mat`` files.
        """
        if sbd_root is not None and split != "trainaug":
            raise ValueError(f"sbd_root is read by split='trainaug' only, not split={split!r}; drop sbd_root or "
                             "set split='trainaug'")
        self.sbd_dataset = Path(sbd_root).expanduser() / "dataset" if sbd_root is not None else None
        self.sbd_label_suffix = sbd_label_suffix
        if crop_size is not None and (len(crop_size) != 2 or min(crop_size) <= 0):
            raise ValueError(f"crop_size={crop_size!r}; give (height, width) with positive sizes, or None")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range={scale_range!r}; give (low, high) with 0 < low <= high")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob}; give a probability in [0, 1]")
        names = _resolve_classes(classes, num_classes)
        self.num_classes = len(names)
        self.train = train
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_prob = float(flip_prob)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.ignore_index = ignore_index
        self.img_suffix = img_suffix
        self.seg_suffix = seg_suffix
        self.validate = validate
        super().__init__(
            ann_file=str(Path("ImageSets") / "Segmentation" / f"{split}.txt"),
            metainfo=dict(classes=names, palette=voc_palette(len(names))),
            data_root=data_root,
            data_prefix=dict(img_path=img_dir, seg_path=ann_dir),
            indices=indices,
            serialize_data=serialize_data,
            test_mode=not train,
        )

    def load_data_list(self) -> List[dict]:
        """Read the split list, check every listed file exists, and optionally decode every label."""
        split_file = Path(self.ann_file)
        if self.sbd_dataset is None:
            stems = [(stem, "voc") for stem in _read_ids(split_file)]
        else:
            split_file = self.sbd_dataset
            stems = trainaug_ids(Path(self.ann_file).parent, self.sbd_dataset)
        data_list = []
        for stem, source in stems:
            img_path, seg_path = self._paths(stem, source)
            for path in (img_path, seg_path):
                if not Path(path).is_file():
                    raise FileNotFoundError(
                        f"{path} (listed as {stem!r} in {split_file}) not found; add the file or remove the id"
                    )
            if self.validate:
                with Image.open(img_path) as image:
                    size = (image.height, image.width)
                _check_label(np.array(_read_label(seg_path)), size, seg_path, self.num_classes, self.ignore_index)
            data_list.append(dict(img_path=img_path, seg_path=seg_path))
        logger.info("VOC split %s: %d images", split_file, len(data_list))
        return data_list

    def _paths(self, stem: str, source: str) -> Tuple[str, str]:
        """The image and label file of ``stem`` in VOC's folders, or in SBD's ``img``/``cls``."""
        if source == "sbd":
            return (str(self.sbd_dataset / "img" / f"{stem}.jpg"),
                    str(self.sbd_dataset / "cls" / f"{stem}{self.sbd_label_suffix}"))
        return (str(Path(self.data_prefix["img_path"]) / f"{stem}{self.img_suffix}"),
                str(Path(self.data_prefix["seg_path"]) / f"{stem}{self.seg_suffix}"))

    def prepare_data(self, idx: int) -> dict:
        """Load, check and augment one item: ``dict(inputs=Tensor[3,H,W], data_samples=dict(gt_seg, img_path))``."""
        info = self.get_data_info(idx)
        image = _read_rgb(info["img_path"])
        label = _read_label(info["seg_path"])
        _check_label(np.array(label), (image.height, image.width), info["seg_path"], self.num_classes,
                     self.ignore_index)
        if self.train:
            image, label = self._random_scale(image, label)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
        inputs = (pixels - self.mean) / self.std
        gt_seg = torch.from_numpy(np.array(label)).long()
        if self.train and torch.rand(()).item() < self.flip_prob:
            inputs, gt_seg = inputs.flip(-1), gt_seg.flip(-1)
        if self.crop_size is not None:
            inputs, gt_seg = self._pad_and_crop(inputs, gt_seg)
        data_samples = dict(gt_seg=gt_seg.contiguous(), img_path=info["img_path"])
        return dict(inputs=inputs.contiguous(), data_samples=data_samples)

    def _random_scale(self, image: Image.Image, label: Image.Image) -> Tuple[Image.Image, Image.Image]:
        low, high = self.scale_range
        factor = low + (high - low) * torch.rand(()).item()
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.BILINEAR), label.resize(size, Image.NEAREST)

    def _pad_and_crop(self, inputs: torch.Tensor, gt_seg: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - inputs.shape[1], 0), max(crop_w - inputs.shape[2], 0)
        if pad_h or pad_w:
            inputs = F.pad(inputs, (0, pad_w, 0, pad_h), value=0.0)
            gt_seg = F.pad(gt_seg, (0, pad_w, 0, pad_h), value=self.ignore_index)
        if not self.train:
            return inputs, gt_seg
        top = int(torch.randint(inputs.shape[1] - crop_h + 1, ()).item())
        left = int(torch.randint(inputs.shape[2] - crop_w + 1, ()).item())
        return inputs[:, top:top + crop_h, left:left + crop_w], gt_seg[top:top + crop_h, left:left + crop_w]


def _normalises(preprocessor) -> bool:
    """Whether a data preprocessor config changes its inputs' scale (a mean or std other than 0 and 1)."""
    if not isinstance(preprocessor, dict):
        return False
    mean, std = preprocessor.get("mean"), preprocessor.get("std")
    return any(m != 0 for m in mean or ()) or any(s != 1 for s in std or ())


def check_normalised_once(cfg, source: str = "config") -> None:
    """Refuse a config whose model preprocessor normalises the already normalised output of ``VOCSegmentation``.

    The dataset subtracts its ``mean`` and divides by its ``std``; a second normalisation leaves the network
    an almost constant input, on which training runs on to the all-background solution without an error.
    """
    preprocessor = (cfg.get("model") or {}).get("data_preprocessor")
    if not _normalises(preprocessor):
        return
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset") or {}
        if dataset.get("type") in ("VOCSegmentation", VOCSegmentation):
            raise ValueError(
                f"{source}: model.data_preprocessor normalises (mean={preprocessor.get('mean')}, "
                f"std={preprocessor.get('std')}) the images {key}'s VOCSegmentation already normalised; "
                "normalise once: set the dataset's mean/std (in [0, 1] units, e.g. mean=[0.286]*3, std=[0.353]*3 "
                "for Fashion-MNIST) and drop them from model.data_preprocessor"
            )
