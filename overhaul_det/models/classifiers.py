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
    weights: Optional[str] = None,
    **kwargs,
) -> nn.Module:
    """A torchvision or timm classifier with ``num_classes`` outputs; ``name`` as ``resolve_model_name`` reads it.

    Args:
        name: ``timm/x``, ``torchvision/x`` or a bare name.
        num_classes: outputs of the classifier; a pretrained torchvision head of another size is replaced.
        pretrained: the zoo's default weights from its cache (torch.hub's, or Hugging Face's for timm; see
            ``create_model``); timm's ``pretrained_cfg_overlay=dict(file=...)`` in ``kwargs`` names a file instead.
        checkpoint: a local .pth/.safetensors state_dict (weights_only), loaded strictly after the zoo's weights.
        checkpoint_prefix: stripped from the checkpoint's keys.
        weights: torchvision's weights name (``'IMAGENET1K_V2'``, ``'DEFAULT'``), from torch.hub's cache.
    """
    zoo, _ = resolve_model_name(name)
    if zoo == "torchvision" and (pretrained or weights):
        model = create_model(name, pretrained=pretrained, weights=weights, **kwargs)
        if _head(model).out_features != num_classes:
            _replace_head(model, num_classes)
    else:
        model = create_model(name, pretrained=pretrained, weights=weights, num_classes=num_classes, **kwargs)
    if checkpoint:
        load_weights_into(model, checkpoint, checkpoint_prefix, name,
                          "check the model name and num_classes, or set checkpoint_prefix")
        logger.info("loaded %s weights from %s", name, checkpoint)
    return model


def _head(model: nn.Module) -> nn.Linear:
    """The last Linear of a torchvision classifier's head (``fc``, ``classifier``, ``head`` or ``heads``)."""
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            return head[-1]
    raise ValueError(f"cannot find the classification head of {type(model).__name__}")


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
