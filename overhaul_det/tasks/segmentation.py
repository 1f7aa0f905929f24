"""Semantic segmentation distillation as an mmengine model: {loss_ce, loss_aux, loss_ofd}.

One config runs the baseline (ofd.alpha=0) and OFD. The distiller spans the whole segmenter:
four backbone stage ends, the ASPP projection and the head's last conv+BN (paper weights 1/8,
1/4, 1/2, 1, 1, 1/16; alpha 1e-5). Only the student is evaluated; the teacher comes out unchanged.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distiller import FeatureDistiller, default_tap_weights
from ..models.segmentation import build_segmenter, segmenter_taps
from ..registry import MODELS
from ..taps import Tap, find_taps
from .base import DistillationModel, build_from_spec, warn_if_random_teacher

__all__ = ["SegmentationDistiller", "segmentation_tap_weights"]

logger = logging.getLogger(__name__)

ModelSpec = Union[dict, nn.Module]
TapSpec = Union[None, Sequence[Tap], Sequence[str]]
DEFAULT_ALPHA = 1e-5
DEFAULT_INPUT_SIZE = (3, 128, 128)


def segmentation_tap_weights(num_backbone_taps: int) -> List[float]:
    """The official weights: 2^-(n-1-i) over the backbone taps, then 1 (ASPP) and 1/16 (decoder)."""
    return default_tap_weights(num_backbone_taps) + [1.0, 1.0 / 16]


def _build(spec: ModelSpec, num_classes: int, role: str) -> nn.Module:
    return build_from_spec(spec, build_segmenter, f"model.{role}", "backbone",
                           "timm/NAME, torchvision/NAME, a bare name or a deeplabv3_* name", num_classes=num_classes)


def _resolve_taps(model: nn.Module, spec: TapSpec, input_size: Sequence[int],
                  tracer_kwargs: Optional[dict] = None) -> List[Tap]:
    if spec is None:
        return segmenter_taps(model, input_size, tracer_kwargs)
    if all(isinstance(tap, Tap) for tap in spec):
        return list(spec)
    return find_taps(model, input_size=input_size, nodes=list(spec), tracer_kwargs=tracer_kwargs)


def _build_distiller(teacher: nn.Module, student: nn.Module, ofd: dict) -> FeatureDistiller:
    """A FeatureDistiller over the whole segmenters, taps paired in order (backbone stages, ASPP, decoder)."""
    ofd = dict(ofd)
    input_size = ofd.pop("input_size", None) or DEFAULT_INPUT_SIZE
    teacher_input_size = ofd.pop("teacher_input_size", None) or input_size
    t_taps = _resolve_taps(teacher, ofd.pop("teacher_taps", None), teacher_input_size, ofd.get("tracer_kwargs"))
    s_taps = _resolve_taps(student, ofd.pop("student_taps", None), input_size, ofd.get("tracer_kwargs"))
    if "pairs" not in ofd:
        if len(s_taps) != len(t_taps):
            raise ValueError(
                f"the student has {len(s_taps)} taps ({[t.name for t in s_taps]}) and the teacher {len(t_taps)} "
                f"({[t.name for t in t_taps]}); give ofd.pairs=[(student_node, teacher_node), ...] or matching taps"
            )
        ofd["pairs"] = [(s.name, t.name) for s, t in zip(s_taps, t_taps)]
    num_pairs = len(ofd["pairs"])
    ofd.setdefault("weights", segmentation_tap_weights(num_pairs - 2) if num_pairs > 2 else None)
    ofd.setdefault("alpha", DEFAULT_ALPHA)
    return FeatureDistiller(teacher, student, teacher_taps=t_taps, student_taps=s_taps, **ofd)


def _samples(data_samples) -> List[dict]:
    """Per-image sample dicts from a list of dicts or a pseudo-collated dict of lists."""
    if isinstance(data_samples, dict):
        keys = list(data_samples)
        return [dict(zip(keys, values)) for values in zip(*(data_samples[k] for k in keys))]
    return list(data_samples)


def _stack_labels(labels: Sequence[Tensor], size: Tuple[int, int], ignore_index: int, device) -> Tensor:
    """(N, H, W) labels, each padded at the bottom/right with ``ignore_index`` to the batch's input size."""
    padded = []
    for label in labels:
        pad_h, pad_w = size[0] - label.shape[-2], size[1] - label.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(f"gt_seg of size {tuple(label.shape)} is larger than the inputs {tuple(size)}; "
                             "the dataset must give each label at its image's size")
        padded.append(F.pad(label.to(device=device, dtype=torch.long), (0, pad_w, 0, pad_h), value=ignore_index))
    return torch.stack(padded)


