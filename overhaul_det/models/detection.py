"""torchvision detectors, or Faster R-CNN with an FPN over a timm or torchvision backbone; local weights only.

Names are torchvision's detector builders (every one of ``list_models(torchvision.models.detection)``:
Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite) or a backbone name as ``models.zoo`` resolves it
(``timm/x``, ``torchvision/x``, or bare: torchvision's if it has one): a torchvision ResNet/MobileNet-style
classifier or any timm model with ``features_only``, put under torchvision's FeaturePyramidNetwork in a
Faster R-CNN. A detector's feature extractor (``feature_extractor``) is ``backbone.body`` under an FPN and
the whole ``backbone`` for SSD/SSDlite. As in torchvision, loaded weights imply frozen BatchNorm and 3
trainable stages; random init trains all. SSD/SSDlite keep their fixed input size (300 / 320 px).
"""
from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .hub import backbone_weights_enum, cached_state_dict, torchvision_state_dict, weights_member
from .weights import classifier_key_candidates, load_state_dict_file, load_state_into, load_weights_into
from .zoo import create_model, resolve_model_name

__all__ = [
    "TORCHVISION_DETECTORS",
    "FeaturePyramidBackbone",
    "build_detector",
    "build_fpn_backbone",
    "feature_extractor",
    "fixed_input_size",
    "probe_size",
    "resolution_stages",
]

logger = logging.getLogger(__name__)

TORCHVISION_DETECTORS = tuple(torchvision.models.list_models(torchvision.models.detection))
# The detector class each builder makes, by the builder name's first part.
_DETECTOR_CLASSES = dict(fasterrcnn=FasterRCNN, maskrcnn=MaskRCNN, keypointrcnn=KeypointRCNN, retinanet=RetinaNet,
                         fcos=FCOS, ssd300=SSD, ssdlite320=SSD)
_RCNN = (FasterRCNN, MaskRCNN, KeypointRCNN)
DEFAULT_STRIDES = (4, 8, 16, 32)
_PROBE_SIZE = 128
_Shapes = Dict[str, Tuple[int, int, int]]
# SSD's builders fix the transform's sizes themselves.
_FIXED_SIZE_ARGS = frozenset({"min_size", "max_size", "fixed_size", "size_divisible"})


def _accepted_kwargs(cls: type) -> frozenset:
    """Keyword arguments ``cls`` or a base's __init__ takes, with its transform's: the detectors pass unknown
    kwargs on to GeneralizedRCNNTransform, which ignores them, so a misspelt one would be lost."""
    names = set(inspect.signature(GeneralizedRCNNTransform.__init__).parameters)
    for base in cls.__mro__:
        if base in (GeneralizedRCNN, nn.Module):
            break
        names |= set(inspect.signature(base.__init__).parameters)
    return frozenset(names - (_FIXED_SIZE_ARGS if cls is SSD else set()))


class FeaturePyramidBackbone(nn.Module):
    """A body returning a list of feature maps (timm ``features_only``) under torchvision's FPN.

    Same interface as torchvision's BackboneWithFPN: ``body``, ``fpn`` and ``out_channels``.
    """

    def __init__(self, body: nn.Module, levels: Sequence[int], in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.levels = list(levels)
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), features[level]) for i, level in enumerate(self.levels)))


def _is_map(value: object) -> bool:
    """A 4D feature map with spatial extent (not a globally pooled 1x1 one, as in squeeze-excitation)."""
    return isinstance(value, Tensor) and value.dim() == 4 and value.shape[-1] > 1


def feature_extractor(detector: nn.Module) -> nn.Module:
    """What OFD distils of a detector: ``backbone.body`` under an FPN, else the whole ``backbone`` (SSD)."""
    return getattr(detector.backbone, "body", detector.backbone)


def fixed_input_size(detector: nn.Module) -> Optional[int]:
    """The side every image is resized to by a fixed-size transform (SSD: 300, SSDlite: 320), else None."""
    fixed = getattr(detector.transform, "fixed_size", None)
    return max(fixed) if fixed else None


