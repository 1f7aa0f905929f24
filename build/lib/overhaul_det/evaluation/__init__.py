"""Metrics: accuracy, COCO mAP, mIoU (mmengine BaseMetric)."""
from .accuracy import Accuracy
from .coco_metric import CocoDetectionMetric
from .segmentation_metric import SegmentationMetric

__all__ = ["Accuracy", "CocoDetectionMetric", "SegmentationMetric"]
