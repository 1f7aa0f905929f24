"""Semantic segmentation distillation as an mmengine model: {loss_ce, loss_aux, loss_ofd}.

One config runs the baseline (ofd.alpha=0) and OFD. The distiller spans the whole segmenter:
four backbone stage ends, the ASPP projection and the head's last conv+BN (paper weights 1/8,
1/4, 1/2, 1, 1, 1/16; alpha 1e-5); an FCN or LRASPP head has one tap, its conv+BN, paired with the
other head's last. Only the student is evaluated; the teacher comes out unchanged.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distiller import FeatureDistiller
from ..models.segmentation import build_segmenter
from ..pairing import default_tap_weights
from ..registry import MODELS
from ..taps import Tap, check_input_size, trace
from ..taps.presets import segmenter_tap_groups
from .base import DistillationModel

__all__ = ["SegmentationDistiller", "segmentation_tap_weights"]

ModelSpec = Union[str, dict, nn.Module]
TapSpec = Union[None, Sequence[Tap], Sequence[str]]
DEFAULT_ALPHA = 1e-5
DEFAULT_INPUT_SIZE = (3, 128, 128)
logger = logging.getLogger(__name__)


def segmentation_tap_weights(num_backbone_taps: int, num_head_taps: int = 2) -> List[float]:
    """The official weights: 2^-(n-1-i) over the backbone taps, then 1 (ASPP) and 1/16 (decoder).

    The head's last tap weighs 1/16 and any before it 1, so a one-tap head (FCN, LRASPP) gets 1/16."""
    head = [1.0] * (num_head_taps - 1) + [1.0 / 16] if num_head_taps else []
    return default_tap_weights(num_backbone_taps) + head


def _default_taps(model: nn.Module, input_size: Sequence[int], tracer_kwargs: Optional[dict]
                  ) -> Tuple[List[Tap], List[Tap]]:
    """The segmenter's (backbone, head) taps (``segmenter_tap_groups``), measured at an input its stages do
    not collapse at. Taps picked by name skip find_taps' small-input rule, so it is applied here to the backbone."""
    check_input_size(model.backbone, input_size, graph=trace(model.backbone, tracer_kwargs=tracer_kwargs),
                     what=f"{type(model).__name__}'s backbone", fix="ofd.input_size and the dataset's crop")
    return segmenter_tap_groups(model, input_size, tracer_kwargs)


def _pair_groups(student: Tuple[List[Tap], List[Tap]], teacher: Tuple[List[Tap], List[Tap]]
                 ) -> Tuple[List[Tuple[str, str]], List[float]]:
    """Default taps paired group by group (backbone with backbone, head with head), each group's deepest
    min(n_student, n_teacher) in order; with the official weights of the pairs kept."""
    pairs, counts = [], []
    for s_taps, t_taps in zip(student, teacher):
        n = min(len(s_taps), len(t_taps))
        pairs += _in_order(s_taps[len(s_taps) - n:], t_taps[len(t_taps) - n:])
        counts.append(n)
    if [len(g) for g in student] != [len(g) for g in teacher]:
        logger.info("student and teacher have %s and %s (backbone, head) taps; pairing the deepest %s of each",
                    [len(g) for g in student], [len(g) for g in teacher], counts)
    return pairs, segmentation_tap_weights(*counts)


def _in_order(student_taps: TapSpec, teacher_taps: TapSpec) -> List[Tuple[str, str]]:
    """(student, teacher) tap names paired in order: several taps share a stride, so strides cannot pair them."""
    s_names = [getattr(tap, "name", tap) for tap in student_taps]
    t_names = [getattr(tap, "name", tap) for tap in teacher_taps]
    if len(s_names) != len(t_names):
        raise ValueError(f"the student has {len(s_names)} taps ({s_names}) and the teacher {len(t_names)} "
                         f"({t_names}); give ofd.pairs=[(student_node, teacher_node), ...] or matching taps")
    return list(zip(s_names, t_names))


