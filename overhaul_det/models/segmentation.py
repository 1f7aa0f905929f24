"""DeepLabV3 / DeepLabV3+ segmenters over any timm or torchvision backbone, torchvision's own
segmenters (DeepLabV3, FCN, LRASPP).

``build_segmenter`` returns a ``Segmenter``: backbone stage features -> head -> logits at the
input size. Its OFD taps are chosen by ``taps.presets.segmenter_taps``.
"""
from __future__ import annotations

import inspect
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from ..taps.presets import head_tap_nodes, segmenter_tap_groups, segmenter_taps, stage_end_nodes
from .hub import backbone_weights_enum, cached_state_dict, load_torchvision_weights
from .weights import classifier_key_candidates, load_state_dict_file, load_weights_into
from .zoo import create_model, resolve_model_name

__all__ = [
    "Segmenter",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "build_segmenter",
    "segmenter_taps",
    "segmenter_tap_groups",
    "stage_end_nodes",
    "head_tap_nodes",
    "TORCHVISION_SEGMENTERS",
]

logger = logging.getLogger(__name__)

TORCHVISION_SEGMENTERS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                          "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")
_BASE_RATES = (6, 12, 18)
_OUTPUT_STRIDES = (8, 16, 32)
_TORCHVISION_FIXED = dict(decoder=False, output_stride=None, channels=256, atrous_rates=None)


class DeepLabV3Head(nn.Sequential):
    """torchvision's ``DeepLabHead`` (same layout and keys) with a chosen width.

    ASPP -> 3x3 conv + BN + ReLU -> 1x1 classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256) -> None:
        super().__init__(
            ASPP(in_channels, list(atrous_rates), channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ head: ASPP on the deepest feature, upsampled to the stride-4 feature's size.

    Low-level features are projected to 48 channels (1x1 conv + BN + ReLU), concatenated, fused by
    two 3x3 conv + BN + ReLU (dropout 0.5, 0.1 as in the reference code) and classified by a 1x1 conv.
    """

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int,
                 atrous_rates: Sequence[int] = _BASE_RATES, channels: int = 256,
                 low_level_projection: int = 48) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, list(atrous_rates), channels)
        self.low_level = nn.Sequential(
            nn.Conv2d(low_level_channels, low_level_projection, 1, bias=False),
            nn.BatchNorm2d(low_level_projection),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels + low_level_projection, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        low = self.low_level(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([high, low], dim=1)))


class Segmenter(nn.Module):
    """Backbone -> stage features -> head (DeepLab, FCN or LRASPP) -> ``{'out': logits}`` at the input's size.

    ``stages`` picks the backbone outputs that are stages (stride >= 4); the V3+ and LRASPP heads also take a
    low-level feature: backbone output ``low_output``, by default the first stage. In training mode an aux head
    on ``stages[aux_stage]`` adds ``'aux'`` logits.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, stages: Sequence[int],
                 aux_classifier: Optional[nn.Module] = None, aux_stage: int = -2,
                 low_output: Optional[int] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.stages = tuple(stages)
        self.aux_stage = aux_stage
        self.low_output = low_output
        self.low_level = isinstance(classifier, DeepLabV3PlusHead)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        size = x.shape[-2:]
        outputs = self.backbone(x)
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        features = [outputs[i] for i in self.stages]
        low = features[0] if self.low_output is None else outputs[self.low_output]
        logits = F.interpolate(self._head(features[-1], low), size=size, mode="bilinear", align_corners=False)
        result = {"out": logits}
        if self.training and self.aux_classifier is not None:
            aux = self.aux_classifier(features[self.aux_stage])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result

    def _head(self, high: Tensor, low: Tensor) -> Tensor:
        """The head's logits from the deepest stage, and the low-level feature where the head takes one."""
        if isinstance(self.classifier, LRASPPHead):
            return self.classifier({"low": low, "high": high})
        return self.classifier(high, low) if self.low_level else self.classifier(high)


# --------------------------------------------------------------------------------------------
# Builders


def _atrous_rates(output_stride: int) -> Tuple[int, ...]:
    return tuple(rate * 16 // output_stride for rate in _BASE_RATES)


def _torchvision_segmenter(name: str, num_classes: int, aux_loss: bool, pretrained_backbone: bool) -> Segmenter:
    """torchvision's DeepLabV3, FCN or LRASPP as it is (same keys), its backbone returning every stage end
    (stride >= 4).

    MobileNetV3's aux head reads the end of the stride-8 stage (torchvision: that stage's first block);
    LRASPP's low branch reads that first block, as in torchvision.
    """
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                         **_aux_option(name, aux_loss))
    body = model.backbone
    if pretrained_backbone:
        member = backbone_weights_enum(name).DEFAULT
        _load_backbone_state(body, cached_state_dict(member, name), f"torchvision weights {member}", name)
    if "layer4" in body:
        return_layers, aux_stage = {f"layer{i}": str(i - 1) for i in range(1, 5)}, -2
    else:
        blocks = list(body.values())
        starts = [i for i, block in enumerate(blocks) if getattr(block, "_is_cn", False)]
        ends = [i - 1 for i in starts[1:]] + [len(blocks) - 1]
        if isinstance(model.classifier, LRASPPHead):
            return _lraspp_segmenter(body, model.classifier, ends, starts)
        return_layers, aux_stage = {str(index): str(k) for k, index in enumerate(ends)}, 1
    backbone = IntermediateLayerGetter(body, return_layers)
    return Segmenter(backbone, model.classifier, range(len(return_layers)), model.aux_classifier, aux_stage)


