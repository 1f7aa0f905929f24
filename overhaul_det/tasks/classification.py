"""Classification distillation as an mmengine model: {loss_cls, loss_ofd, loss_kd}.

One config runs the baseline (ofd.alpha=0, kd_weight=0), KD, OFD and OFD+KD by switching
weights. Only the student is evaluated; the teacher is frozen and comes out unchanged.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distiller import FeatureDistiller
from ..models.classifiers import build_classifier
from ..registry import MODELS
from .base import DistillationModel, build_from_spec, warn_if_random_teacher

__all__ = ["ClassificationDistiller", "kd_loss"]

ModelSpec = Union[dict, nn.Module]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: KL(teacher || student) at temperature T, scaled by T^2, mean over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


def _build(spec: ModelSpec, num_classes: int, role: str) -> nn.Module:
    return build_from_spec(spec, build_classifier, f"model.{role}", "name",
                           "timm/NAME, torchvision/NAME or a bare name", num_classes=num_classes)


@MODELS.register_module()
class ClassificationDistiller(DistillationModel):
    """Teacher and student classifiers with OFD (and optional logit KD) on the student's features.

    Args:
        teacher, student: ``dict(name=..., checkpoint=..., pretrained=...)`` or modules.
        num_classes: classes of both heads (unless a spec sets its own).
        ofd: FeatureDistiller options (alpha, weights, margin, teacher_bn, input_size, ...);
            ``alpha=0`` turns OFD off (the teacher's features are then never computed).
        kd_weight, kd_temperature: Hinton KD on the logits; 0 turns it off.
        cls_weight: weight of the student's cross-entropy.
    """

    def __init__(
        self,
        teacher: Optional[ModelSpec],
        student: ModelSpec,
        num_classes: int = 1000,
        ofd: Optional[dict] = None,
        kd_weight: float = 0.0,
        kd_temperature: float = 4.0,
        cls_weight: float = 1.0,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        ofd = dict(ofd or {})
        self.ofd_enabled = ofd.get("alpha", 1.0) > 0
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.cls_weight = cls_weight
        student_model = _build(student, num_classes, "student")
        teacher_model = _build(teacher, num_classes, "teacher") if teacher is not None else None
        if (self.ofd_enabled or kd_weight > 0) and teacher_model is None:
            raise ValueError("OFD or KD needs a teacher; set teacher=dict(name=...) or ofd.alpha=0 and kd_weight=0")
        if self.ofd_enabled or kd_weight > 0:
            warn_if_random_teacher(teacher, build_classifier, "name")
        if self.ofd_enabled:
            self.distiller = FeatureDistiller(teacher_model, student_model, **ofd)
        else:
            self.student_model = student_model
            if teacher_model is not None:
                teacher_model.requires_grad_(False)
                self.teacher_model = teacher_model.eval()

    @property
    def teacher(self) -> Optional[nn.Module]:
        if self.ofd_enabled:
            return self.distiller.teacher
        return getattr(self, "teacher_model", None)

    def train(self, mode: bool = True) -> "ClassificationDistiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None, mode: str = "tensor"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        logits = self.student(inputs)
        if mode == "tensor":
            return logits
        if mode == "predict":
            return self.predict(logits, data_samples)
        raise ValueError(f"mode={mode!r}; expected 'loss', 'predict' or 'tensor'")

    def loss(self, inputs: Tensor, data_samples: Sequence) -> Dict[str, Tensor]:
        """The training losses; in eval mode without ``loss_ofd`` (see ``DistillationModel.ofd_active``)."""
        labels = _labels(data_samples, inputs.device)
        losses: Dict[str, Tensor] = {}
        if self.ofd_active:
            logits, ofd_losses = self.distiller(inputs)
            losses.update(ofd_losses)
        else:
            logits = self.student(inputs)
        _check_labels(labels, logits.shape[1])
        losses["loss_cls"] = self.cls_weight * F.cross_entropy(logits, labels)
        if self.kd_weight > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(inputs)
            losses["loss_kd"] = self.kd_weight * kd_loss(logits, teacher_logits, self.kd_temperature)
        return losses

    @staticmethod
    def predict(logits: Tensor, data_samples: Optional[Sequence]) -> List[dict]:
        scores = logits.detach().float().softmax(dim=1)
        labels = [None] * len(scores) if data_samples is None else _labels(data_samples, scores.device).tolist()
        return [dict(pred_score=s, gt_label=y) for s, y in zip(scores, labels)]


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """Name a label outside 0..num_classes-1 before cross-entropy fails on it with an index error."""
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(f"label {int(bad[0])} is outside the model's {num_classes} classes (0..{num_classes - 1}); "
                         "set model.num_classes to the dataset's class count or fix the labels")


def _labels(data_samples, device) -> Tensor:
    if isinstance(data_samples, Tensor):
        return data_samples.to(device=device, dtype=torch.long)
    if isinstance(data_samples, dict):
        data_samples = data_samples["gt_label"]
    values = [s["gt_label"] if isinstance(s, dict) else s for s in data_samples]
    return torch.as_tensor([int(v) for v in values], device=device, dtype=torch.long)