def probe_size(side: Optional[int]) -> int:
    """A probe side for a network of input ``side``: a multiple of 32 at least that large (SSD300: 320),
    so that stage strides come out as powers of two; ``_PROBE_SIZE`` without one."""
    return 32 * math.ceil(side / 32) if side else _PROBE_SIZE


@torch.no_grad()
def _probe(root: nn.Module, modules: Dict[str, nn.Module], size: int = _PROBE_SIZE) -> Tuple[_Shapes, List[str]]:
    """Run ``root`` in eval mode on a sample: {name: (input stride, output stride, output channels)}
    for ``modules`` mapping a feature map to a feature map (in finishing order), and their entry order."""
    shapes: _Shapes = {}
    entered: List[str] = []

    def hooks(name: str):
        def before(module, args):
            entered.append(name)

        def after(module, args, output):
            if _is_map(args[0] if args else None) and _is_map(output):
                shapes[name] = (round(size / args[0].shape[-1]), round(size / output.shape[-1]), output.shape[1])
        return before, after

    handles = []
    for name, module in modules.items():
        before, after = hooks(name)
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    was_training = root.training
    root.eval()
    try:
        root(torch.zeros(1, 3, size, size))
    finally:
        root.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes, entered


def resolution_stages(body: nn.Module, size: int = _PROBE_SIZE) -> List[List[nn.Parameter]]:
    """Parameters of ``body`` by resolution stage, stem first, in forward order (probed at ``size`` px).

    A stage starts at the outermost module that enters exactly one new stride (ResNet: conv1,
    maxpool, layer2, layer3, layer4), so ResNets count stages as torchvision's trainable_layers.
    """
    modules = {name: module for name, module in body.named_modules() if name}
    shapes, entered = _probe(body, modules, size)

    def new_strides(name: str) -> set:
        entry = shapes[name][0]
        return {out for other, (_, out, _) in shapes.items()
                if (other == name or other.startswith(name + ".")) and out > entry}

    starts = [name for name, (entry, out, _) in shapes.items() if out > entry and len(new_strides(name)) == 1]
    starts = {name for name in starts if not any(name.startswith(other + ".") for other in starts)}
    stages: List[List[nn.Parameter]] = [[]]
    seen = set()
    for name in entered:
        if name in starts and stages[-1]:
            stages.append([])
        for parameter in modules[name].parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                stages[-1].append(parameter)
    return stages


def _torchvision_backbone(name: str, strides: Sequence[int], fpn_channels: int) -> BackboneWithFPN:
    classifier = create_model(name)
    trunk = classifier if hasattr(classifier, "layer4") else getattr(classifier, "features", None)
    if not isinstance(trunk, nn.Module):
        raise ValueError(
            f"backbone '{name}': torchvision classifiers with layer1..layer4 (ResNets) or a 'features' sequence "
            "(MobileNets, EfficientNets) are supported; use a timm/ name for other architectures"
        )
    shapes, _ = _probe(classifier, dict(trunk.named_children()))
    last = {stride: (child, channels) for child, (_, stride, channels) in shapes.items()}
    missing = [s for s in strides if s not in last]
    if missing:
        raise ValueError(
            f"backbone '{name}' has no stage at stride(s) {missing}; it has {sorted(last)}. Set strides=...")
    return_layers = {last[s][0]: str(i) for i, s in enumerate(strides)}
    return BackboneWithFPN(trunk, return_layers, [last[s][1] for s in strides], fpn_channels,
                           extra_blocks=LastLevelMaxPool())


def _timm_backbone(name: str, strides: Sequence[int], fpn_channels: int) -> FeaturePyramidBackbone:
    body = create_model(name, features_only=True)
    reductions, channels = body.feature_info.reduction(), body.feature_info.channels()
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(
            f"backbone '{name}' has no feature at stride(s) {missing}; it has {reductions}. Set strides=...")
    levels = [reductions.index(s) for s in strides]
    return FeaturePyramidBackbone(body, levels, [channels[level] for level in levels], fpn_channels)


