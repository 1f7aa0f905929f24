"""COCO box (and mask) mAP through pycocotools' COCOeval, as an mmengine metric that works under DDP.

Each rank keeps its detections as numpy arrays; BaseMetric gathers them and rank 0 scores them.
"""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..datasets.coco import load_coco
from ..registry import METRICS

__all__ = ["CocoDetectionMetric", "BBOX_KEYS", "SEGM_KEYS"]

logger = logging.getLogger(__name__)

BBOX_KEYS = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")
SEGM_KEYS = tuple(key.replace("bbox", "segm") for key in BBOX_KEYS)
IOU_TYPES = ("bbox", "segm")
MASK_THRESHOLD = 0.5


def _numpy(value: Union[torch.Tensor, np.ndarray, Sequence]) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


@METRICS.register_module()
class CocoDetectionMetric(BaseMetric):
    """Box mAP of detections given as xyxy boxes in original image pixels, scores and labels 1..K; with
    ``iou_types=("bbox", "segm")`` also mask mAP of their ``masks`` (N, H, W probabilities, Mask R-CNN's).

    Label k maps to category ``label_to_cat[k - 1]`` (a list) or ``label_to_cat[k]`` (a mapping).
    """

    default_prefix = "coco"

    def __init__(
        self,
        ann_file: Optional[str] = None,
        label_to_cat: Union[Sequence[int], Mapping[int, int], None] = None,
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
        iou_types: Sequence[str] = ("bbox",),
    ) -> None:
        """``ann_file`` and ``label_to_cat`` default to the dataset's ``metainfo`` (``ann_file``, ``cat_ids``).

        Without either, labels follow the sorted category ids of the annotation file, as CocoDetection does.
        """
        super().__init__(collect_device=collect_device, prefix=prefix)
        unknown = [kind for kind in iou_types if kind not in IOU_TYPES]
        if unknown or not iou_types:
            raise ValueError(f"iou_types={tuple(iou_types)!r}; choose among {IOU_TYPES}")
        self.iou_types = tuple(iou_types)
        self.ann_file = ann_file
        self.label_to_cat = label_to_cat
        self._coco: Optional[COCO] = None
        self._coco_file: Optional[str] = None

    def process(self, data_batch: object, data_samples: Sequence[dict]) -> None:
        """Keep each image's id and its detections (xywh boxes, scores, labels) as numpy arrays; for 'segm'
        their masks as RLE."""
        for sample in data_samples:
            boxes = _numpy(sample["boxes"]).astype(np.float64).reshape(-1, 4)
            boxes[:, 2:] -= boxes[:, :2]
            result = dict(
                image_id=int(sample["image_id"]),
                boxes=boxes,
                scores=_numpy(sample["scores"]).astype(np.float64).reshape(-1),
                labels=_numpy(sample["labels"]).astype(np.int64).reshape(-1),
            )
            if "segm" in self.iou_types:
                result["rles"] = _encode_masks(sample)
            self.results.append(result)

    def _ground_truth(self) -> COCO:
        ann_file = self.ann_file or (self.dataset_meta or {}).get("ann_file")
        if ann_file is None:
            raise ValueError(
                "CocoDetectionMetric has no ground truth: pass ann_file=... or evaluate a CocoDetection "
                "dataset (its metainfo carries 'ann_file')"
            )
        if self._coco_file != ann_file:
            self._coco, self._coco_file = load_coco(ann_file), ann_file
        return self._coco

    def _category_map(self, coco: COCO) -> Dict[int, int]:
        mapping = self.label_to_cat if self.label_to_cat is not None else (self.dataset_meta or {}).get("cat_ids")
        if mapping is None:
            mapping = sorted(coco.getCatIds())
        if isinstance(mapping, Mapping):
            return {int(label): int(cat) for label, cat in mapping.items()}
        return {label: int(cat) for label, cat in enumerate(mapping, start=1)}

    def _detections(self, results: List[dict], coco: COCO) -> List[dict]:
        label_to_cat = self._category_map(coco)
        detections = []
        for result in results:
            if result["image_id"] not in coco.imgs:
                raise ValueError(
                    f"detections for image_id {result['image_id']}, which {self._coco_file} does not list; "
                    "evaluate against the annotation file of the dataset that produced them"
                )
            rles = result.get("rles", [None] * len(result["labels"]))
            for box, score, label, rle in zip(result["boxes"], result["scores"], result["labels"], rles):
                if int(label) not in label_to_cat:
                    raise ValueError(
                        f"label {int(label)} has no category (known labels {sorted(label_to_cat)}); "
                        "labels must be 1..K as produced by CocoDetection, or pass label_to_cat"
                    )
                detection = dict(image_id=result["image_id"], category_id=label_to_cat[int(label)],
                                 bbox=[float(v) for v in box], score=float(score))
                if rle is not None:
                    detection["segmentation"] = rle
                detections.append(detection)
        return detections

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Run COCOeval per IoU type (bbox, then segm) over the processed images; no detections at all scores 0."""
        coco = self._ground_truth()
        detections = self._detections(results, coco)
        metrics: Dict[str, float] = {}
        for kind in self.iou_types:
            metrics.update(self._evaluate(coco, detections, results, kind))
        return metrics

    def _evaluate(self, coco: COCO, detections: List[dict], results: List[dict], kind: str) -> Dict[str, float]:
        keys = BBOX_KEYS if kind == "bbox" else SEGM_KEYS
        if not detections:
            logger.warning("no detections on %d images; %s mAP is 0 (-1 for a size range with no ground truth, "
                           "as COCOeval reports it)", len(results), "box" if kind == "bbox" else "mask")
            return dict(zip(keys, _scores_without_detections(coco, {result["image_id"] for result in results})))
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator = COCOeval(coco, coco.loadRes(detections), kind)
            evaluator.params.imgIds = sorted({result["image_id"] for result in results})
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        logger.info("COCO %s evaluation\n%s", kind, summary.getvalue())
        return {key: float(value) for key, value in zip(keys, evaluator.stats)}


def _scores_without_detections(coco: COCO, image_ids: set) -> List[float]:
    """COCOeval's six scores when nothing was detected: 0 where there is ground truth to miss, -1 (as COCOeval
    gives on any epoch) where none lies in the size range (all, all, all, small, medium, large)."""
    areas = [ann.get("area", ann["bbox"][2] * ann["bbox"][3]) for ann in coco.dataset["annotations"]
             if ann["image_id"] in image_ids and not ann.get("iscrowd", 0)]
    ranges = [(0, 1e10)] * 3 + [(0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e10)]
    return [0.0 if any(low <= area <= high for area in areas) else -1.0 for low, high in ranges]


def _encode_masks(sample: dict) -> List[dict]:
    """A detection sample's ``masks`` (N, H, W or N, 1, H, W probabilities), thresholded, as COCO RLEs."""
    if "masks" not in sample:
        raise ValueError("iou_types includes 'segm', but a detection has no 'masks'; evaluate a Mask R-CNN "
                         "student, or use iou_types=('bbox',)")
    masks = _numpy(sample["masks"])
    masks = (masks.reshape(-1, *masks.shape[-2:]) > MASK_THRESHOLD).astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles
