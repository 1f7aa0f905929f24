"""What every task adapter shares: model specs built with errors that name the config key, the teacher
guard (refused when missing, warned about without weights), OFD on/off, mmengine's three modes with
``predict(inputs, data_samples)``, and non-finite loss detection naming the term and iteration."""
from __future__ import annotations

import abc
import logging
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from torch import nn

from ..ofd_config import OFDConfig
from ..engine.keys import parameter_names, unknown_key_error

__all__ = ["DistillationModel", "build_from_spec", "warn_if_random_teacher"]

logger = logging.getLogger(__name__)

WEIGHT_KEYS = ("checkpoint", "backbone_checkpoint", "weights", "weights_backbone", "pretrained", "pretrained_backbone",
               "pretrained_cfg_overlay")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def _unknown_key(where: str, key: str, builder: Callable, error: TypeError) -> TypeError:
    """A TypeError naming ``where.key`` and the nearest key ``builder`` takes."""
    error = unknown_key_error(where, key, parameter_names(builder), builder.__name__, str(error))
    return TypeError(f"{error}; other keys go to the model's own constructor")


def build_from_spec(spec: Union[dict, nn.Module], builder: Callable[..., nn.Module], where: str, required: str,
                    what: str, **defaults) -> nn.Module:
    """A module as it is, or ``builder(**spec)`` with ``defaults`` filled in; ``spec[required]`` must be set.

    ``where`` (e.g. ``model.teacher``) names the spec in errors: a misspelt key is reported as
    ``model.teacher.checkpiont`` with the nearest of ``builder``'s parameters.
    """
    if isinstance(spec, nn.Module):
        return spec
    given = dict(spec)
    if required not in given:
        raise ValueError(f"{where} {given} needs a '{required}' ({what})")
    try:
        return builder(**{**defaults, **given})
    except TypeError as error:
        match = _UNEXPECTED.search(str(error))
        if match is None or match.group(1) not in given:
            raise
        raise _unknown_key(where, match.group(1), builder, error) from error


def warn_if_random_teacher(spec: Union[str, dict, nn.Module, None], builder: Callable, required: str) -> None:
    """Warn when a teacher spec asks for no weights (none of ``WEIGHT_KEYS`` set): the teacher is then
    a randomly initialised network. A module (or None) is taken as it is."""
    if spec is None or isinstance(spec, nn.Module):
        return
    spec = {required: spec} if isinstance(spec, str) else spec
    if any(spec.get(key) for key in WEIGHT_KEYS):
        return
    options = [key for key in WEIGHT_KEYS if key in parameter_names(builder)]
    logger.warning("model.teacher (%s=%r) has no weights (none of %s is set): it is RANDOMLY INITIALISED "
                   "and the student will learn from noise. Give its trained weights, e.g. model.teacher.%s=PATH",
                   required, spec.get(required), ", ".join(options), options[0])


