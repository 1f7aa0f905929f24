"""Task adapters (mmengine models): classification, detection, segmentation."""
from .classification import ClassificationDistiller
from .detection import DetectionDistiller  # noqa: F401
from .segmentation import SegmentationDistiller, segmentation_tap_weights  # noqa: F401

__all__ = ["ClassificationDistiller"]