def _lraspp_segmenter(body: nn.ModuleDict, head: LRASPPHead, ends: List[int], starts: List[int]) -> Segmenter:
    """LRASPP over every stage end, its low branch on torchvision's block (the stride-8 stage's first)."""
    low = ([0] + starts + [len(body) - 1])[-4]
    positions = sorted(set(ends) | {low})
    backbone = IntermediateLayerGetter(body, {str(i): str(k) for k, i in enumerate(positions)})
    return Segmenter(backbone, head, [positions.index(i) for i in ends], low_output=positions.index(low))


def _aux_option(name: str, aux_loss: bool) -> dict:
    """``aux_loss`` for a builder that takes it; a clear error for one without an aux head (LRASPP)."""
    if "aux_loss" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        return dict(aux_loss=aux_loss)
    if aux_loss:
        raise ValueError(f"{name} has no aux head, so aux_loss=True cannot be set; leave it False")
    return {}


def _timm_backbone(name: str, output_stride: int, pretrained: bool, kwargs: dict) -> Tuple[nn.Module, List[int]]:
    if output_stride != 32:
        kwargs = {**kwargs, "output_stride": output_stride}
    try:
        body = create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except TypeError as error:
        if "'output_stride'" not in str(error):
            raise
        raise ValueError(f"timm model {name} cannot dilate to output_stride={output_stride} ({error}); "
                         "use output_stride=32 or another backbone") from None
    reductions = body.feature_info.reduction()
    return body, [i for i, reduction in enumerate(reductions) if reduction > 2]


def _torchvision_backbone(name: str, output_stride: int, pretrained: bool, kwargs: dict) -> Tuple[nn.Module, List[int]]:
    dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    try:
        model = create_model(name, pretrained=pretrained, replace_stride_with_dilation=dilate, **kwargs)
    except NotImplementedError as error:
        timm_name = "timm/" + name.rpartition("/")[2]
        raise ValueError(f"torchvision {name} cannot dilate to output_stride={output_stride} ({error}); "
                         f"use {timm_name} (timm's takes output_stride) or output_stride=32") from None
    except TypeError as error:
        if "replace_stride_with_dilation" not in str(error):
            raise
        raise ValueError(f"torchvision backbone {name} is not a ResNet ({error}); only torchvision ResNets "
                         "(resnet*, resnext*, wide_resnet*) are supported, use a timm/ name for others") from None
    return IntermediateLayerGetter(model, {f"layer{i}": str(i - 1) for i in range(1, 5)}), [0, 1, 2, 3]


def _load_checkpoint(model: nn.Module, checkpoint: str, prefix: Optional[str], name: str) -> None:
    load_weights_into(model, checkpoint, prefix, f"segmenter '{name}'",
                      "check backbone, decoder, num_classes and aux_loss, or set checkpoint_prefix "
                      "(e.g. 'student_model.' for a checkpoint of a SegmentationDistiller)")
    logger.info("loaded segmenter %s weights from %s", name, checkpoint)


def _load_backbone_weights(body: nn.Module, path: str, prefix: Optional[str], name: str) -> None:
    """A classifier's state_dict into the segmenter's body, tensor by tensor; the file's tensors the body
    lacks (the classifier head, stages past the last feature) are skipped and named in one log line."""
    _load_backbone_state(body, load_state_dict_file(path, prefix), f"backbone checkpoint {path}", name)


def _load_backbone_state(body: nn.Module, state: Dict[str, Tensor], origin: str, name: str) -> None:
    """``_load_backbone_weights`` for a state_dict already read from ``origin``."""
    fix = ("give the classifier weights of this backbone architecture, and set backbone_checkpoint_prefix if the "
           "file's keys carry one (e.g. 'student_model.' for a checkpoint of a ClassificationDistiller)")
    matched, used, missing, wrong = {}, set(), [], []
    for key, value in body.state_dict().items():
        present = [c for c in classifier_key_candidates(key) if c in state]
        source = next((c for c in present if state[c].shape == value.shape), None)
        if source is not None:
            matched[key] = state[source]
            used.add(source)
        elif present:
            wrong.append(f"{present[0]}: {tuple(state[present[0]].shape)} in the file, {tuple(value.shape)} in the "
                         "backbone")
        elif not key.endswith("num_batches_tracked"):
            missing.append(key)
    problems = ([f"{len(missing)} of its tensors are not in the file (e.g. {missing[0]})"] if missing else []) + (
        [f"{len(wrong)} have other shapes (e.g. {wrong[0]})"] if wrong else [])
    if problems:
        raise ValueError(f"{origin} does not fit the backbone {name}: {' and '.join(problems)}; {fix}")
    body.load_state_dict(matched, strict=False)
    skipped = [key for key in state if key not in used]
    logger.info("loaded %d backbone tensors from %s; skipped %d not in the backbone: %s", len(matched), origin,
                len(skipped), ", ".join(skipped) or "none")


