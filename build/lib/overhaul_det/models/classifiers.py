"""Build a classifier by name from torchvision or timm; random init, hub weights, or a local file."""
from __future__ import annotations

import logging
from typing import Optional

from torch import nn

from .weights import load_weights_into
from .zoo import create_model, resolve_model_name

__all__ = ["build_classifier"]

logger = logging.getLogger(__name__)


def build_classifier(
    name: str,
    num_classes: int = 1000,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    checkpoint_prefix: Optional[str] = None,
    **kwargs,
) -> nn.Module:
    """A torchvision or timm classifier with ``num_classes`` outputs; ``name`` as ``resolve_model_name`` reads it.

    ``pretrained`` asks the zoo for its weights (needs internet); ``checkpoint`` loads a local
    .pth/.safetensors state_dict (weights_only) strictly, after stripping ``checkpoint_prefix``.
    """
    zoo, _ = resolve_model_name(name)
    if zoo == "torchvision" and pretrained and num_classes != 1000:
        model = create_model(name, pretrained=True, **kwargs)
        _replace_head(model, num_classes)
    else:
        model = create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if checkpoint:
        load_weights_into(model, checkpoint, checkpoint_prefix, name,
                          "check the model name and num_classes, or set checkpoint_prefix")
        logger.info("loaded %s weights from %s", name, checkpoint)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Linear(head.in_features, num_classes))
            return
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Linear(head[-1].in_features, num_classes)
            return
    raise ValueError(f"cannot find the classification head of {type(model).__name__} to resize to {num_classes} classes")
