"""COCO-format detection for torchvision detectors: xyxy boxes, labels 1..K, images in [0, 1].

The annotation file is checked entry by entry when the dataset is built, so a malformed entry, an unknown category
or an image missing on disk stops the run before training with the file, the id and the fix; boxes of zero area or
outside their image are skipped and counted in one warning, as mmdet does.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.dataset import BaseDataset
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..registry import DATASETS

__all__ = ["CocoDetection", "decode_segmentations", "validate_coco", "load_coco"]

logger = logging.getLogger(__name__)

ResizeSpec = Union[None, float, Sequence[float]]
_REQUIRED = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}
_BOX_TOLERANCE = 1.0
_ERRORS_SHOWN = 5


def _entry_errors(section: str, index: int, entry: Any) -> List[str]:
    if not isinstance(entry, dict):
        return [f"{section}[{index}] is a {type(entry).__name__}, not an object"]
    missing = [key for key in _REQUIRED[section] if key not in entry]
    if missing:
        return [f"{section}[{index}] (id {entry.get('id', '?')}) lacks key(s) {missing}"]
    return []


def _box_errors(ann: dict, images: Dict[Any, dict], categories: set) -> List[str]:
    where = f"annotation id {ann['id']}"
    if ann["image_id"] not in images:
        return [f"{where}: image_id {ann['image_id']!r} is not in 'images'"]
    if ann["category_id"] not in categories:
        return [f"{where}: category_id {ann['category_id']!r} is not in 'categories' (known: {sorted(categories)})"]
    box = ann["bbox"]
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, numbers.Real) for v in box)):
        return [f"{where}: bbox {box!r} is not [x, y, width, height]"]
    if ann.get("iscrowd", 0) not in (0, 1):
        return [f"{where}: iscrowd is {ann['iscrowd']!r}, expected 0 or 1"]
    return []


def _skip_reason(ann: dict, image: dict) -> Optional[str]:
    """Why a well-formed box is left out of training (mmdet skips these too), or None to keep it."""
    x, y, w, h = ann["bbox"]
    if w <= 0 or h <= 0:
        return "of zero area"
    width, height, tol = image["width"], image["height"], _BOX_TOLERANCE
    outside = x < -tol or y < -tol or x + w > width + tol or y + h > height + tol
    if outside or x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "outside their image"
    return None


def _skipped_boxes(coco: COCO, ann_file: str) -> set:
    """The ids of the annotations whose box ``_skip_reason`` leaves out, counted in one warning."""
    reasons = {ann_id: _skip_reason(ann, coco.imgs[ann["image_id"]]) for ann_id, ann in coco.anns.items()}
    skipped = {ann_id: reason for ann_id, reason in reasons.items() if reason}
    if skipped:
        counts = ", ".join(f"{list(skipped.values()).count(reason)} {reason}"
                           for reason in sorted(set(skipped.values())))
        logger.warning("COCO %s: skipped %d box(es) (%s), e.g. annotation id(s) %s", ann_file, len(skipped), counts,
                       sorted(skipped)[:_ERRORS_SHOWN])
    return set(skipped)


def _refuse_missing_images(data_list: List[dict], ann_file: str, img_dir: str) -> None:
    """ValueError listing the images ``ann_file`` names that are not on disk, before any training starts."""
    missing = [info["img_path"] for info in data_list if not Path(info["img_path"]).is_file()]
    if missing:
        shown = "\n  ".join(missing[:_ERRORS_SHOWN])
        more = f"\n  ... and {len(missing) - _ERRORS_SHOWN} more" if len(missing) > _ERRORS_SHOWN else ""
        raise ValueError(f"{ann_file}: {len(missing)} of {len(data_list)} images are not on disk:\n  {shown}{more}"
                         f"\nput them under {img_dir} (the dataset's data_root + img_prefix), or remove their entries")


def _id_errors(dataset: dict) -> List[str]:
    errors = [f"{section} ids are not unique" for section in _REQUIRED
              if len({entry["id"] for entry in dataset[section]}) != len(dataset[section])]
    return errors + [
        f"image id {image['id']}: size {image['width']}x{image['height']} is not a positive number of pixels"
        for image in dataset["images"]
        if not all(isinstance(image[key], numbers.Real) and image[key] > 0 for key in ("width", "height"))
    ]


def validate_coco(dataset: Any, source: str) -> None:
    """Raise ValueError naming ``source`` and the offending ids if a COCO dict is not usable for training.

    Checks required keys, unique ids, positive image sizes, known image/category ids and the form of boxes; boxes
    of zero area or outside their image are skipped when the data is loaded (``load_data_list``), not refused.
    """
    if not isinstance(dataset, dict):
        raise ValueError(f"{source}: top level is a {type(dataset).__name__}; a COCO file is a JSON object")
    for section in _REQUIRED:
        if not isinstance(dataset.get(section), list):
            raise ValueError(f"{source}: missing key {section!r} (a list); add it, e.g. \"{section}\": []")
    errors = [error for section in _REQUIRED for i, entry in enumerate(dataset[section])
              for error in _entry_errors(section, i, entry)]
    errors = errors or _id_errors(dataset)
    if not errors:
        images = {image["id"]: image for image in dataset["images"]}
        categories = {category["id"] for category in dataset["categories"]}
        errors = [error for ann in dataset["annotations"] for error in _box_errors(ann, images, categories)]
    if errors:
        shown = "\n  ".join(errors[:_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - _ERRORS_SHOWN} more" if len(errors) > _ERRORS_SHOWN else ""
        raise ValueError(
            f"{source}: {len(errors)} invalid COCO entries:\n  {shown}{more}\n"
            "fix or remove these entries (boxes are [x, y, width, height] in pixels of the listed image size)"
        )


def load_coco(ann_file: str) -> COCO:
    """Read, validate and index a COCO annotation file, without pycocotools' prints."""
    with open(ann_file) as handle:
        try:
            dataset = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{ann_file}: not valid JSON ({error}); re-export the annotation file") from error
    validate_coco(dataset, ann_file)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def decode_segmentations(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """COCO segmentations (polygons, RLE or uncompressed RLE) as (N, height, width) uint8 masks."""
    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for mask, segmentation in zip(masks, segmentations):
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        mask[:] = mask_utils.decode(rle)
    return masks


def _check_resize(resize: ResizeSpec) -> ResizeSpec:
    if resize is None:
        return None
    if isinstance(resize, numbers.Real) and resize > 0:
        return float(resize)
    if isinstance(resize, (list, tuple)) and len(resize) == 2 and 0 < resize[0] <= resize[1]:
        return (float(resize[0]), float(resize[1]))
    raise ValueError(
        f"resize={resize!r}; give None, a short side in pixels (e.g. 800), or a scale factor range (low, high)"
    )


def _check_segmentations(coco: COCO, ann_file: str) -> None:
    """Refuse ``with_masks`` on a file whose non-crowd annotations lack a segmentation."""
    bare = [ann["id"] for ann in coco.dataset["annotations"] if not ann.get("iscrowd", 0) and not ann.get("segmentation")]
    if bare:
        raise ValueError(f"{ann_file}: with_masks=True, but {len(bare)} annotation(s) have no 'segmentation' (ids "
                         f"{bare[:_ERRORS_SHOWN]}); add polygons or RLE masks, or set with_masks=False")


@DATASETS.register_module()
class CocoDetection(BaseDataset):
    """Images and boxes of a COCO annotation file, as torchvision detection targets.

    Category ids map to labels 1..K in sorted id order (0 is background); ``metainfo['cat_ids']`` maps back.
    """

    def __init__(
        self,
        data_root: str,
        ann_file: str,
        img_prefix: str = "",
        train: bool = True,
        flip_prob: float = 0.5,
        resize: ResizeSpec = None,
        filter_empty: bool = False,
        num_classes: Optional[int] = None,
        indices: Optional[Sequence[int]] = None,
        serialize_data: bool = True,
        with_masks: bool = False,
    ) -> None:
        """``resize``: None, a short side, or a (low, high) factor range (random in training, its middle in eval).

        ``num_classes`` counts the background (torchvision convention) and must equal K + 1 when given.
        ``flip_prob`` and ``filter_empty`` apply in training only. ``with_masks``: each sample also carries
        ``masks`` (N, H, W) uint8 from the annotations' segmentations (Mask R-CNN's targets).
        """
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob}; give a probability in [0, 1]")
        self.train = train
        self.flip_prob = float(flip_prob)
        self.resize = _check_resize(resize)
        self.filter_empty = filter_empty
        self.num_classes = num_classes
        self.with_masks = with_masks
        super().__init__(
            ann_file=ann_file,
            data_root=data_root,
            data_prefix=dict(img_path=img_prefix),
            indices=indices,
            serialize_data=serialize_data,
            test_mode=not train,
        )

    def load_data_list(self) -> List[dict]:
        """Validate the annotation file and turn each image into a dict of path, size, boxes (xyxy) and labels."""
        coco = load_coco(self.ann_file)
        cat_ids = sorted(coco.getCatIds())
        if self.num_classes is not None and self.num_classes != len(cat_ids) + 1:
            raise ValueError(
                f"{self.ann_file}: num_classes={self.num_classes} but the file has {len(cat_ids)} categories; "
                f"set num_classes={len(cat_ids) + 1} (categories + background)"
            )
        cat_to_label = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
        self._metainfo.update(
            classes=tuple(coco.cats[cat_id]["name"] for cat_id in cat_ids), cat_ids=cat_ids, ann_file=self.ann_file
        )
        if self.with_masks:
            _check_segmentations(coco, self.ann_file)
        skipped = _skipped_boxes(coco, self.ann_file)
        data_list = [self._parse_image(coco, image_id, cat_to_label, skipped) for image_id in sorted(coco.getImgIds())]
        _refuse_missing_images(data_list, self.ann_file, self.data_prefix["img_path"])
        logger.info("COCO %s: %d images, %d categories", self.ann_file, len(data_list), len(cat_ids))
        return data_list

    def _parse_image(self, coco: COCO, image_id: int, cat_to_label: Dict[int, int], skipped: set) -> dict:
        image = coco.imgs[image_id]
        anns = [ann for ann in coco.imgToAnns[image_id] if not ann.get("iscrowd", 0) and ann["id"] not in skipped]
        boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, image["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, image["height"])
        info = dict(
            image_id=image_id,
            img_path=str(Path(self.data_prefix["img_path"]) / image["file_name"]),
            height=image["height"],
            width=image["width"],
            boxes=boxes,
            labels=np.array([cat_to_label[ann["category_id"]] for ann in anns], dtype=np.int64),
        )
        if self.with_masks:
            info["segmentations"] = [ann["segmentation"] for ann in anns]
        return info

    def filter_data(self) -> List[dict]:
        """In training with ``filter_empty``, drop images without a non-crowd box."""
        if not (self.train and self.filter_empty):
            return self.data_list
        kept = [info for info in self.data_list if len(info["labels"])]
        logger.info("COCO %s: kept %d of %d images with boxes", self.ann_file, len(kept), len(self.data_list))
        return kept

    def _scale_factor(self, height: int, width: int) -> float:
        if self.resize is None:
            return 1.0
        if isinstance(self.resize, float):
            return self.resize / min(height, width)
        low, high = self.resize
        return low + (high - low) * torch.rand(()).item() if self.train else (low + high) / 2

    def _read_image(self, info: dict) -> Image.Image:
        path = info["img_path"]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as error:
            raise OSError(f"cannot read image {path} ({error}); replace it or drop it from {self.ann_file}") from error
        if rgb.size != (info["width"], info["height"]):
            raise ValueError(
                f"image {path} is {rgb.width}x{rgb.height} but {self.ann_file} gives {info['width']}x{info['height']} "
                f"for image id {info['image_id']}; fix width/height in the annotation file"
            )
        return rgb

    def prepare_data(self, idx: int) -> dict:
        """Load one image and its targets, resized and (in training) randomly flipped together."""
        info = self.get_data_info(idx)
        image = self._read_image(info)
        boxes = torch.from_numpy(info["boxes"])
        factor = self._scale_factor(info["height"], info["width"])
        if factor != 1.0:
            size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
            boxes = boxes * torch.tensor([size[0] / image.width, size[1] / image.height] * 2)
            image = image.resize(size, Image.BILINEAR)
        inputs = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
        flipped = self.train and torch.rand(()).item() < self.flip_prob
        if flipped:
            inputs = inputs.flip(-1)
            width = inputs.shape[-1]
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        extra = dict(masks=self._masks(info, inputs.shape[-2:], flipped)) if self.with_masks else {}
        return dict(
            inputs=inputs.contiguous(),
            data_samples=dict(**extra,
                image_id=int(info["image_id"]),
                boxes=boxes,
                labels=torch.from_numpy(info["labels"]),
                orig_size=(int(info["height"]), int(info["width"])),
                img_path=info["img_path"],
                scale_factor=float(factor),
                flipped=bool(flipped),
            ),
        )

    @staticmethod
    def _masks(info: dict, size: Sequence[int], flipped: bool) -> torch.Tensor:
        """The image's instance masks, resized (nearest) to ``size`` and flipped as the image was."""
        masks = torch.from_numpy(decode_segmentations(info["segmentations"], info["height"], info["width"]))
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks[None].float(), size=tuple(size), mode="nearest")[0].to(torch.uint8)
        return masks.flip(-1).contiguous() if flipped else masks

    @property
    def label_to_cat(self) -> Tuple[int, ...]:
        """Category id of each label: ``label_to_cat[label - 1]``."""
        return tuple(self._metainfo["cat_ids"])