def build_segmenter(
    backbone: str,
    num_classes: int = 21,
    *,
    decoder: bool = False,
    output_stride: Optional[int] = None,
    aux_loss: bool = False,
    channels: int = 256,
    atrous_rates: Optional[Sequence[int]] = None,
    pretrained_backbone: bool = False,
    checkpoint: Optional[str] = None,
    checkpoint_prefix: Optional[str] = None,
    backbone_checkpoint: Optional[str] = None,
    backbone_checkpoint_prefix: Optional[str] = None,
    **backbone_kwargs,
) -> Segmenter:
    """A DeepLabV3 (``decoder=False``) or DeepLabV3+ segmenter; random init unless weights are asked for.

    ``backbone`` is one of ``TORCHVISION_SEGMENTERS`` (torchvision's DeepLabV3, FCN or LRASPP model and heads, as they
    are; ``aux_loss`` only where torchvision's builder has an aux head) or a timm (``features_only``) or torchvision
    ResNet name as ``resolve_model_name`` reads it, dilated to ``output_stride`` (default 16).
    ``atrous_rates`` default to (6, 12, 18) scaled to the output stride; ``channels`` is the head width.
    ``aux_loss`` adds an FCN head on the second-deepest stage. ``backbone_checkpoint``: a classifier state_dict of the
    backbone's architecture (head skipped, ``backbone_checkpoint_prefix`` stripped); ``checkpoint``: a whole
    segmenter's file, loaded strictly last. From caches: ``pretrained_backbone=True`` (the zoo's ImageNet weights),
    ``weights=NAME`` (torchvision's: a segmenter's ``'COCO_WITH_VOC_LABELS_V1'``, a ResNet's ``'IMAGENET1K_V2'``).
    """
    if backbone_checkpoint and pretrained_backbone:
        raise ValueError("pretrained_backbone=True and backbone_checkpoint give the same weights; set only one")
    if backbone.removeprefix("torchvision/") in TORCHVISION_SEGMENTERS:
        backbone, weights = backbone.removeprefix("torchvision/"), backbone_kwargs.pop("weights", None)
        options = dict(decoder=decoder, output_stride=output_stride, channels=channels, atrous_rates=atrous_rates)
        given = sorted(key for key, value in options.items() if value != _TORCHVISION_FIXED[key])
        given += sorted(backbone_kwargs)
        if given:
            raise ValueError(f"{backbone} is torchvision's model as it is, so {given} cannot be set; give its "
                             "backbone name instead (e.g. backbone='resnet50', decoder=True)")
        model = _torchvision_segmenter(backbone, num_classes, aux_loss, pretrained_backbone)
        if weights:
            load_torchvision_weights(model, backbone, weights, "set num_classes and aux_loss to the weights' own")
    else:
        output_stride = 16 if output_stride is None else output_stride
        if output_stride not in _OUTPUT_STRIDES:
            raise ValueError(f"output_stride={output_stride}; choose one of {_OUTPUT_STRIDES}")
        zoo = _backbone_zoo(backbone)
        build = _timm_backbone if zoo == "timm" else _torchvision_backbone
        body, stages = build(backbone, output_stride, pretrained_backbone, backbone_kwargs)
        widths = _stage_channels(body, stages)
        rates = tuple(atrous_rates) if atrous_rates is not None else _atrous_rates(output_stride)
        if decoder:
            head = DeepLabV3PlusHead(widths[-1], widths[0], num_classes, rates, channels)
        else:
            head = DeepLabV3Head(widths[-1], num_classes, rates, channels)
        aux = FCNHead(widths[-2], num_classes) if aux_loss else None
        model = Segmenter(body, head, stages, aux)
    if backbone_checkpoint:
        _load_backbone_weights(model.backbone, backbone_checkpoint, backbone_checkpoint_prefix, backbone)
    if checkpoint:
        _load_checkpoint(model, checkpoint, checkpoint_prefix, backbone)
    return model


def _backbone_zoo(name: str) -> str:
    """The zoo of a backbone name; an unknown name's error also lists torchvision's segmenters."""
    try:
        return resolve_model_name(name)[0]
    except ValueError as error:
        raise ValueError(f"{error}; or give one of torchvision's segmenters {', '.join(TORCHVISION_SEGMENTERS)}"
                         ) from None


def _stage_channels(body: nn.Module, stages: Sequence[int]) -> List[int]:
    """Channels of the picked stages: timm's feature_info, or a torchvision ResNet stage's last BN."""
    info = getattr(body, "feature_info", None)
    if info is not None:
        return [info.channels()[i] for i in stages]
    last_bns = [[m for m in body[f"layer{i + 1}"].modules() if isinstance(m, nn.BatchNorm2d)][-1] for i in stages]
    return [bn.num_features for bn in last_bns]