def _build_distiller(teacher: nn.Module, student: nn.Module, ofd: dict) -> FeatureDistiller:
    """A FeatureDistiller over the whole segmenters: default taps paired group by group (``_pair_groups``),
    taps given by name in order (backbone stages, ASPP, decoder)."""
    ofd = dict(ofd)
    ofd["input_size"] = ofd.get("input_size") or DEFAULT_INPUT_SIZE
    ofd["teacher_input_size"] = ofd.get("teacher_input_size") or ofd["input_size"]
    tracer_kwargs = ofd.get("tracer_kwargs")
    teacher_groups = student_groups = None
    if ofd.get("teacher_taps") is None:
        teacher_groups = _default_taps(teacher, ofd["teacher_input_size"], tracer_kwargs)
        ofd["teacher_taps"] = teacher_groups[0] + teacher_groups[1]
    if ofd.get("student_taps") is None:
        student_groups = _default_taps(student, ofd["input_size"], tracer_kwargs)
        ofd["student_taps"] = student_groups[0] + student_groups[1]
    if "pairs" not in ofd and teacher_groups and student_groups:
        ofd["pairs"], weights = _pair_groups(student_groups, teacher_groups)
        ofd.setdefault("weights", weights)
    elif "pairs" not in ofd:
        ofd["pairs"] = _in_order(ofd["student_taps"], ofd["teacher_taps"])
    num_pairs = len(ofd["pairs"])
    ofd.setdefault("weights", segmentation_tap_weights(num_pairs - 2) if num_pairs > 2 else None)
    ofd.setdefault("alpha", DEFAULT_ALPHA)
    return FeatureDistiller(teacher, student, **ofd)


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
            in order) or ``pairs``. Default taps pair backbone with backbone and head with head, the deepest
            of each where the counts differ (a one-tap FCN/LRASPP head with a DeepLab head's last tap); ``alpha=0`` is the baseline (the teacher is not built).
        aux_weight: weight of the aux head's cross-entropy, when the student has one.
        ignore_index: label value left out of the loss (and of the metric).
        class_weight: per-class weights of the cross-entropy (mmseg's ``class_weight``), e.g. a smaller weight for
            a background that covers most pixels; ``None`` weighs every class 1.
        student_channels_last: the student's weights, and so its activations, in channels-last memory format
            (timm's ``--channels-last``; the teacher's is ``ofd.teacher_channels_last``). Off by default.
    """

    builder = staticmethod(build_segmenter)
    spec_key = "backbone"
    spec_help = "timm/NAME, torchvision/NAME, a bare name or a torchvision segmenter (deeplabv3_*, fcn_*, lraspp_*)"
    default_alpha = DEFAULT_ALPHA

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
        student_channels_last: bool = False,
        class_weight: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(ofd, data_preprocessor or dict(type="ImgDataPreprocessor"), init_cfg, student_channels_last)
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        if class_weight is not None and len(class_weight) != num_classes:
            raise ValueError(f"model.class_weight has {len(class_weight)} values for {num_classes} classes; give one "
                             f"weight per class (model.num_classes), or None")
        weight = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float)
        self.register_buffer("class_weight", weight, persistent=False)
        student_model = self.build_spec(student, "student", num_classes=num_classes)
        teacher_model = self.build_teacher(teacher, num_classes=num_classes)
        if teacher_model is None:
            self.student_model = student_model
        else:
            self.distiller = _build_distiller(teacher_model, student_model, ofd)

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
        losses["loss_ce"] = F.cross_entropy(outputs["out"], target, self.class_weight, ignore_index=self.ignore_index)
        if "aux" in outputs:
            aux = F.cross_entropy(outputs["aux"], target, self.class_weight, ignore_index=self.ignore_index)
            losses["loss_aux"] = self.aux_weight * aux
        return losses

    def predict(self, inputs: Tensor, data_samples: Optional[Sequence] = None) -> List[dict]:
        """Per image ``pred_seg`` (argmax at the label's size; padding cropped away) and the sample's own keys."""
        logits = self._forward(inputs).detach()
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

    def _forward(self, inputs: Tensor, data_samples: Optional[Sequence] = None) -> Tensor:
        """The student's logits at the input size."""
        return self.student(inputs)["out"]
