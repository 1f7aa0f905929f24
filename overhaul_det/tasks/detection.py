"""Faster R-CNN distillation as an mmengine model: torchvision's own losses plus loss_ofd.

The student's transform normalises, resizes and pads the batch once; the teacher's backbone body
runs on that same batch (re-normalised to its own mean and std) only as far as its last tap.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from ..distiller import FeatureDistiller
from ..models.detection import build_detector
from ..registry import MODELS
from .base import DistillationModel

__all__ = ["DetectionDistiller"]

ModelSpec = Union[str, dict, nn.Module]
_SHARED_BODY = "distiller.student."


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


def _targets(samples: Sequence[dict], device: torch.device) -> List[Dict[str, Tensor]]:
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
        targets.append(dict(boxes=boxes, labels=torch.as_tensor(sample["labels"], dtype=torch.int64, device=device)))
    return targets


def _to_original(detection: Dict[str, Tensor], image: Tensor, sample: dict) -> dict:
    """Boxes from the input image's pixels back to the original image's (undo flip, then resize)."""
    boxes = detection["boxes"]
    height, width = image.shape[-2:]
    if sample.get("flipped"):
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    orig_height, orig_width = sample.get("orig_size", (height, width))
    boxes = boxes * boxes.new_tensor([orig_width / width, orig_height / height] * 2)
    return dict(image_id=sample.get("image_id"), boxes=boxes, scores=detection["scores"], labels=detection["labels"])


def _drop_shared_body(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _SHARED_BODY)]:
        del state_dict[key]


def _ignore_shared_body(module: nn.Module, incompatible_keys) -> None:
    shared = [k for k in incompatible_keys.missing_keys if f".{_SHARED_BODY}" in f".{k}"]
    for key in shared:
        incompatible_keys.missing_keys.remove(key)


@MODELS.register_module()
class DetectionDistiller(DistillationModel):
    """A student Faster R-CNN trained with its own losses plus OFD from a teacher's backbone body.

    Args:
        teacher: a detector spec (see ``build_detector``) or a GeneralizedRCNN; only ``backbone.body`` is
            kept, so a backbone spec (``backbone_checkpoint=...``) and a trained detector (``checkpoint=...``)
            both work; its ``image_mean``/``image_std`` say how its input is normalised. Any other module is
            taken as the body itself, fed the student's normalisation. None when ofd.alpha=0.
        student: a detector spec or a torchvision GeneralizedRCNN.
        num_classes, min_size, max_size: defaults for both specs (num_classes counts the background).
        ofd: FeatureDistiller options (alpha, weights, margin, teacher_bn, input_size, ...) over the two
            backbone bodies; ``alpha=0`` trains the plain student and builds no teacher.
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
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(ofd, data_preprocessor, init_cfg)
        sizes = dict(num_classes=num_classes, min_size=min_size, max_size=max_size)
        self.student_model = self.build_spec(student, "student", **sizes)
        if not isinstance(self.student_model, GeneralizedRCNN):
            raise TypeError(f"student is a {type(self.student_model).__name__}; give a detector spec "
                            "dict(name=...) or a torchvision GeneralizedRCNN")
        teacher_model = self.build_teacher(teacher, **sizes)
        if teacher_model is None:
            return
        student_mean, student_std = _normalisation(self.student_model)
        if isinstance(teacher_model, GeneralizedRCNN):
            teacher_mean, teacher_std = _normalisation(teacher_model)
            teacher_model = teacher_model.backbone.body
        else:
            teacher_mean, teacher_std = student_mean, student_std
        self.renormalise = not (torch.equal(teacher_mean, student_mean) and torch.equal(teacher_std, student_std))
        self.register_buffer("teacher_scale", student_std / teacher_std, persistent=False)
        self.register_buffer("teacher_shift", (student_mean - teacher_mean) / teacher_std, persistent=False)
        self.distiller = FeatureDistiller(teacher_model, self.student_model.backbone.body, **dict(ofd or {}))
        self.register_state_dict_post_hook(_drop_shared_body)
        self.register_load_state_dict_post_hook(_ignore_shared_body)

    @property
    def student(self) -> nn.Module:
        """The whole student detector (its body is the one the distiller taps)."""
        return self.student_model

    @property
    def student_prefix(self) -> str:
        """Prefix of the student detector's keys in this model's state_dict."""
        return "student_model."

    def loss(self, inputs: Sequence[Tensor], data_samples: Union[None, Mapping, Sequence]) -> Dict[str, Tensor]:
        """torchvision's RPN and ROI-head losses of the student, plus loss_ofd on its backbone body."""
        if not self.training:
            raise RuntimeError("mode='loss' needs train mode (model.train()); torchvision's heads give no loss in eval")
        images = list(inputs)
        student = self.student_model
        batch, targets = student.transform(images, _targets(_sample_dicts(data_samples, len(images)), images[0].device))
        losses: Dict[str, Tensor] = {}
        if self.ofd_enabled:
            with self.distiller.capture_student() as captured:
                features = student.backbone(batch.tensors)
            teacher_features = self.distiller.teacher_features(self.teacher_input(batch.tensors))
            losses["loss_ofd"] = self.distiller.distill_loss(captured, teacher_features)
        else:
            features = student.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, rpn_losses = student.rpn(batch, features, targets)
        _, roi_losses = student.roi_heads(features, proposals, batch.image_sizes, targets)
        return {**rpn_losses, **roi_losses, **losses}

    def predict(self, inputs: Sequence[Tensor], data_samples: Union[None, Mapping, Sequence] = None) -> List[dict]:
        """Per image: image_id, boxes (xyxy, original image pixels), scores and labels (1..K)."""
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

    def teacher_input(self, tensors: Tensor) -> Tensor:
        """The student's transformed batch in the teacher's normalisation: what the teacher's body is fed."""
        if not self.renormalise:
            return tensors
        return tensors * self.teacher_scale.to(tensors.dtype) + self.teacher_shift.to(tensors.dtype)
