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
from ..distiller_checkpoint import keep_teacher_out_of_state_dict
from ..models.classifiers import build_classifier
from ..registry import MODELS
from .base import DistillationModel

__all__ = ["ClassificationDistiller", "kd_loss"]

ModelSpec = Union[str, dict, nn.Module]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: KL(teacher || student) at temperature T, scaled by T^2, mean over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


@MODELS.register_module()
class ClassificationDistiller(DistillationModel):
    """Teacher and student classifiers with OFD (and optional logit KD) on the student's features.

    Args:
        teacher, student: ``dict(name=..., checkpoint=..., pretrained=...)``, a name, or modules.
        num_classes: classes of both heads (unless a spec sets its own).
        ofd: FeatureDistiller options (alpha, weights, margin, teacher_bn, input_size, ...);
            ``alpha=0`` turns OFD off (the teacher's features are then never computed).
        kd_weight, kd_temperature: Hinton KD on the logits; 0 turns it off.
        cls_weight: weight of the student's cross-entropy.
        student_channels_last: the student's weights, and so its activations, in channels-last memory format
            (timm's ``--channels-last``; the teacher's is ``ofd.teacher_channels_last``). Off by default.
    """

    builder = staticmethod(build_classifier)
    teacher_terms = "OFD or KD"
    teacher_off = "ofd.alpha=0 and kd_weight=0"

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
        student_channels_last: bool = False,
    ) -> None:
        super().__init__(ofd, data_preprocessor, init_cfg, student_channels_last)
        self.kd_weight = kd_weight
        self.kd_temperature = kd_temperature
        self.cls_weight = cls_weight
        student_model = self.build_spec(student, "student", num_classes=num_classes)
        # An unused teacher is built all the same: its initialisation draws from the RNG, and the published
        # baselines were trained after it.
        teacher_model = self.build_teacher(teacher, build_unused=True, num_classes=num_classes)
        if self.ofd_enabled:
            self.distiller = FeatureDistiller(teacher_model, student_model, **dict(ofd or {}))
        else:
            self.student_model = student_model
            if teacher_model is not None:
                teacher_model.requires_grad_(False)
                self.teacher_model = teacher_model.eval()
                keep_teacher_out_of_state_dict(self, "teacher_model")

    @property
    def uses_teacher(self) -> bool:
        return self.ofd_enabled or self.kd_weight > 0

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

    def predict(self, inputs: Tensor, data_samples: Optional[Sequence] = None) -> List[dict]:
        """Per image the student's class probabilities ``pred_score`` and its ``gt_label`` (None without samples)."""
        scores = self._forward(inputs).detach().float().softmax(dim=1)
        labels = [None] * len(scores) if data_samples is None else _labels(data_samples, scores.device).tolist()
        return [dict(pred_score=s, gt_label=y) for s, y in zip(scores, labels)]

    def _forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None) -> Tensor:
        return self.student(inputs)


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
