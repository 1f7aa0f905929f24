"""mIoU, pixel accuracy and mean class accuracy from one confusion matrix over the whole set.

One matrix per image is kept so BaseMetric's gather drops the samples DDP padding repeats.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from ..registry import METRICS

__all__ = ["SegmentationMetric", "confusion_matrix"]


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = label, columns = prediction, ignore pixels excluded."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred_seg has shape {tuple(pred.shape)} but gt_seg {tuple(gt.shape)}; resize the prediction")
    keep = gt != ignore_index
    gt, pred = gt[keep].long(), pred[keep].long()
    for name, values in (("gt_seg", gt), ("pred_seg", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} holds class ids outside [0, {num_classes}) besides ignore_index {ignore_index}; "
                "set num_classes to the model's class count"
            )
    counts = torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


@METRICS.register_module()
class SegmentationMetric(BaseMetric):
    """Semantic segmentation scores of ``pred_seg`` against ``gt_seg`` (both LongTensor[H, W]).

    Returns fractions: 'aAcc', 'mIoU', 'mAcc' and 'IoU.<class>'; a class absent from both is NaN and skipped.
    """

    default_prefix = "seg"

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        classes: Optional[Sequence[str]] = None,
        collect_device: str = "cpu",
        prefix: Optional[str] = None,
    ) -> None:
        """``classes`` names the IoU entries; it defaults to the dataset's ``metainfo['classes']``, else indices."""
        super().__init__(collect_device=collect_device, prefix=prefix)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes has {len(classes)} names but num_classes={num_classes}; make them agree")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.classes = tuple(classes) if classes is not None else None

    def process(self, data_batch: object, data_samples: Sequence[dict]) -> None:
        """Store one confusion matrix per image."""
        for sample in data_samples:
            pred, gt = torch.as_tensor(sample["pred_seg"]), torch.as_tensor(sample["gt_seg"])
            self.results.append(confusion_matrix(pred.to(gt.device), gt, self.num_classes, self.ignore_index))

    def _class_names(self) -> Sequence[str]:
        if self.classes is not None:
            return self.classes
        meta_classes = (self.dataset_meta or {}).get("classes")
        if meta_classes is not None and len(meta_classes) == self.num_classes:
            return tuple(meta_classes)
        return tuple(str(index) for index in range(self.num_classes))

    def compute_metrics(self, results: List[np.ndarray]) -> Dict[str, float]:
        """Sum the matrices, then IoU = TP / (TP + FP + FN) and accuracy = TP / label pixels per class."""
        total = np.sum(results, axis=0, dtype=np.int64) if results else np.zeros((self.num_classes,) * 2, np.int64)
        hits = np.diag(total).astype(np.float64)
        label_area, pred_area = total.sum(axis=1), total.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = hits / (label_area + pred_area - hits)
            accuracy = hits / label_area
        metrics = {
            "aAcc": float(hits.sum() / total.sum()) if total.sum() else float("nan"),
            "mIoU": float(np.nanmean(iou)) if not np.isnan(iou).all() else float("nan"),
            "mAcc": float(np.nanmean(accuracy)) if not np.isnan(accuracy).all() else float("nan"),
        }
        metrics.update({f"IoU.{name}": float(value) for name, value in zip(self._class_names(), iou)})
        return metrics