class DistillationModel(BaseModel):
    """mmengine BaseModel holding a student (in ``distiller`` with OFD on, else ``student_model``) and,
    where a loss term uses one, a frozen teacher; its loss parsing stops on the first NaN/Inf loss term.

    A task sets ``builder`` (its model builder), ``spec_key`` (the key a spec must set) and ``spec_help``,
    and implements ``loss``, ``predict`` and ``_forward``, each taking ``(inputs, data_samples)``.
    The non-finite error names the term and the iteration, before the optimizer can step, so the last
    checkpoint written stays the last good one.
    """

    builder: Callable[..., nn.Module]
    spec_key: str = "name"
    spec_help: str = "timm/NAME, torchvision/NAME or a bare name"
    default_alpha: float = 1.0
    teacher_terms: str = "OFD"
    teacher_off: str = "ofd.alpha=0"

    def __init__(self, ofd: Optional[dict] = None, data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None, student_channels_last: bool = False) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not isinstance(student_channels_last, bool):
            raise ValueError(f"model.student_channels_last={student_channels_last!r}; give True or False")
        self.student_channels_last = student_channels_last
        alpha = dict(ofd or {}).get("alpha", self.default_alpha)
        if alpha != "auto" and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0):
            raise ValueError(f"model.ofd.alpha={alpha!r}; give a number >= 0 (0 trains the plain baseline) or 'auto'")
        OFDConfig.from_dict(dict(ofd or {}), where="model.ofd")
        self.ofd_enabled = alpha == "auto" or alpha > 0

    def init_weights(self) -> None:
        """Keep every weight as built. The zoo builders initialise their models and checkpoints load
        at build time; mmengine's default, which the Runner calls at start, would call the
        ``init_weights`` of timm models (ResNet, ViT, ...) again and wipe a loaded teacher or a
        pretrained student."""

    def build_spec(self, spec: Union[str, dict, nn.Module], role: str, **defaults) -> nn.Module:
        """``model.<role>`` built by the task's builder; a string stands for ``{spec_key: string}``. The
        student is made channels-last with ``student_channels_last`` (its weights; a convolution with
        channels-last weights makes its output, and so every activation after it, channels-last)."""
        spec = {self.spec_key: spec} if isinstance(spec, str) else spec
        model = build_from_spec(spec, self.builder, f"model.{role}", self.spec_key, self.spec_help, **defaults)
        if role == "student" and self.student_channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    @property
    def uses_teacher(self) -> bool:
        """Whether a loss term needs the teacher (OFD here; classification adds logit KD)."""
        return self.ofd_enabled

    def build_teacher(self, spec: Union[None, str, dict, nn.Module], build_unused: bool = False,
                      **defaults) -> Optional[nn.Module]:
        """The teacher, or None where no loss term uses it (built all the same with ``build_unused``).

        A teacher that a term needs but the config leaves out is refused; one given without weights
        is warned about (see ``warn_if_random_teacher``).
        """
        if spec is None:
            if self.uses_teacher:
                raise ValueError(f"{self.teacher_terms} needs a teacher; set teacher=dict({self.spec_key}=..., "
                                 f"checkpoint=...) or {self.teacher_off}")
            return None
        if not (self.uses_teacher or build_unused):
            logger.info("%s: the teacher is not built (baseline run)", self.teacher_off)
            return None
        teacher = self.build_spec(spec, "teacher", **defaults)
        if self.uses_teacher:
            warn_if_random_teacher(spec, self.builder, self.spec_key)
        return teacher

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher the loss terms use (the distiller's, or ``teacher_model`` for KD alone); else None."""
        if self.ofd_enabled:
            return self.distiller.teacher
        return getattr(self, "teacher_model", None)

    def train(self, mode: bool = True) -> "DistillationModel":
        """Switch the student (and regressors) to ``mode``; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, inputs: Any, data_samples: Optional[Sequence] = None, mode: str = "tensor") -> Any:
        """mmengine's modes: ``loss`` (dict of losses), ``predict`` (one result per image), ``tensor`` (raw output)."""
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.predict(inputs, data_samples)
        if mode == "tensor":
            return self._forward(inputs, data_samples)
        raise ValueError(f"mode={mode!r}; expected 'loss', 'predict' or 'tensor'")

    @abc.abstractmethod
    def loss(self, inputs: Any, data_samples: Optional[Sequence]) -> Dict[str, torch.Tensor]:
        """The training losses of a batch (the task's own terms plus ``loss_ofd``)."""

    @abc.abstractmethod
    def predict(self, inputs: Any, data_samples: Optional[Sequence] = None) -> List[dict]:
        """One result dict per image of ``inputs``, from the student alone (what the task's metric takes)."""

    @abc.abstractmethod
    def _forward(self, inputs: Any, data_samples: Optional[Sequence] = None) -> Any:
        """The student's raw output for ``inputs`` (``mode='tensor'``)."""

    def teacher_batch(self, inputs: Any) -> torch.Tensor:
        """The tensor the distiller's teacher is fed for the batch ``inputs`` (what ``DataMarginHook`` reads)."""
        return inputs

    @property
    def student(self) -> nn.Module:
        return self.distiller.student if self.ofd_enabled else self.student_model

    @property
    def ofd_active(self) -> bool:
        """Whether ``mode='loss'`` adds ``loss_ofd``: OFD on and the model in train mode. In eval mode the
        student's BatchNorm runs on running statistics and the teacher's on batch statistics, so the term
        compares unlike features (thousands where training gives units); mmengine's val loops call
        ``mode='predict'``, which runs the student alone."""
        return self.ofd_enabled and self.training

    @property
    def student_prefix(self) -> str:
        """Prefix of the student's keys in this model's state_dict."""
        return "distiller.student." if self.ofd_enabled else "student_model."

    def parse_losses(self, losses: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """mmengine's sum of the ``loss*`` terms, with ``loss_ofd`` weighted by alpha='auto' against the
        other terms (``FeatureDistiller.scale_to_task``), and a stop on the first non-finite term."""
        if self.ofd_active and "loss_ofd" in losses:
            task = sum(value for key, value in losses.items()
                       if "loss" in key and key != "loss_ofd" and isinstance(value, torch.Tensor))
            losses = {**losses, "loss_ofd": self.distiller.scale_to_task(losses["loss_ofd"], task)}
        loss, log_vars = super().parse_losses(losses)
        bad = [name for name, value in log_vars.items()
               if name != "loss" and not math.isfinite(float(value.detach()))]
        if bad:
            iteration = MessageHub.get_current_instance().get_info("iter", default=-1)
            values = ", ".join(f"{name}={float(log_vars[name])}" for name in bad)
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration + 1}: {values}. Training stopped before the optimizer "
                "step; start again from the last checkpoint's weights (load_from=CHECKPOINT, not --resume, which "
                "restores the old learning rate) with a lower learning rate or loss weight (e.g. model.ofd.alpha)."
            )
        return loss, log_vars
