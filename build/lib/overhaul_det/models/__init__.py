"""Model builders: classifiers by name (either zoo); detectors and segmenters over any backbone."""
from .classifiers import build_classifier
from .detection import build_detector, build_fpn_backbone  # noqa: F401
from .segmentation import Segmenter, build_segmenter, segmenter_taps  # noqa: F401
from .zoo import create_model, resolve_model_name

__all__ = ["build_classifier", "create_model", "resolve_model_name"]
