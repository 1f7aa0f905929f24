"""Task adapters (mmengine models): classification, detection, segmentation."""
from .base import DistillationModel
from .classification import ClassificationDistiller
from .detection import DetectionDistiller
from .segmentation import SegmentationDistiller, segmentation_tap_weights

__all__ = ["DistillationModel", "ClassificationDistiller", "DetectionDistiller", "SegmentationDistiller",
           "segmentation_tap_weights"]