def build_fpn_backbone(name: str, strides: Sequence[int] = DEFAULT_STRIDES, fpn_channels: int = 256) -> nn.Module:
    """A random-init backbone (``timm/x``, ``torchvision/x`` or a bare name, torchvision's if it has one)
    with an FPN over its ``strides``.

    The result has ``body`` (FX-traceable), ``fpn`` and ``out_channels``; FPN levels are '0', '1', ... and 'pool'.
    """
    zoo, _ = resolve_model_name(name)
    if zoo == "torchvision":
        return _torchvision_backbone(name, strides, fpn_channels)
    return _timm_backbone(name, strides, fpn_channels)


def _load_body_weights(body: nn.Module, path: str, prefix: Optional[str]) -> None:
    _load_body_state(body, load_state_dict_file(path, prefix), f"backbone checkpoint {path}",
                     "give the classifier weights of this architecture, and set backbone_checkpoint_prefix if the keys "
                     "carry one (e.g. 'student_model.' or 'backbone.')")


def _load_body_state(body: nn.Module, state: Dict[str, Tensor], origin: str, fix: str) -> None:
    """A classifier's ``state`` into a detector's body, key by key (see ``classifier_key_candidates``)."""
    matched, used, missing = {}, set(), []
    for key, value in body.state_dict().items():
        source = next((c for c in classifier_key_candidates(key) if c in state and state[c].shape == value.shape), None)
        if source is not None:
            matched[key] = state[source]
            used.add(source)
        elif not key.endswith("num_batches_tracked"):
            missing.append(key)
    if missing:
        raise ValueError(f"{origin} lacks {len(missing)} tensor(s) of the backbone (e.g. {missing[:3]}); {fix}")
    body.load_state_dict(matched, strict=False)
    inside = {key.split(".")[0] for key in used}
    stray = [key for key in state if key not in used and key.split(".")[0] in inside
             and not key.endswith("num_batches_tracked")]
    if stray:
        logger.warning("%d tensor(s) of %s inside the backbone's modules were not used (e.g. %s): a deeper "
                       "network's weights, or stages past the last FPN level", len(stray), origin, stray[:3])
    logger.info("loaded %d backbone tensors from %s", len(matched), origin)


def _backbone_weights_enum(name: str) -> type:
    """The torchvision weights enum of ``name``'s backbone classifier: a torchvision detector's
    ``weights_backbone`` type, or a torchvision classifier name's own enum."""
    bare = name.removeprefix("torchvision/")
    if bare in TORCHVISION_DETECTORS:
        return backbone_weights_enum(bare)
    zoo, bare = resolve_model_name(name)
    if zoo != "torchvision":
        raise ValueError(f"weights_backbone names torchvision weights; {name} is a timm backbone: give its "
                         "classifier weights with backbone_checkpoint=PATH")
    return torchvision.models.get_model_weights(bare)


def _load_backbone_weights_by_name(model: nn.Module, name: str, weights_backbone: str) -> None:
    """torchvision's named classifier weights (from torch.hub's cache) into the detector's body."""
    member = weights_member(_backbone_weights_enum(name), weights_backbone, f"the backbone of {name}")
    state = cached_state_dict(member, name)
    _load_body_state(feature_extractor(model), state, f"torchvision weights {member}",
                     "give weights of the detector's backbone architecture")


def _load_named_detector_weights(model: nn.Module, name: str, weights: str) -> None:
    """torchvision's named detector weights (``'COCO_V1'``, from torch.hub's cache) into the whole detector."""
    bare = name.removeprefix("torchvision/")
    if bare not in TORCHVISION_DETECTORS:
        raise ValueError(f"weights={weights!r} names a torchvision detector's weights; {name} is a backbone name: "
                         "give weights_backbone=... (its classifier weights) or checkpoint=PATH")
    state, member = torchvision_state_dict(bare, weights)
    load_state_into(model, state, f"torchvision weights {member}", f"the detector {bare}",
                    f"these weights have {len(member.meta['categories'])} classes: set num_classes to that",
                    ignore_missing=("num_batches_tracked",))
    logger.info("loaded torchvision weights %s from torch.hub's cache", member)


