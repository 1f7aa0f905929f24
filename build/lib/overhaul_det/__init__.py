"""overhaul-det: OFD feature distillation for any timm or torchvision backbone."""
from .distiller import FeatureDistiller, default_tap_weights, pair_taps
from .ofd import DataMarginEstimator, Regressor, TokenRegressor, bn_margin, margin_relu, ofd_loss, ofd_loss_reference
from .taps import Tap, TapExtractor, attach_taps, capture_taps, detach_taps, find_taps, graph_node_names

__version__ = "0.1.0"

__all__ = [
    "FeatureDistiller",
    "default_tap_weights",
    "pair_taps",
    "DataMarginEstimator",
    "Regressor",
    "TokenRegressor",
    "bn_margin",
    "margin_relu",
    "ofd_loss",
    "ofd_loss_reference",
    "Tap",
    "TapExtractor",
    "attach_taps",
    "capture_taps",
    "detach_taps",
    "find_taps",
    "graph_node_names",
]
