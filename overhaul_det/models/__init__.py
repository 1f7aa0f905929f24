"""Model builders: classifiers by name (either zoo); detectors and segmenters over any backbone."""
from .classifiers import build_classifier, model_zoo

__all__ = ["build_classifier", "model_zoo"]