def _load_detector_weights(model: nn.Module, path: str, prefix: Optional[str]) -> None:
    load_weights_into(model, path, prefix, "the detector",
                      "check the name, num_classes, strides, fpn_channels and checkpoint_prefix (e.g. 'student_model.' "
                      "for a checkpoint of this package)", ignore_missing=("num_batches_tracked",))
    logger.info("loaded detector weights from %s", path)


def _freeze_stages(body: nn.Module, trainable_layers: Optional[int], pretrained: bool, size: int) -> None:
    stages = resolution_stages(body, size)
    if trainable_layers is None:
        trainable_layers = min(3, len(stages)) if pretrained else len(stages)
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers={trainable_layers}; this backbone has {len(stages)} stages, "
                         f"choose 0..{len(stages)}")
    for stage in stages[: len(stages) - trainable_layers]:
        for parameter in stage:
            parameter.requires_grad_(False)


def _check_one_source(*groups: Dict[str, Optional[str]]) -> None:
    """A ValueError when two keys of a group give the same weights (a name and a file)."""
    for sources in groups:
        given = [key for key, value in sources.items() if value is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} both give the same weights; set only one")


def _set_feature_extractor(detector: nn.Module, module: nn.Module) -> None:
    if hasattr(detector.backbone, "body"):
        detector.backbone.body = module
    else:
        detector.backbone = module


def _anchor_generator(sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[float]) -> AnchorGenerator:
    sizes = tuple(tuple(level) for level in sizes)
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))


def _check_detector_kwargs(kwargs: dict, cls: type = FasterRCNN) -> None:
    """A TypeError for a kwarg neither ``cls`` nor its transform takes (the transform would drop it)."""
    unknown = sorted(set(kwargs) - _accepted_kwargs(cls) - {"self", "backbone", "kwargs"})
    if unknown:
        raise TypeError(f"build_detector() got an unexpected keyword argument '{unknown[0]}' "
                        f"({cls.__name__} and its transform do not take it either)")


def _detector_class(name: str) -> type:
    return _DETECTOR_CLASSES[name.split("_")[0]]


def _check_not_a_misspelt_detector(name: str) -> None:
    """A ValueError naming the closest torchvision detectors for a name that starts like one but is none."""
    bare = name.removeprefix("torchvision/")
    if bare.split("_")[0] in _DETECTOR_CLASSES:
        close = difflib.get_close_matches(bare, TORCHVISION_DETECTORS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; torchvision's are {', '.join(TORCHVISION_DETECTORS)}"
        raise ValueError(f"unknown detector name '{name}'{hint}")


def _torchvision_detector(name: str, options: dict, anchor_sizes, aspect_ratios, strides, fpn_channels) -> nn.Module:
    """torchvision's builder ``name``, random init; SSD/SSDlite keep their own fixed input size."""
    cls = _detector_class(name)
    if strides is not None or fpn_channels is not None:
        raise ValueError(f"strides and fpn_channels shape the generic FPN; {name} has its own, remove them")
    if anchor_sizes is not None:
        if cls not in _RCNN:
            raise ValueError(f"anchor_sizes sets the RPN anchors of an R-CNN; {name} ({cls.__name__}) has none, "
                             "remove it")
        options["rpn_anchor_generator"] = _anchor_generator(anchor_sizes, aspect_ratios)
    if cls is SSD:
        dropped = {key: options.pop(key) for key in ("min_size", "max_size")}
        logger.info("%s resizes every image to its own fixed size; min_size/max_size %s do not apply", name, dropped)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **options)


