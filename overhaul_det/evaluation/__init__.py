"""Metrics: accuracy, COCO mAP, mIoU (mmengine BaseMetric)."""