@MODELS.register_module()
class SegmentationDistiller(DistillationModel):
    """Teacher and student segmenters with OFD on the student's backbone and head features.

    Args:
        teacher, student: ``build_segmenter`` kwargs (``dict(backbone=..., decoder=..., checkpoint=...)``) or modules.
        num_classes: classes of both heads (unless a spec sets its own).
        ofd: FeatureDistiller options (alpha=1e-5, margin, teacher_bn, align, weights: by default
            ``segmentation_tap_weights``, the last two taps being the ASPP and the decoder) plus ``input_size``
            (C, H, W) for tap discovery and optional ``student_taps``/``teacher_taps`` (node names, paired
            in order) or ``pairs``; ``alpha=0`` is the baseline (the teacher is not built).
        aux_weight: weight of the aux head's cross-entropy, when the student has one.
        ignore_index: label value left out of the loss (and of the metric).
    """

    def __init__(
        self,
        teacher: Optional[ModelSpec],
        student: ModelSpec,
        num_classes: int = 21,
        ofd: Optional[dict] = None,
        aux_weight: float = 0.5,
        ignore_index: int = 255,
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor or dict(type="ImgDataPreprocessor"), init_cfg=init_cfg)
        ofd = dict(ofd or {})
        self.ofd_enabled = ofd.get("alpha", DEFAULT_ALPHA) > 0
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        student_model = _build(student, num_classes, "student")
        if not self.ofd_enabled:
            if teacher is not None:
                logger.info("ofd.alpha=0: the teacher is not built (baseline run)")
            self.student_model = student_model
            return
        if teacher is None:
            raise ValueError("OFD needs a teacher; set teacher=dict(backbone=..., checkpoint=...) or ofd.alpha=0")
        teacher_model = _build(teacher, num_classes, "teacher")
        warn_if_random_teacher(teacher, build_segmenter, "backbone")
        self.distiller = _build_distiller(teacher_model, student_model, ofd)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self.distiller.teacher if self.ofd_enabled else None

    def forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None, mode: str = "tensor"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        logits = self.student(inputs)["out"]
        if mode == "tensor":
            return logits
        if mode == "predict":
            return self.predict(logits, data_samples)
        raise ValueError(f"mode={mode!r}; expected 'loss', 'predict' or 'tensor'")

    def loss(self, inputs: Tensor, data_samples: Sequence) -> Dict[str, Tensor]:
        """The training losses; in eval mode without ``loss_ofd`` (see ``DistillationModel.ofd_active``)."""
        labels = [sample["gt_seg"] for sample in _samples(data_samples)]
        target = _stack_labels(labels, inputs.shape[-2:], self.ignore_index, inputs.device)
        losses: Dict[str, Tensor] = {}
        if self.ofd_active:
            outputs, ofd_losses = self.distiller(inputs)
            losses.update(ofd_losses)
        else:
            outputs = self.student(inputs)
        losses["loss_ce"] = F.cross_entropy(outputs["out"], target, ignore_index=self.ignore_index)
        if "aux" in outputs:
            aux = F.cross_entropy(outputs["aux"], target, ignore_index=self.ignore_index)
            losses["loss_aux"] = self.aux_weight * aux
        return losses

    def predict(self, logits: Tensor, data_samples: Optional[Sequence]) -> List[dict]:
        """Per image ``pred_seg`` (argmax at the label's size; padding cropped away) and ``gt_seg``."""
        logits = logits.detach()
        if data_samples is None:
            return [dict(pred_seg=scores.argmax(0)) for scores in logits]
        results = []
        for scores, sample in zip(logits, _samples(data_samples)):
            height, width = sample["gt_seg"].shape[-2:]
            if height <= scores.shape[-2] and width <= scores.shape[-1]:
                scores = scores[:, :height, :width]
            else:
                scores = F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            results.append(dict(sample, pred_seg=scores.argmax(0)))
        return results