def build_detector(
    name: Union[str, dict],
    num_classes: int = 91,
    min_size: Union[int, Sequence[int]] = 800,
    max_size: int = 1333,
    *,
    weights: Optional[str] = None,
    weights_backbone: Optional[str] = None,
    checkpoint: Optional[str] = None,
    checkpoint_prefix: Optional[str] = None,
    backbone_checkpoint: Optional[str] = None,
    backbone_checkpoint_prefix: Optional[str] = None,
    frozen_bn: Optional[bool] = None,
    trainable_layers: Optional[int] = None,
    strides: Optional[Sequence[int]] = None,
    fpn_channels: Optional[int] = None,
    anchor_sizes: Optional[Sequence[Sequence[int]]] = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    **kwargs,
) -> nn.Module:
    """A detector (``num_classes`` counts the background) from a name or a spec dict of these arguments.

    ``weights`` (a detector's, ``'COCO_V1'``) / ``weights_backbone`` (its backbone's, ``'IMAGENET1K_V1'``):
    torchvision's names, read from ``$TORCH_HOME/hub/checkpoints``; ``checkpoint`` / ``backbone_checkpoint``:
    files (weights_only, prefixes stripped). ``frozen_bn`` (default: when weights are loaded) makes the body's
    BatchNorm frozen; ``trainable_layers`` counts resolution stages from the deepest (default: 3 with
    weights, all without). ``strides``/``fpn_channels`` shape a generic FPN (default (4, 8, 16, 32), 256);
    ``anchor_sizes`` gives one tuple per FPN map (levels + 'pool'; R-CNNs only). Other kwargs go to the
    detector class (FasterRCNN for a backbone name). The body options act on ``feature_extractor(model)``.
    """
    if isinstance(name, dict):
        spec = dict(name)
        if "name" not in spec:
            raise ValueError(f"detector spec {spec} needs a 'name' (a torchvision detector or a backbone name)")
        spec.setdefault("num_classes", num_classes)
        spec.setdefault("min_size", min_size)
        spec.setdefault("max_size", max_size)
        return build_detector(**spec)
    bare = name.removeprefix("torchvision/")
    _check_detector_kwargs(kwargs, _detector_class(bare) if bare in TORCHVISION_DETECTORS else FasterRCNN)
    options = dict(num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)
    if bare in TORCHVISION_DETECTORS:
        model = _torchvision_detector(bare, options, anchor_sizes, aspect_ratios, strides, fpn_channels)
    else:
        _check_not_a_misspelt_detector(name)
        strides = tuple(strides or DEFAULT_STRIDES)
        backbone = build_fpn_backbone(name, strides, fpn_channels or 256)
        sizes = anchor_sizes or [(32 * 2 ** i,) for i in range(len(strides) + 1)]
        model = FasterRCNN(backbone, rpn_anchor_generator=_anchor_generator(sizes, aspect_ratios),
                           box_roi_pool=MultiScaleRoIAlign([str(i) for i in range(len(strides))], 7, 2), **options)
    _check_one_source(dict(weights=weights, checkpoint=checkpoint),
                      dict(weights_backbone=weights_backbone, backbone_checkpoint=backbone_checkpoint))
    pretrained = any(source is not None for source in (checkpoint, backbone_checkpoint, weights, weights_backbone))
    if pretrained if frozen_bn is None else frozen_bn:
        _set_feature_extractor(model, timm.layers.freeze_batch_norm_2d(feature_extractor(model)))
    _load_backbone(model, name, weights_backbone, backbone_checkpoint, backbone_checkpoint_prefix)
    _freeze_stages(feature_extractor(model), trainable_layers, pretrained, probe_size(fixed_input_size(model)))
    _load_whole_detector(model, name, weights, checkpoint, checkpoint_prefix)
    return model


def _load_backbone(model: nn.Module, name: str, weights: Optional[str], checkpoint: Optional[str],
                   prefix: Optional[str]) -> None:
    """Classifier weights into the detector's body: torchvision's by name, or a file."""
    if checkpoint:
        _load_body_weights(feature_extractor(model), checkpoint, prefix)
    if weights:
        _load_backbone_weights_by_name(model, name, weights)


def _load_whole_detector(model: nn.Module, name: str, weights: Optional[str], checkpoint: Optional[str],
                         prefix: Optional[str]) -> None:
    """A whole detector's weights: torchvision's by name, or a file."""
    if weights:
        _load_named_detector_weights(model, name, weights)
    if checkpoint:
        _load_detector_weights(model, checkpoint, prefix)
