"""Detector distillation as an mmengine model: a torchvision detector's own losses plus loss_ofd.

Any torchvision detector (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite) is teacher or student.
The student's transform normalises, resizes and pads the batch once; the teacher's feature extractor (its
body, or body and FPN, per ``feature_levels``; SSD's whole backbone) runs on that same batch, re-normalised
to its own mean and std, only as far as its last tap.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from timm.layers.norm_act import FrozenBatchNormAct2d
from torch import Tensor, nn
import torch.nn.functional as F
from torchvision.models.detection import FCOS, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from ..distiller import FeatureDistiller
from ..models.detection import build_detector, feature_extractor, fixed_input_size, probe_size
from ..pairing import default_tap_weights, pair_taps
from ..registry import MODELS
from ..taps import find_taps
from ..taps.presets import FPN_LEVEL_WEIGHT, PyramidOutputs, pyramid_keys, pyramid_taps, ssd_taps
from .base import DistillationModel

__all__ = ["DetectionDistiller", "FEATURE_LEVELS"]

logger = logging.getLogger(__name__)

ModelSpec = Union[str, dict, nn.Module]
_SHARED_BODY = "distiller.student."
FEATURE_LEVELS = ("body", "fpn", "body+fpn")
_TAP_KEYS = ("teacher_taps", "student_taps", "pairs")
_FROZEN_NORMS = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
DETECTORS = (GeneralizedRCNN, RetinaNet, FCOS, SSD)


def _normalisation(model: nn.Module) -> Tuple[Tensor, Tensor]:
    transform = model.transform
    return torch.tensor(transform.image_mean).view(1, -1, 1, 1), torch.tensor(transform.image_std).view(1, -1, 1, 1)


def _sample_dicts(data_samples: Union[None, Mapping, Sequence], n: int) -> List[dict]:
    """Per-image dicts from a list of dicts or a collated dict of lists.

    Collation (pseudo_collate, default_collate) transposes tuples: a collated ``orig_size`` is (heights, widths).
    """
    if data_samples is None:
        return [{} for _ in range(n)]
    if not isinstance(data_samples, Mapping):
        return [dict(sample) for sample in data_samples]
    samples = [{key: value[i] for key, value in data_samples.items() if key != "orig_size"} for i in range(n)]
    if "orig_size" in data_samples:
        heights, widths = data_samples["orig_size"]
        for sample, height, width in zip(samples, heights, widths):
            sample["orig_size"] = (int(height), int(width))
    return samples


def target_keys(detector: nn.Module) -> Tuple[str, ...]:
    """What ``detector``'s losses need of each image besides boxes and labels: Mask R-CNN masks, Keypoint
    R-CNN keypoints."""
    if isinstance(detector, MaskRCNN):
        return ("masks",)
    if isinstance(detector, KeypointRCNN):
        return ("keypoints",)
    return ()


def _extra_targets(sample: dict, keys: Sequence[str], device: torch.device) -> Dict[str, Tensor]:
    missing = [key for key in keys if key not in sample]
    if missing:
        fix = ("build the dataset with with_masks=True (CocoDetection reads the annotations' segmentations)"
               if "masks" in missing else "the Fashion-MNIST scenes have none; give (N, K, 3) keypoints (x, y, v)")
        raise ValueError(f"data sample of image {sample.get('image_id')} has no {missing[0]!r}, which this "
                         f"detector's loss needs: {fix}")
    extra = {}
    if "masks" in keys:
        extra["masks"] = torch.as_tensor(sample["masks"], dtype=torch.uint8, device=device)
    if "keypoints" in keys:
        extra["keypoints"] = torch.as_tensor(sample["keypoints"], dtype=torch.float32, device=device)
    return extra


def _targets(samples: Sequence[dict], device: torch.device, keys: Sequence[str] = ()) -> List[Dict[str, Tensor]]:
    """torchvision targets: boxes, labels and the ``keys`` (``target_keys``) of each sample."""
    targets = []
    for sample in samples:
        if "boxes" not in sample or "labels" not in sample:
            raise ValueError(f"data sample of image {sample.get('image_id')} has keys {sorted(sample)}; "
                             "training needs 'boxes' (xyxy) and 'labels' (1..K)")
        boxes = torch.as_tensor(sample["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            raise ValueError(f"image {sample.get('image_id')} has a box of zero width or height "
                             f"{boxes[degenerate][0].tolist()}; remove it from the annotation file")
        targets.append(dict(boxes=boxes, labels=torch.as_tensor(sample["labels"], dtype=torch.int64, device=device),
                            **_extra_targets(sample, keys, device)))
    return targets


def _ssd_matches(model: SSD, anchors: List[Tensor], targets: List[Dict[str, Tensor]]) -> List[Tensor]:
    """The anchor-to-box matches SSD.forward computes before its loss (-1: unmatched)."""
    matches = []
    for anchors_per_image, target in zip(anchors, targets):
        if target["boxes"].numel() == 0:
            matches.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                      device=anchors_per_image.device))
        else:
            matches.append(model.proposal_matcher(box_iou(target["boxes"], anchors_per_image)))
    return matches


def native_losses(model: nn.Module, batch, features: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
                  ) -> Dict[str, Tensor]:
    """``model``'s own training losses from its backbone ``features`` of the transformed ``batch``, as its
    forward computes them: RPN and ROI heads (R-CNNs), or head, anchors and compute_loss (one-stage, whose
    keys gain a 'loss_' prefix: mmengine sums only keys that contain 'loss')."""
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    if isinstance(model, GeneralizedRCNN):
        proposals, rpn_losses = model.rpn(batch, features, targets)
        _, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
        return {**rpn_losses, **roi_losses}
    losses = _one_stage_losses(model, batch, list(features.values()), targets)
    return {key if "loss" in key else f"loss_{key}": value for key, value in losses.items()}


def _one_stage_losses(model: nn.Module, batch, maps: List[Tensor], targets: List[Dict[str, Tensor]]
                      ) -> Dict[str, Tensor]:
    head_outputs = model.head(maps)
    anchors = model.anchor_generator(batch, maps)
    if isinstance(model, FCOS):
        return model.compute_loss(targets, head_outputs, anchors, [m.size(2) * m.size(3) for m in maps])
    if isinstance(model, SSD):
        return model.compute_loss(targets, head_outputs, anchors, _ssd_matches(model, anchors, targets))
    return model.compute_loss(targets, head_outputs, anchors)


def _to_original(detection: Dict[str, Tensor], image: Tensor, sample: dict) -> dict:
    """Boxes (and Mask R-CNN's masks) from the input image's pixels back to the original image's (undo flip,
    then resize)."""
    boxes = detection["boxes"]
    height, width = image.shape[-2:]
    if sample.get("flipped"):
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    orig_height, orig_width = sample.get("orig_size", (height, width))
    boxes = boxes * boxes.new_tensor([orig_width / width, orig_height / height] * 2)
    result = dict(image_id=sample.get("image_id"), boxes=boxes, scores=detection["scores"], labels=detection["labels"])
    if "masks" in detection:
        result["masks"] = _masks_to_original(detection["masks"], sample.get("flipped"), (orig_height, orig_width))
    return result


def _masks_to_original(masks: Tensor, flipped: bool, size: Tuple[int, int]) -> Tensor:
    """Mask R-CNN's (N, 1, H, W) mask probabilities, unflipped and resized to the original image: (N, H', W')."""
    masks = masks.flip(-1) if flipped else masks
    if tuple(masks.shape[-2:]) != tuple(size) and masks.numel():
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    return masks.reshape(-1, *size)


