"""Task adapters (mmengine models): classification, detection, segmentation."""
from .classification import ClassificationDistiller

__all__ = ["ClassificationDistiller"]