def _drop_shared_body(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _SHARED_BODY)]:
        del state_dict[key]


def _ignore_shared_body(module: nn.Module, incompatible_keys) -> None:
    shared = [k for k in incompatible_keys.missing_keys if f".{_SHARED_BODY}" in f".{k}"]
    for key in shared:
        incompatible_keys.missing_keys.remove(key)


def _check_fpn_teacher(spec: Optional[ModelSpec], feature_levels: str) -> None:
    """Refuse a teacher spec whose FPN would be random: backbone weights without a trained detector."""
    if isinstance(spec, dict) and spec.get("backbone_checkpoint") and not spec.get("checkpoint"):
        raise ValueError(
            f"model.feature_levels={feature_levels!r} distils the teacher's FPN, but model.teacher sets only "
            "backbone_checkpoint, so its FPN would be random; give the trained detector as "
            "model.teacher.checkpoint=PATH, or use model.feature_levels='body'")


def _warn_frozen_norms(teacher: nn.Module, teacher_bn: str) -> None:
    """One warning where ``teacher_bn='train'`` cannot act: FrozenBatchNorm2d layers keep their statistics."""
    if teacher_bn != "train":
        return
    frozen = [name for name, module in teacher.named_modules() if isinstance(module, _FROZEN_NORMS)]
    if not frozen:
        return
    more = f" and {len(frozen) - 3} more" if len(frozen) > 3 else ""
    logger.warning(
        "ofd.teacher_bn='train' (batch statistics) cannot act on the teacher's %d FrozenBatchNorm2d layer(s) (%s%s): "
        "they normalise with their stored statistics. Set model.ofd.teacher_bn='eval' to say so, or build the "
        "teacher with frozen_bn=False (model.teacher.frozen_bn=False) for batch statistics",
        len(frozen), ", ".join(frozen[:3]), more)


def _check_has_fpn(detector: nn.Module, role: str, feature_levels: str) -> None:
    if not hasattr(detector.backbone, "fpn"):
        raise ValueError(f"model.feature_levels={feature_levels!r} taps FPN levels, but the {role} "
                         f"({type(detector).__name__}) has no FPN; use model.feature_levels='body'")


def _fixed_size_taps(ofd: dict, student: nn.Module, teacher: Optional[nn.Module], teacher_extractor: nn.Module) -> dict:
    """``ofd`` with the taps of each fixed-size side (SSD) chosen here, unless given: its extractor probed at
    its own size, not ``ofd.input_size``, and cut at ``SSD_MAX_TAP_STRIDE`` (its extras are its neck); a
    teacher SSD is probed at its size but runs on the student's batch only as far as that cut."""
    ofd = dict(ofd)
    student_side = fixed_input_size(student)
    found = dict(min_stride=ofd.get("min_stride", 4), position=ofd.get("position", "pre"),
                 tracer_kwargs=ofd.get("tracer_kwargs"))
    if student_side and ofd.get("student_taps") is None:
        ofd["student_taps"] = ssd_taps(feature_extractor(student), probe_size(student_side), **found)
    teacher_side = fixed_input_size(teacher) if teacher is not None else None
    if teacher_side and ofd.get("teacher_taps") is None:
        ofd["teacher_taps"] = ssd_taps(teacher_extractor, probe_size(teacher_side), **found)
    elif student_side and ofd.get("teacher_taps") is None and ofd.get("teacher_input_size") is None:
        ofd["teacher_input_size"] = (3, probe_size(student_side), probe_size(student_side))
    return ofd


@MODELS.register_module()
class DetectionDistiller(DistillationModel):
    """A student detector trained with its own losses plus OFD from a teacher's feature extractor.

    Any torchvision detector is teacher or student (types may differ): OFD taps each one's
    ``feature_extractor`` (``backbone.body``; SSD's ``backbone``, cut at stride ``SSD_MAX_TAP_STRIDE``).
    Mask R-CNN students need ``masks`` in the data samples (CocoDetection ``with_masks=True``), Keypoint R-CNN
    students ``keypoints`` (the Fashion-MNIST scenes have none).

    Args:
        teacher: a detector spec (see ``build_detector``) or a torchvision detector; only its backbone is kept
            (with ``feature_levels='body'`` only its feature extractor, so a backbone spec
            (``backbone_checkpoint=...``) and a trained detector (``checkpoint=...``) both work); its
            ``image_mean``/``image_std`` say how its input is normalised. With ``feature_levels='body'`` any
            other module is taken as the body itself, fed the student's normalisation. None when ofd.alpha=0.
        student: a detector spec or a torchvision detector (GeneralizedRCNN, RetinaNet, FCOS, SSD).
        num_classes, min_size, max_size: defaults for both specs (num_classes counts the background).
        feature_levels: where OFD taps. 'body': the body's stage ends (weights 2^-(n-1-i)); 'fpn': every FPN
            output, the extra 'pool' level included (weight ``FPN_LEVEL_WEIGHT`` each; no BatchNorm feeds
            them, so margin='auto' estimates data margins on the first batch); 'body+fpn': both, body pairs
            first. The FPN ones need a teacher detector with a trained FPN (``checkpoint=...``), and FPNs (no SSD).
        ofd: FeatureDistiller options (alpha, weights, margin, teacher_bn, input_size, ...) over the two
            backbones; ``alpha=0`` trains the plain student and builds no teacher. With FPN levels the taps
            are chosen here: teacher_taps, student_taps and pairs are refused.
        student_channels_last: the student's weights, and so its activations, in channels-last memory format
            (timm's ``--channels-last``; the teacher's is ``ofd.teacher_channels_last``). Off by default.
    """

    builder = staticmethod(build_detector)
    spec_help = "a torchvision detector or a backbone: timm/NAME, torchvision/NAME or a bare name"

    def __init__(
        self,
        teacher: Optional[ModelSpec],
        student: ModelSpec,
        num_classes: int = 91,
        min_size: Union[int, Sequence[int]] = 800,
        max_size: int = 1333,
        ofd: Optional[dict] = None,
        feature_levels: str = "body",
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
        student_channels_last: bool = False,
    ) -> None:
        super().__init__(ofd, data_preprocessor, init_cfg, student_channels_last)
        if feature_levels not in FEATURE_LEVELS:
            raise ValueError(f"model.feature_levels={feature_levels!r}; choose one of {FEATURE_LEVELS}")
        self.feature_levels = feature_levels
        ofd = dict(ofd or {})
        sizes = dict(num_classes=num_classes, min_size=min_size, max_size=max_size)
        self.student_model = self.build_spec(student, "student", **sizes)
        if not isinstance(self.student_model, DETECTORS):
            raise TypeError(f"student is a {type(self.student_model).__name__}; give a detector spec "
                            "dict(name=...) or a torchvision detector (GeneralizedRCNN, RetinaNet, FCOS, SSD)")
        self.target_keys = target_keys(self.student_model)
        if feature_levels != "body" and self.uses_teacher:
            _check_fpn_teacher(teacher, feature_levels)
            _check_has_fpn(self.student_model, "student", feature_levels)
        teacher_model = self.build_teacher(teacher, **sizes)
        if teacher_model is None:
            return
        student_mean, student_std = _normalisation(self.student_model)
        teacher_side = None
        if isinstance(teacher_model, DETECTORS):
            teacher_mean, teacher_std = _normalisation(teacher_model)
            if feature_levels != "body":
                _check_has_fpn(teacher_model, "teacher", feature_levels)
            teacher_side = teacher_model
            teacher_model = teacher_model.backbone if feature_levels != "body" else feature_extractor(teacher_model)
        elif feature_levels != "body":
            raise ValueError(
                f"model.feature_levels={feature_levels!r} distils the teacher's FPN, but model.teacher is a "
                f"{type(teacher_model).__name__}, not a detector; give a detector spec with its trained weights "
                "(model.teacher=dict(name=..., checkpoint=PATH)) or a GeneralizedRCNN, "
                "or use model.feature_levels='body'")
        else:
            teacher_mean, teacher_std = student_mean, student_std
        self.renormalise = not (torch.equal(teacher_mean, student_mean) and torch.equal(teacher_std, student_std))
        self.register_buffer("teacher_scale", student_std / teacher_std, persistent=False)
        self.register_buffer("teacher_shift", (student_mean - teacher_mean) / teacher_std, persistent=False)
        _warn_frozen_norms(teacher_model, ofd.get("teacher_bn", "train"))
        if feature_levels == "body":
            ofd = _fixed_size_taps(ofd, self.student_model, teacher_side, teacher_model)
            self.distiller = FeatureDistiller(teacher_model, feature_extractor(self.student_model), **ofd)
        else:
            self.distiller = self._pyramid_distiller(teacher_model, self.student_model.backbone, ofd)
        self.register_state_dict_post_hook(_drop_shared_body)
        self.register_load_state_dict_post_hook(_ignore_shared_body)

    def _pyramid_distiller(self, teacher: nn.Module, student: nn.Module, ofd: dict) -> FeatureDistiller:
        """A FeatureDistiller over the two backbones seen through ``PyramidOutputs``: FPN levels paired by
        stride (or depth), after the body stage ends (paired as ``FeatureDistiller`` pairs them) for 'body+fpn'."""
        given = [key for key in _TAP_KEYS if ofd.get(key) is not None]
        if given:
            raise ValueError(f"model.ofd.{given[0]} is set, but model.feature_levels={self.feature_levels!r} chooses "
                             "the taps; remove it, or use model.feature_levels='body' to tap the body as you choose")
        student_size = ofd.get("input_size")
        teacher_size = ofd.get("teacher_input_size") or student_size
        tracer_kwargs = ofd.get("tracer_kwargs")
        found = dict(min_stride=ofd.get("min_stride", 4), position=ofd.get("position", "pre"),
                     tracer_kwargs=tracer_kwargs)
        with_body = self.feature_levels == "body+fpn"
        sides = []
        for backbone, size in ((student, student_size), (teacher, teacher_size)):
            view = PyramidOutputs(backbone, pyramid_keys(backbone, size))
            body_taps = find_taps(backbone.body, input_size=size, **found) if with_body else []
            taps = pyramid_taps(view, body_taps, size, tracer_kwargs)
            sides.append((view, taps[:len(body_taps)], taps[len(body_taps):]))
        (student_view, student_body, student_fpn), (teacher_view, teacher_body, teacher_fpn) = sides
        body_pairs = pair_taps(student_body, teacher_body) if with_body else []
        pairs = body_pairs + pair_taps(student_fpn, teacher_fpn)
        weights = default_tap_weights(len(body_pairs)) + [FPN_LEVEL_WEIGHT] * (len(pairs) - len(body_pairs))
        return FeatureDistiller(teacher_view, student_view, teacher_taps=teacher_body + teacher_fpn,
                                student_taps=student_body + student_fpn, pairs=[(s.name, t.name) for s, t in pairs],
                                **{"weights": weights, **ofd})

    @property
    def student(self) -> nn.Module:
        """The whole student detector (its body, or backbone, is the one the distiller taps)."""
        return self.student_model

    @property
    def student_prefix(self) -> str:
        """Prefix of the student detector's keys in this model's state_dict."""
        return "student_model."

    def loss(self, inputs: Sequence[Tensor], data_samples: Union[None, Mapping, Sequence]) -> Dict[str, Tensor]:
        """The student detector's own losses (``native_losses``), plus loss_ofd on its tapped backbone."""
        if not self.training:
            raise RuntimeError("mode='loss' needs train mode (model.train()); torchvision's heads give no loss in eval")
        images = list(inputs)
        student = self.student_model
        samples = _sample_dicts(data_samples, len(images))
        batch, targets = student.transform(images, _targets(samples, images[0].device, self.target_keys))
        losses: Dict[str, Tensor] = {}
        if self.ofd_enabled:
            tapped = student.backbone if self.feature_levels == "body" else self.distiller.student
            with self.distiller.capture_student() as captured:
                features = tapped(batch.tensors)
            teacher_features = self.distiller.teacher_features(self.teacher_input(batch.tensors))
            losses["loss_ofd"] = self.distiller.distill_loss(captured, teacher_features)
        else:
            features = student.backbone(batch.tensors)
        return {**native_losses(student, batch, features, targets), **losses}

    def predict(self, inputs: Sequence[Tensor], data_samples: Union[None, Mapping, Sequence] = None) -> List[dict]:
        """Per image: image_id, boxes (xyxy, original image pixels), scores and labels (1..K); Mask R-CNN adds
        masks (N, H, W probabilities, original image pixels)."""
        if self.training:
            raise RuntimeError("mode='predict' needs eval mode (model.eval())")
        images = list(inputs)
        detections = self.student_model(images)
        samples = _sample_dicts(data_samples, len(images))
        return [_to_original(d, image, sample) for d, image, sample in zip(detections, images, samples)]

    def _forward(self, inputs: Sequence[Tensor], data_samples: Union[None, Mapping, Sequence] = None):
        """The student's FPN features of the transformed batch."""
        batch, _ = self.student_model.transform(list(inputs))
        return self.student_model.backbone(batch.tensors)

    def teacher_batch(self, inputs: Sequence[Tensor]) -> Tensor:
        """The images of a batch as the student's transform batches them, in the teacher's normalisation."""
        batch, _ = self.student_model.transform(list(inputs))
        return self.teacher_input(batch.tensors)

    def teacher_input(self, tensors: Tensor) -> Tensor:
        """The student's transformed batch in the teacher's normalisation: what the teacher's backbone is fed."""
        if not self.renormalise:
            return tensors
        return tensors * self.teacher_scale.to(tensors.dtype) + self.teacher_shift.to(tensors.dtype)
